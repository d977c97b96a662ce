"""Data-parallel training: the group of processes this one trains with.

A process started by an MPI launcher (mpiexec, srun) with more than one rank joins an MPI group
(parallel/mpi.py, gradients over MPI or, for the cupy backend, NCCL in parallel/nccl.py); any
other process is a group of one (`Local`) and never imports MPI.  The trainer talks to either
through the same few calls, so the one-process path is the code it always was.

Semantics: --batch-size B counts streams over all ranks; rank r of K owns the contiguous streams
shard(B, K, r); every step all-reduces one flat buffer [gradients..., loss, stop] and every rank
applies the same clipped Adam update to identical weights.

Dimension legend: B streams over all ranks, K ranks, H hidden.
"""
from __future__ import annotations

import os

from .local import Local, QuietError, check_batch, shard  # noqa: F401  (the names the trainer uses)

# set by MPI launchers: MPICH/Intel MPI hydra and Slurm's PMI (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE)
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_GROUP = None


def launched_size(environ=None):
    """Number of ranks an MPI launcher started (1 when none did), from its environment."""
    env = os.environ if environ is None else environ
    for name in SIZE_VARS:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def in_mpi_job():
    """True in a process an MPI launcher started with more than one rank, or one that joined an MPI
    group: such a process starts no helper processes (a fork after MPI_Init is unsafe on some MPI
    transports, and the ranks already share the cores).  A process that merely imported mpi4py (a
    notebook, the test suite) is not one."""
    return launched_size() > 1 or not isinstance(current(), Local)


def connect(mpi=None):
    """The group of this process (made once): MPI when mpi is True, or when None and a launcher
    started more than one rank; otherwise a group of one."""
    global _GROUP
    if _GROUP is None:
        if mpi or (mpi is None and launched_size() > 1):
            from .mpi import MPIGroup
            _GROUP = MPIGroup.world()
        else:
            _GROUP = Local()
    return _GROUP


def current():
    """The group connect() made, or a group of one when it was never called (API use)."""
    return _GROUP if _GROUP is not None else Local()
