"""Numba kernel for the output loss: fused softmax cross-entropy, forward and backward.

Dimension legend: N = T*B rows, V vocabulary.

One pass per row: the row maximum, the shifted exponentials (written straight into the
gradient row), their sum, the log-sum-exp loss of the target, then the gradient
(softmax - onehot) / N in place.  Numerically stable: every exponent is <= 0.
"""
from __future__ import annotations

from . import numba_cache  # noqa: F401  (first: the cache locator for everything below)

import numba
import numpy as np

from .numba_math import fexp

JIT = dict(cache=True, error_model="numpy", fastmath={"contract"})


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def row_sum(e):
    """Sum in the row dtype, reassociated so that it vectorises."""
    s = e[0] * 0
    for j in range(e.shape[0]):
        s += e[j]
    return s


@numba.njit(**JIT)
def softmax_xent_kernel(logits, targets, dlogits, need_grad):
    """logits (N,V), targets (N,) int -> mean loss (float64); dlogits (N,V) filled when
    need_grad (it is the exp scratch either way, so pass one row (1,V) when not)."""
    N, V = logits.shape
    total = 0.0
    for n in range(N):
        z = logits[n]
        e = dlogits[n] if need_grad else dlogits[0]
        m = z[0]
        for j in range(1, V):
            m = max(m, z[j])
        for j in range(V):
            e[j] = fexp(z[j] - m)
        s = row_sum(e)
        total += np.log(np.float64(s)) - np.float64(z[targets[n]] - m)   # -log softmax_y
        if need_grad:
            inv = 1 / (s * N)                                 # d(-log p_y)/dz = (p - onehot) / N
            for j in range(V):
                e[j] = e[j] * inv
            e[targets[n]] -= 1 / N
    return total / N
