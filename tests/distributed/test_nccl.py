"""The NCCL path of --backend cupy, on the CPU: K threads play K ranks, each with the group of
lstm_engine.parallel.mpi over a fake MPI communicator, CuPy's CPU stand-in (tests/backends/cuda_emu)
for device arrays and streams, and a recording fake of cupy.cuda.nccl that really sums the
buffers at the pointers it is given.  Checked: the unique id is made once on rank 0 and travels
over MPI, each rank takes its local GPU, every step is one in-place all-reduce of the one flat
buffer (count, dtype, SUM, current stream), and the mean gradients, loss and stop flag come out right."""
from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import sys
import threading
import types

import numpy as np
import pytest

from helpers import tiny_cfg, write_corpus
from lstm_engine.parallel import Local
from lstm_engine.parallel import mpi as pmpi

K = 3
SHAPES = {"Emb": (5, 2), "W0": (4, 8), "b0": (8,), "Wy": (2, 5), "by": (5,)}
P = sum(int(np.prod(s)) for s in SHAPES.values())


def _fake_cupy():
    path = os.path.join(os.path.dirname(__file__), "..", "backends", "cuda_emu", "fake_cupy.py")
    spec = importlib.util.spec_from_file_location("lstm_engine_fake_cupy_nccl", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class World:
    """What the n fake ranks share: a barrier, one slot per rank, and the record of calls."""

    def __init__(self, n=K):
        self.n = n
        self.barrier = threading.Barrier(n, timeout=20)
        self.slots = [None] * n
        self.calls = []
        self.lock = threading.Lock()

    def record(self, *call):
        with self.lock:
            self.calls.append(call)

    def exchange(self, rank, value):
        """Every rank's value, in rank order (a collective)."""
        self.slots[rank] = value
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got


class FakeComm:
    """The few MPI calls the group makes, between threads."""

    def __init__(self, world, rank):
        self.world, self.rank = world, rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.world.n

    def Split_type(self, kind, key=0):
        return self                       # one machine: the node's ranks are all ranks

    def Free(self):
        pass

    def bcast(self, obj, root=0):
        self.world.record("mpi.bcast", self.rank, obj)
        return self.world.exchange(self.rank, obj)[root]

    def allgather(self, obj):
        return self.world.exchange(self.rank, obj)

    def gather(self, obj, root=0):
        got = self.world.exchange(self.rank, obj)
        return got if self.rank == root else None


FAKE_MPI = types.SimpleNamespace(COMM_TYPE_SHARED=1, Get_processor_name=lambda: "emulator")


def _host_view(ptr, count, dtype):
    ctype = {np.float32: ctypes.c_float, np.float64: ctypes.c_double}[dtype]
    return np.ctypeslib.as_array((ctype * count).from_address(ptr))


def fake_nccl(world):
    nccl = types.SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0, available=True)
    types_ = {7: np.float32, 8: np.float64}

    def get_unique_id():
        world.record("get_unique_id", threading.current_thread().name)
        return tuple(range(128))

    class NcclCommunicator:
        def __init__(self, ndev, uid, rank):
            world.record("NcclCommunicator", ndev, uid, rank)
            self.rank = rank

        def allReduce(self, send, recv, count, dtype, op, stream):
            world.record("allReduce", self.rank, send, recv, count, dtype, op, stream)
            mine = _host_view(send, count, types_[dtype]).copy()
            total = sum(world.exchange(self.rank, mine))
            _host_view(recv, count, types_[dtype])[:] = total

        def bcast(self, buff, count, dtype, root, stream):
            world.record("bcast", self.rank, buff, count, dtype, root, stream)
            view = _host_view(buff, count, types_[dtype])
            view[:] = world.exchange(self.rank, view.copy())[root]

    nccl.get_unique_id, nccl.NcclCommunicator = get_unique_id, NcclCommunicator
    return nccl


def test_nccl_allreduce_of_one_flat_buffer(monkeypatch):
    fake, world = _fake_cupy(), World()
    used = {}

    class Device:
        def __init__(self, i=0):
            self.id = i

        def use(self):
            used[threading.current_thread().name] = self.id

    cuda = types.SimpleNamespace(**vars(fake.cuda), nccl=fake_nccl(world))
    cuda.Device = Device
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 8)
    fake.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    be = types.SimpleNamespace(NAME="cupy", xp=fake, asarray=lambda a, dtype=None: fake.asarray(a, dtype),
                               to_numpy=fake.asnumpy, synchronize=lambda: None)
    rng = np.random.default_rng(0)
    grads = [{n: rng.standard_normal(s) for n, s in SHAPES.items()} for _ in range(K)]     # per rank
    params0 = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    results, errors = [None] * K, []

    def rank_main(r):
        try:
            group = pmpi.MPIGroup(FakeComm(world, r), FAKE_MPI)
            group.bind(be, SHAPES, np.float64)
            params = {n: fake.asarray(params0[n] if r == 0 else np.zeros(s)) for n, s in SHAPES.items()}
            group.broadcast_params(params)
            out = []
            for step in range(2):
                g = {n: fake.asarray(a * (step + 1)) for n, a in grads[r].items()}
                mean, loss, stop = group.reduce_step(g, 1.0 + r, stop=(r == 2 and step == 1))
                out.append(({n: fake.asnumpy(a) for n, a in mean.items()}, loss, stop, group._flat.data.ptr))
            results[r] = ({n: fake.asnumpy(p) for n, p in params.items()}, out)
        except Exception as e:          # noqa: BLE001 - surfaced by the assertion below
            errors.append(repr(e))
            world.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank{r}") for r in range(K)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    calls = world.calls
    # the unique id: made once, on rank 0, sent over MPI; one communicator per rank with it
    assert [c for c in calls if c[0] == "get_unique_id"] == [("get_unique_id", "rank0")]
    comms = sorted(c for c in calls if c[0] == "NcclCommunicator")
    assert comms == [("NcclCommunicator", K, tuple(range(128)), r) for r in range(K)]
    assert ("mpi.bcast", 0, tuple(range(128))) in calls
    assert used == {f"rank{r}": r for r in range(K)}                       # GPU = local rank
    stream = fake.cuda.get_current_stream().ptr
    for r in range(K):
        params, out = results[r]
        for n in SHAPES:
            np.testing.assert_array_equal(params[n], params0[n])          # rank 0's weights everywhere
        reduces = [c for c in calls if c[0] == "allReduce" and c[1] == r]
        assert len(reduces) == 2                                           # one per step
        for (_, _, send, recv, count, dtype, op, s), (_, _, _, ptr) in zip(reduces, out):
            assert send == recv == ptr and count == P + 2 and dtype == 8 and op == 0 and s == stream
        for step, (mean, loss, stop, _) in enumerate(out):
            for n in SHAPES:
                want = sum(grads[q][n] for q in range(K)) * (step + 1) / K
                np.testing.assert_allclose(mean[n], want, rtol=1e-14, atol=1e-15)
            assert loss == np.mean([1.0 + q for q in range(K)])
            assert stop == (step == 1)                                     # rank 2 asked at step 1: all stop


def _clear_kernel_caches(ck):
    for cache in (ck.module, ck.sm_count, ck.smem_optin):
        cache.cache_clear()


@pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")
def test_trainer_on_the_cupy_emulator_reduces_over_nccl(monkeypatch, tmp_path):
    """The whole training loop of --backend cupy (kernels on the CPU emulator) in a one-rank group
    whose gradients go through the recorded NCCL: one all-reduce of the flat device buffer per step,
    and the run equals the same run without a group (float64, dropout on)."""
    from lstm_engine.backends import cupy_backend as cb
    from lstm_engine.backends import cupy_generate as cg
    from lstm_engine.backends import cupy_kernels as ck
    from lstm_engine.core.train import Trainer
    fake, world = _fake_cupy(), World(1)

    class Device(fake.cuda.Device):
        def use(self):
            world.record("Device.use", self.id)

    cuda = types.SimpleNamespace(**vars(fake.cuda), nccl=fake_nccl(world))
    cuda.Device = Device
    monkeypatch.setattr(fake, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    for mod, name in ((cb, "cp"), (cb, "xp"), (cg, "cp")):
        monkeypatch.setattr(mod, name, fake)
    monkeypatch.setattr(cb, "_availability", None)
    monkeypatch.setattr(cb, "PERSIST_MAX_BH", 0)          # the emulator runs one block at a time
    monkeypatch.setattr(ck, "cublas_module", lambda: fake.CUBLAS)
    monkeypatch.setattr(cb, "_LOOPS", ck.LoopGraphs())
    monkeypatch.setattr(cb, "_BLAS_LOOPS", ck.LoopGraphs(status="BLAS_GRAPH_STATUS"))
    monkeypatch.setattr(cg, "_PLANS", cg._Plans())
    monkeypatch.setattr(ck, "GRAPH_STATUS", {"captured": 0, "replayed": 0, "error": None})
    monkeypatch.setattr(ck, "BLAS_GRAPH_STATUS", {"captured": 0, "replayed": 0, "error": None})
    _clear_kernel_caches(ck)
    monkeypatch.setattr(ck, "_FUNCTIONS", {})            # the emulator's kernels never outlive this test
    kw = dict(corpus=write_corpus(tmp_path), backend="cupy", dtype="float64", dropout=0.25, steps=4)
    runs = {}
    try:
        for name, group in (("one", Local()), ("nccl", pmpi.MPIGroup(FakeComm(world, 0), FAKE_MPI))):
            trainer = Trainer(tiny_cfg(tmp_path / name, **kw), group=group)
            assert trainer.be.NAME == "cupy"
            trainer.run()
            runs[name] = trainer.model.host_params()
    finally:
        _clear_kernel_caches(ck)
    for n, p in runs["one"].items():
        assert float(np.max(np.abs(runs["nccl"][n] - p))) <= 1e-12, n
    P = sum(p.size for p in runs["one"].values())
    reduces = [c for c in world.calls if c[0] == "allReduce"]
    assert len(reduces) == 4 and all(c[4] == P + 2 and c[5] == 8 for c in reduces)      # one per step
    assert ("Device.use", 0) in world.calls and [c[0] for c in world.calls].count("get_unique_id") == 1


def _gpu_with_nccl():
    """Why the real one-GPU check cannot run here, or None."""
    from lstm_engine.backends import cupy_backend as cb
    ok, why = cb.is_available()
    if not ok:
        return why
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        return f"CuPy cannot load NCCL ({e})"
    return None if getattr(nccl, "available", True) else "CuPy cannot load NCCL"


def test_one_gpu_nccl_communicator(tmp_path):
    """Where a GPU is lent: a real NCCL communicator of one rank (its id still travels over the
    group's MPI channel) carries each step's gradients; the run equals the run without a group."""
    why = _gpu_with_nccl()
    if why:
        pytest.skip(f"needs a GPU with NCCL: {why}")
    from lstm_engine.core.train import Trainer
    kw = dict(corpus=write_corpus(tmp_path), backend="cupy", dtype="float64", dropout=0.25, steps=4)
    group = pmpi.MPIGroup(FakeComm(World(1), 0), FAKE_MPI)
    runs = {}
    for name, g in (("one", Local()), ("nccl", group)):
        trainer = Trainer(tiny_cfg(tmp_path / name, **kw), group=g)
        trainer.run()
        runs[name] = trainer.model.host_params()
    assert type(group._reducer).__name__ == "NcclReducer"
    for n, p in runs["one"].items():
        assert float(np.max(np.abs(runs["nccl"][n] - p))) <= 1e-10, n
