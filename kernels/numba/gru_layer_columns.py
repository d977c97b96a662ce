"""The time loops of gru_layer split by hidden units (columns) instead of by batch rows.

Dimension legend: T time, B batch, H hidden, G = 3H gates (r, z, n), U = units per thread
(H / nt, rounded up; the last thread's block is padded), nt threads.

lstm_layer_columns.py's plan for the GRU (its docstring says why): thread k owns hidden units
u0..u1-1 for the whole window; per step it multiplies the whole h_{t-1} (all B rows) by its own
U columns of each gate of W_h into its (B,3U) buffer, gathers its units' x-side sums, applies
gru_forward to its units and copies the results into the caches.  The end of each step's
parallel region is the barrier before step t+1 reads h_t.  Backward: thread k adds
dzh_{t+1} W_h^T for its units (its columns of W_h^T) to its carried z dL/dh, then runs
gru_backward on its units.  The bias and table gradients are summed after the loop.
"""
from __future__ import annotations

import numba
import numpy as np

from .cell_gates import gru_backward, gru_forward
from .gemm import NR, gemm_panels, pack_panels, pack_panels_t, panel_buffer
from .jit import JIT, PAR
from .lstm_layer_columns import block, copy_row, gather_units, scatter_units


@numba.njit(**JIT)
def gather_gates3(src, dst, H, u0, n):
    """dst (B,3U)[:, q*U + j] = src (B,3H)[:, q*H + u0 + j] for the three gates q, j < n."""
    U = dst.shape[1] // 3
    for r in range(src.shape[0]):
        s, d = src[r], dst[r]
        for q in range(3):
            copy_row(d[q * U:q * U + n], s[q * H + u0:q * H + u0 + n])


@numba.njit(**JIT)
def scatter_gates3(src, dst, H, u0, n):
    """The inverse of gather_gates3."""
    U = src.shape[1] // 3
    for r in range(src.shape[0]):
        s, d = src[r], dst[r]
        for q in range(3):
            copy_row(d[q * H + u0:q * H + u0 + n], s[q * U:q * U + n])


@numba.njit(**JIT)
def forward_buffers(Wh, B, nt):
    """Per-thread buffers of forward_steps_cols (allocated outside the parallel function)."""
    H = Wh.shape[0]
    U = (H + nt - 1) // nt
    return (np.zeros((nt, H, 3 * U), Wh.dtype),     # Wp: thread k's gate columns of W_h side by side (padding 0)
            panel_buffer(nt, (3 * U + NR - 1) // NR, H, Wh),             # Pp: Wp[k]'s panels (gemm.panels)
            np.zeros((nt, 2, 3 * U), Wh.dtype),     # bp: the same for bx, bh
            np.zeros((nt, B, 3 * U), Wh.dtype),     # ax: x-side sums -> activated gates
            np.zeros((nt, B, 3 * U), Wh.dtype),     # ah: h_{t-1} W_h of my columns
            np.zeros((nt, 3, B, U), Wh.dtype))      # hk: h_{t-1}, h_t, hn of my units


@numba.njit(**JIT)
def forward_setup(k, Wh, bx, bh, Wp, Pp, bp, nt):
    """Thread k's gate columns of W_h (packed into panels), bx and bh side by side."""
    H = Wh.shape[0]
    u0, u1, _ = block(k, H, nt)
    gather_gates3(Wh, Wp[k], H, u0, u1 - u0)
    pack_panels(Wp[k], Pp[k])
    gather_gates3(bx.reshape(1, 3 * H), bp[k, 0:1], H, u0, u1 - u0)
    gather_gates3(bh.reshape(1, 3 * H), bp[k, 1:2], H, u0, u1 - u0)


@numba.njit(**JIT)
def forward_unit_step(k, t, h_prev, hs, acts, hn, Pp, bp, ax, ah, hk, nt):
    """Step t for thread k's units: its sums, the GRU update, the results copied into the caches."""
    B, H = h_prev.shape
    u0, u1, _ = block(k, H, nt)
    n = u1 - u0
    gather_gates3(acts[t], ax[k], H, u0, n)                          # x_t W_x of my units
    gemm_panels(h_prev, Pp[k], ah[k], 1.0, 0.0)                     # h_{t-1} W_h (my columns)
    gather_units(h_prev, hk[k, 0], u0, n)
    gru_forward(ax[k], ah[k], bp[k, 0], bp[k, 1], hk[k, 0], hk[k, 2], hk[k, 1], 0, B)
    scatter_gates3(ax[k], acts[t], H, u0, n)
    scatter_units(hk[k, 2], hn[t], u0, n)
    scatter_units(hk[k, 1], hs[t], u0, n)


@numba.njit(**PAR)
def forward_steps_cols(Wh, bx, bh, h0, hs, acts, hn, nt):
    """gru_layer.forward_steps on nt threads, split by hidden units.  acts (T,B,G) holds x_t W_x
    on entry (layer 0: gathered before), activated gates on exit -> hs, hn (T,B,H)."""
    T = acts.shape[0]
    Wp, Pp, bp, ax, ah, hk = forward_buffers(Wh, h0.shape[0], nt)
    # np.int64(): one signature, so one compile, of the callee (jit.py)
    for k in numba.prange(nt):
        forward_setup(np.int64(k), Wh, bx, bh, Wp, Pp, bp, nt)
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        for k in numba.prange(nt):
            forward_unit_step(np.int64(k), t, h_prev, hs, acts, hn, Pp, bp, ax, ah, hk, nt)


@numba.njit(**JIT)
def backward_buffers(Wh, B, nt):
    """Per-thread buffers of backward_steps_cols (see forward_buffers)."""
    H, G = Wh.shape
    U = (H + nt - 1) // nt
    return (panel_buffer(nt, (U + NR - 1) // NR, G, Wh),           # Pt: panels of my columns of W_h^T
            np.zeros((nt, 4, B, U), Wh.dtype),      # uk: dL/dh carried, dL/dh from above, hn, h_{t-1}
            np.zeros((nt, 3, B, 3 * U), Wh.dtype))  # gk: gates, dzx, dzh of my units


@numba.njit(**JIT)
def backward_setup(k, Wh, dh, Pt, uk, nt):
    """Thread k's columns of W_h^T packed into panels (rows u0..u1-1 of W_h), its units of dL/dh_T."""
    u0, u1, _ = block(k, dh.shape[1], nt)
    pack_panels_t(Wh[u0:u1], Pt[k])
    gather_units(dh, uk[k, 0], u0, u1 - u0)


@numba.njit(**JIT)
def backward_unit_step(k, t, dhs, Pt, h0, hs, acts, hn, dzx, dzh, uk, gk, nt):
    """Reverse step t for thread k's units: dL/dh_t = z dL/dh_{t+1} + dzh_{t+1} W_h^T (Pt[k]: the
    panels of its columns of W_h^T (G,H)), then its gate gradients, copied into dzx[t], dzh[t]."""
    T, B, G = acts.shape
    H = G // 3
    u0, u1, _ = block(k, H, nt)
    n = u1 - u0
    if t < T - 1:
        gemm_panels(dzh[t + 1], Pt[k], uk[k, 0][:, :n], 1.0, 1.0)
    gather_units(dhs[t], uk[k, 1], u0, n)
    gather_units(hn[t], uk[k, 2], u0, n)
    gather_units(h0 if t == 0 else hs[t - 1], uk[k, 3], u0, n)
    gather_gates3(acts[t], gk[k, 0], H, u0, n)
    gru_backward(uk[k, 1], uk[k, 0], gk[k, 0], uk[k, 2], uk[k, 3], gk[k, 1], gk[k, 2], 0, B)
    scatter_gates3(gk[k, 1], dzx[t], H, u0, n)
    scatter_gates3(gk[k, 2], dzh[t], H, u0, n)


@numba.njit(**JIT)
def backward_finish(k, Pt, dzh, uk, dh, nt):
    """dL/dh_0 = z dL/dh_1 + dzh_0 W_h^T for thread k's units."""
    u0, u1, _ = block(k, dh.shape[1], nt)
    scatter_units(uk[k, 0], dh, u0, u1 - u0)
    gemm_panels(dzh[0], Pt[k], dh[:, u0:u1], 1.0, 1.0)


@numba.njit(**PAR)
def backward_steps_cols(dhs, Wh, h0, hs, acts, hn, dzx, dzh, dh, nt):
    """gru_layer.backward_steps on nt threads, split by hidden units.  Wh (H,G) = W_h (each thread
    packs its columns of W_h^T); dh (B,H): dL/dh_T in, dL/dh_0 out -> dzx, dzh (T,B,G)."""
    T = acts.shape[0]
    Pt, uk, gk = backward_buffers(Wh, dh.shape[0], nt)
    for k in numba.prange(nt):
        backward_setup(np.int64(k), Wh, dh, Pt, uk, nt)
    for t in range(T - 1, -1, -1):
        for k in numba.prange(nt):
            backward_unit_step(np.int64(k), t, dhs, Pt, h0, hs, acts, hn, dzx, dzh, uk, gk, nt)
    for k in numba.prange(nt):
        backward_finish(np.int64(k), Pt, dzh, uk, dh, nt)
