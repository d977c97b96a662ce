"""Numba kernels for the draw of batch-1 generation: logits -> the next token id, as the
reference draws it (numpy_backend.filter_probs, then sample_index).

Dimension legend: V vocabulary, k the characters top-k keeps, n candidates (see below).

Temperature, top-k, top-p, then an inverse-CDF draw from a uniform the caller drew.  The kept set
is the reference's: the k largest logits, ties by index (a stable sort), then the shortest prefix
of them whose probability reaches top-p.  What a full sort of V costs is avoided where it can be:
no filter keeps every index in index order (no sort); a small top-k selects its k indices in one
pass (select_top); top-p alone looks only at its candidates, the indices whose probability is
at least a power of two below the largest's that together carry the mass top-p asks
(top_p_candidates): a few are sorted, more go to a quickselect of the value where the prefix ends
(top_p_theta), since the draw needs the kept set, not its order.  Sums run in numpy's pairwise
order (pairwise_sum), the exps through fexp (it vectorises), each division by one number as a
multiplication by its reciprocal: the reference's probabilities to about 1 ulp.
"""
from __future__ import annotations

import numba
import numpy as np

from .fastmath import fexp
from .jit import JIT


PAIRWISE_BLOCK = 128     # numpy's PW_BLOCKSIZE: below it a sum runs on eight accumulators


@numba.njit(**JIT)
def pairwise_sum(a):
    """sum of a (n,) float64 in numpy's order (pairwise_sum in its umath loops): eight
    accumulators up to PAIRWISE_BLOCK values, halves (cut at a multiple of 8) above, so a sum
    here rounds as p.sum() does in numpy_backend.filter_probs, and vectorises."""
    n = a.shape[0]
    if n < 8:
        s = 0.0
        for i in range(n):
            s += a[i]
        return s
    if n <= PAIRWISE_BLOCK:
        r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
        i = 8
        while i + 8 <= n:
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            s += a[i]
            i += 1
        return s
    half = n // 2
    half -= half % 8
    return pairwise_sum(a[:half]) + pairwise_sum(a[half:])


@numba.njit(inline="always", **JIT)
def largest(a):
    """max of a (n,) float64, n >= 1, on eight running maxima (one would wait on each compare):
    the same value in any order."""
    n = a.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = a[0]
    i = 0
    while i + 8 <= n:
        m0, m1, m2, m3 = max(m0, a[i]), max(m1, a[i + 1]), max(m2, a[i + 2]), max(m3, a[i + 3])
        m4, m5, m6, m7 = max(m4, a[i + 4]), max(m5, a[i + 5]), max(m6, a[i + 6]), max(m7, a[i + 7])
        i += 8
    while i < n:
        m0 = max(m0, a[i])
        i += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


SELECT_MAX = 256         # top-k up to this many: one selecting pass (select_top), not a sort of V
TOP_P_SHIFTS = (4, 8, 16, 32, 64)   # candidate thresholds for top-p: 2^-s times the largest probability
TOP_P_SORT_MAX = 64      # top-p candidates sorted up to this many; above, top_p_by_threshold


@numba.njit(inline="always", **JIT)
def select_top(zd, k, order):
    """order[:k] <- the indices of the k largest of zd (V,), largest first, ties by index (the
    first k of np.argsort(-zd, kind='stable')): one pass, each value compared with the k-th kept
    and, when above it, inserted in place (the last kept drops out)."""
    n = 0
    for j in range(zd.shape[0]):
        v = zd[j]
        if n == k and not v > zd[order[k - 1]]:    # an equal value ranks after: its index is larger
            continue
        i = n if n < k else k - 1
        while i > 0 and zd[order[i - 1]] < v:
            order[i] = order[i - 1]
            i -= 1
        order[i] = j
        if n < k:
            n += 1


@numba.njit(inline="always", **JIT)
def top_p_candidates(p, total, top_p, q, order):
    """-> n: order[:n] the indices i of p (V,) with p_i >= 2^-s (p's largest is 1), in index order,
    for the first s of TOP_P_SHIFTS whose p_i carry more than top_p of total (with room for
    rounding); n = 0 when none does.  Every index of the top-p prefix is among them: the
    rest are smaller than each of them.  q (V,) scratch."""
    V = p.shape[0]
    for s in TOP_P_SHIFTS:
        tau = 2.0 ** -s
        for j in range(V):
            q[j] = p[j] if p[j] >= tau else 0.0
        if pairwise_sum(q) > top_p * total * (1.0 + 1e-9):
            n = 0
            for j in range(V):
                if p[j] >= tau:
                    order[n] = j
                    n += 1
            return n
    return 0


@numba.njit(inline="always", **JIT)
def sums_above_and_at(q, x):
    """(the sum of the values of q (n,) above x, the sum of those equal to x): branch-free, on
    four pairs of partial sums (a compare would mispredict half the time)."""
    n = q.shape[0]
    g0 = g1 = g2 = g3 = e0 = e1 = e2 = e3 = 0.0
    i = 0
    while i + 4 <= n:
        v0, v1, v2, v3 = q[i], q[i + 1], q[i + 2], q[i + 3]
        g0 += v0 if v0 > x else 0.0
        g1 += v1 if v1 > x else 0.0
        g2 += v2 if v2 > x else 0.0
        g3 += v3 if v3 > x else 0.0
        e0 += v0 if v0 == x else 0.0
        e1 += v1 if v1 == x else 0.0
        e2 += v2 if v2 == x else 0.0
        e3 += v3 if v3 == x else 0.0
        i += 4
    while i < n:
        g0 += q[i] if q[i] > x else 0.0
        e0 += q[i] if q[i] == x else 0.0
        i += 1
    return (g0 + g1) + (g2 + g3), (e0 + e1) + (e2 + e3)


@numba.njit(inline="always", **JIT)
def keep_side(q, x, above):
    """Move the values of q (n,) above x (above: True) or below it to its front, branch-free
    -> how many."""
    m = 0
    for i in range(q.shape[0]):
        v = q[i]
        q[m] = v
        m += 1 if (v > x if above else v < x) else 0
    return m


@numba.njit(inline="always", **JIT)
def top_p_theta(q, target):
    """theta: the smallest of the values q (n,) (positive, carrying more than target) whose larger
    ones sum under target, where the reference's top-p prefix ends.  A quickselect on the values:
    each pass takes a pivot, sums what lies above and at it, and keeps the side theta lies on
    (expected passes: about log n, each shorter); q is reordered."""
    na, above = q.shape[0], 0.0            # above: the sum of the values over every one left in q[:na]
    while na > 0:
        x = q[na // 2]
        s_gt, s_eq = sums_above_and_at(q[:na], x)
        if above + s_gt >= target:         # theta above x: keep the larger ones
            na = keep_side(q[:na], x, True)
        elif above + s_gt + s_eq >= target:
            return x
        else:                              # theta below x: everything from x up is above it
            above += s_gt + s_eq
            na = keep_side(q[:na], x, False)
    return 0.0                             # not reached unless the values hold a NaN: keep them all


@numba.njit(inline="always", **JIT)
def top_p_by_threshold(pc, idx, total, top_p, q, probs):
    """The top-p set without a sort: pc (n,) the candidates' probabilities (unnormalised, summing
    to total over all V) at the indices idx (n,), in index order, carrying more than top_p of total.
    The prefix the reference keeps is every value above theta (top_p_theta), then values equal to
    theta by index until the sum reaches target = top_p x total.  Where that sum lands within
    rounding of target, the reference's running sum of normalised probabilities decides by its own
    rounding: then the candidates are sorted and cut as it cuts them (top_p_sorted).
    probs (V,) <- zeros but the kept set, renormalised; q (n,) scratch."""
    n = pc.shape[0]
    target = top_p * total
    for i in range(n):
        q[i] = pc[i]
    theta = top_p_theta(q, target)
    for i in range(n):
        q[i] = pc[i] if pc[i] > theta else 0.0
    cum = before = pairwise_sum(q)
    ties = 0                                              # the values equal to theta kept, first by index
    for i in range(n):
        if pc[i] == theta and cum < target:
            before = cum
            cum += theta
            ties += 1
    slack = (n + 2) * 2.0 ** -52 * target                 # the reference's sum: a rounding a term
    if cum - target <= slack or target - before <= slack:
        top_p_sorted(pc, idx, total, top_p, q, probs)
        return
    m = 0
    for i in range(n):                                    # the kept ones to the front of idx, q
        v = pc[i]
        if v > theta or (v == theta and ties > 0):
            ties -= 1 if v == theta else 0
            idx[m], q[m] = idx[i], v
            m += 1
    s = pairwise_sum(q[:m])
    probs[:] = 0.0
    for i in range(m):
        probs[idx[i]] = q[i] / s


@numba.njit(inline="always", **JIT)
def top_p_sorted(pc, idx, total, top_p, q, probs):
    """top_p_by_threshold's set as the reference cuts it: the candidates pc (n,) at idx (n,), in
    index order, sorted by decreasing value (stable: ties by index), then cut_and_spread."""
    o = np.argsort(-pc, kind="mergesort")                 # (n,) stable; allocates, but seldom runs
    sorted_idx = idx[o]                                   # (n,)
    for i in range(pc.shape[0]):
        idx[i], q[i] = sorted_idx[i], pc[o[i]]
    cut_and_spread(q, pc.shape[0], total, top_p, idx, probs)


@numba.njit(inline="always", **JIT)
def sort_desc(zd, idx):
    """idx (n,) <- its indices ordered by decreasing zd, ties in their given order (insertion:
    stable; n is at most TOP_P_SORT_MAX)."""
    for j in range(1, idx.shape[0]):
        x = idx[j]
        i = j
        while i > 0 and zd[idx[i - 1]] < zd[x]:
            idx[i] = idx[i - 1]
            i -= 1
        idx[i] = x


@numba.njit(inline="always", **JIT)
def cut_and_spread(ps, n, s, top_p, order, probs):
    """The reference's tail from the sorted exps ps[:n] of the indices order[:n] and their
    normalizer s (the sum over the kept set): ps /= s, top-p's shortest prefix reaching top_p,
    then probs (V,) <- zeros but that prefix, renormalised."""
    for i in range(n):
        ps[i] /= s
    keep = n
    if top_p < 1.0:                       # smallest prefix whose mass reaches top_p
        cum = 0.0
        for i in range(n):
            cum += ps[i]
            if cum >= top_p:
                keep = i + 1
                break
    s = pairwise_sum(ps[:keep])
    probs[:] = 0.0
    for i in range(keep):
        probs[order[i]] = ps[i] / s


@numba.njit(inline="always", **JIT)
def kept_probs(z, inv_t, keep, top_p, order, p, probs):
    """probs (V,) <- the reference's probabilities over order[:keep], the indices of the keep
    largest of z (V,) / T (inv_t = 1 / T), largest first: their exps from the largest, the sum,
    then cut_and_spread; p (keep,) scratch."""
    top = np.float64(z[order[0]]) * inv_t
    for i in range(keep):
        p[i] = fexp(np.float64(z[order[i]]) * inv_t - top)
    cut_and_spread(p, keep, pairwise_sum(p[:keep]), top_p, order, probs)


@numba.njit(**JIT)
def filter_probs_kernel(logits, temperature, top_k, top_p, zd, probs, order, p):
    """numpy_backend.filter_probs into probs (V,) float64; zd, p (V,) float64 and order (V,)
    int64 are scratch.  No filter: every index kept in index order, no sort, loops over
    contiguous arrays (they vectorise).  top-k up to SELECT_MAX: select_top, no sort.  top-p
    alone: the sort of top_p_candidates only, the normaliser the sum over all V in index order
    (the reference's sorted order's to rounding).  Else a stable sort of V.  A division by one
    number is a multiplication by its reciprocal (a float64 division occupies the divider for
    many cycles, a multiply does not; the reference's quotients to about 1 ulp, as fexp's exp)."""
    V = logits.shape[0]
    inv_t = 1.0 / temperature
    for j in range(V):
        zd[j] = np.float64(logits[j]) * inv_t
    top = largest(zd)                    # the largest logit (zd[order[0]] when sorted)
    keep = min(top_k, V) if top_k > 0 else V
    if keep == V and top_p >= 1.0:
        for j in range(V):
            p[j] = fexp(zd[j] - top)     # fexp vectorises, unlike libm's exp: V exps a character
        r = 1.0 / pairwise_sum(p)
        for j in range(V):
            p[j] *= r
        r = 1.0 / pairwise_sum(p)
        for j in range(V):
            probs[j] = p[j] * r
        return
    if keep <= SELECT_MAX and keep < V:
        select_top(zd, keep, order)
    else:
        n, total = 0, 0.0
        if keep == V:
            for j in range(V):
                p[j] = fexp(zd[j] - top)
            total = pairwise_sum(p)
            n = top_p_candidates(p, total, top_p, probs, order)
        if n > TOP_P_SORT_MAX:
            pc = zd[:n]                                   # (n,) the candidates' p; zd is spent
            for i in range(n):
                pc[i] = p[order[i]]
            top_p_by_threshold(pc, order[:n], total, top_p, p[:n], probs)
            return
        if n > 0:
            sort_desc(zd, order[:n])
            for i in range(n):
                p[i] = fexp(zd[order[i]] - top)
            cut_and_spread(p, n, total, top_p, order, probs)
            return
        if V > 256:
            order[:] = np.argsort(-zd, kind="mergesort")   # stable; allocates, but V is large here
        else:
            select_top(zd, V, order)             # all V by insertion: the stable order
    kept_probs(zd, 1.0, keep, top_p, order, p, probs)


CDF_BLOCK = 64           # sample_index walks the cumulative sum by blocks of this many probabilities


@numba.njit(inline="always", **JIT)
def sample_index(probs, u):
    """First index whose cumulative probability exceeds u * total (inverse CDF).  The running
    sum advances a block at a time (each block's pairwise_sum vectorises) up to the block where
    it would pass the target, then one probability at a time: the reference's running sums to
    rounding, without a V-long chain of dependent additions."""
    V = probs.shape[0]
    target = u * pairwise_sum(probs)
    cum, j = 0.0, 0
    while j + CDF_BLOCK <= V and V >= 4 * CDF_BLOCK:             # a few blocks: the plain walk is as quick
        block = pairwise_sum(probs[j:j + CDF_BLOCK])
        if cum + block > target:
            break
        cum += block
        j += CDF_BLOCK
    while j < V:
        cum += probs[j]
        if cum > target:
            return j
        j += 1
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
