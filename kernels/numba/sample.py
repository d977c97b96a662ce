"""Numba kernel for batch-1 generation: n characters in one jitted call, no Python per step.

Dimension legend: L layers, H hidden, G = 4H, E embedding, V vocabulary, n characters.

Per character: every layer's cell (z = b + h_{t-1} W_h + x_t W_x as hand-written
matrix-vector loops over the rows of the fused W, then the gates; for layer 0 the
caller may pass the table X0 = Emb @ W_x + b0 (V,G), so that b + x_t W_x is one row
read instead of an E x G product per character), the output
projection, temperature, top-k / top-p filtering and an inverse-CDF draw.  The
uniforms come in as an array drawn by the caller from its numpy Generator, one per
sampled character, exactly as the reference draws them, so both backends turn the same
seed into the same text.  Filtering follows numpy_backend.filter_probs step by step.
"""
from __future__ import annotations

import numba
import numpy as np

from .fastmath import fexp, fsigmoid, ftanh
from .jit import JIT
from .sync import FLAG_STRIDE, load_acquire, load_seq, spin_pause, spin_yield, store_release, store_seq


@numba.njit(inline="always", **JIT)
def matvec_acc(v, M, z):
    """z (G,) += v (K,) @ M (K,G), four rows per pass so z is loaded once per four rows."""
    K, G = M.shape
    k = 0
    while k + 4 <= K:
        a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
        r0, r1, r2, r3 = M[k], M[k + 1], M[k + 2], M[k + 3]
        for j in range(G):
            z[j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]
        k += 4
    while k < K:
        a0, r0 = v[k], M[k]
        for j in range(G):
            z[j] += a0 * r0[j]
        k += 1


@numba.njit(inline="always", **JIT)
def cell_step(W, zx, x, h, c, z):
    """One layer, one character, in place: h, c (H,) <- LSTM(W (H+I,G), x (I,), h, c).

    zx (G,) starts the gate sum: the bias b, or (layer 0 with a table) the row
    Emb[token] @ W_x + b of the table, in which case x is empty and W's x rows unused."""
    H = h.shape[0]
    for j in range(4 * H):
        z[j] = zx[j]
    matvec_acc(h, W[:H], z)
    if x.shape[0] > 0:
        matvec_acc(x, W[H:], z)
    cell_gates(z, h, c)


@numba.njit(inline="always", **JIT)
def cell_gates(z, h, c):
    """h, c (H,) <- the cell's update from its gate pre-activations z (G,) = (i, f, g, o)."""
    H = h.shape[0]
    for j in range(H):
        i = fsigmoid(z[j])
        f = fsigmoid(z[H + j])
        g = ftanh(z[2 * H + j])
        o = fsigmoid(z[3 * H + j])
        c[j] = f * c[j] + i * g
        h[j] = o * ftanh(c[j])


@numba.njit(inline="always", **JIT)
def layer_input(Emb, X0, bs, h_below, l, token, none):
    """(zx (G,), x (I,)) for layer l: layer 0 reads its table row X0[token] (x: `none`, an empty
    array) when X0 (V,G) has rows, else b0 and Emb[token]; layers above take b_l and h_below (H,).
    Every array returned is C-contiguous, so the callers' loops compile for one layout."""
    if l > 0:
        return bs[l], h_below
    if X0.shape[0] > 0:
        return X0[token], none
    return bs[0], Emb[token]


@numba.njit(inline="always", **JIT)
def stable_order_desc(z, order):
    """order (V,) <- indices of z sorted by decreasing value, ties by index (insertion sort,
    the result of np.argsort(-z, kind='stable'))."""
    V = z.shape[0]
    for j in range(V):
        k = j
        while k > 0 and z[order[k - 1]] < z[j]:
            order[k] = order[k - 1]
            k -= 1
        order[k] = j


@numba.njit(**JIT)
def filter_probs_kernel(logits, temperature, top_k, top_p, zd, probs, order, p):
    """numpy_backend.filter_probs into probs (V,) float64; zd, p (V,) float64 and order (V,)
    int64 are scratch."""
    V = logits.shape[0]
    for j in range(V):
        zd[j] = np.float64(logits[j]) / temperature
    keep = min(top_k, V) if top_k > 0 else V
    if keep == V and top_p >= 1.0:       # no filter: any order gives the same set (sums may
        for j in range(V):               # differ in the last bit from the sorted ones)
            order[j] = j
    elif V > 256:
        order[:] = np.argsort(-zd, kind="mergesort")   # stable; allocates, but V is large here
    else:
        stable_order_desc(zd, order)
    top = zd[0]                          # the largest logit (zd[order[0]] when sorted)
    for j in range(V):
        top = max(top, zd[j])
    s = 0.0
    for i in range(keep):
        p[i] = fexp(zd[order[i]] - top)  # vectorises, unlike libm's exp: V exps a character
        s += p[i]
    for i in range(keep):
        p[i] /= s
    if top_p < 1.0:                       # smallest prefix whose mass reaches top_p
        cum = 0.0
        for i in range(keep):
            cum += p[i]
            if cum >= top_p:
                keep = i + 1
                break
    s = 0.0
    for i in range(keep):
        s += p[i]
    probs[:] = 0.0
    for i in range(keep):
        probs[order[i]] = p[i] / s


@numba.njit(inline="always", **JIT)
def sample_index(probs, u):
    """First index whose cumulative probability exceeds u * total (inverse CDF)."""
    V = probs.shape[0]
    total = 0.0
    for j in range(V):
        total += probs[j]
    target = u * total
    cum = 0.0
    for j in range(V):
        cum += probs[j]
        if cum > target:
            return j
    return V - 1


@numba.njit(**JIT)
def next_token(logits, temperature, top_k, top_p, greedy, u, zd, probs, order, p):
    """The sampled (or, greedy, the most likely) token id from logits (V,)."""
    if greedy:
        token = 0
        for j in range(1, logits.shape[0]):
            if logits[j] > logits[token]:
                token = j
        return token
    filter_probs_kernel(logits, temperature, top_k, top_p, zd, probs, order, p)
    return sample_index(probs, u)


@numba.njit(inline="always", **JIT)
def draw(h, Wy, by, logits, temperature, top_k, top_p, greedy, u, zd, probs, order, p):
    """The next token from the top layer's h (H,): logits (V,) = by + h @ Wy, then next_token."""
    for j in range(by.shape[0]):
        logits[j] = by[j]
    matvec_acc(h, Wy, logits)
    return next_token(logits, temperature, top_k, top_p, greedy, u, zd, probs, order, p)


@numba.njit(**JIT)
def sample_buffers(H, V, like):
    """Scratch of one generation call: z (G,) gate sums and logits (V,) in like's dtype; zd,
    probs, p (V,) float64 and order (V,) int64 for the filter; an empty array standing for
    "no x" (layer 0 with its table).  A plain function, so the threaded kernel allocates
    nothing inside its parallel body."""
    dt = like.dtype
    return (np.empty(4 * H, dt), np.empty(V, dt), np.empty(V), np.empty(V), np.empty(V),
            np.empty(V, np.int64), np.empty(0, dt))


@numba.njit(**JIT)
def generate_kernel(Emb, X0, Ws, bs, Wy, by, h, c, token, temperature, top_k, top_p, greedy, us, out):
    """Emb (V,E); X0 (V,G) the layer-0 table Emb @ W_x + b0, or (0,G) to compute it per
    character; Ws, bs tuples over layers of W (H+I,G), b (G,); Wy (H,V), by (V,);
    h, c (L,H) state, updated in place; us (n,) uniforms (ignored when greedy)
    -> out (n,) int64 token ids."""
    L, H = h.shape
    V = by.shape[0]
    z, logits, zd, probs, p, order, none = sample_buffers(H, V, Wy)
    for k in range(out.shape[0]):
        for l in range(L):
            zx, x = layer_input(Emb, X0, bs, h[l - 1], l, token, none)
            cell_step(Ws[l], zx, x, h[l], c[l], z)
        token = draw(h[L - 1], Wy, by, logits, temperature, top_k, top_p, greedy,
                     us[k] if not greedy else 0.0, zd, probs, order, p)
        out[k] = token


# ----------------------------------------------------------------------------
# The same on a team of nt threads, each owning a block of each layer's weight rows: the
# caller's thread is thread 0, the others are long-lived workers (lstm_engine/backends/
# numba_team.py) that spin between jobs, so a 32-character call costs no thread start.
# ----------------------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def matvec_part(h, x, W, part, k0, k1):
    """part (G,) = sum over the fused rows k0 <= k < k1 of [h; x][k] W[k]: rows below H meet
    h (H,), the rest x (I,) (W (H+I,G) fused as [W_h; W_x])."""
    H = h.shape[0]
    for j in range(part.shape[0]):
        part[j] = 0
    a, b = min(k0, H), min(k1, H)
    if a < b:
        matvec_acc(h[a:b], W[a:b], part)
    a, b = max(k0, H), max(k1, H)
    if a < b:
        matvec_acc(x[a - H:b - H], W[a:b], part)


# Flag slots of a team (indices into its int64 flags, FLAG_STRIDE apart, see sync.py): the
# job counter, the stop flag, then per thread t its barrier counter and whether it is parked.
JOB, STOP = 0, FLAG_STRIDE


@numba.njit(inline="always", **JIT)
def ready_slot(t):
    return (2 + t) * FLAG_STRIDE


@numba.njit(inline="always", **JIT)
def parked_slot(t, nt):
    return (2 + nt + t) * FLAG_STRIDE


# Polls of a barrier (tens of ns each) before its waiter yields the CPU at every further poll:
# with more runnable threads than cores a partner may be off the CPU for a whole time slice,
# and spinning through it would keep it off longer.
SPINS_BEFORE_YIELD = 1024


@numba.njit(inline="always", **JIT)
def wait_for_team(flags, tid, nt, s):
    """Spin until every other thread's barrier counter reached s (yielding the CPU after
    SPINS_BEFORE_YIELD polls).  -> False when told to stop."""
    for u in range(nt):
        if u != tid:
            spins = 0
            while load_acquire(flags, ready_slot(u)) < s:
                if load_acquire(flags, STOP) != 0:
                    return False
                if spins < SPINS_BEFORE_YIELD:
                    spins += 1
                    spin_pause()
                else:
                    spin_yield()
    return True


@numba.njit(inline="always", **JIT)
def logits_block(h, Wy, by, logits, j0, j1):
    """logits[j0:j1] = by[j0:j1] + h (H,) @ Wy[:, j0:j1], four rows of Wy (H,V) a pass."""
    for j in range(j0, j1):
        logits[j] = by[j]
    z = logits[j0:j1]
    K = h.shape[0]
    k = 0
    while k + 4 <= K:
        a0, a1, a2, a3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        r0, r1, r2, r3 = Wy[k][j0:j1], Wy[k + 1][j0:j1], Wy[k + 2][j0:j1], Wy[k + 3][j0:j1]
        for j in range(z.shape[0]):
            z[j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]
        k += 4
    while k < K:
        a0, r0 = h[k], Wy[k][j0:j1]
        for j in range(z.shape[0]):
            z[j] += a0 * r0[j]
        k += 1


@numba.njit(inline="always", **JIT)
def team_draw(tid, nt, flags, s, parts, split, h, Wy, by, logits, temperature, top_k, top_p, greedy, u, zd,
              probs, order, pr):
    """-> (token, s), the next token from the top layer's h (H,) and the barrier count after it
    (token -1: told to stop).  split (the team's choice, for a big output layer): thread tid
    writes its block of the logits into parts[s % 2, 0] (width >= V), one barrier, then every
    thread draws from all V of them (the same arithmetic on each); else each thread computes
    the whole output layer (draw)."""
    V = by.shape[0]
    if not split:
        return draw(h, Wy, by, logits, temperature, top_k, top_p, greedy, u, zd, probs, order, pr), s
    shared = parts[s & 1, 0]                                      # (width,) the logits, by blocks
    logits_block(h, Wy, by, shared, tid * V // nt, (tid + 1) * V // nt)
    s += 1
    store_release(flags, ready_slot(tid), s)
    if not wait_for_team(flags, tid, nt, s):
        return -1, s
    return next_token(shared[:V], temperature, top_k, top_p, greedy, u, zd, probs, order, pr), s


@numba.njit(nogil=True, **JIT)
def team_share(tid, nt, Emb, X0, Ws, bs, Wy, by, h, c, h_in, c_in, params, us, out, parts, flags, job):
    """Thread tid's share of one generation job of the team (nt threads, each running this).

    Per character and layer, thread t sums its block of the fused weight rows (t*K/nt ..
    (t+1)*K/nt - 1 of K = H + I) into parts[s % 2, t] (G,), raises its barrier counter to s and
    waits for the others' (no thread adds into another's; the two buffers alternate, so a fast
    thread fills one while a slow one still reads the other).  Then every thread adds all nt
    partials in the same order and applies the gates to its own copy of the state, h[t], c[t]
    (L,H), and computes the same logits and the same token from the same uniform: identical
    arithmetic, so the copies never differ and no second barrier is needed.  Thread 0 writes out.

    With params[p, 6] set, the output layer is split by columns as well (team_draw): one more
    barrier a character.

    Job inputs are double-buffered by job parity p, because a worker may still finish the last
    character of the previous job while the caller writes the next one's: h_in, c_in (2,L,H)
    state, params (2,7) = (token, n, temperature, top_k, top_p, greedy, split), us (2,cap) uniforms.
    -> 0, or -1 when the STOP flag was raised while waiting (then out and the state are partial).
    """
    p = job & 1
    token, n, temperature = np.int64(params[p, 0]), np.int64(params[p, 1]), params[p, 2]
    top_k, top_p, greedy = np.int64(params[p, 3]), params[p, 4], params[p, 5] != 0
    split = params[p, 6] != 0                                     # the output layer split too
    L, H = h.shape[1], h.shape[2]
    V = by.shape[0]
    G = 4 * H
    z, logits, zd, probs, pr, order, none = sample_buffers(H, V, Wy)
    ht, ct = h[tid], c[tid]                                       # (L,H) this thread's state
    ht[:] = h_in[p]
    ct[:] = c_in[p]
    s = load_acquire(flags, ready_slot(tid))                      # barrier count so far
    for k in range(n):
        for l in range(L):
            zx, x = layer_input(Emb, X0, bs, ht[l - 1], l, token, none)
            K = H + x.shape[0]
            buf = parts[s & 1]                                    # (nt,G)
            matvec_part(ht[l], x, Ws[l], buf[tid, :G], tid * K // nt, (tid + 1) * K // nt)
            s += 1
            store_release(flags, ready_slot(tid), s)
            if not wait_for_team(flags, tid, nt, s):
                return -1
            for j in range(G):
                z[j] = zx[j]
            for u in range(nt):
                for j in range(G):
                    z[j] += buf[u, j]
            cell_gates(z, ht[l], ct[l])
        token, s = team_draw(tid, nt, flags, s, parts, split, ht[L - 1], Wy, by, logits, temperature, top_k,
                             top_p, greedy, us[p, k] if not greedy else 0.0, zd, probs, order, pr)
        if token < 0:
            return -1
        if tid == 0:
            out[k] = token
    return 0


@numba.njit(nogil=True, **JIT)
def team_publish(flags, job, nt):
    """Announce job number `job` (its inputs already written) -> bit t-1 set for each worker t
    that had parked and must be woken.  Sequentially consistent against team_worker's park:
    either the worker sees the job or this sees it parked."""
    store_seq(flags, JOB, job)
    asleep = 0
    for t in range(1, nt):
        if load_seq(flags, parked_slot(t, nt)) != 0:
            asleep |= 1 << (t - 1)
    return asleep


@numba.njit(nogil=True, **JIT)
def team_worker(tid, nt, Emb, X0, Ws, bs, Wy, by, h, c, h_in, c_in, params, us, out, parts, flags,
                done, spin_limit):
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
            if team_share(tid, nt, Emb, X0, Ws, bs, Wy, by, h, c, h_in, c_in, params, us, out, parts,
                          flags, job) < 0:
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


@numba.njit(**JIT)
def spin_polls(n):
    """n idle polls of the worker loop (for calibrating spin_limit against the clock)."""
    flags = np.zeros(FLAG_STRIDE * 2, np.int64)
    acc = 0
    for _ in range(n):
        acc += load_seq(flags, JOB)
        spin_pause()
    return acc
