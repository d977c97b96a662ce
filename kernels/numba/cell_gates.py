"""The gate math of the LSTM variants for one time step, forward and backward (Numba, inlined).

Dimension legend: B batch, H hidden; G = 4H gates (i, f, g, o) for the peephole cell,
G = 3H (f, g, o) for the coupled cell, G = 3H (r, z, n) for the GRU.
Equations: lstm_engine/backends/numpy_cells.py.  Used by the time loops in cell_layers.py and
gru_layer.py (split by batch rows: every function works on batch rows r0..r1-1) and in
cell_layers_columns.py and gru_layer_columns.py (split by hidden units: on a thread's (B,qU) block).

As in gates.py: one short loop per quantity over full rows (so that each vectorises), the
activated gates written back over their pre-activations.  The peephole weights come flat,
wc (3H,) = [w_ci; w_cf; w_co], so that every variant's kernels take one array type.
"""
from __future__ import annotations

import numba

from .fastmath import fsigmoid, ftanh, one_minus
from .jit import JIT

PEEPHOLE, COUPLED = 1, 2    # the int `cell` of the peephole and coupled kernels (a run-time branch per step)

# ----------------------------------------------------------------------------
# Peephole LSTM: i, f see c_{t-1}; o sees c_t
# ----------------------------------------------------------------------------


@numba.njit(inline="always", **JIT)
def peephole_forward(z, b, wc, c_prev, c, h, r0, r1):
    """z (B,4H) pre-activations without bias, in place -> activated i, f, g, o; b (4H,);
    wc (3H,); c_prev (B,H) -> c (B,H), h (B,H)."""
    H = z.shape[1] // 4
    for r in range(r0, r1):
        zr, cp, cr, hr = z[r], c_prev[r], c[r], h[r]
        for j in range(H):                                            # i = σ(.. + w_ci c_{t-1})
            zr[j] = fsigmoid(zr[j] + b[j] + wc[j] * cp[j])
        for j in range(H):                                            # f = σ(.. + w_cf c_{t-1})
            zr[H + j] = fsigmoid(zr[H + j] + b[H + j] + wc[H + j] * cp[j])
        for j in range(H):                                            # g
            zr[2 * H + j] = ftanh(zr[2 * H + j] + b[2 * H + j])
        for j in range(H):                                            # c = f c_prev + i g
            cr[j] = zr[H + j] * cp[j] + zr[j] * zr[2 * H + j]
        for j in range(H):                                            # o = σ(.. + w_co c_t)
            zr[3 * H + j] = fsigmoid(zr[3 * H + j] + b[3 * H + j] + wc[2 * H + j] * cr[j])
        for j in range(H):                                            # h = o tanh(c)
            hr[j] = zr[3 * H + j] * ftanh(cr[j])


@numba.njit(inline="always", **JIT)
def peephole_backward(dh_out, dh, dc, a, wc, c, c_prev, dz, dwc, r0, r1):
    """dh_out (B,H) from the layer above; dh (B,H) dL/dh_t from step t+1, clobbered; dc (B,H)
    dL/dc_t from step t+1, in place -> dL/dc_{t-1}; a (B,4H) activated gates; c, c_prev (B,H)
    -> dz (B,4H) pre-activation gradients; dwc (3H,) += this step's peephole gradients."""
    H = a.shape[1] // 4
    for r in range(r0, r1):
        ar, dzr, dcr, dhr, cr, cpr, dor = a[r], dz[r], dc[r], dh[r], c[r], c_prev[r], dh_out[r]
        for j in range(H):
            dhr[j] += dor[j]                                          # total dL/dh_t
        for j in range(H):
            dzr[3 * H + j] = ftanh(cr[j])                             # tanh(c_t), kept in the o slot
        for j in range(H):
            tc = dzr[3 * H + j]
            dcr[j] += dhr[j] * ar[3 * H + j] * one_minus(tc * tc)     # h = o tanh(c), through tanh
        for j in range(H):
            o = ar[3 * H + j]
            dzr[3 * H + j] = dhr[j] * dzr[3 * H + j] * o * one_minus(o)  # do, through sigmoid
        for j in range(H):
            dcr[j] += dzr[3 * H + j] * wc[2 * H + j]                  # o's peephole on c_t: total dL/dc_t
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
            dwc[j] += dzr[j] * cpr[j]                                 # dw_ci, dw_cf, dw_co
            dwc[H + j] += dzr[H + j] * cpr[j]
            dwc[2 * H + j] += dzr[3 * H + j] * cr[j]
        for j in range(H):                                            # dL/dc_{t-1}: c and i, f's peepholes
            dcr[j] = dcr[j] * ar[H + j] + dzr[j] * wc[j] + dzr[H + j] * wc[H + j]


# ----------------------------------------------------------------------------
# Coupled input and forget gates (CIFG): i = 1 - f
# ----------------------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def coupled_forward(z, b, c_prev, c, h, r0, r1):
    """z (B,3H) pre-activations without bias, in place -> activated f, g, o; b (3H,);
    c_prev (B,H) -> c (B,H), h (B,H)."""
    H = z.shape[1] // 3
    for r in range(r0, r1):
        zr, cp, cr, hr = z[r], c_prev[r], c[r], h[r]
        for j in range(H):                                            # f
            zr[j] = fsigmoid(zr[j] + b[j])
        for j in range(H):                                            # g
            zr[H + j] = ftanh(zr[H + j] + b[H + j])
        for j in range(H):                                            # o
            zr[2 * H + j] = fsigmoid(zr[2 * H + j] + b[2 * H + j])
        for j in range(H):
            ct = zr[j] * cp[j] + one_minus(zr[j]) * zr[H + j]         # c = f c_prev + (1 - f) g
            cr[j] = ct
            hr[j] = zr[2 * H + j] * ftanh(ct)                         # h = o tanh(c)


@numba.njit(inline="always", **JIT)
def coupled_backward(dh_out, dh, dc, a, c, c_prev, dz, r0, r1):
    """As peephole_backward for the coupled cell: a, dz (B,3H) f, g, o."""
    H = a.shape[1] // 3
    for r in range(r0, r1):
        ar, dzr, dcr, dhr, cr, cpr, dor = a[r], dz[r], dc[r], dh[r], c[r], c_prev[r], dh_out[r]
        for j in range(H):
            dhr[j] += dor[j]                                          # total dL/dh_t
        for j in range(H):
            dzr[2 * H + j] = ftanh(cr[j])                             # tanh(c_t), kept in the o slot
        for j in range(H):
            tc = dzr[2 * H + j]
            dcr[j] += dhr[j] * ar[2 * H + j] * one_minus(tc * tc)     # h = o tanh(c): total dL/dc_t
        for j in range(H):
            o = ar[2 * H + j]
            dzr[2 * H + j] = dhr[j] * dzr[2 * H + j] * o * one_minus(o)  # do, through sigmoid
        for j in range(H):
            f, g = ar[j], ar[H + j]
            dzr[j] = dcr[j] * (cpr[j] - g) * f * one_minus(f)         # c = f c_prev + (1 - f) g
        for j in range(H):
            f, g = ar[j], ar[H + j]
            dzr[H + j] = dcr[j] * one_minus(f) * one_minus(g * g)     # through tanh
        for j in range(H):
            dcr[j] = dcr[j] * ar[j]                                   # dL/dc_{t-1}


# ----------------------------------------------------------------------------
# GRU (nn.GRU): r, z from x and h; n = tanh(x part + r (h part)); h = (1 - z) n + z h_{t-1}
# ----------------------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def gru_forward(ax, ah, bx, bh, h_prev, hn, h, r0, r1):
    """ax (B,3H) = x_t W_x without bias, in place -> activated r, z, n; ah (B,3H) = h_{t-1} W_h
    without bias; bx, bh (3H,) -> hn (B,H) = h_{t-1} W_hn + b_hn (kept for BPTT), h (B,H)."""
    H = ax.shape[1] // 3
    for r in range(r0, r1):
        xr, hr, hpr, hnr, ht = ax[r], ah[r], h_prev[r], hn[r], h[r]
        for j in range(2 * H):                                        # r, z
            xr[j] = fsigmoid(xr[j] + bx[j] + hr[j] + bh[j])
        for j in range(H):
            hnr[j] = hr[2 * H + j] + bh[2 * H + j]                    # W_hn h + b_hn
        for j in range(H):                                            # n = tanh(W_in x + b_in + r (..))
            xr[2 * H + j] = ftanh(xr[2 * H + j] + bx[2 * H + j] + xr[j] * hnr[j])
        for j in range(H):                                            # h = (1 - z) n + z h_{t-1}
            z = xr[H + j]
            ht[j] = one_minus(z) * xr[2 * H + j] + z * hpr[j]


@numba.njit(inline="always", **JIT)
def gru_backward(dh_out, dh, a, hn, h_prev, dzx, dzh, r0, r1):
    """dh_out (B,H) from the layer above; dh (B,H) dL/dh_t from step t+1, in place -> the
    direct part z dL/dh_t of dL/dh_{t-1} (the caller adds dzh W_h^T); a (B,3H) r, z, n;
    hn, h_prev (B,H) -> dzx (B,3H) gradients of the x-side pre-activations (r, z, n),
    dzh (B,3H) of the h-side ones (r, z, W_hn h + b_hn)."""
    H = a.shape[1] // 3
    for r in range(r0, r1):
        ar, dhr, dor, hnr, hpr, dxr, dhh = a[r], dh[r], dh_out[r], hn[r], h_prev[r], dzx[r], dzh[r]
        for j in range(H):
            dhr[j] += dor[j]                                          # total dL/dh_t
        for j in range(H):                                            # h = (1 - z) n + ..: dn, through tanh
            z, n = ar[H + j], ar[2 * H + j]
            dxr[2 * H + j] = dhr[j] * one_minus(z) * one_minus(n * n)
        for j in range(H):
            dhh[2 * H + j] = dxr[2 * H + j] * ar[j]                   # n = tanh(.. + r hn): d hn
        for j in range(H):
            rr = ar[j]
            dxr[j] = dxr[2 * H + j] * hnr[j] * rr * one_minus(rr)     # dr, through sigmoid
        for j in range(H):
            z = ar[H + j]
            dxr[H + j] = dhr[j] * (hpr[j] - ar[2 * H + j]) * z * one_minus(z)  # dz, through sigmoid
        for j in range(2 * H):
            dhh[j] = dxr[j]                                           # r, z: one sum of both sides
        for j in range(H):
            dhr[j] = dhr[j] * ar[H + j]                               # h = .. + z h_{t-1}
