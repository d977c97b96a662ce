"""Gradients over NCCL for the cupy backend: one all-reduce of the flat device buffer per step.

The communicator's unique id is made on rank 0 and sent to the others over MPI, as ChainerMN's
pure-NCCL communicator does; the collectives run on CuPy's current stream.

Dimension legend: P+2 entries of the flat buffer (gradients, loss, stop).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def _nccl():
    try:
        from cupy.cuda import nccl
    except ImportError:
        nccl = None
    if nccl is None or not getattr(nccl, "available", True):
        raise UserError("the cupy backend on several ranks needs NCCL, which this CuPy cannot load; "
                        "pip install nvidia-nccl-cu12 (or use --backend numba)")
    return nccl


def use_local_device(local_rank, cupy=None):
    """Rank `local_rank` of this machine takes GPU local_rank (modulo the GPUs there)."""
    if cupy is None:
        import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(local_rank % n).use()


class NcclReducer:
    """Sums (all-reduce) and broadcasts a flat cupy buffer over the ranks."""

    def __init__(self, mpi_comm, rank, size, nccl=None, cupy=None):
        if cupy is None:
            import cupy
        self.nccl, self.cp = nccl or _nccl(), cupy
        uid = self.nccl.get_unique_id() if rank == 0 else None
        uid = mpi_comm.bcast(uid, root=0)                              # the id travels over MPI
        self.comm = self.nccl.NcclCommunicator(size, uid, rank)
        self._types = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32, np.dtype(np.float64): self.nccl.NCCL_FLOAT64}

    def allreduce(self, flat):
        """In place: flat (P+2,) becomes its sum over the ranks."""
        ptr = flat.data.ptr
        self.comm.allReduce(ptr, ptr, flat.size, self._types[flat.dtype], self.nccl.NCCL_SUM,
                            self.cp.cuda.get_current_stream().ptr)

    def bcast(self, flat):
        """In place: rank 0's flat (P+2,) on every rank."""
        self.comm.bcast(flat.data.ptr, flat.size, self._types[flat.dtype], 0, self.cp.cuda.get_current_stream().ptr)
