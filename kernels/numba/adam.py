"""Numba kernels for the optimiser: global gradient norm and a fused Adam update.

Both take tuples of flat (1-D) views, one per parameter, so one jitted call covers every
parameter.  Adam mirrors the reference operation by operation in the parameter dtype
(no FMA contraction), so NumPy and Numba take bit-identical steps from equal gradients.
"""
from __future__ import annotations

import numba
import numpy as np

from .jit import REASSOC, STRICT


@numba.njit(**REASSOC)
def sum_squares_kernel(grads):
    """grads: tuple of 1-D arrays -> sum of squares of every element (float64).  Reassociated so
    that LLVM keeps several partial sums in vector registers (one running sum would wait on the
    add latency); the order differs from NumPy's only in float64 rounding."""
    total = 0.0
    for g in grads:
        acc = 0.0
        for i in range(g.shape[0]):
            x = np.float64(g[i])
            acc += x * x
        total += acc
    return total


@numba.njit(**STRICT)
def adam_kernel(params, grads, ms, vs, lr, beta1, one_b1, beta2, one_b2, eps, bc1, bc2, grad_scale):
    """In place over tuples of 1-D arrays (one per parameter, all of one dtype).  Scalars
    arrive computed in float64 and cast to that dtype (one_b1 = 1 - beta1 ...), so the
    arithmetic matches NumPy's weak-scalar rules step by step:
        g = grad * scale;  m = m*b1 + (1-b1)*g;  v = v*b2 + (1-b2)*g*g
        p -= lr * (m/bc1) / (sqrt(v/bc2) + eps)"""
    for k in range(len(params)):
        p, gr, m, v = params[k], grads[k], ms[k], vs[k]
        for i in range(p.shape[0]):
            g = gr[i] * grad_scale
            mi = m[i] * beta1
            mi = mi + one_b1 * g
            vi = v[i] * beta2
            vi = vi + one_b2 * g * g
            m[i] = mi
            v[i] = vi
            p[i] -= lr * (mi / bc1) / (np.sqrt(vi / bc2) + eps)
