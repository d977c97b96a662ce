"""Numba kernels for one layer of the peephole or the coupled LSTM over a window: forward and BPTT.

Dimension legend:
    T time steps   B batch   I input size   H hidden size   N = T*B rows
    G gates: 4H (i, f, g, o) for the peephole cell, 3H (f, g, o) for the coupled cell
    V vocabulary   E embedding size (I of layer 0)

The same layout and plan as lstm_layer.py (its docstring says why): W (H+I, G) fused over
[h_{t-1}, x_t]; acts (T,B,G) gets x_t W_x for all t by one product before the loop (layer 0:
rows of the V x G table Emb @ W_x, gathered by each thread just before its step), the
recurrent product h_{t-1} W_h is added into it per step, and the cell's gate loop
(cell_gates.py) activates it in place and writes c_t, h_t.  Backward: the gate loop gives dz_t
and dL/dc_{t-1}, the GEMM dL/dh_{t-1} = dz_t W_h^T; db, the peephole gradients dwc and
(layer 0) the table gradient are summed per thread inside the loop; the weight gradients are
products over all N rows after it.  The time loop runs on the calling thread, on `rows`
threads, each owning a slice of the batch (no barrier inside the loop), or on `units` threads
split by hidden units (cell_layers_columns.py), as lstm_layer.py's (prod, rows, units).

Which cell: the int `cell` (PEEPHOLE or COUPLED), a run-time branch per step, so one compiled
loop serves both; wc (3H,) holds the peepholes [w_ci; w_cf; w_co] flat, (0,) for the coupled cell.
"""
from __future__ import annotations

import numba
import numpy as np

from .cell_gates import (  # noqa: F401  (COUPLED: numba_cells and sample_cells read the codes here)
    COUPLED,
    PEEPHOLE,
    coupled_backward,
    coupled_forward,
    peephole_backward,
    peephole_forward,
)
from .cell_layers_columns import backward_steps_cols, forward_steps_cols
from .gemm import gemm_panels, padded, panels, panels_t, pads_b
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
    weight_grads,
)
from .sums import column_sums


@numba.njit(**JIT)
def forward_steps(cell, Whp, b, wc, h0, c0, hs, cs, acts, r0, r1, tokens, table):
    """The time loop for batch rows r0..r1-1.  acts (T,B,G) holds x_t W_x on entry (or gets
    table[tokens[t]] at step t), activated gates on exit; Whp the panels of W_h (H,G) (gemm.panels),
    b (G,), wc (3H,) or (0,), h0, c0 (B,H) -> hs, cs (T,B,H)."""
    for t in range(acts.shape[0]):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gather_step(tokens, table, acts, t, r0, r1)                         # x_t W_x of layer 0
        gemm_panels(h_prev[r0:r1], Whp, acts[t, r0:r1], 1.0, 1.0)           # += h_{t-1} W_h
        if cell == PEEPHOLE:
            peephole_forward(acts[t], b, wc, c_prev, cs[t], hs[t], r0, r1)
        else:
            coupled_forward(acts[t], b, c_prev, cs[t], hs[t], r0, r1)


@numba.njit(**PAR)
def forward_steps_par(cell, Whp, b, wc, h0, c0, hs, cs, acts, nt, tokens, table):
    """forward_steps on nt threads, each the whole window for its own slice of the batch."""
    B = h0.shape[0]
    for k in numba.prange(nt):
        forward_steps(cell, Whp, b, wc, h0, c0, hs, cs, acts, k * B // nt, (k + 1) * B // nt, tokens, table)


@numba.njit(**JIT)
def backward_steps(cell, dhs, WhTp, wc, c0, cs, acts, dzs, dh, dc, r0, r1, tokens, db, dwc, dtable):
    """The reverse time loop for batch rows r0..r1-1.  dh, dc (B,H) hold dL/dh_T, dL/dc_T on
    entry and dL/dh_0, dL/dc_0 on exit -> dzs (T,B,G); the dz rows summed into db (G,) and, by
    token, into dtable (V,G) (V = 0: none); the peephole gradients into dwc (3H,).
    WhTp: the panels of W_h^T (G,H) (gemm.panels_t)."""
    for t in range(acts.shape[0] - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        if cell == PEEPHOLE:
            peephole_backward(dhs[t], dh, dc, acts[t], wc, cs[t], c_prev, dzs[t], dwc, r0, r1)
        else:
            coupled_backward(dhs[t], dh, dc, acts[t], cs[t], c_prev, dzs[t], r0, r1)
        accumulate_step(tokens, dzs, t, r0, r1, db, dtable)
        gemm_panels(dzs[t, r0:r1], WhTp, dh[r0:r1], 1.0, 0.0)               # dh = dz_t W_h^T


@numba.njit(**PAR)
def backward_steps_par(cell, dhs, WhTp, wc, c0, cs, acts, dzs, dh, dc, nt, tokens, dbp, dwcp, dtp):
    """backward_steps on nt threads; thread k's sums go to dbp[k] (G,), dwcp[k] (3H,), dtp[k] (V,G)."""
    B = dh.shape[0]
    for k in numba.prange(nt):
        backward_steps(cell, dhs, WhTp, wc, c0, cs, acts, dzs, dh, dc, k * B // nt, (k + 1) * B // nt, tokens,
                       dbp[k], dwcp[k], dtp[k])


@numba.njit(**JIT)
def run_forward_steps(cell, Wh, b, wc, h0, c0, hs, cs, acts, rows, units, tokens, table):
    """The time loop on the calling thread, on `rows` threads split by batch rows (W_h packed into
    panels once, gemm.panels), or on `units` threads split by hidden units (which gathers layer 0's
    table rows first)."""
    if rows is not None:
        forward_steps_par(cell, panels(Wh), b, wc, h0, c0, hs, cs, acts, rows, tokens, table)
    elif units is not None:
        if table.shape[0] > 0:
            T, B = tokens.shape
            gather_rows(tokens.reshape(T * B), table, acts.reshape(T * B, acts.shape[2]))
        forward_steps_cols(cell, Wh, b, wc, h0, c0, hs, cs, acts, units)
    else:
        forward_steps(cell, panels(Wh), b, wc, h0, c0, hs, cs, acts, np.int64(0), h0.shape[0], tokens, table)


@numba.njit(**JIT)
def run_backward_steps(cell, dhs, Wh, wc, c0, cs, acts, dzs, dh, dc, rows, units, tokens, db, dwc, dtable):
    """The reverse time loop (see run_forward_steps) -> dzs, db (G,), dwc (3H,) or (0,),
    dtable (V,G) or (0,G); W_h^T packed into panels once."""
    db[:] = 0
    dwc[:] = 0
    dtable[:] = 0
    if rows is not None:
        dbp = np.zeros((rows,) + db.shape, db.dtype)                # (nt,G) per-thread partial sums
        dwcp = np.zeros((rows,) + dwc.shape, dwc.dtype)             # (nt,3H)
        dtp = np.zeros((rows,) + dtable.shape, dtable.dtype)        # (nt,V,G)
        backward_steps_par(cell, dhs, panels_t(Wh), wc, c0, cs, acts, dzs, dh, dc, rows, tokens, dbp, dwcp, dtp)
        for k in range(rows):
            db += dbp[k]
            dwc += dwcp[k]
            dtable += dtp[k]
    elif units is not None:
        backward_steps_cols(cell, dhs, Wh, wc, c0, cs, acts, dzs, dh, dc, dwc, units)
        T, B, G = dzs.shape
        column_sums(dzs.reshape(T * B, G), db, np.int64(0), np.int64(T * B))
        if dtable.shape[0] > 0:
            scatter_add_rows(tokens.reshape(T * B), dzs.reshape(T * B, G), dtable)
    else:
        backward_steps(cell, dhs, panels_t(Wh), wc, c0, cs, acts, dzs, dh, dc, np.int64(0), dh.shape[0], tokens,
                       db, dwc, dtable)


@numba.njit(**JIT)
def cell_forward_kernel(cell, x, W, b, wc, h0, c0, hs, cs, acts, prod, rows, units):
    """x (T,B,I), W (H+I,G), b (G,), wc (3H,) or (0,), h0, c0 (B,H) -> hs, cs (T,B,H), acts (T,B,G)."""
    T, B, I = x.shape
    H = h0.shape[1]
    G = acts.shape[2]
    mm(x.reshape(T * B, I), W[H:], acts.reshape(T * B, G), False, False, 1.0, 0.0, prod)  # x_t W_x, all t
    run_forward_steps(cell, W[:H], b, wc, h0, c0, hs, cs, acts, rows, units, no_tokens(), no_table(acts))


@numba.njit(**JIT)
def embed_cell_forward_kernel(cell, tokens, Emb, W, b, wc, h0, c0, hs, cs, acts, table, prod, rows, units):
    """Layer 0 with the embedding folded in: x_t W_x = (Emb @ W_x)[token].  tokens (T,B) int64,
    Emb (V,E), table (V,G) scratch."""
    H = h0.shape[1]
    mm(Emb, W[H:], table, False, False, 1.0, 0.0, prod)             # (V,G) = Emb @ W_x
    run_forward_steps(cell, W[:H], b, wc, h0, c0, hs, cs, acts, rows, units, tokens, table)


@numba.njit(**JIT)
def cell_backward_kernel(cell, dhs, x, W, wc, h0, c0, hs, cs, acts, dzs, dh, dc, dx, dW, db, dwc, prod, rows,
                         units):
    """BPTT through one layer.  dhs (T,B,H); dh, dc (B,H) in: dhT, dcT, out: dh0, dc0
    -> dx (T,B,I), dW (H+I,G), db (G,), dwc (3H,) or (0,); dzs (T,B,G) scratch."""
    T, B, I = x.shape
    H = h0.shape[1]
    G = dzs.shape[2]
    run_backward_steps(cell, dhs, W[:H], wc, c0, cs, acts, dzs, dh, dc, rows, units, no_tokens(), db, dwc,
                       no_table(dW))
    dz2 = dzs.reshape(T * B, G)                                     # (N,G)
    if pads_b(min(H, I), dz2.shape[1] * dz2.itemsize):
        weight_grads(h0, hs, x, padded(dz2), dW, prod)    # gemm would copy dz for each product: once here
    else:
        weight_grads(h0, hs, x, dz2, dW, prod)
    mm(dz2, W[H:], dx.reshape(T * B, I), False, True, 1.0, 0.0, prod)       # dx = dz W_x^T  (N,I)


@numba.njit(**JIT)
def embed_cell_backward_kernel(cell, dhs, tokens, Emb, W, wc, h0, c0, hs, cs, acts, dzs, dh, dc, dEmb, dW, db, dwc,
                               dtable, prod, rows, units):
    """BPTT through layer 0: the dz rows summed by token into dtable (V,G) inside the time loop,
    then dW_x = Emb^T dtable and dEmb = dtable W_x^T."""
    H = h0.shape[1]
    run_backward_steps(cell, dhs, W[:H], wc, c0, cs, acts, dzs, dh, dc, rows, units, tokens, db, dwc, dtable)
    T, B, G = dzs.shape
    recurrent_weight_grads(h0, hs, dzs.reshape(T * B, G), dW, prod)
    mm(Emb, dtable, dW[H:], True, False, 1.0, 0.0, prod)            # (E,G)
    mm(dtable, W[H:], dEmb, False, True, 1.0, 0.0, prod)            # (V,E)
