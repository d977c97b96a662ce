"""The time loops of cell_layers (peephole, coupled) split by hidden units (columns) instead of by batch rows.

Dimension legend: T time, B batch, H hidden, G gates: 4H (peephole: i, f, g, o), 3H (coupled: f, g, o),
q = G / H gate blocks, U = units per thread (H / nt, rounded up; the last thread's block is padded),
nt threads.

lstm_layer_columns.py's plan (its docstring says why) for the LSTM's variants: thread k owns hidden
units u0..u1-1 for the whole window; per step it multiplies the whole h_{t-1} (all B rows) by its own
U columns of each gate of W_h into its (B,qU) buffer, runs the cell's gate loop (cell_gates.py) on its
units and copies the results into the caches.  The end of each step's parallel region is the barrier
before step t+1 reads h_t.  The peepholes are per unit, so thread k reads and sums only its own
w_ci, w_cf, w_co (wc flat (3H,), a (3U,) copy per thread); db and the table gradient are summed
after the loop.  The gathers and scatters of the gate blocks are lstm_layer_columns' (four blocks)
and gru_layer_columns' (three); the int `cell` (PEEPHOLE or COUPLED) picks them and the gate loop.
"""
from __future__ import annotations

import numba
import numpy as np

from .cell_gates import PEEPHOLE, coupled_backward, coupled_forward, peephole_backward, peephole_forward
from .gemm import NR, gemm_panels, pack_panels, pack_panels_t, panel_buffer
from .gru_layer_columns import gather_gates3, scatter_gates3
from .jit import JIT, PAR
from .lstm_layer_columns import (
    backward_unit_inputs,
    block,
    gather_gates,
    gather_units,
    scatter_gates,
    scatter_units,
)


@numba.njit(inline="always", **JIT)
def gather_cell_gates(cell, src, dst, H, u0, n):
    """dst (B,qU)[:, p*U + j] = src (B,G)[:, p*H + u0 + j] for the cell's q gate blocks p, j < n."""
    if cell == PEEPHOLE:
        gather_gates(src, dst, H, u0, n)
    else:
        gather_gates3(src, dst, H, u0, n)


@numba.njit(inline="always", **JIT)
def scatter_cell_gates(cell, src, dst, H, u0, n):
    """The inverse of gather_cell_gates."""
    if cell == PEEPHOLE:
        scatter_gates(src, dst, H, u0, n)
    else:
        scatter_gates3(src, dst, H, u0, n)


@numba.njit(**JIT)
def forward_buffers(Wh, B, nt):
    """Per-thread buffers of forward_steps_cols (allocated outside the parallel function)."""
    H, G = Wh.shape
    U = (H + nt - 1) // nt
    Q = G // H * U                                                  # qU gate columns of a block
    return (np.zeros((nt, H, Q), Wh.dtype),         # Wp: thread k's gate columns of W_h side by side (padding 0)
            panel_buffer(nt, (Q + NR - 1) // NR, H, Wh),                 # Pp: Wp[k]'s panels (gemm.panels)
            np.zeros((nt, Q), Wh.dtype),            # bp: the same for b
            np.zeros((nt, 3 * U), Wh.dtype),        # wp: the peepholes w_ci, w_cf, w_co of my units
            np.zeros((nt, B, Q), Wh.dtype),         # z: pre-activations -> gates of the step
            np.zeros((nt, 2, B, U), Wh.dtype),      # c: c_{t-1} and c_t, alternating
            np.zeros((nt, B, U), Wh.dtype))         # h


@numba.njit(**JIT)
def forward_setup(cell, k, Wh, b, wc, c0, Wp, Pp, bp, wp, c, nt):
    """Thread k's gate columns of W_h and b side by side (W_h's packed into panels), its peepholes
    and its units' c_0."""
    H = Wh.shape[0]
    u0, u1, _ = block(k, H, nt)
    n = u1 - u0
    gather_cell_gates(cell, Wh, Wp[k], H, u0, n)
    pack_panels(Wp[k], Pp[k])
    gather_cell_gates(cell, b.reshape(1, b.shape[0]), bp[k].reshape(1, bp.shape[1]), H, u0, n)
    if cell == PEEPHOLE:
        gather_gates3(wc.reshape(1, 3 * H), wp[k].reshape(1, wp.shape[1]), H, u0, n)
    gather_units(c0, c[k, 0], u0, n)


@numba.njit(**JIT)
def forward_unit_step(cell, k, t, h_prev, hs, cs, acts, Pp, bp, wp, z, c, h, nt):
    """Step t for thread k's units: z = x_t W_x + h_{t-1} W_h (its columns), the cell, and the
    results copied into the caches."""
    B, H = h_prev.shape
    u0, u1, _ = block(k, H, nt)
    n = u1 - u0
    c_prev, c_t = c[k, t % 2], c[k, 1 - t % 2]
    gather_cell_gates(cell, acts[t], z[k], H, u0, n)                 # x_t W_x of my units
    gemm_panels(h_prev, Pp[k], z[k], 1.0, 1.0)                      # += h_{t-1} W_h (my columns)
    if cell == PEEPHOLE:
        peephole_forward(z[k], bp[k], wp[k], c_prev, c_t, h[k], 0, B)
    else:
        coupled_forward(z[k], bp[k], c_prev, c_t, h[k], 0, B)
    scatter_cell_gates(cell, z[k], acts[t], H, u0, n)
    scatter_units(c_t, cs[t], u0, n)
    scatter_units(h[k], hs[t], u0, n)


@numba.njit(**PAR)
def forward_steps_cols(cell, Wh, b, wc, h0, c0, hs, cs, acts, nt):
    """cell_layers.forward_steps on nt threads, split by hidden units.  acts (T,B,G) holds x_t W_x
    on entry (layer 0: gathered before), activated gates on exit -> hs, cs (T,B,H)."""
    T = acts.shape[0]
    Wp, Pp, bp, wp, z, c, h = forward_buffers(Wh, h0.shape[0], nt)
    # np.int64(): one signature, so one compile, of the callee (jit.py)
    for k in numba.prange(nt):
        forward_setup(cell, np.int64(k), Wh, b, wc, c0, Wp, Pp, bp, wp, c, nt)
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        for k in numba.prange(nt):
            forward_unit_step(cell, np.int64(k), t, h_prev, hs, cs, acts, Pp, bp, wp, z, c, h, nt)


@numba.njit(**JIT)
def backward_buffers(Wh, B, nt):
    """Per-thread buffers of backward_steps_cols (see forward_buffers)."""
    H, G = Wh.shape
    U = (H + nt - 1) // nt
    Q = G // H * U
    return (panel_buffer(nt, (U + NR - 1) // NR, G, Wh),           # Pt: panels of my columns of W_h^T
            np.zeros((nt, B, U), Wh.dtype),         # dhk: dL/dh_t of my units
            np.zeros((nt, B, U), Wh.dtype),         # dok: dL/dh_t from the layer above
            np.zeros((nt, B, U), Wh.dtype),         # dck: dL/dc_t, carried
            np.zeros((nt, 2, B, U), Wh.dtype),      # ck: c_t and c_{t-1}
            np.zeros((nt, B, Q), Wh.dtype),         # ak: gates
            np.zeros((nt, B, Q), Wh.dtype),         # dzk: gate gradients
            np.zeros((nt, 3 * U), Wh.dtype),        # wp: my peepholes
            np.zeros((nt, 3 * U), Wh.dtype))        # dwk: their gradients, summed over the window


@numba.njit(**JIT)
def backward_setup(cell, k, Wh, wc, dh, dc, Pt, dhk, dck, wp, nt):
    """Thread k's columns of W_h^T packed into panels (rows u0..u1-1 of W_h), its units of
    dL/dh_T and dL/dc_T, and its peepholes."""
    H = dh.shape[1]
    u0, u1, _ = block(k, H, nt)
    pack_panels_t(Wh[u0:u1], Pt[k])
    gather_units(dh, dhk[k], u0, u1 - u0)
    gather_units(dc, dck[k], u0, u1 - u0)
    if cell == PEEPHOLE:
        gather_gates3(wc.reshape(1, 3 * H), wp[k].reshape(1, wp.shape[1]), H, u0, u1 - u0)


@numba.njit(**JIT)
def backward_unit_step(cell, k, t, dhs, Pt, c0, cs, acts, dzs, dhk, dok, dck, ck, ak, dzk, wp, dwk, nt):
    """Reverse step t for thread k's units: dL/dh_t from the whole dz_{t+1} (Pt[k]: the panels of
    its columns of W_h^T (G,H)), then its gate gradients, copied into dzs[t]; its peephole gradients
    summed."""
    T, B, _ = acts.shape
    H = cs.shape[2]
    u0, u1, _ = block(k, H, nt)
    n = u1 - u0
    backward_unit_inputs(k, t, dhs, Pt, c0, cs, dzs, dhk, dok, ck, u0, n)
    gather_cell_gates(cell, acts[t], ak[k], H, u0, n)
    if cell == PEEPHOLE:
        peephole_backward(dok[k], dhk[k], dck[k], ak[k], wp[k], ck[k, 0], ck[k, 1], dzk[k], dwk[k], 0, B)
    else:
        coupled_backward(dok[k], dhk[k], dck[k], ak[k], ck[k, 0], ck[k, 1], dzk[k], 0, B)
    scatter_cell_gates(cell, dzk[k], dzs[t], H, u0, n)


@numba.njit(**JIT)
def backward_finish(cell, k, Pt, dzs, dck, dwk, dh, dc, dwc, nt):
    """dL/dc_0, dL/dh_0 = dz_0 W_h^T and the peephole gradients for thread k's units."""
    H = dh.shape[1]
    u0, u1, _ = block(k, H, nt)
    scatter_units(dck[k], dc, u0, u1 - u0)
    gemm_panels(dzs[0], Pt[k], dh[:, u0:u1], 1.0, 0.0)
    if cell == PEEPHOLE:
        scatter_gates3(dwk[k].reshape(1, dwk.shape[1]), dwc.reshape(1, 3 * H), H, u0, u1 - u0)


@numba.njit(**PAR)
def backward_steps_cols(cell, dhs, Wh, wc, c0, cs, acts, dzs, dh, dc, dwc, nt):
    """cell_layers.backward_steps on nt threads, split by hidden units.  Wh (H,G) = W_h (each thread
    packs its columns of W_h^T); dh, dc (B,H): dL/dh_T, dL/dc_T in, dL/dh_0, dL/dc_0 out -> dzs
    (T,B,G), dwc (3H,) (peephole)."""
    T = acts.shape[0]
    Pt, dhk, dok, dck, ck, ak, dzk, wp, dwk = backward_buffers(Wh, dh.shape[0], nt)
    for k in numba.prange(nt):
        backward_setup(cell, np.int64(k), Wh, wc, dh, dc, Pt, dhk, dck, wp, nt)
    for t in range(T - 1, -1, -1):
        for k in numba.prange(nt):
            backward_unit_step(cell, np.int64(k), t, dhs, Pt, c0, cs, acts, dzs, dhk, dok, dck, ck, ak, dzk, wp, dwk, nt)
    for k in numba.prange(nt):
        backward_finish(cell, np.int64(k), Pt, dzs, dck, dwk, dh, dc, dwc, nt)
