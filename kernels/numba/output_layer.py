"""Numba kernels for the output layer: the linear map to logits and the fused softmax
cross-entropy, forward and backward.

Dimension legend: N = T*B rows, H hidden (input of the layer), V vocabulary.

The linear layer's products go through gemm on `nt` threads, each owning a block of C's
rows (V = 65 columns split in two would leave each thread an NR-wide panel and a narrow one:
rows split evenly).  The bias is added and its gradient summed by the same blocks of rows on
the same threads (sums.py): at a large vocabulary each is a pass through memory.

One pass per row: the row maximum, the shifted exponentials (written straight into the
gradient row), their sum, the log-sum-exp loss of the target, then the gradient
(softmax - onehot) / N in place.  Numerically stable: every exponent is <= 0.  Big batches
split the rows over the threads, each summing its rows' losses into its own slot.
"""
from __future__ import annotations

import numba
import numpy as np

from .fastmath import fexp_nonpos, like
from .gemm import MR, gemm, padded_t
from .jit import JIT, PAR, REASSOC
from .sums import column_sums, column_sums_par


@numba.njit(**REASSOC)
def row_sum(e):
    """Sum in the row dtype, reassociated so that it vectorises."""
    s = e[0] * 0
    for j in range(e.shape[0]):
        s += e[j]
    return s


@numba.njit(**JIT)
def softmax_xent_rows(logits, targets, dlogits, need_grad, r0, r1, scratch):
    """softmax_xent_kernel for rows r0..r1-1 -> their summed loss (float64); without
    need_grad the exp scratch is dlogits[scratch]."""
    N, V = logits.shape
    total = 0.0
    for n in range(r0, r1):
        z = logits[n]
        e = dlogits[n] if need_grad else dlogits[scratch]
        m = z[0]
        for j in range(1, V):
            m = max(m, z[j])
        for j in range(V):
            e[j] = fexp_nonpos(z[j] - m)                     # z - m <= 0
        s = row_sum(e)
        total += np.log(np.float64(s)) - np.float64(z[targets[n]] - m)   # -log softmax_y
        if need_grad:
            inv = like(s, 1 / (s * N))                        # d(-log p_y)/dz = (p - onehot) / N
            for j in range(V):
                e[j] = e[j] * inv
            e[targets[n]] -= 1 / N
    return total


@numba.njit(**PAR)
def softmax_xent_par(logits, targets, dlogits, need_grad, parts):
    """softmax_xent_rows on len(parts) threads, a block of rows each; thread k's loss sum -> parts[k]."""
    N, nt = logits.shape[0], parts.shape[0]
    # np.int64(): one signature, so one compile, of the callee (jit.py)
    for k in numba.prange(nt):
        parts[k] = softmax_xent_rows(logits, targets, dlogits, need_grad, k * N // nt, (k + 1) * N // nt, np.int64(k))


@numba.njit(**JIT)
def softmax_xent_kernel(logits, targets, dlogits, need_grad, nt):
    """logits (N,V), targets (N,) int -> mean loss (float64); dlogits (N,V) filled when
    need_grad (it is the exp scratch either way, so pass one row per thread (nt or 1, V) when
    not).  nt None: the calling thread; else the rows split over nt threads."""
    N = logits.shape[0]
    if nt is None:
        return softmax_xent_rows(logits, targets, dlogits, need_grad, np.int64(0), N, np.int64(0)) / N
    parts = np.zeros(nt)                                        # (nt,) float64 loss sums
    softmax_xent_par(logits, targets, dlogits, need_grad, parts)
    return parts.sum() / N


@numba.njit(**PAR)
def rows_gemm(A, B, C, trans_a, trans_b, nt):
    """C = op(A) op(B) with C's rows split over nt threads in blocks of MR (the micro-kernel's
    row block), one gemm call each; A and B are [::1] views ('A' layout, one compile)."""
    m = C.shape[0]
    blocks = (m + MR - 1) // MR
    for k in numba.prange(nt):
        r0, r1 = min(k * blocks // nt * MR, m), min((k + 1) * blocks // nt * MR, m)
        if r1 > r0:
            Ak = A[:, r0:r1] if trans_a else A[r0:r1]
            gemm(Ak, B, C[r0:r1], trans_a, trans_b, 1.0, 0.0)


@numba.njit(**JIT)
def mm_rows(A, B, C, trans_a, trans_b, nt):
    """C = op(A) op(B) on the calling thread (nt None) or nt threads (rows_gemm); bool() passes
    a literal flag on as a plain bool and the [::1] views have the 'A' layout, one compile of
    gemm and rows_gemm for every caller (lstm_layer.mm says why both branches compile)."""
    if nt is None:
        gemm(A[::1], B[::1], C[::1], bool(trans_a), bool(trans_b), 1.0, 0.0)
    else:
        rows_gemm(A[::1], B[::1], C[::1], bool(trans_a), bool(trans_b), nt)


@numba.njit(**JIT)
def add_bias_rows(y, b, r0, r1):
    """y[r0:r1] (rows of (N,V)) += b (V,)."""
    for n in range(r0, r1):
        row = y[n]
        for j in range(y.shape[1]):
            row[j] += b[j]


@numba.njit(**PAR)
def add_bias_par(y, b, nt):
    """add_bias_rows on nt threads, a block of rows each."""
    N = y.shape[0]
    for k in numba.prange(nt):
        add_bias_rows(y, b, np.int64(k * N // nt), np.int64((k + 1) * N // nt))


@numba.njit(**JIT)
def add_bias(y, b, nt):
    """y (N,V) += b (V,) on every row: the calling thread (nt None) or nt threads by rows
    (at a large vocabulary y is tens of megabytes, one pass through memory)."""
    if nt is None:
        add_bias_rows(y, b, np.int64(0), np.int64(y.shape[0]))
    else:
        add_bias_par(y, b, np.int64(nt))


@numba.njit(**JIT)
def linear_forward_kernel(x, W, b, y, nt):
    """y (N,V) = x (N,H) @ W (H,V) + b (V,)."""
    mm_rows(x, W, y, False, False, nt)
    add_bias(y, b, nt)


@numba.njit(**JIT)
def bias_grad(dy, db, nt):
    """db (V,) = dy (N,V) summed over rows: the calling thread (nt None) or nt threads' partial
    sums, added in thread order."""
    if nt is None:
        column_sums(dy, db, np.int64(0), np.int64(dy.shape[0]))
    else:
        parts = np.empty((nt, db.shape[0]), db.dtype)                  # (nt,V) one row of sums a thread
        column_sums_par(dy, parts)
        db[:] = parts[0]
        for k in range(1, nt):
            db += parts[k]


@numba.njit(**JIT)
def linear_backward_kernel(x, dy, W, dx, dW, db, nt):
    """dy (N,V) -> dx (N,H) = dy W^T, dW (H,V) = x^T dy, db (V,) = column sums of dy."""
    mm_rows(dy, padded_t(W), dx, False, False, nt)                   # W^T (V,H) copied once, not per thread
    mm_rows(x, dy, dW, True, False, nt)
    bias_grad(dy, db, nt)
