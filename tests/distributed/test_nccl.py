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
import sys
import threading
import types

import numpy as np

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
    """What the K fake ranks share: a barrier, one slot per rank, and the record of calls."""

    def __init__(self):
        self.barrier = threading.Barrier(K, timeout=20)
        self.slots = [None] * K
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
        return K

    def Split_type(self, kind, key=0):
        return self                       # one machine: the node's ranks are all ranks

    def Free(self):
        pass

    def bcast(self, obj, root=0):
        self.world.record("mpi.bcast", self.rank, obj)
        return self.world.exchange(self.rank, obj)[root]

    def allgather(self, obj):
        return self.world.exchange(self.rank, obj)


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
            group = pmpi.MPIGroup(FakeComm(world, r), types.SimpleNamespace(COMM_TYPE_SHARED=1))
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
