"""Numba kernels for one LSTM layer over a window: forward and BPTT, one jitted call each.

Dimension legend:
    T time steps   B batch   I input size   H hidden size   G = 4H gates (i, f, g, o)
    N = T*B rows   V vocabulary   E embedding size (I of layer 0)

Private kernels only loop; the public wrappers in lstm_engine/backends/numba_backend.py
validate and allocate.  Layout (as in numpy_backend): W (H+I, G) fused over
[h_{t-1}, x_t], rows 0..H-1 are W_h, rows H.. are W_x; column block k*H..(k+1)*H is gate k.

Forward per step t: acts[t] holds the input projection x_t @ W_x (written before the
loop by one GEMM, or gathered from a V x G table for layer 0), the recurrent product
h_{t-1} @ W_h is accumulated into it by BLAS (beta = 1), and `gates_forward` adds the
bias, applies sigmoid/tanh in place and writes c_t and h_t.  Nothing is allocated
inside the time loop.

Backward per step t (in reverse): `gates_backward` turns dL/dh_t, dL/dc_t into the gate
gradients dz_t (kept for all t in dzs) and dL/dc_{t-1}; BLAS gives dL/dh_{t-1} = dz_t W_h^T.
After the loop each weight gradient is one product over all N rows.
"""
from __future__ import annotations

from . import numba_cache  # noqa: F401  (first: the cache locator for everything below)

import numba
import numpy as np

from .numba_gemm import gemm
from .numba_gates import JIT, PAR, gates_backward, gates_forward
from .numba_lstm_cols import backward_steps_cols, forward_steps_cols

# How a layer uses threads: the entry kernels take (prod, rows, units), each None or a
# thread count.  prod: threads for the big products (None: the calling thread); rows: the
# time loop on that many threads split by batch rows; units: split by hidden units; both
# None: the time loop on the calling thread.  None vs int is a type, so numba prunes the
# other branches before compiling: only the loop used is compiled.


# ----------------------------------------------------------------------------
# Products: one thread (BLAS single-threaded) or nt numba threads on column blocks
# ----------------------------------------------------------------------------

@numba.njit(**PAR)
def pgemm(A, B, C, trans_a, trans_b, alpha, beta, nt):
    """gemm split over nt column blocks of C, one numba thread and one BLAS call each."""
    n = C.shape[1]
    for k in numba.prange(nt):
        j0, j1 = k * n // nt, (k + 1) * n // nt
        Bk = B[j0:j1] if trans_b else B[:, j0:j1]
        gemm(A, Bk, C[:, j0:j1], trans_a, trans_b, alpha, beta)


@numba.njit(**JIT)
def mm(A, B, C, trans_a, trans_b, alpha, beta, prod):
    """C = alpha op(A) op(B) + beta C on the calling thread (prod None) or prod threads.
    The [::1] views have numba's 'A' layout whatever the caller passed, so each dtype
    compiles one pgemm (a parallel function: seconds of compile per signature)."""
    if prod is None:
        gemm(A, B, C, trans_a, trans_b, alpha, beta)
    else:
        pgemm(A[::1], B[::1], C[::1], trans_a, trans_b, float(alpha), float(beta), prod)


# ----------------------------------------------------------------------------
# The time loops
# ----------------------------------------------------------------------------

@numba.njit(**JIT)
def forward_steps(Wh, b, h0, c0, hs, cs, acts, r0, r1):
    """The time loop for batch rows r0..r1-1 (rows never interact, so any split of the
    batch is valid).  acts (T,B,G) holds x_t @ W_x on entry, activated gates on exit;
    Wh (H,G), b (G,), h0, c0 (B,H) -> hs, cs (T,B,H)."""
    for t in range(acts.shape[0]):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gemm(h_prev[r0:r1], Wh, acts[t, r0:r1], False, False, 1.0, 1.0)     # += h_{t-1} @ W_h
        gates_forward(acts[t], b, c_prev, cs[t], hs[t], r0, r1)


@numba.njit(**PAR)
def forward_steps_par(Wh, b, h0, c0, hs, cs, acts, nt):
    """forward_steps on nt threads, each running the whole time loop for its own slice of
    the batch: no synchronisation inside the loop."""
    B = h0.shape[0]
    for k in numba.prange(nt):
        forward_steps(Wh, b, h0, c0, hs, cs, acts, k * B // nt, (k + 1) * B // nt)


@numba.njit(**JIT)
def backward_steps(dhs, WhT, c0, cs, acts, dzs, dh, dc, r0, r1):
    """The reverse time loop for batch rows r0..r1-1.  dh, dc (B,H) hold dL/dh_T, dL/dc_T on
    entry and dL/dh_0, dL/dc_0 on exit -> dzs (T,B,G) gate gradients.  WhT (G,H) = W_h^T."""
    for t in range(acts.shape[0] - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        gates_backward(dhs[t], dh, dc, acts[t], cs[t], c_prev, dzs[t], r0, r1)
        gemm(dzs[t, r0:r1], WhT, dh[r0:r1])                             # dh = dz_t @ W_h^T


@numba.njit(**PAR)
def backward_steps_par(dhs, WhT, c0, cs, acts, dzs, dh, dc, nt):
    """backward_steps on nt threads, one slice of the batch each."""
    B = dh.shape[0]
    for k in numba.prange(nt):
        backward_steps(dhs, WhT, c0, cs, acts, dzs, dh, dc, k * B // nt, (k + 1) * B // nt)


# ----------------------------------------------------------------------------
# Whole layers (the entry points of numba_backend)
# ----------------------------------------------------------------------------

@numba.njit(**JIT)
def run_forward_steps(Wh, b, h0, c0, hs, cs, acts, rows, units):
    """The time loop on the calling thread, on `rows` threads split by batch rows, or on
    `units` threads split by hidden units (numba_lstm_cols)."""
    if rows is not None:
        forward_steps_par(Wh, b, h0, c0, hs, cs, acts, rows)
    elif units is not None:
        forward_steps_cols(Wh, b, h0, c0, hs, cs, acts, units)
    else:
        forward_steps(Wh, b, h0, c0, hs, cs, acts, 0, h0.shape[0])


@numba.njit(**JIT)
def run_backward_steps(dhs, Wh, c0, cs, acts, dzs, dh, dc, rows, units):
    """The reverse time loop (see run_forward_steps).  W_h^T is copied once (G,H), so every
    step's dz_t W_h^T reads it row by row."""
    WhT = np.ascontiguousarray(Wh.T)                                # (G,H)
    if rows is not None:
        backward_steps_par(dhs, WhT, c0, cs, acts, dzs, dh, dc, rows)
    elif units is not None:
        backward_steps_cols(dhs, WhT, c0, cs, acts, dzs, dh, dc, units)
    else:
        backward_steps(dhs, WhT, c0, cs, acts, dzs, dh, dc, 0, dh.shape[0])


@numba.njit(**JIT)
def lstm_forward_kernel(x, W, b, h0, c0, hs, cs, acts, prod, rows, units):
    """x (T,B,I), W (H+I,G), b (G,), h0, c0 (B,H) -> hs, cs (T,B,H), acts (T,B,G)."""
    T, B, I = x.shape
    H = h0.shape[1]
    mm(x.reshape(T * B, I), W[H:], acts.reshape(T * B, 4 * H), False, False, 1.0, 0.0, prod)  # x_t W_x, all t
    run_forward_steps(W[:H], b, h0, c0, hs, cs, acts, rows, units)


@numba.njit(**JIT)
def embed_lstm_forward_kernel(tokens, Emb, W, b, h0, c0, hs, cs, acts, table, prod, rows, units):
    """Layer 0 with the embedding folded in: x_t @ W_x = (Emb @ W_x)[token], one V x G table
    per call, rows gathered.  tokens (T,B) int, Emb (V,E), table (V,G) scratch."""
    T, B = tokens.shape
    H = h0.shape[1]
    gemm(Emb, W[H:], table)                                         # (V,G) = Emb @ W_x
    gather_rows(tokens.reshape(T * B), table, acts.reshape(T * B, 4 * H))
    run_forward_steps(W[:H], b, h0, c0, hs, cs, acts, rows, units)


@numba.njit(**JIT)
def column_sums(X, out):
    """out (n,) = X (m,n) summed over rows."""
    out[:] = 0
    for r in range(X.shape[0]):
        for j in range(X.shape[1]):
            out[j] += X[r, j]


@numba.njit(**JIT)
def gather_rows(ids, table, out):
    """out[n] = table[ids[n]]: ids (N,) int, table (V,K) -> out (N,K) (embedding gather)."""
    for n in range(ids.shape[0]):
        src, dst = table[ids[n]], out[n]
        for j in range(table.shape[1]):
            dst[j] = src[j]


@numba.njit(**JIT)
def scatter_add_rows(ids, rows, out):
    """out (V,K) = 0, then out[ids[n]] += rows[n] for every n, in order (ids repeat, so
    this loop stays sequential)."""
    out[:] = 0
    for n in range(ids.shape[0]):
        src, dst = rows[n], out[ids[n]]
        for j in range(rows.shape[1]):
            dst[j] += src[j]


@numba.njit(**JIT)
def recurrent_weight_grads(h0, hs, dzs, dW, db, prod):
    """dW[:H] = sum_t h_{t-1}^T dz_t as two products over all rows; db = sum of dz rows."""
    T, B, G = dzs.shape
    H = h0.shape[1]
    dz2 = dzs.reshape(T * B, G)                                     # (N,G)
    mm(h0, dzs[0], dW[:H], True, False, 1.0, 0.0, prod)               # h_0^T dz_1
    mm(hs.reshape(T * B, H)[:(T - 1) * B], dz2[B:], dW[:H], True, False, 1.0, 1.0, prod)
    column_sums(dz2, db)


@numba.njit(**JIT)
def lstm_backward_kernel(dhs, x, W, h0, c0, hs, cs, acts, dzs, dh, dc, dx, dW, db, prod, rows, units):
    """BPTT through one layer.  dhs (T,B,H); dh, dc (B,H) in: dhT, dcT, out: dh0, dc0
    -> dx (T,B,I), dW (H+I,G), db (G,); dzs (T,B,G) scratch."""
    T, B, I = x.shape
    H = h0.shape[1]
    run_backward_steps(dhs, W[:H], c0, cs, acts, dzs, dh, dc, rows, units)
    recurrent_weight_grads(h0, hs, dzs, dW, db, prod)
    dz2 = dzs.reshape(T * B, 4 * H)
    mm(x.reshape(T * B, I), dz2, dW[H:], True, False, 1.0, 0.0, prod)       # dW_x = x^T dz  (I,G)
    mm(dz2, W[H:], dx.reshape(T * B, I), False, True, 1.0, 0.0, prod)       # dx = dz W_x^T  (N,I)


@numba.njit(**JIT)
def embed_lstm_backward_kernel(dhs, tokens, Emb, W, h0, c0, hs, cs, acts, dzs, dh, dc, dEmb, dW, db, dtable,
                               prod, rows, units):
    """BPTT through layer 0 with the table trick: scatter-add dz rows into dtable (V,G) by
    token, then dW_x = Emb^T dtable and dEmb = dtable W_x^T (two small products)."""
    T, B = tokens.shape
    H = h0.shape[1]
    run_backward_steps(dhs, W[:H], c0, cs, acts, dzs, dh, dc, rows, units)
    recurrent_weight_grads(h0, hs, dzs, dW, db, prod)
    scatter_add_rows(tokens.reshape(T * B), dzs.reshape(T * B, 4 * H), dtable)
    gemm(Emb, dtable, dW[H:], True, False)                          # (E,G)
    gemm(dtable, W[H:], dEmb, False, True)                          # (V,E)
