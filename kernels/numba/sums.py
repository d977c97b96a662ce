"""Sums over a matrix's rows (the bias gradients), on the calling thread or on numba's threads.

Dimension legend: m rows, n columns, nt threads.

The output layer's bias gradient sums (N,V) logits' gradients, tens of megabytes at a large
vocabulary: split by blocks of rows, each thread sums its block into a row of its own, and the
rows are added in thread order (the result does not depend on the threads' timing).  The
recurrent layers split by hidden units sum their (T*B,G) gate gradients after the time loop on the
calling thread (split by batch rows, each thread sums its rows inside the loop instead).
"""
from __future__ import annotations

import numba
import numpy as np

from .jit import JIT, PAR


@numba.njit(**JIT)
def column_sums(X, out, r0, r1):
    """out (n,) = X[r0:r1] (rows of (m,n)) summed over rows."""
    out[:] = 0
    for r in range(r0, r1):
        row = X[r]
        for j in range(X.shape[1]):
            out[j] += row[j]


@numba.njit(**PAR)
def column_sums_par(X, parts):
    """column_sums on len(parts) threads, a block of rows each -> parts (nt,n)."""
    m, nt = X.shape[0], parts.shape[0]
    for k in numba.prange(nt):
        column_sums(X, parts[k], np.int64(k * m // nt), np.int64((k + 1) * m // nt))
