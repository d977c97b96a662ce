"""Numba kernel for batch-1 generation with the LSTM variants: n characters in one jitted call.

Dimension legend: L layers, H hidden, G gates (peephole 4H; coupled, GRU 3H), E embedding,
V vocabulary, n characters.

sample.py's plan (its docstring says it): per character every layer's cell, with the sums
z = b + h_{t-1} W_h + x_t W_x as matrix-vector loops over the panels of W_h and W_x (layer 0 may
read b + x_t W_x as one row of the table X0 = Emb @ W_x + b0 (V,G)), then the output
projection and sample.py's draw (temperature, top-k / top-p, the caller's uniforms), so both
backends turn one seed into the same text.  The GRU keeps its h side apart,
zh = bh + h_{t-1} W_h, because the reset gate multiplies its n block; its c is left as it is.

Which cell: the int `cell` (cell_layers.PEEPHOLE, COUPLED, or GRU), a run-time branch, so one
compiled kernel serves all three (sample_team.py runs every cell on a team of threads);
`extras` holds per layer the peepholes wc (3H,) flat [w_ci; w_cf; w_co], the GRU's bh (G,),
or nothing (0,) for the coupled cell.
"""
from __future__ import annotations

import numba
import numpy as np

from .cell_layers import COUPLED, PEEPHOLE
from .fastmath import fsigmoid, ftanh, one_minus
from .jit import JIT
from .sample import PANEL, draw, layer_input, panel_acc, sample_buffers

GRU = 3


@numba.njit(inline="always", **JIT)
def gate_sums(Wp, zx, x, h, z):
    """z[:G] = zx (G,) + h (H,) @ W_h + x (I,) @ W_x, Wp = (W_h, W_x) as panels (sample.cell_step),
    z (nb PANEL,) (x empty: the table row zx already holds x W_x)."""
    for j in range(zx.shape[0]):
        z[j] = zx[j]
    panel_acc(h, Wp[0], z)
    if x.shape[0] > 0:
        panel_acc(x, Wp[1], z)


@numba.njit(inline="always", **JIT)
def peephole_cell(z, S, wi, wf, wo, h, c):
    """h, c (n,) <- the peephole cell's update of n units from z, the blocks i, f, g, o S apart
    (sample.cell_gates' layout); wi, wf, wo (n,) their peepholes."""
    for j in range(h.shape[0]):
        i = fsigmoid(z[j] + wi[j] * c[j])
        f = fsigmoid(z[S + j] + wf[j] * c[j])
        g = ftanh(z[2 * S + j])
        c[j] = f * c[j] + i * g
        o = fsigmoid(z[3 * S + j] + wo[j] * c[j])                       # o sees c_t
        h[j] = o * ftanh(c[j])


@numba.njit(inline="always", **JIT)
def coupled_cell(z, S, h, c):
    """h, c (n,) <- the coupled cell's update of n units from z, the blocks f, g, o S apart."""
    for j in range(h.shape[0]):
        f = fsigmoid(z[j])
        g = ftanh(z[S + j])
        o = fsigmoid(z[2 * S + j])
        c[j] = f * c[j] + one_minus(f) * g
        h[j] = o * ftanh(c[j])


@numba.njit(inline="always", **JIT)
def gru_cell(Wp, zx, x, bh, h, z, zh):
    """h (H,) <- the GRU's update: z = zx + x W_x (x side), zh = bh + h W_h (h side), Wp =
    (W_h, W_x) as panels (sample.cell_step), z, zh (nb PANEL,)."""
    H = h.shape[0]
    for j in range(3 * H):
        z[j] = zx[j]
        zh[j] = bh[j]
    panel_acc(h, Wp[0], zh)
    if x.shape[0] > 0:
        panel_acc(x, Wp[1], z)
    gru_update(z, zh, H, h, h)


@numba.njit(inline="always", **JIT)
def gru_update(z, zh, S, hp, h):
    """h (n,) <- (1 - z) n + z hp of n units from their x-side sums z and h-side sums zh, the
    blocks r, z, n S apart; hp (n,) their h_{t-1} (h itself, or another array)."""
    for j in range(h.shape[0]):
        r = fsigmoid(z[j] + zh[j])
        u = fsigmoid(z[S + j] + zh[S + j])                              # the update gate z_t
        n = ftanh(z[2 * S + j] + r * zh[2 * S + j])
        h[j] = one_minus(u) * n + u * hp[j]


@numba.njit(**JIT)
def generate_cells_kernel(cell, Emb, X0, Ws, bs, extras, Wy, by, h, c, token, temperature, top_k, top_p, greedy,
                          us, out):
    """Emb (V,E); X0 (V,G) the layer-0 table Emb @ W_x + b0 (GRU: + bx0), or (0,G); Ws, bs,
    extras tuples over layers of W (H+I,G) as (W_h, W_x) panels, b (G,) (GRU: bx), extras
    (see the module docstring); Wy (H,V) as panels (nbV,H,PANEL), by (V,); h, c (L,H) state,
    updated in place; us (n,) uniforms (ignored when greedy) -> out (n,) int64 token ids."""
    L, H = h.shape
    V = by.shape[0]
    Gp = Ws[0][0].shape[0] * PANEL
    z, logits, zd, probs, p, order, none = sample_buffers(Gp, Wy.shape[0] * PANEL, V, by)   # z (Gp,)
    zh = np.zeros(Gp, by.dtype)                                           # (Gp,) the GRU's h side
    for k in range(out.shape[0]):
        for l in range(L):
            zx, x = layer_input(Emb, X0, bs, h[l - 1], l, token, none)
            if cell == GRU:
                gru_cell(Ws[l], zx, x, extras[l], h[l], z, zh)
            else:
                gate_sums(Ws[l], zx, x, h[l], z)
                if cell == PEEPHOLE:
                    wc = extras[l]
                    peephole_cell(z, H, wc[:H], wc[H:2 * H], wc[2 * H:], h[l], c[l])
                elif cell == COUPLED:
                    coupled_cell(z, H, h[l], c[l])
        token = draw(h[L - 1], Wy, by, logits, temperature, top_k, top_p, greedy,
                     us[k] if not greedy else 0.0, zd, probs, order, p)
        out[k] = token


