"""Numba kernel for batch-1 generation on a team of threads, each owning a block of hidden units.

Dimension legend: L layers, H hidden, ng gate blocks (lstm, peephole 4; coupled, gru 3),
G = ng H, Hu = ceil(H / nt) units a thread, Gu = ng Hu, nb = ceil(Gu / PANEL) panels a thread,
E embedding, V vocabulary, nt threads, n characters.

One character reads every weight once, so on one core it is bound by how fast that core streams
its weights from its L2.  The team (lstm_engine/backends/numba_team.py) gives thread t the
hidden units [t Hu, (t+1) Hu) of every layer and the gate columns that feed them, packed as
Wp[l] = (W_h, W_x), their thread-t blocks (nb, H, PANEL) and (nb, I, PANEL): column g Hu + j of
the pack (panel (g Hu + j) // PANEL) is column g H + t Hu + j of W (H+I, G), zero past H and
past Gu.  Per character and layer, thread t sums its columns exactly as the one-thread kernels
do (sample.panel_acc: the same rows in the same order), applies the gates to its units, writes
its block of h into a shared row, and meets the others at one spin barrier; then each copies
the whole h.  What crosses between cores per layer is H values of h, not G partial sums, and
each unit's arithmetic is the one-thread kernel's.  Each thread then computes the same logits
and draws the same token from the same uniform (team_draw), so no barrier is needed for the
token.  A big output layer is split by whole panels of columns, with one more barrier: each
thread computes its block of the logits and, for a draw with no filter, its columns' exps and
their sums by blocks (column_exps), and every thread finds the token from those sums, walking
only the one block it lands in (split_token); for a top-k, its columns' k largest (column_top),
which every thread merges (merged_top).

Protocol (numba_team.Team calls these): job inputs double-buffered by job parity p, h_in, c_in
(2,L,H), params (2,7) = (token, n, temperature, top_k, top_p, greedy, split), us (2,cap); each
thread keeps its own state copy h[t], c[t] (L,H) (c valid on its own units; at the end of a job
each worker writes its units of c into c[0] and raises its barrier counter once more, which
thread 0 waits for); flags and barrier counters as sample.py's.

Which cell: the int `cell` (LSTM, cell_layers.PEEPHOLE, COUPLED, sample_cells.GRU), a run-time
branch per layer; `extras` holds per layer the peepholes wc (3H,) flat [w_ci; w_cf; w_co], the
GRU's bh (G,), or nothing (0,).
"""
from __future__ import annotations

import numba
import numpy as np

from .cell_gates import COUPLED, PEEPHOLE
from .jit import JIT
from .draw import CDF_BLOCK, SELECT_MAX, kept_probs, largest, next_token, pairwise_sum, sample_index, select_top
from .fastmath import fexp
from .sample import (
    JOB,
    STOP,
    PANEL,
    cell_gates,
    draw,
    logits_block,
    panel_acc,
    parked_slot,
    ready_slot,
    sample_buffers,
    spin_polls,
    team_publish,
    wait_for_team,
)
from .sample_cells import GRU, coupled_cell, gru_update, peephole_cell
from .sync import (
    FLAG_STRIDE,
    load_acquire,
    load_seq,
    spin_pause,
    store_release,
    store_seq,
)

LSTM = 0


@numba.njit(inline="always", **JIT)
def column_range(t, nt, nbV, V):
    """(a, b): the logits' columns thread t computes when the output layer's nbV panels are
    split over nt threads (its panels', below V)."""
    return min(V, (t * nbV // nt) * PANEL), min(V, ((t + 1) * nbV // nt) * PANEL)


@numba.njit(inline="always", **JIT)
def scaled_exps(logits, inv_t, m, p):
    """p (n,) float64 <- exp(logits (n,) / temperature - m): the one expression both the
    exps of a thread's columns and the walk's recomputed block evaluate, so they agree to the bit."""
    for j in range(logits.shape[0]):
        p[j] = fexp(np.float64(logits[j]) * inv_t - m)


@numba.njit(inline="always", **JIT)
def column_exps(logits, a, b, inv_t, row, p):
    """A thread's share of an unfiltered draw, over its logits' columns [a, b): row (2 + nblk,)
    float64 <- (m, s, the sums of p by CDF_BLOCK columns) where p_j = exp(logits_j / T - m),
    m = its largest logit / T and s the sum of the blocks; p (V,) scratch.  An empty share
    writes m = -inf, s = 0."""
    if b <= a:
        row[0], row[1] = -np.inf, 0.0
        return
    m = np.float64(largest(logits[a:b])) * inv_t      # / T keeps the order: the largest of logits / T
    pa = p[:b - a]
    scaled_exps(logits[a:b], inv_t, m, pa)
    s, q, j = 0.0, 2, 0
    while j < b - a:
        w = pairwise_sum(pa[j:min(j + CDF_BLOCK, b - a)])
        row[q] = w
        s += w
        q += 1
        j += CDF_BLOCK
    row[0], row[1] = m, s


@numba.njit(inline="always", **JIT)
def split_token(logits, V, nbV, rows, inv_t, u, p):
    """The inverse-CDF draw over the exps of logits (>= V,) that the threads summed (column_exps
    into rows (nt, 2 + nblk); thread t's columns: column_range): each thread's sums scaled by
    exp(m_t - max m), the target u times their total, then whole threads and blocks
    skipped by their sums and the one block reached walked column by column (its exps
    recomputed from the shared logits, p scratch).  Every thread runs it on the same numbers and
    so returns the same token: no barrier for it.  The reference's draw to rounding."""
    nt = rows.shape[0]
    top = -np.inf
    for t in range(nt):
        top = max(top, rows[t, 0])
    total = 0.0
    for t in range(nt):
        if rows[t, 1] > 0:
            total += rows[t, 1] * fexp(rows[t, 0] - top)
    target = u * total
    cum = 0.0
    for t in range(nt):
        if rows[t, 1] <= 0:
            continue
        e = fexp(rows[t, 0] - top)                    # exp(m_t - top): thread t's exps to the global scale
        if cum + rows[t, 1] * e <= target:
            cum += rows[t, 1] * e
            continue
        a, b = column_range(t, nt, nbV, V)
        q, j0 = 2, a
        while j0 < b:
            j1 = min(j0 + CDF_BLOCK, b)
            w = rows[t, q] * e
            if cum + w > target:
                pb = p[:j1 - j0]
                scaled_exps(logits[j0:j1], inv_t, rows[t, 0], pb)
                for j in range(j0, j1):
                    cum += pb[j - j0] * e
                    if cum > target:
                        return j
                return j1 - 1                         # the block's own rounding: its last column
            cum += w
            q += 1
            j0 = j1
        return b - 1
    return V - 1


@numba.njit(inline="always", **JIT)
def column_top(logits, a, b, k, row, order):
    """A thread's share of a top-k draw over its logits' columns [a, b): row (1 + k,) float64 <-
    (how many, then the indices of its min(k, b - a) largest, largest first, ties by index:
    select_top); order scratch."""
    kt = min(k, b - a)
    if kt > 0:
        select_top(logits[a:b], kt, order)
    row[0] = kt
    for i in range(kt):
        row[1 + i] = a + order[i]


@numba.njit(inline="always", **JIT)
def merged_top(logits, rows, k, order):
    """order[:k] <- the k largest of logits, largest first, ties by index, from the threads'
    own largest (column_top into rows (nt, 1 + k)): a merge of nt sorted lists."""
    nt = rows.shape[0]
    head = np.zeros(nt, np.int64)                                 # (nt,) each list's next place
    for m in range(k):
        best, bj = -1, 0
        for t in range(nt):
            if head[t] < rows[t, 0]:
                j = np.int64(rows[t, 1 + head[t]])
                if best < 0 or logits[j] > logits[bj] or (logits[j] == logits[bj] and j < bj):
                    best, bj = t, j
        order[m] = bj
        head[best] += 1


@numba.njit(inline="always", **JIT)
def team_draw(tid, nt, flags, s, parts, sums, split, h, Wy, by, logits, temperature, top_k, top_p, greedy, u,
              zd, probs, order, pr):
    """-> (token, s), the next token from the top layer's h (H,) and the barrier count after it
    (token -1: told to stop).  Wy (H,V) as panels (nbV,H,PANEL).  split (the team's choice, for a
    big output layer): thread tid writes its panels' block of the logits into parts[s % 2, 0]
    (width >= nbV PANEL) and, for a draw with no filter, its columns' exps' sums into
    sums[s % 2, tid] (column_exps), for a top-k of up to SELECT_MAX its columns' largest
    (column_top); one barrier; then each thread draws from them (split_token; merged_top, then
    the reference's tail), or, top-p alone or greedy, from all V logits (next_token; the same
    arithmetic on each).  Not split: each thread computes the whole output layer (draw)."""
    V, nbV = by.shape[0], Wy.shape[0]
    if not split:
        return draw(h, Wy, by, logits, temperature, top_k, top_p, greedy, u, zd, probs, order, pr), s
    shared = parts[s & 1, 0]                                      # (width,) the logits, by blocks
    rows = sums[s & 1]                                            # (nt, 2 + nblk) each thread's exps' sums
    logits_block(h, Wy, by, shared, tid * nbV // nt, (tid + 1) * nbV // nt)
    plain = not greedy and (top_k <= 0 or top_k >= V) and top_p >= 1.0
    top = not greedy and 0 < top_k < V and top_k <= SELECT_MAX
    inv_t = 1.0 / temperature
    a, b = column_range(tid, nt, nbV, V)
    if plain:
        column_exps(shared, a, b, inv_t, rows[tid], pr)
    elif top:
        column_top(shared, a, b, top_k, rows[tid], order)
    s += 1
    store_release(flags, ready_slot(tid), s)
    if not wait_for_team(flags, tid, nt, s):
        return -1, s
    if plain:
        return split_token(shared, V, nbV, rows, inv_t, u, pr), s
    if top:
        merged_top(shared, rows, top_k, order)
        kept_probs(shared, inv_t, top_k, top_p, order, pr, probs[:V])
        return sample_index(probs[:V], u), s
    return next_token(shared[:V], temperature, top_k, top_p, greedy, u, zd, probs, order, pr), s


@numba.njit(inline="always", **JIT)
def gather_units(src, z, ng, H, Hu, u0, nu):
    """z (Gu,) <- columns g H + u0 + j (j < nu) of src (G,) for each gate block g, zeros past nu."""
    for g in range(ng):
        a = src[g * H + u0:g * H + u0 + nu]
        for j in range(nu):
            z[g * Hu + j] = a[j]
        for j in range(nu, Hu):
            z[g * Hu + j] = 0


@numba.njit(inline="always", **JIT)
def layer_units(cell, Wh, Wx, zx, x, extra, h, c, u0, nu, z, zh, hnew):
    """hnew[:nu] <- this thread's units of one layer, one character; c (H,) updated on them.

    Wh (nb,H,PANEL), Wx (nb,I,PANEL) the thread's packed columns; zx (G,) the bias, or the
    layer-0 table row (then x is empty); x (I,) the layer's input; h (H,) its h_{t-1}; z, zh
    (nb PANEL,) scratch (zeros past Gu)."""
    H, Hu = h.shape[0], hnew.shape[0]
    ng = zx.shape[0] // H
    gather_units(zx, z, ng, H, Hu, u0, nu)
    if x.shape[0] > 0:
        panel_acc(x, Wx, z)
    cu, hu = c[u0:u0 + nu], hnew[:nu]
    if cell == GRU:                                   # the h side apart: r multiplies its n block
        gather_units(extra, zh, ng, H, Hu, u0, nu)
        panel_acc(h, Wh, zh)
        gru_update(z, zh, Hu, h[u0:u0 + nu], hu)
        return
    panel_acc(h, Wh, z)
    if cell == PEEPHOLE:
        peephole_cell(z, Hu, extra[u0:u0 + nu], extra[H + u0:H + u0 + nu], extra[2 * H + u0:2 * H + u0 + nu], hu,
                      cu)
    elif cell == COUPLED:
        coupled_cell(z, Hu, hu, cu)
    else:
        cell_gates(z, Hu, hu, cu)


@numba.njit(nogil=True, **JIT)
def team_share(tid, nt, Emb, X0, Wp, bs, Wy, by, extras, cell, h, c, h_in, c_in, params, us, out, parts, sums,
               flags, job):
    """Thread tid's share of one generation job (the module docstring's protocol); Wp a tuple
    over layers of (W_h (nt,nb,H,PANEL), W_x (nt,nb,I,PANEL)) packs; Wy (nbV,H,PANEL) the output
    layer's panels; parts (2,1,width >= H, nbV PANEL when split) the shared rows and sums
    (2,nt,2 + max(nblk, SELECT_MAX)) float64 the threads' exps' sums (column_exps) or their
    top-k (column_top), both by barrier parity.
    -> 0, or -1 when the STOP flag was raised while waiting."""
    p = job & 1
    token, n, temperature = np.int64(params[p, 0]), np.int64(params[p, 1]), params[p, 2]
    top_k, top_p, greedy = np.int64(params[p, 3]), params[p, 4], params[p, 5] != 0
    split = params[p, 6] != 0                                     # the output layer split too
    L, H = h.shape[1], h.shape[2]
    V = by.shape[0]
    Gp = Wp[0][0].shape[1] * PANEL                               # nb PANEL: Gu and the last panel's pad
    Hu = -(-H // nt)
    u0 = min(H, tid * Hu)
    nu = min(H, u0 + Hu) - u0
    z, logits, zd, probs, pr, order, none = sample_buffers(Gp, Wy.shape[0] * PANEL, V, by)   # z (Gp,)
    zh, hnew = np.zeros(Gp, by.dtype), np.empty(Hu, by.dtype)             # (Gp,) the GRU's h side; (Hu,)
    ht, ct = h[tid], c[tid]                                       # (L,H) this thread's state
    ht[:] = h_in[p]
    ct[:] = c_in[p]
    s = load_acquire(flags, ready_slot(tid))                      # barrier count so far
    for k in range(n):
        for l in range(L):
            if l == 0 and X0.shape[0] > 0:
                zx, x = X0[token], none
            else:
                zx, x = bs[l], (Emb[token] if l == 0 else ht[l - 1])
            layer_units(cell, Wp[l][0][tid], Wp[l][1][tid], zx, x, extras[l], ht[l], ct[l], u0, nu, z, zh, hnew)
            shared = parts[s & 1, 0]                              # (width,) h of every unit
            for j in range(nu):
                shared[u0 + j] = hnew[j]
            s += 1
            store_release(flags, ready_slot(tid), s)
            if not wait_for_team(flags, tid, nt, s):
                return -1
            for j in range(H):
                ht[l, j] = shared[j]
        token, s = team_draw(tid, nt, flags, s, parts, sums, split, ht[L - 1], Wy, by, logits, temperature, top_k,
                             top_p, greedy, us[p, k] if not greedy else 0.0, zd, probs, order, pr)
        if token < 0:
            return -1
        if tid == 0:
            out[k] = token
    if tid > 0:                                                   # thread 0's copy returns c
        for l in range(L):
            for j in range(u0, u0 + nu):
                c[0, l, j] = ct[l, j]
    s += 1
    store_release(flags, ready_slot(tid), s)
    if tid == 0 and not wait_for_team(flags, tid, nt, s):
        return -1
    return 0


@numba.njit(nogil=True, **JIT)
def team_worker(tid, nt, Emb, X0, Wp, bs, Wy, by, extras, cell, h, c, h_in, c_in, params, us, out, parts, sums,
                flags, done, spin_limit):
    """A worker thread's loop: run each job numbered above `done` as it is published; after
    spin_limit polls with no job, park (flag set, then a last look for a job) and return.
    -> the last job done (>= 0) when parking, -1 when told to stop."""
    store_seq(flags, parked_slot(tid, nt), 0)
    idle = 0
    while True:
        if load_acquire(flags, STOP) != 0:
            return -1
        job = load_seq(flags, JOB)
        if job > done:
            if team_share(tid, nt, Emb, X0, Wp, bs, Wy, by, extras, cell, h, c, h_in, c_in, params, us, out,
                          parts, sums, flags, job) < 0:
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


# what numba_team.Team calls on its kernels module
__all__ = ["CDF_BLOCK", "FLAG_STRIDE", "LSTM", "PANEL", "SELECT_MAX", "STOP", "spin_polls", "team_publish",
           "team_share", "team_worker"]
