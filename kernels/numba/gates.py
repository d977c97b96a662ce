"""The LSTM cell's gate math for one time step, forward and backward (Numba, inlined).

Dimension legend: B batch, H hidden, G = 4H gates (i, f, g, o).
Used by the time loops in lstm_layer.py (split by batch rows) and lstm_layer_columns.py
(split by hidden units).
"""
from __future__ import annotations

import numba

from .fastmath import fsigmoid, ftanh, one_minus
from .jit import JIT


@numba.njit(inline="always", **JIT)
def gates_forward(z, b, c_prev, c, h, r0, r1):
    """One step of the cell for batch rows r0..r1-1.  z (B,G) pre-activations without bias,
    in place -> activated gates; b (G,); c_prev (B,H) -> c (B,H), h (B,H).

    Short loops, each touching few arrays, so that LLVM's run-time alias checks stay under
    its limit and every loop vectorises.  These forms fall back to scalar code: one fused loop
    writing the gates back into z, a loop over range(3H, 4H) rather than 3H + range(H), offsets
    that are not multiples of H, and rows of a batch slice view (numba types them with a
    run-time stride): hence full arrays and row ranges."""
    H = z.shape[1] // 4
    for r in range(r0, r1):
        zr, cp, cr, hr = z[r], c_prev[r], c[r], h[r]
        for j in range(2 * H):                                        # i, f
            zr[j] = fsigmoid(zr[j] + b[j])
        for j in range(H):                                            # g
            zr[2 * H + j] = ftanh(zr[2 * H + j] + b[2 * H + j])
        for j in range(H):                                            # o
            zr[3 * H + j] = fsigmoid(zr[3 * H + j] + b[3 * H + j])
        for j in range(H):
            ct = zr[H + j] * cp[j] + zr[j] * zr[2 * H + j]            # c = f c_prev + i g
            cr[j] = ct
            hr[j] = zr[3 * H + j] * ftanh(ct)                         # h = o tanh(c)


@numba.njit(inline="always", **JIT)
def gates_backward(dh_out, dh, dc, a, c, c_prev, dz, r0, r1):
    """Backprop one step for batch rows r0..r1-1.  dh_out (B,H) from the layer above; dh (B,H) dL/dh_t from step t+1,
    clobbered; dc (B,H) dL/dc_t from step t+1, in place -> dL/dc_{t-1}; a (B,G) activated
    gates; c, c_prev (B,H) -> dz (B,G) gate pre-activation gradients.  One short loop per
    quantity, so that each vectorises (see gates_forward)."""
    H = a.shape[1] // 4
    for r in range(r0, r1):
        ar, dzr, dcr, dhr, cr, cpr = a[r], dz[r], dc[r], dh[r], c[r], c_prev[r]
        dor = dh_out[r]
        for j in range(H):
            dhr[j] += dor[j]                                          # total dL/dh_t
        for j in range(H):
            dzr[3 * H + j] = ftanh(cr[j])                             # tanh(c_t), kept in the o slot
        for j in range(H):
            tc = dzr[3 * H + j]
            dcr[j] += dhr[j] * ar[3 * H + j] * one_minus(tc * tc)     # h = o tanh(c): total dL/dc_t
        for j in range(H):
            o = ar[3 * H + j]
            dzr[3 * H + j] = dhr[j] * dzr[3 * H + j] * o * one_minus(o)  # do, through sigmoid
        for j in range(H):
            i, g = ar[j], ar[2 * H + j]
            dzr[j] = dcr[j] * g * i * one_minus(i)                    # c = f c_prev + i g
        for j in range(H):
            f = ar[H + j]
            dzr[H + j] = dcr[j] * cpr[j] * f * one_minus(f)
        for j in range(H):
            i, g = ar[j], ar[2 * H + j]
            dzr[2 * H + j] = dcr[j] * i * one_minus(g * g)            # through tanh
        for j in range(H):
            dcr[j] = dcr[j] * ar[H + j]                               # dL/dc_{t-1}
