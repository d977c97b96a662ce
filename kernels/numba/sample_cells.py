"""Numba kernel for batch-1 generation with the LSTM variants: n characters in one jitted call.

Dimension legend: L layers, H hidden, G gates (peephole 4H; coupled, GRU 3H), E embedding,
V vocabulary, n characters.

sample.py's plan (its docstring says it): per character every layer's cell, with the sums
z = b + h_{t-1} W_h + x_t W_x as matrix-vector loops over the rows of the fused W (layer 0 may
read b + x_t W_x as one row of the table X0 = Emb @ W_x + b0 (V,G)), then the output
projection and sample.py's draw (temperature, top-k / top-p, the caller's uniforms), so both
backends turn one seed into the same text.  The GRU keeps its h side apart,
zh = bh + h_{t-1} W_h, because the reset gate multiplies its n block; its c is left as it is.

Which cell: the int `cell` (cell_layers.PEEPHOLE, COUPLED, or GRU), a run-time branch, so one
compiled kernel serves all three (and one team_share, sample.py's team protocol, the threads of
lstm_engine/backends/numba_team.py); `extras` holds per layer the peepholes wc (3H,) flat
[w_ci; w_cf; w_co], the GRU's bh (G,), or nothing (0,) for the coupled cell.
"""
from __future__ import annotations

import numba
import numpy as np

from .cell_layers import COUPLED, PEEPHOLE
from .fastmath import fsigmoid, ftanh
from .jit import JIT
from .sample import (
    JOB,
    STOP,
    draw,
    layer_input,
    matvec_acc,
    parked_slot,
    ready_slot,
    sample_buffers,
    spin_polls,
    team_draw,
    team_publish,
    wait_for_team,
)
from .sync import FLAG_STRIDE, load_acquire, load_seq, spin_pause, store_release, store_seq

GRU = 3


@numba.njit(inline="always", **JIT)
def gate_sums(W, zx, x, h, z):
    """z (G,) = zx + h (H,) @ W_h + x (I,) @ W_x (x empty: the table row zx already holds x W_x)."""
    H = h.shape[0]
    for j in range(z.shape[0]):
        z[j] = zx[j]
    matvec_acc(h, W[:H], z)
    if x.shape[0] > 0:
        matvec_acc(x, W[H:], z)


@numba.njit(inline="always", **JIT)
def peephole_cell(z, wc, h, c):
    """h, c (H,) <- the peephole cell's update from z (4H,) = pre-activations i, f, g, o."""
    H = h.shape[0]
    for j in range(H):
        i = fsigmoid(z[j] + wc[j] * c[j])
        f = fsigmoid(z[H + j] + wc[H + j] * c[j])
        g = ftanh(z[2 * H + j])
        c[j] = f * c[j] + i * g
        o = fsigmoid(z[3 * H + j] + wc[2 * H + j] * c[j])               # o sees c_t
        h[j] = o * ftanh(c[j])


@numba.njit(inline="always", **JIT)
def coupled_cell(z, h, c):
    """h, c (H,) <- the coupled cell's update from z (3H,) = pre-activations f, g, o."""
    H = h.shape[0]
    for j in range(H):
        f = fsigmoid(z[j])
        g = ftanh(z[H + j])
        o = fsigmoid(z[2 * H + j])
        c[j] = f * c[j] + (1 - f) * g
        h[j] = o * ftanh(c[j])


@numba.njit(inline="always", **JIT)
def gru_cell(W, zx, x, bh, h, z, zh):
    """h (H,) <- the GRU's update: z (G,) = zx + x W_x (x side), zh (G,) = bh + h W_h (h side)."""
    H = h.shape[0]
    for j in range(3 * H):
        z[j] = zx[j]
        zh[j] = bh[j]
    matvec_acc(h, W[:H], zh)
    if x.shape[0] > 0:
        matvec_acc(x, W[H:], z)
    gru_update(z, zh, h)


@numba.njit(inline="always", **JIT)
def gru_update(z, zh, h):
    """h (H,) <- (1 - z) n + z h from the x-side sums z (G,) and the h-side sums zh (G,)."""
    H = h.shape[0]
    for j in range(H):
        r = fsigmoid(z[j] + zh[j])
        u = fsigmoid(z[H + j] + zh[H + j])                              # the update gate z_t
        n = ftanh(z[2 * H + j] + r * zh[2 * H + j])
        h[j] = (1 - u) * n + u * h[j]


@numba.njit(**JIT)
def generate_cells_kernel(cell, Emb, X0, Ws, bs, extras, Wy, by, h, c, token, temperature, top_k, top_p, greedy,
                          us, out):
    """Emb (V,E); X0 (V,G) the layer-0 table Emb @ W_x + b0 (GRU: + bx0), or (0,G); Ws, bs,
    extras tuples over layers of W (H+I,G), b (G,) (GRU: bx), extras (see the module docstring);
    Wy (H,V), by (V,); h, c (L,H) state, updated in place; us (n,) uniforms (ignored when
    greedy) -> out (n,) int64 token ids."""
    L, H = h.shape
    V = by.shape[0]
    G = Ws[0].shape[1]
    _, logits, zd, probs, p, order, none = sample_buffers(H, V, Wy)
    z, zh = np.empty(G, Wy.dtype), np.empty(G, Wy.dtype)                   # (G,) gate sums
    for k in range(out.shape[0]):
        for l in range(L):
            zx, x = layer_input(Emb, X0, bs, h[l - 1], l, token, none)
            if cell == GRU:
                gru_cell(Ws[l], zx, x, extras[l], h[l], z, zh)
            else:
                gate_sums(Ws[l], zx, x, h[l], z)
                if cell == PEEPHOLE:
                    peephole_cell(z, extras[l], h[l], c[l])
                elif cell == COUPLED:
                    coupled_cell(z, h[l], c[l])
        token = draw(h[L - 1], Wy, by, logits, temperature, top_k, top_p, greedy,
                     us[k] if not greedy else 0.0, zd, probs, order, p)
        out[k] = token


# ----------------------------------------------------------------------------
# The same on a team of nt threads (lstm_engine/backends/numba_team.py), as sample.py's team:
# thread t sums its block of each layer's fused weight rows, the threads meet at one spin
# barrier per layer and character, then each adds all partials in the same order and updates
# its own copy of the state.  A thread's partial (parts row, width P) holds the gate sums of
# its rows: P = G, or for the GRU P = 2G, the h side in [0, G) and the x side in [G, 2G).
# ----------------------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def rows_part(v, W, part, k0, k1, off):
    """part (G,) = sum over the fused rows k0 <= k < k1 of v[k - off] W[k] (v the h or the x part)."""
    for j in range(part.shape[0]):
        part[j] = 0
    if k0 < k1:
        matvec_acc(v[k0 - off:k1 - off], W[k0:k1], part)


@numba.njit(inline="always", **JIT)
def team_layer_sums(cell, h, x, W, part, k0, k1):
    """Thread's partial of one layer: rows k0..k1-1 of the fused W (H+I,G) against [h; x]."""
    H, G = h.shape[0], W.shape[1]
    if cell == GRU:                                              # the two sides apart
        rows_part(h, W, part[:G], min(k0, H), min(k1, H), 0)
        rows_part(x, W, part[G:2 * G], max(k0, H), max(k1, H), H)
    else:                                                        # one sum over [h; x]
        rows_part(h, W, part[:G], min(k0, H), min(k1, H), 0)
        a, b = max(k0, H), max(k1, H)
        if a < b:
            matvec_acc(x[a - H:b - H], W[a:b], part[:G])


@numba.njit(inline="always", **JIT)
def team_update(cell, buf, zx, extra, h, c, z, zh):
    """Add every thread's partial in order to zx (and, GRU, to bh = extra), then the cell's update."""
    G = z.shape[0]
    for j in range(G):
        z[j] = zx[j]
        zh[j] = extra[j] if cell == GRU else 0
    for u in range(buf.shape[0]):
        if cell == GRU:
            for j in range(G):
                zh[j] += buf[u, j]
                z[j] += buf[u, G + j]
        else:
            for j in range(G):
                z[j] += buf[u, j]
    if cell == GRU:
        gru_update(z, zh, h)
    elif cell == PEEPHOLE:
        peephole_cell(z, extra, h, c)
    else:
        coupled_cell(z, h, c)


@numba.njit(nogil=True, **JIT)
def team_share(tid, nt, Emb, X0, Ws, bs, Wy, by, extras, cell, h, c, h_in, c_in, params, us, out, parts, flags,
               job):
    """Thread tid's share of one generation job: sample.team_share's protocol (barrier counters,
    alternating partial buffers, job inputs by parity, thread 0 writes out) for `cell`.
    -> 0, or -1 when the STOP flag was raised while waiting."""
    p = job & 1
    token, n, temperature = np.int64(params[p, 0]), np.int64(params[p, 1]), params[p, 2]
    top_k, top_p, greedy = np.int64(params[p, 3]), params[p, 4], params[p, 5] != 0
    split = params[p, 6] != 0                                     # the output layer split too
    L, H = h.shape[1], h.shape[2]
    V = by.shape[0]
    G = Ws[0].shape[1]
    _, logits, zd, probs, pr, order, none = sample_buffers(H, V, Wy)
    z, zh = np.empty(G, Wy.dtype), np.empty(G, Wy.dtype)                   # (G,) gate sums
    ht, ct = h[tid], c[tid]                                       # (L,H) this thread's state
    ht[:] = h_in[p]
    ct[:] = c_in[p]
    s = load_acquire(flags, ready_slot(tid))                      # barrier count so far
    for k in range(n):
        for l in range(L):
            zx, x = layer_input(Emb, X0, bs, ht[l - 1], l, token, none)
            K = H + x.shape[0]
            buf = parts[s & 1]                                    # (nt,P)
            team_layer_sums(cell, ht[l], x, Ws[l], buf[tid], tid * K // nt, (tid + 1) * K // nt)
            s += 1
            store_release(flags, ready_slot(tid), s)
            if not wait_for_team(flags, tid, nt, s):
                return -1
            team_update(cell, buf, zx, extras[l], ht[l], ct[l], z, zh)
        token, s = team_draw(tid, nt, flags, s, parts, split, ht[L - 1], Wy, by, logits, temperature, top_k,
                             top_p, greedy, us[p, k] if not greedy else 0.0, zd, probs, order, pr)
        if token < 0:
            return -1
        if tid == 0:
            out[k] = token
    return 0


@numba.njit(nogil=True, **JIT)
def team_worker(tid, nt, Emb, X0, Ws, bs, Wy, by, extras, cell, h, c, h_in, c_in, params, us, out, parts, flags,
                done, spin_limit):
    """sample.team_worker's loop running this module's team_share.
    -> the last job done (>= 0) when parking, -1 when told to stop."""
    store_seq(flags, parked_slot(tid, nt), 0)
    idle = 0
    while True:
        if load_acquire(flags, STOP) != 0:
            return -1
        job = load_seq(flags, JOB)
        if job > done:
            if team_share(tid, nt, Emb, X0, Ws, bs, Wy, by, extras, cell, h, c, h_in, c_in, params, us, out,
                          parts, flags, job) < 0:
                return -1
            done = job
            idle = 0
        elif idle < spin_limit:
            idle += 1
            spin_pause()
        else:
            store_seq(flags, parked_slot(tid, nt), 1)
            if load_seq(flags, JOB) <= done:
                return done
            store_seq(flags, parked_slot(tid, nt), 0)            # a job came in meanwhile
            idle = 0


# what numba_team.Team calls on its kernels module (the flags protocol is sample.py's)
__all__ = ["FLAG_STRIDE", "STOP", "spin_polls", "team_publish", "team_share", "team_worker",
           "generate_cells_kernel"]
