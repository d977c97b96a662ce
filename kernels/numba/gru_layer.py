"""Numba kernels for one GRU layer (nn.GRU's equations) over a window: forward and BPTT.

Dimension legend:
    T time steps   B batch   I input size   H hidden size   G = 3H gates (r, z, n)
    N = T*B rows   V vocabulary   E embedding size (I of layer 0)

W (H+I, G) fused as in lstm_layer.py: rows 0..H-1 are W_h{r,z,n}, rows H.. are W_x{r,z,n};
biases bx (G,) (nn.GRU's bias_ih) and bh (G,) (bias_hh).  The GRU has no cell state.

Forward: acts (T,B,G) gets x_t W_x for all t by one product before the loop (layer 0: rows of
the V x G table Emb @ W_x, gathered per step); per step the GEMM writes h_{t-1} W_h into a
(B,G) scratch, and gru_forward activates r, z, n in place in acts[t], keeps
hn[t] = h_{t-1} W_hn + b_hn (which n's reset gate multiplies, needed by BPTT) and writes h_t.
The n gate keeps the x and h sides apart, so the h-side product cannot accumulate into acts.

Backward per step (in reverse): gru_backward gives the x-side pre-activation gradients dzx_t,
the h-side ones dzh_t (equal but for the n block) and z dL/dh_t; the GEMM adds
dzh_t W_h^T to it, giving dL/dh_{t-1}.  dbx, dbh and (layer 0) the table gradient are summed
per thread inside the loop; then dW_h = sum_t h_{t-1}^T dzh_t, dW_x = x^T dzx and
dx = dzx W_x^T are products over all N rows.  Threads: as lstm_layer.py, (prod, rows, units);
the split by hidden units is gru_layer_columns.py.
"""
from __future__ import annotations

import numba
import numpy as np

from .cell_gates import gru_backward, gru_forward
from .gemm import gemm_panels, panels, panels_t
from .gru_layer_columns import backward_steps_cols, forward_steps_cols
from .jit import JIT, PAR
from .lstm_layer import (
    accumulate_step,
    gather_rows,
    gather_step,
    mm,
    no_table,
    no_tokens,
    recurrent_weight_grads,
    scatter_add_rows,
)
from .sums import column_sums


@numba.njit(**JIT)
def forward_steps(Whp, bx, bh, h0, hs, acts, hn, ah, r0, r1, tokens, table):
    """The time loop for batch rows r0..r1-1.  acts (T,B,G) holds x_t W_x on entry (or gets
    table[tokens[t]] at step t), activated r, z, n on exit; Whp the panels of W_h (H,G)
    (gemm.panels), bx, bh (G,), h0 (B,H) -> hs, hn (T,B,H); ah (B,G) scratch."""
    for t in range(acts.shape[0]):
        h_prev = h0 if t == 0 else hs[t - 1]
        gather_step(tokens, table, acts, t, r0, r1)                         # x_t W_x of layer 0
        gemm_panels(h_prev[r0:r1], Whp, ah[r0:r1], 1.0, 0.0)               # h_{t-1} W_h
        gru_forward(acts[t], ah, bx, bh, h_prev, hn[t], hs[t], r0, r1)


@numba.njit(**PAR)
def forward_steps_par(Whp, bx, bh, h0, hs, acts, hn, ah, nt, tokens, table):
    """forward_steps on nt threads, each the whole window for its own slice of the batch."""
    B = h0.shape[0]
    for k in numba.prange(nt):
        forward_steps(Whp, bx, bh, h0, hs, acts, hn, ah, k * B // nt, (k + 1) * B // nt, tokens, table)


@numba.njit(**JIT)
def backward_steps(dhs, WhTp, h0, hs, acts, hn, dzx, dzh, dh, r0, r1, tokens, dbx, dbh, dtable):
    """The reverse time loop for batch rows r0..r1-1.  dh (B,H) holds dL/dh_T on entry, dL/dh_0
    on exit -> dzx, dzh (T,B,G); their rows summed into dbx, dbh (G,), dzx's by token into
    dtable (V,G) (V = 0: none).  WhTp: the panels of W_h^T (G,H) (gemm.panels_t)."""
    none = no_table(dbh)                                                    # dbh has no table
    for t in range(acts.shape[0] - 1, -1, -1):
        h_prev = h0 if t == 0 else hs[t - 1]
        gru_backward(dhs[t], dh, acts[t], hn[t], h_prev, dzx[t], dzh[t], r0, r1)
        accumulate_step(tokens, dzx, t, r0, r1, dbx, dtable)
        accumulate_step(tokens, dzh, t, r0, r1, dbh, none)
        gemm_panels(dzh[t, r0:r1], WhTp, dh[r0:r1], 1.0, 1.0)               # dh = z dh + dzh_t W_h^T


@numba.njit(**PAR)
def backward_steps_par(dhs, WhTp, h0, hs, acts, hn, dzx, dzh, dh, nt, tokens, dbxp, dbhp, dtp):
    """backward_steps on nt threads; thread k's sums go to dbxp[k], dbhp[k] (G,), dtp[k] (V,G)."""
    B = dh.shape[0]
    for k in numba.prange(nt):
        backward_steps(dhs, WhTp, h0, hs, acts, hn, dzx, dzh, dh, k * B // nt, (k + 1) * B // nt, tokens,
                       dbxp[k], dbhp[k], dtp[k])


@numba.njit(**JIT)
def run_forward_steps(Wh, bx, bh, h0, hs, acts, hn, rows, units, tokens, table):
    """The time loop on the calling thread, on `rows` threads split by batch rows, or on `units`
    threads split by hidden units (which gathers layer 0's table rows first)."""
    ah = np.empty((h0.shape[0], acts.shape[2]), acts.dtype)                # (B,G) h_{t-1} W_h
    if rows is not None:
        forward_steps_par(panels(Wh), bx, bh, h0, hs, acts, hn, ah, rows, tokens, table)
    elif units is not None:
        if table.shape[0] > 0:
            T, B = tokens.shape
            gather_rows(tokens.reshape(T * B), table, acts.reshape(T * B, acts.shape[2]))
        forward_steps_cols(Wh, bx, bh, h0, hs, acts, hn, units)
    else:
        forward_steps(panels(Wh), bx, bh, h0, hs, acts, hn, ah, np.int64(0), h0.shape[0], tokens, table)


@numba.njit(**JIT)
def run_backward_steps(dhs, Wh, h0, hs, acts, hn, dzx, dzh, dh, rows, units, tokens, dbx, dbh, dtable):
    """The reverse time loop (see run_forward_steps) -> dzx, dzh, dbx, dbh (G,), dtable (V,G)."""
    dbx[:] = 0
    dbh[:] = 0
    dtable[:] = 0
    if rows is not None:
        dbxp = np.zeros((rows,) + dbx.shape, dbx.dtype)             # (nt,G) per-thread partial sums
        dbhp = np.zeros((rows,) + dbh.shape, dbh.dtype)             # (nt,G)
        dtp = np.zeros((rows,) + dtable.shape, dtable.dtype)        # (nt,V,G)
        backward_steps_par(dhs, panels_t(Wh), h0, hs, acts, hn, dzx, dzh, dh, rows, tokens, dbxp, dbhp, dtp)
        for k in range(rows):
            dbx += dbxp[k]
            dbh += dbhp[k]
            dtable += dtp[k]
    elif units is not None:
        backward_steps_cols(dhs, Wh, h0, hs, acts, hn, dzx, dzh, dh, units)
        T, B, G = dzx.shape
        column_sums(dzx.reshape(T * B, G), dbx, np.int64(0), np.int64(T * B))
        column_sums(dzh.reshape(T * B, G), dbh, np.int64(0), np.int64(T * B))
        if dtable.shape[0] > 0:
            scatter_add_rows(tokens.reshape(T * B), dzx.reshape(T * B, G), dtable)
    else:
        backward_steps(dhs, panels_t(Wh), h0, hs, acts, hn, dzx, dzh, dh, np.int64(0), dh.shape[0], tokens, dbx, dbh,
                       dtable)


@numba.njit(**JIT)
def gru_forward_kernel(x, W, bx, bh, h0, hs, acts, hn, prod, rows, units):
    """x (T,B,I), W (H+I,G), bx, bh (G,), h0 (B,H) -> hs, hn (T,B,H), acts (T,B,G)."""
    T, B, I = x.shape
    H = h0.shape[1]
    mm(x.reshape(T * B, I), W[H:], acts.reshape(T * B, 3 * H), False, False, 1.0, 0.0, prod)  # x_t W_x, all t
    run_forward_steps(W[:H], bx, bh, h0, hs, acts, hn, rows, units, no_tokens(), no_table(acts))


@numba.njit(**JIT)
def embed_gru_forward_kernel(tokens, Emb, W, bx, bh, h0, hs, acts, hn, table, prod, rows, units):
    """Layer 0 with the embedding folded in: x_t W_x = (Emb @ W_x)[token].  tokens (T,B) int64,
    Emb (V,E), table (V,G) scratch."""
    H = h0.shape[1]
    mm(Emb, W[H:], table, False, False, 1.0, 0.0, prod)             # (V,G) = Emb @ W_x
    run_forward_steps(W[:H], bx, bh, h0, hs, acts, hn, rows, units, tokens, table)


@numba.njit(**JIT)
def gru_backward_kernel(dhs, x, W, h0, hs, acts, hn, dzx, dzh, dh, dx, dW, dbx, dbh, prod, rows, units):
    """BPTT through one layer.  dhs (T,B,H); dh (B,H) in: dhT, out: dh0
    -> dx (T,B,I), dW (H+I,G), dbx, dbh (G,); dzx, dzh (T,B,G) scratch."""
    T, B, I = x.shape
    H = h0.shape[1]
    run_backward_steps(dhs, W[:H], h0, hs, acts, hn, dzx, dzh, dh, rows, units, no_tokens(), dbx, dbh,
                       no_table(dW))
    dzx2, dzh2 = dzx.reshape(T * B, 3 * H), dzh.reshape(T * B, 3 * H)      # (N,G)
    recurrent_weight_grads(h0, hs, dzh2, dW, prod)                          # dW_h = sum_t h_{t-1}^T dzh_t
    mm(x.reshape(T * B, I), dzx2, dW[H:], True, False, 1.0, 0.0, prod)      # dW_x = x^T dzx  (I,G)
    mm(dzx2, W[H:], dx.reshape(T * B, I), False, True, 1.0, 0.0, prod)      # dx = dzx W_x^T  (N,I)


@numba.njit(**JIT)
def embed_gru_backward_kernel(dhs, tokens, Emb, W, h0, hs, acts, hn, dzx, dzh, dh, dEmb, dW, dbx, dbh, dtable,
                              prod, rows, units):
    """BPTT through layer 0: dzx rows summed by token into dtable (V,G) inside the time loop,
    then dW_x = Emb^T dtable and dEmb = dtable W_x^T."""
    H = h0.shape[1]
    run_backward_steps(dhs, W[:H], h0, hs, acts, hn, dzx, dzh, dh, rows, units, tokens, dbx, dbh, dtable)
    T, B, G = dzh.shape
    recurrent_weight_grads(h0, hs, dzh.reshape(T * B, G), dW, prod)
    mm(Emb, dtable, dW[H:], True, False, 1.0, 0.0, prod)            # (E,G)
    mm(dtable, W[H:], dEmb, False, True, 1.0, 0.0, prod)            # (V,E)
