"""Numba kernel for batch-1 generation: n characters in one jitted call, no Python per step.

Dimension legend: L layers, H hidden, G = 4H, E embedding, V vocabulary, n characters.

Per character: every layer's cell (z = b + h_{t-1} W_h + x_t W_x as hand-written
matrix-vector loops over the rows of the fused W, then the gates), the output
projection, temperature, top-k / top-p filtering and an inverse-CDF draw.  The
uniforms come in as an array drawn by the caller from its numpy Generator, one per
sampled character, exactly as the reference draws them, so both backends turn the same
seed into the same text.  Filtering follows numpy_backend.filter_probs step by step.
"""
from __future__ import annotations

from . import numba_cache  # noqa: F401  (first: the cache locator for everything below)

import numba
import numpy as np

from .numba_math import fsigmoid, ftanh

JIT = dict(cache=True, error_model="numpy", fastmath={"contract"})


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
def cell_step(W, b, x, h, c, z):
    """One layer, one character, in place: h, c (H,) <- LSTM(W (H+I,G), b, x (I,), h, c)."""
    H = h.shape[0]
    for j in range(4 * H):
        z[j] = b[j]
    matvec_acc(h, W[:H], z)
    matvec_acc(x, W[H:], z)
    for j in range(H):
        i = fsigmoid(z[j])
        f = fsigmoid(z[H + j])
        g = ftanh(z[2 * H + j])
        o = fsigmoid(z[3 * H + j])
        c[j] = f * c[j] + i * g
        h[j] = o * ftanh(c[j])


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
        p[i] = np.exp(zd[order[i]] - top)
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
def generate_kernel(Emb, Ws, bs, Wy, by, h, c, token, temperature, top_k, top_p, greedy, us, out):
    """Emb (V,E); Ws, bs tuples over layers of W (H+I,G), b (G,); Wy (H,V), by (V,);
    h, c (L,H) state, updated in place; us (n,) uniforms (ignored when greedy)
    -> out (n,) int64 token ids."""
    L, H = h.shape
    V = by.shape[0]
    z = np.empty(4 * H, Wy.dtype)
    logits = np.empty(V, Wy.dtype)
    zd, probs, p = np.empty(V), np.empty(V), np.empty(V)
    order = np.empty(V, np.int64)
    for k in range(out.shape[0]):
        for l in range(L):
            x = Emb[token] if l == 0 else h[l - 1]
            cell_step(Ws[l], bs[l], x, h[l], c[l], z)
        for j in range(V):
            logits[j] = by[j]
        matvec_acc(h[L - 1], Wy, logits)
        if greedy:
            token = 0
            for j in range(1, V):
                if logits[j] > logits[token]:
                    token = j
        else:
            filter_probs_kernel(logits, temperature, top_k, top_p, zd, probs, order, p)
            token = sample_index(probs, us[k])
        out[k] = token
