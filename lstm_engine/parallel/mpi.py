"""The MPI group: the ranks mpiexec (or srun) started, talking through mpi4py.

Control traffic (the run directory's name, the NCCL id, the carried state for a checkpoint, a
failed setup) goes over MPI as Python objects; each step's gradients go as one flat buffer,
over MPI for the CPU backends and over NCCL for cupy (parallel/nccl.py).

Dimension legend: P parameters of all tensors, K ranks, B streams over all ranks, b = B/K streams
of this rank, H hidden, L layers.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..errors import UserError
from .local import QuietError


def _env_rank():
    """This process's rank as the launcher's environment gives it (before MPI is imported)."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


class HostReducer:
    """Sums a flat host buffer over the ranks in place with MPI_Allreduce."""

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI

    def allreduce(self, flat):
        self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)

    def bcast(self, flat):
        self.comm.Bcast(flat, root=0)


class MPIGroup:
    """K ranks training one model; see lstm_engine.parallel for the semantics."""

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)     # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.root = self.rank == 0
        self.reduce_seconds = 0.0       # wall time spent in the gradient all-reduce, summed over steps
        self._reducer = None

    @classmethod
    def world(cls):
        try:
            from mpi4py import MPI
        except ImportError:
            error = QuietError if _env_rank() else UserError
            raise error("training on several MPI ranks needs mpi4py and an MPI library: "
                        "pip install 'lstm-engine[mpi]' (or run without mpiexec for one process)") from None
        return cls(MPI.COMM_WORLD, MPI)

    # -- setup -------------------------------------------------------------------------------------
    def bind(self, backend, shapes, dtype):
        """Lay out the flat buffer [P gradients, loss, stop] on `backend` and pick the transport;
        under cupy this rank takes GPU local_rank first, so that its arrays live there."""
        self.be = backend
        if backend.NAME == "cupy":
            from .nccl import NcclReducer, use_local_device
            use_local_device(self.local_rank)
            self._reducer = NcclReducer(self.comm, self.rank, self.size)
        else:
            self._share_cores(backend)
            self._reducer = HostReducer(self.comm, self.MPI)
        self._layout, offset = {}, 0
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            self._layout[name] = (offset, n, tuple(shape))
            offset += n
        self._P = offset
        self._flat = backend.xp.zeros(offset + 2, dtype)                  # (P+2,)

    def _share_cores(self, backend):
        """Threads per rank = cores / ranks on this machine, unless the user set a thread count."""
        if any(v in os.environ for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")):
            return
        n = max(1, len(os.sched_getaffinity(0)) // self.local_size)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n)                                         # BLAS of the numpy backend
        if backend.NAME == "numba":
            import numba
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))

    def share(self, obj):
        """Rank 0's value of a small Python object, on every rank."""
        return self.comm.bcast(obj, root=0)

    def members(self):
        """Collective: [(host, pid)] of every rank, in rank order (a launcher that reports a dead
        process names its pid and host)."""
        return self.comm.allgather((self.MPI.Get_processor_name(), os.getpid()))

    def agree(self, fn):
        """Run fn() on every rank; if it raised a UserError (or anything) on any rank, raise the first
        failure's message on every rank: rank 0 reports it, the others exit quietly."""
        try:
            result, failure = fn(), None
        except UserError as e:
            result, failure = None, str(e)
        except Exception as e:          # noqa: BLE001 - reported as one line, never left to hang the others
            result, failure = None, _one_line(e)
        failures = self.comm.allgather(failure)
        bad = [(r, f) for r, f in enumerate(failures) if f is not None]
        if not bad:
            return result
        r, msg = bad[0]
        if any(f != msg for f in failures):
            msg = f"rank {r} of {self.size}: {msg}"
        raise (UserError if self.root else QuietError)(msg)

    # -- each step ---------------------------------------------------------------------------------
    def _pack(self, arrays, tail):
        flat = self._flat
        for name, (o, n, _) in self._layout.items():
            flat[o:o + n] = arrays[name].reshape(-1)
        flat[self._P:] = self.be.asarray(np.array(tail, np.float64), flat.dtype)
        return flat

    def _views(self):
        return {name: self._flat[o:o + n].reshape(shape) for name, (o, n, shape) in self._layout.items()}

    def reduce_step(self, grads, loss, stop):
        """One all-reduce of [gradients, loss, stop]. -> (mean gradients (views of the buffer), mean loss,
        whether any rank asked to stop)."""
        flat = self._pack(grads, [loss, 1.0 if stop else 0.0])            # (P+2,)
        self.be.synchronize()                                               # time the all-reduce, not the backward
        t0 = time.perf_counter()
        self._reducer.allreduce(flat)
        tail = self.be.to_numpy(flat[self._P:])                             # (2,) loss sum, stop count
        self.reduce_seconds += time.perf_counter() - t0
        grad = flat[:self._P]
        grad /= self.size
        return self._views(), float(tail[0]) / self.size, bool(tail[1] > 0)

    def broadcast_params(self, params):
        """Rank 0's parameters on every rank, in place."""
        flat = self._pack(params, [0.0, 0.0])
        self._reducer.bcast(flat)
        for name, view in self._views().items():
            params[name][...] = view

    def gather_streams(self, state):
        """Per layer [h (b,H), c (b,H)] host arrays of every rank -> [h (B,H), c (B,H)] on rank 0 (None elsewhere)."""
        parts = self.comm.gather(state, root=0)
        if not self.root:
            return None
        return [[np.concatenate([p[l][j] for p in parts]) for j in range(2)] for l in range(len(state))]

    # -- faults ------------------------------------------------------------------------------------
    def launch_prefix(self):
        return f"mpiexec -n {self.size} "

    def fail(self, exc, step, out):
        """Report this rank's failure in one line and abort every rank (MPI_Abort): no rank is left waiting."""
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            (str(exc) if isinstance(exc, UserError) else _one_line(exc))
        try:
            sys.stderr.write(f"error: rank {self.rank} of {self.size} failed in step {step + 1}: {what}; all ranks "
                             f"stopped, the checkpoints in {out} are intact; resume with: "
                             f"{self.launch_prefix()}lstm-engine train --resume {out}\n")
            sys.stderr.flush()
            time.sleep(0.5)             # the launcher forwards the line before the abort ends every process
        finally:
            self.comm.Abort(1)
            os._exit(1)                 # never back into Python's unwinding (no traceback after the line)


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
