"""The time loops of lstm_layer split by hidden units (columns) instead of by batch rows.

Dimension legend: T time, B batch, H hidden, G = 4H, U = units per thread (H / nt,
rounded up; the last thread's block is padded), nt threads.

Thread k owns hidden units u0..u1-1 for the whole window.  Per step it multiplies the
whole h_{t-1} (all B rows) by its own U columns of each gate - so each thread reads only
its part of W_h and the products keep all B rows (a product runs faster on all rows and fewer
columns: docs/numba.md, "Threads") - then updates its units' cells.  The end of each step's
parallel region is the barrier before step t+1 reads h_t.  The thread's cell state, gate
pre-activations and gradients live in contiguous per-thread buffers (so the gate loops
vectorise) and are copied to and from the (T,B,G) caches each step, O(B*G) next to the
O(B*H*G) product.

Chosen by numba_backend for large per-step products (B*H*4H >= COLUMNS_MIN_MACS) with more
than one thread; results equal the one-thread loops to rounding.
"""
from __future__ import annotations

import numba
import numpy as np

from .gemm import NR, gemm_panels, pack_panels, pack_panels_t, panel_buffer
from .gates import gates_backward, gates_forward
from .jit import JIT, PAR


@numba.njit(inline="always", **JIT)
def block(k, H, nt):
    """-> (u0, u1, U): thread k's units and the padded block width."""
    U = (H + nt - 1) // nt
    u0 = min(k * U, H)
    return u0, min(u0 + U, H), U


@numba.njit(inline="always", **JIT)
def copy_row(dst, src):
    """dst[:] = src[:] for two 1-D slices of C-contiguous rows (this form vectorises; an
    indexed 2-D loop with run-time offsets does not)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@numba.njit(**JIT)
def gather_gates(src, dst, H, u0, n):
    """dst (B,4U)[:, q*U + j] = src (B,G)[:, q*H + u0 + j] for the four gates q, j < n."""
    U = dst.shape[1] // 4
    for r in range(src.shape[0]):
        s, d = src[r], dst[r]
        for q in range(4):
            copy_row(d[q * U:q * U + n], s[q * H + u0:q * H + u0 + n])


@numba.njit(**JIT)
def scatter_gates(src, dst, H, u0, n):
    """The inverse of gather_gates."""
    U = src.shape[1] // 4
    for r in range(src.shape[0]):
        s, d = src[r], dst[r]
        for q in range(4):
            copy_row(d[q * H + u0:q * H + u0 + n], s[q * U:q * U + n])


@numba.njit(**JIT)
def gather_units(src, dst, u0, n):
    """dst (B,U)[:, j] = src (B,H)[:, u0 + j] for j < n."""
    for r in range(src.shape[0]):
        copy_row(dst[r, :n], src[r, u0:u0 + n])


@numba.njit(**JIT)
def scatter_units(src, dst, u0, n):
    """dst (B,H)[:, u0 + j] = src (B,U)[:, j] for j < n."""
    for r in range(src.shape[0]):
        copy_row(dst[r, u0:u0 + n], src[r, :n])


@numba.njit(**JIT)
def forward_setup(k, Wh, b, c0, Wp, Pp, bp, c, nt):
    """Thread k's gate columns of W_h and b side by side (W_h's packed into panels), and its
    units' c_0."""
    H = Wh.shape[0]
    u0, u1, _ = block(k, H, nt)
    gather_gates(Wh, Wp[k], H, u0, u1 - u0)
    pack_panels(Wp[k], Pp[k])
    gather_gates(b.reshape(1, 4 * H), bp[k].reshape(1, bp.shape[1]), H, u0, u1 - u0)
    gather_units(c0, c[k, 0], u0, u1 - u0)


@numba.njit(**JIT)
def forward_unit_step(k, t, h_prev, hs, cs, acts, Pp, bp, z, c, h, nt):
    """Step t for thread k's units: z = x_t W_x + h_{t-1} W_h (its columns), the cell, and
    the results copied into the caches."""
    B, H = h_prev.shape
    u0, u1, _ = block(k, H, nt)
    n = u1 - u0
    gather_gates(acts[t], z[k], H, u0, n)                            # x_t W_x of my units
    gemm_panels(h_prev, Pp[k], z[k], 1.0, 1.0)                      # += h_{t-1} W_h (my columns)
    gates_forward(z[k], bp[k], c[k, t % 2], c[k, 1 - t % 2], h[k], 0, B)
    scatter_gates(z[k], acts[t], H, u0, n)
    scatter_units(c[k, 1 - t % 2], cs[t], u0, n)
    scatter_units(h[k], hs[t], u0, n)


@numba.njit(**JIT)
def forward_buffers(Wh, B, nt):
    """Per-thread buffers of forward_steps_cols (allocated outside the parallel function:
    there numba would turn each np.zeros into a parallel loop of its own)."""
    H = Wh.shape[0]
    U = (H + nt - 1) // nt
    return (np.zeros((nt, H, 4 * U), Wh.dtype),     # Wp: thread k's gate columns side by side (padding 0)
            panel_buffer(nt, (4 * U + NR - 1) // NR, H, Wh),             # Pp: Wp[k]'s panels (gemm.panels)
            np.zeros((nt, 4 * U), Wh.dtype),        # bp: the same for b
            np.zeros((nt, B, 4 * U), Wh.dtype),     # z: pre-activations -> gates of the step
            np.zeros((nt, 2, B, U), Wh.dtype),      # c: c_{t-1} and c_t, alternating
            np.zeros((nt, B, U), Wh.dtype))         # h


@numba.njit(**PAR)
def forward_steps_cols(Wh, b, h0, c0, hs, cs, acts, nt):
    """lstm_layer.forward_steps on nt threads, split by hidden units.  (The prange bodies
    are single calls and the buffers come from a plain function, which keeps numba's parfor
    passes, and so the compile, short.)"""
    T = acts.shape[0]
    Wp, Pp, bp, z, c, h = forward_buffers(Wh, h0.shape[0], nt)
    # np.int64(): one signature, so one compile, of the callee (jit.py)
    for k in numba.prange(nt):
        forward_setup(np.int64(k), Wh, b, c0, Wp, Pp, bp, c, nt)
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        for k in numba.prange(nt):
            forward_unit_step(np.int64(k), t, h_prev, hs, cs, acts, Pp, bp, z, c, h, nt)


@numba.njit(inline="always", **JIT)
def backward_unit_inputs(k, t, dhs, Pt, c0, cs, dzs, dhk, dok, ck, u0, n):
    """Thread k's inputs to reverse step t of its n units from u0: dhk[k] = dz_{t+1} W_h^T on its
    columns (the recurrent part of dL/dh_t; Pt[k] their panels), dok[k] its units of dhs[t], ck[k]
    of c_t and c_{t-1}."""
    if t < dhs.shape[0] - 1:                                        # dh = dz_{t+1} W_h^T, my columns
        gemm_panels(dzs[t + 1], Pt[k], dhk[k][:, :n], 1.0, 0.0)
    gather_units(dhs[t], dok[k], u0, n)
    gather_units(cs[t], ck[k, 0], u0, n)
    gather_units(c0 if t == 0 else cs[t - 1], ck[k, 1], u0, n)


@numba.njit(**JIT)
def backward_unit_step(k, t, dhs, Pt, c0, cs, acts, dzs, dhk, dok, dck, ck, ak, dzk, nt):
    """Reverse step t for thread k's units: dL/dh_t from the whole dz_{t+1} (Pt[k]: the panels
    of its columns of W_h^T (G,H)), then its gate gradients, copied into dzs[t]."""
    T, B, G = acts.shape
    H = G // 4
    u0, u1, _ = block(k, H, nt)
    n = u1 - u0
    backward_unit_inputs(k, t, dhs, Pt, c0, cs, dzs, dhk, dok, ck, u0, n)
    gather_gates(acts[t], ak[k], H, u0, n)
    gates_backward(dok[k], dhk[k], dck[k], ak[k], ck[k, 0], ck[k, 1], dzk[k], 0, B)
    scatter_gates(dzk[k], dzs[t], H, u0, n)


@numba.njit(**JIT)
def backward_buffers(Wh, B, nt):
    """Per-thread buffers of backward_steps_cols (see forward_buffers)."""
    H, G = Wh.shape
    U = (H + nt - 1) // nt
    return (panel_buffer(nt, (U + NR - 1) // NR, G, Wh),           # Pt: panels of my columns of W_h^T
            np.zeros((nt, B, U), Wh.dtype),         # dhk: dL/dh_t of my units
            np.zeros((nt, B, U), Wh.dtype),         # dok: dL/dh_t from the layer above
            np.zeros((nt, B, U), Wh.dtype),         # dck: dL/dc_t, carried
            np.zeros((nt, 2, B, U), Wh.dtype),      # ck: c_t and c_{t-1}
            np.zeros((nt, B, 4 * U), Wh.dtype),     # ak: gates
            np.zeros((nt, B, 4 * U), Wh.dtype))     # dzk: gate gradients


@numba.njit(**JIT)
def backward_setup(k, Wh, dh, dc, Pt, dhk, dck, nt):
    """Thread k's columns of W_h^T packed into panels (rows u0..u1-1 of W_h), its units of
    dL/dh_T and dL/dc_T."""
    u0, u1, _ = block(k, dh.shape[1], nt)
    pack_panels_t(Wh[u0:u1], Pt[k])
    gather_units(dh, dhk[k], u0, u1 - u0)
    gather_units(dc, dck[k], u0, u1 - u0)


@numba.njit(**JIT)
def backward_finish(k, Pt, dzs, dck, dh, dc, nt):
    """dL/dc_0 and dL/dh_0 = dz_0 W_h^T for thread k's units."""
    u0, u1, _ = block(k, dh.shape[1], nt)
    scatter_units(dck[k], dc, u0, u1 - u0)
    gemm_panels(dzs[0], Pt[k], dh[:, u0:u1], 1.0, 0.0)


@numba.njit(**PAR)
def backward_steps_cols(dhs, Wh, c0, cs, acts, dzs, dh, dc, nt):
    """lstm_layer.backward_steps on nt threads, split by hidden units: thread k forms
    dL/dh_t of its units from the whole dz_{t+1} (its columns of W_h^T (G,H), packed from
    Wh (H,G)), then their gate gradients.  dh, dc (B,H): dL/dh_T, dL/dc_T in, dL/dh_0, dL/dc_0 out."""
    T = acts.shape[0]
    Pt, dhk, dok, dck, ck, ak, dzk = backward_buffers(Wh, dh.shape[0], nt)
    for k in numba.prange(nt):
        backward_setup(np.int64(k), Wh, dh, dc, Pt, dhk, dck, nt)
    for t in range(T - 1, -1, -1):
        for k in numba.prange(nt):
            backward_unit_step(np.int64(k), t, dhs, Pt, c0, cs, acts, dzs, dhk, dok, dck, ck, ak, dzk, nt)
    for k in numba.prange(nt):
        backward_finish(np.int64(k), Pt, dzs, dck, dh, dc, nt)
