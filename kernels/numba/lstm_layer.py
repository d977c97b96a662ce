"""Numba kernels for one LSTM layer over a window: forward and BPTT, one jitted call each.

Dimension legend:
    T time steps   B batch   I input size   H hidden size   G = 4H gates (i, f, g, o)
    N = T*B rows   V vocabulary   E embedding size (I of layer 0)

Private kernels only loop; the public wrappers in lstm_engine/backends/numba_backend.py
validate and allocate.  Layout (as in numpy_backend): W (H+I, G) fused over
[h_{t-1}, x_t], rows 0..H-1 are W_h, rows H.. are W_x; column block k*H..(k+1)*H is gate k.

Forward per step t: acts[t] holds the input projection x_t @ W_x (written before the
loop by one GEMM; on the batch-row split, by each thread for its own rows at step t, so that
it is still in cache when the step reads it; for layer 0, copied from a V x G table by each
thread for its own rows at step t), the recurrent product h_{t-1} @ W_h is accumulated into
it by the GEMM (beta = 1), and `gates_forward` adds the bias, applies sigmoid/tanh in place
and writes c_t and h_t.  Nothing is allocated inside the time loop.  The time loops read W_h
(and W_h^T) packed into column panels once a call (gemm.panels).

Backward per step t (in reverse): `gates_backward` turns dL/dh_t, dL/dc_t into the gate
gradients dz_t (kept for all t in dzs) and dL/dc_{t-1}; the GEMM gives dL/dh_{t-1} = dz_t W_h^T.
While dz_t's rows are in cache each thread also adds them into its own partial db (and,
for layer 0, into its partial V x G table gradient by token).  After the loop each weight
gradient is one product over all N rows.
"""
from __future__ import annotations

import numba
import numpy as np

from .gemm import gemm, gemm_panels, padded, panels, panels_t, pads_b
from .gates import gates_backward, gates_forward
from .jit import JIT, PAR
from .lstm_layer_columns import backward_steps_cols, forward_steps_cols
from .sums import column_sums

# How a layer uses threads: the entry kernels take (prod, rows, units), each None or a
# thread count.  prod: threads for the big products (None: the calling thread); rows: the
# time loop on that many threads split by batch rows; units: split by hidden units; both
# None: the time loop on the calling thread.  Numba prunes an `is None` branch only when the
# argument is None (or a literal): with an int it compiles every branch, so the branches call
# their shared callees with the same argument types (np.int64(0) for a first row, [::1] views).


# ----------------------------------------------------------------------------
# Products: the calling thread or nt numba threads on column blocks
# ----------------------------------------------------------------------------

@numba.njit(**PAR)
def pgemm(A, B, C, trans_a, trans_b, alpha, beta, nt):
    """gemm split over nt column blocks of C, one numba thread and one gemm call each."""
    n = C.shape[1]
    for k in numba.prange(nt):
        j0, j1 = k * n // nt, (k + 1) * n // nt
        Bk = B[j0:j1] if trans_b else B[:, j0:j1]
        gemm(A, Bk, C[:, j0:j1], trans_a, trans_b, alpha, beta)


@numba.njit(**JIT)
def mm(A, B, C, trans_a, trans_b, alpha, beta, prod):
    """C = alpha op(A) op(B) + beta C on the calling thread (prod None) or prod threads.
    The [::1] views have numba's 'A' layout whatever the caller passed, and bool(), float() and
    np.int64() make a literal flag or thread count a plain bool or int, so each dtype compiles
    one pgemm (a parallel function: seconds of compile per signature) and one gemm: numba
    compiles both branches for an int prod (it prunes `is None` only for a None or literal
    argument), and both call gemm with pgemm's argument types."""
    if prod is None:
        gemm(A[::1], B[::1], C[::1], bool(trans_a), bool(trans_b), float(alpha), float(beta))
    else:
        pgemm(A[::1], B[::1], C[::1], bool(trans_a), bool(trans_b), float(alpha), float(beta),
              np.int64(prod))


# ----------------------------------------------------------------------------
# The time loops
# ----------------------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def no_tokens():
    """The tokens argument of a layer without a table (0,0)."""
    return np.empty((0, 0), np.int64)


@numba.njit(inline="always", **JIT)
def no_x(like):
    """The x argument of a time loop whose acts already hold x_t W_x: (0,0,0), like's dtype."""
    return np.empty((0, 0, 0), like.dtype)


@numba.njit(inline="always", **JIT)
def no_panels(like):
    """The Wx argument of a time loop without x: (0,0,0) panels, like's dtype."""
    return np.empty((0, 0, 0), like.dtype)


@numba.njit(inline="always", **JIT)
def no_table(like):
    """The table argument of a layer without one: (0, G), like's dtype (G = like's last axis)."""
    return np.empty((0, like.shape[-1]), like.dtype)


@numba.njit(inline="always", **JIT)
def gather_step(tokens, table, acts, t, r0, r1):
    """acts[t, r] = table[tokens[t, r]] for rows r0..r1-1: layer 0's x_t W_x, read from the
    V x G table by the thread that uses it, just before its step (no-op without a table)."""
    if table.shape[0] > 0:
        for r in range(r0, r1):
            src, dst = table[tokens[t, r]], acts[t, r]
            for j in range(table.shape[1]):
                dst[j] = src[j]


@numba.njit(inline="always", **JIT)
def accumulate_step(tokens, dzs, t, r0, r1, db, dtable):
    """db += dz_t[r] and, with a table (V > 0), dtable[tokens[t, r]] += dz_t[r], for rows
    r0..r1-1 while the rows are in cache.  db (G,), dtable (V,G) are this thread's own
    partial sums (the caller adds the threads' partials): no thread adds into another's."""
    G = dzs.shape[2]
    for r in range(r0, r1):
        dz = dzs[t, r]
        for j in range(G):
            db[j] += dz[j]
        if dtable.shape[0] > 0:
            d = dtable[tokens[t, r]]
            for j in range(G):
                d[j] += dz[j]


@numba.njit(**JIT)
def forward_steps(Whp, b, h0, c0, hs, cs, acts, r0, r1, tokens, table, x, Wxp):
    """The time loop for batch rows r0..r1-1 (rows never interact, so any split of the
    batch is valid).  acts (T,B,G) holds x_t @ W_x on entry (or, with a table (V,G), gets
    table[tokens[t]] at step t, or, with x (T,B,I) not empty, gets x_t @ W_x at step t),
    activated gates on exit; Whp, Wxp the panels of W_h (H,G) and W_x (I,G) (gemm.panels),
    b (G,), h0, c0 (B,H) -> hs, cs (T,B,H)."""
    for t in range(acts.shape[0]):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gather_step(tokens, table, acts, t, r0, r1)                     # x_t W_x of layer 0
        if x.shape[0] > 0:                                              # x_t W_x while acts[t] is in cache
            gemm_panels(x[t, r0:r1], Wxp, acts[t, r0:r1], 1.0, 0.0)
        gemm_panels(h_prev[r0:r1], Whp, acts[t, r0:r1], 1.0, 1.0)     # += h_{t-1} @ W_h
        gates_forward(acts[t], b, c_prev, cs[t], hs[t], r0, r1)


@numba.njit(**PAR)
def forward_steps_par(Whp, b, h0, c0, hs, cs, acts, nt, tokens, table, x, Wxp):
    """forward_steps on nt threads, each running the whole time loop for its own slice of
    the batch: no synchronisation inside the loop."""
    B = h0.shape[0]
    for k in numba.prange(nt):
        forward_steps(Whp, b, h0, c0, hs, cs, acts, k * B // nt, (k + 1) * B // nt, tokens, table, x, Wxp)


@numba.njit(**JIT)
def backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, r0, r1, tokens, db, dtable):
    """The reverse time loop for batch rows r0..r1-1.  dh, dc (B,H) hold dL/dh_T, dL/dc_T on
    entry and dL/dh_0, dL/dc_0 on exit -> dzs (T,B,G) gate gradients, their sum over these
    rows added into db (G,) and, with a table, into dtable (V,G) by token (accumulate_step).
    WhTp: the panels of W_h^T (G,H) (gemm.panels_t)."""
    for t in range(acts.shape[0] - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        gates_backward(dhs[t], dh, dc, acts[t], cs[t], c_prev, dzs[t], r0, r1)
        accumulate_step(tokens, dzs, t, r0, r1, db, dtable)
        gemm_panels(dzs[t, r0:r1], WhTp, dh[r0:r1], 1.0, 0.0)           # dh = dz_t @ W_h^T


@numba.njit(**PAR)
def backward_steps_par(dhs, WhTp, c0, cs, acts, dzs, dh, dc, nt, tokens, dbp, dtp):
    """backward_steps on nt threads, one slice of the batch each; thread k's sums go to
    dbp[k] (G,) and dtp[k] (V,G)."""
    B = dh.shape[0]
    for k in numba.prange(nt):
        backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, k * B // nt, (k + 1) * B // nt, tokens,
                       dbp[k], dtp[k])


# ----------------------------------------------------------------------------
# Whole layers (the entry points of numba_backend)
# ----------------------------------------------------------------------------

@numba.njit(**JIT)
def run_forward_steps(Wh, b, h0, c0, hs, cs, acts, rows, units, tokens, table):
    """The time loop on the calling thread, on `rows` threads split by batch rows, or on
    `units` threads split by hidden units (lstm_layer_columns).  With a table (layer 0) the
    row loops gather their own rows of it; the unit split gathers every row first."""
    if rows is not None:
        forward_steps_par(panels(Wh), b, h0, c0, hs, cs, acts, rows, tokens, table, no_x(acts), no_panels(acts))
    elif units is not None:
        if table.shape[0] > 0:
            T, B = tokens.shape
            gather_rows(tokens.reshape(T * B), table, acts.reshape(T * B, acts.shape[2]))
        forward_steps_cols(Wh, b, h0, c0, hs, cs, acts, units)
    else:
        forward_steps(panels(Wh), b, h0, c0, hs, cs, acts, np.int64(0), h0.shape[0], tokens, table, no_x(acts),
                      no_panels(acts))                                   # r0 typed as the row split's


@numba.njit(**JIT)
def run_backward_steps(dhs, Wh, c0, cs, acts, dzs, dh, dc, rows, units, tokens, db, dtable):
    """The reverse time loop (see run_forward_steps) -> dzs, and db (G,) = the sum of the dz
    rows, dtable (V,G) = the dz rows summed by token (V = 0: no table).  W_h^T is packed
    into panels once (the unit split: each thread its own columns' panels)."""
    db[:] = 0
    dtable[:] = 0
    if rows is not None:
        dbp = np.zeros((rows,) + db.shape, db.dtype)                # (nt,G) per-thread partial sums
        dtp = np.zeros((rows,) + dtable.shape, dtable.dtype)        # (nt,V,G)
        backward_steps_par(dhs, panels_t(Wh), c0, cs, acts, dzs, dh, dc, rows, tokens, dbp, dtp)
        for k in range(rows):
            db += dbp[k]
            dtable += dtp[k]
    elif units is not None:
        backward_steps_cols(dhs, Wh, c0, cs, acts, dzs, dh, dc, units)
        T, B, G = dzs.shape
        column_sums(dzs.reshape(T * B, G), db, np.int64(0), np.int64(T * B))
        if dtable.shape[0] > 0:
            scatter_add_rows(tokens.reshape(T * B), dzs.reshape(T * B, G), dtable)
    else:
        backward_steps(dhs, panels_t(Wh), c0, cs, acts, dzs, dh, dc, np.int64(0), dh.shape[0], tokens, db, dtable)


@numba.njit(**JIT)
def lstm_forward_kernel(x, W, b, h0, c0, hs, cs, acts, prod, rows, units):
    """x (T,B,I), W (H+I,G), b (G,), h0, c0 (B,H) -> hs, cs (T,B,H), acts (T,B,G)."""
    T, B, I = x.shape
    H = h0.shape[1]
    if rows is not None:            # each thread's x_t W_x at its step: still in cache when the step reads it
        forward_steps_par(panels(W[:H]), b, h0, c0, hs, cs, acts, rows, no_tokens(), no_table(acts), x,
                          panels(W[H:]))
        return
    mm(x.reshape(T * B, I), W[H:], acts.reshape(T * B, 4 * H), False, False, 1.0, 0.0, prod)  # x_t W_x, all t
    run_forward_steps(W[:H], b, h0, c0, hs, cs, acts, rows, units, no_tokens(), no_table(acts))


@numba.njit(**JIT)
def embed_lstm_forward_kernel(tokens, Emb, W, b, h0, c0, hs, cs, acts, table, prod, rows, units):
    """Layer 0 with the embedding folded in: x_t @ W_x = (Emb @ W_x)[token], one V x G table
    per call, rows gathered.  tokens (T,B) int64, Emb (V,E), table (V,G) scratch."""
    T, B = tokens.shape
    H = h0.shape[1]
    mm(Emb, W[H:], table, False, False, 1.0, 0.0, prod)             # (V,G) = Emb @ W_x
    run_forward_steps(W[:H], b, h0, c0, hs, cs, acts, rows, units, tokens, table)   # rows gathered per step


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
def recurrent_weight_grads(h0, hs, dz2, dW, prod):
    """dW[:H] = sum_t h_{t-1}^T dz_t as two products over all rows; dz2 (N,G) the dz rows
    (any row stride)."""
    B, H = h0.shape
    N = dz2.shape[0]
    mm(h0, dz2[:B], dW[:H], True, False, 1.0, 0.0, prod)              # h_0^T dz_1
    mm(hs.reshape(N, H)[:N - B], dz2[B:], dW[:H], True, False, 1.0, 1.0, prod)


@numba.njit(**JIT)
def weight_grads(h0, hs, x, dz2, dW, prod):
    """dW (H+I,G): recurrent_weight_grads, then dW[H:] = x^T dz; dz2 (N,G), any row stride."""
    T, B, I = x.shape
    H = h0.shape[1]
    recurrent_weight_grads(h0, hs, dz2, dW, prod)
    mm(x.reshape(T * B, I), dz2, dW[H:], True, False, 1.0, 0.0, prod)       # dW_x = x^T dz  (I,G)


@numba.njit(**JIT)
def lstm_backward_kernel(dhs, x, W, h0, c0, hs, cs, acts, dzs, dh, dc, dx, dW, db, prod, rows, units):
    """BPTT through one layer.  dhs (T,B,H); dh, dc (B,H) in: dhT, dcT, out: dh0, dc0
    -> dx (T,B,I), dW (H+I,G), db (G,); dzs (T,B,G) scratch."""
    T, B, I = x.shape
    H = h0.shape[1]
    run_backward_steps(dhs, W[:H], c0, cs, acts, dzs, dh, dc, rows, units, no_tokens(), db, no_table(dW))
    dz2 = dzs.reshape(T * B, 4 * H)                                 # (N,G)
    if pads_b(min(H, I), dz2.shape[1] * dz2.itemsize):
        weight_grads(h0, hs, x, padded(dz2), dW, prod)    # gemm would copy dz for each product: once here
    else:
        weight_grads(h0, hs, x, dz2[:, :dz2.shape[1]], dW, prod)    # padded's 'A' layout: one compile
    mm(dz2, W[H:], dx.reshape(T * B, I), False, True, 1.0, 0.0, prod)       # dx = dz W_x^T  (N,I)


@numba.njit(**JIT)
def embed_lstm_backward_kernel(dhs, tokens, Emb, W, h0, c0, hs, cs, acts, dzs, dh, dc, dEmb, dW, db, dtable,
                               prod, rows, units):
    """BPTT through layer 0 with the table trick: the dz rows summed by token into dtable (V,G)
    (inside the time loop), then dW_x = Emb^T dtable and dEmb = dtable W_x^T (two small products)."""
    H = h0.shape[1]
    run_backward_steps(dhs, W[:H], c0, cs, acts, dzs, dh, dc, rows, units, tokens, db, dtable)
    T, B, G = dzs.shape
    recurrent_weight_grads(h0, hs, dzs.reshape(T * B, G)[:, :G], dW, prod)      # 'A' as lstm_backward_kernel's
    mm(Emb, dtable, dW[H:], True, False, 1.0, 0.0, prod)            # (E,G)
    mm(dtable, W[H:], dEmb, False, True, 1.0, 0.0, prod)            # (V,E)
