"""The memory-bandwidth bound of batch-1 sampling: how fast the numba threads read a given number of bytes.

Dimension legend: n float32 values read, nt threads.

A batch-1 character multiplies one row by every weight matrix once, so it takes at least as long as
reading those weights (configs.BenchConfig.weight_bytes_per_char) at the rate the cores read that
many bytes: from L1 or L2 while they fit there, from L3 or memory once they do not, where no
arrangement of the arithmetic can go faster.  read_rate measures that rate: a float32 array of the
size split into one contiguous slice per numba thread, each thread summing its slice `reps` times
inside one parallel region (so the region's start-up is a small part of the time), the best of
several runs.  The sums are checked: a read the compiler could skip would fail the check.
"""
from __future__ import annotations

import time

import numpy as np

from ..core import environment

numba = environment.import_numba()

MIN_READ = 32 << 20      # bytes a timed call reads at least: small arrays are read that many times over
MAX_READ = 256 << 20     # bytes measured at most: far past every cache the rate is the memory's whatever the size


@numba.njit(fastmath={"reassoc", "contract"}, error_model="numpy", cache=True)
def slice_sum(a, reps):
    """sum of a (n,) float32, reps times over (reassociated: the loop runs on vectors)."""
    s = np.float32(0.0)
    for _ in range(reps):
        for i in range(a.shape[0]):
            s += a[i]
    return s


@numba.njit(parallel=True, error_model="numpy", cache=True)
def read_slices(a, nt, reps, out):
    """out (nt,) <- each thread's slice_sum over its contiguous nt-th of a (n,)."""
    n = a.shape[0]
    for k in numba.prange(nt):
        out[k] = slice_sum(a[k * n // nt:(k + 1) * n // nt], reps)


def values_read(nbytes):
    """How many float32 values read_rate reads for nbytes: at least one, at most MAX_READ's bytes."""
    return max(1, min(int(nbytes), MAX_READ) // 4)


def read_rate(nbytes, seconds=0.2, threads=None):
    """-> GB/s at which `threads` numba threads (default: all of them) read nbytes (at least 4, at
    most MAX_READ) of float32 values, the best of runs for about `seconds`."""
    n = values_read(nbytes)
    nt = max(1, min(threads or numba.get_num_threads(), n))
    a = np.zeros(n, np.float32)                              # (n,) ones at each slice's ends, zeros between
    bounds = [(k * n // nt, (k + 1) * n // nt) for k in range(nt)]
    for lo, hi in bounds:
        a[lo] = a[hi - 1] = 1.0
    reps = max(1, MIN_READ // (4 * n))
    want = np.array([reps * (1.0 if hi - lo == 1 else 2.0) for lo, hi in bounds], np.float32)   # (nt,)
    out = np.zeros(nt, np.float32)                           # (nt,)
    best, runs, t_end = 0.0, 0, None
    while runs < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        read_slices(a, nt, reps, out)
        dt = time.perf_counter() - t0
        if not np.array_equal(out, want):
            raise RuntimeError(f"read_rate: the threads' sums {out} are not {want}")
        if runs > 0:                                         # the first run compiles or loads the kernel
            best = max(best, 4.0 * n * reps / dt / 1e9)
        t_end = t_end or time.perf_counter() + seconds
        runs += 1
    return best
