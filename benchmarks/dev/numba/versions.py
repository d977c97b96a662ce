"""Superseded Numba kernel versions, kept for `python benchmarks/micro.py` (llm.c style).

Each entry of KERNEL_VERSIONS has the signature of the numba backend function of its name,
so the micro-benchmark validates every version against the NumPy reference and times it
next to the others.  What changed between versions, and what it bought (measured on the
2-core development machine, float32, one thread unless said):

lstm_forward / lstm_backward
    v1  the gate math as first written: one fused loop per row for the forward gates, three
        loops for the backward.  LLVM did not vectorise them (too many arrays for its run-time
        alias checks): ~40 and 2.8 ns per hidden unit and row.  One layer at the seed shape
        (E128 H128 B32 T50): forward 11.0 ms, backward 5.3 ms.
    v2  one short loop per gate and quantity: 1.9 and 1.2 ns per unit; forward 2.9 ms,
        backward 5.1 ms (the products dominate it).  On the calling thread, BLAS single-threaded.
    v3  v2 on numba's threads: each thread runs the whole time loop for its slice of the batch
        (batch rows never interact, so there is no barrier per step) and the big products are
        split by columns.  The backend's default for mid sizes: forward 1.75 ms, backward 3.1 ms.
    v4  v2 on numba's threads split by hidden units, a barrier per step (numba_lstm_cols):
        each product keeps all B rows and reads only the thread's part of W_h.  The default
        for big steps (B*H*4H >= COLUMNS_MIN_MACS): at H=512 1.3x v3, at H=1024 1.1-1.4x.
softmax_xent
    v1  row sum accumulated in the exp loop: a sequential reduction, not vectorised (0.42 ms
        at seed, N=1600, V=65).
    v2  exps in one loop, then a reassociated sum that vectorises (0.12 ms).

Dimension legend: T time, B batch, I input, H hidden, G = 4H, N = T*B, V vocabulary.
"""
from __future__ import annotations

from lstm_engine.kernels.numba import cache as numba_cache  # noqa: F401  (first: the cache locator for everything below)

import numba
import numpy as np

from lstm_engine.kernels.numba_blas import gemm
from lstm_engine.kernels.numba.fastmath import fexp, fsigmoid, ftanh

BACKEND = "numba"
JIT = dict(cache=True, error_model="numpy", fastmath={"contract"})


@numba.njit(inline="always", **JIT)
def gates_forward_v1(z, b, c_prev, c, h):
    """v1: one loop per row doing everything; stays scalar (see the module docstring)."""
    B, G = z.shape
    H = G // 4
    for r in range(B):
        zr, cp, cr, hr = z[r], c_prev[r], c[r], h[r]
        for j in range(H):
            i = fsigmoid(zr[j] + b[j])
            f = fsigmoid(zr[H + j] + b[H + j])
            g = ftanh(zr[2 * H + j] + b[2 * H + j])
            o = fsigmoid(zr[3 * H + j] + b[3 * H + j])
            ct = f * cp[j] + i * g
            zr[j], zr[H + j], zr[2 * H + j], zr[3 * H + j] = i, f, g, o
            cr[j] = ct
            hr[j] = o * ftanh(ct)


@numba.njit(inline="always", **JIT)
def gates_backward_v1(dh_out, dh, dc, a, c, c_prev, dz):
    """v1: three loops per row (the first split); the last two stay scalar."""
    B, G = a.shape
    H = G // 4
    for r in range(B):
        ar, dzr, dcr, dhr, cr, cpr = a[r], dz[r], dc[r], dh[r], c[r], c_prev[r]
        dor = dh_out[r]
        for j in range(H):
            dhr[j] += dor[j]
        for j in range(H):
            o = ar[3 * H + j]
            tc = ftanh(cr[j])
            dcr[j] += dhr[j] * o * (1 - tc * tc)
            dzr[3 * H + j] = dhr[j] * tc * o * (1 - o)
        for j in range(H):
            i, f, g = ar[j], ar[H + j], ar[2 * H + j]
            dct = dcr[j]
            dzr[j] = dct * g * i * (1 - i)
            dzr[H + j] = dct * cpr[j] * f * (1 - f)
            dzr[2 * H + j] = dct * i * (1 - g * g)
            dcr[j] = dct * f


@numba.njit(**JIT)
def lstm_forward_kernel_v1(x, W, b, h0, c0, hs, cs, acts, prod, rows, units):
    """numba_lstm.lstm_forward_kernel with the v1 gates, one thread (prod, rows, units are ignored)."""
    T, B, I = x.shape
    H = h0.shape[1]
    gemm(x.reshape(T * B, I), W[H:], acts.reshape(T * B, 4 * H))
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gemm(h_prev, W[:H], acts[t], False, False, 1.0, 1.0)
        gates_forward_v1(acts[t], b, c_prev, cs[t], hs[t])


@numba.njit(**JIT)
def lstm_backward_kernel_v1(dhs, x, W, h0, c0, hs, cs, acts, dzs, dh, dc, dx, dW, db, prod, rows, units):
    """numba_lstm.lstm_backward_kernel with the v1 gates, one thread (prod, rows, units are ignored)."""
    T, B, I = x.shape
    H = h0.shape[1]
    for t in range(T - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        gates_backward_v1(dhs[t], dh, dc, acts[t], cs[t], c_prev, dzs[t])
        gemm(dzs[t], W[:H], dh, False, True)
    dz2 = dzs.reshape(T * B, 4 * H)
    gemm(h0, dzs[0], dW[:H], True, False)
    gemm(hs.reshape(T * B, H)[:(T - 1) * B], dz2[B:], dW[:H], True, False, 1.0, 1.0)
    db[:] = 0
    for n in range(T * B):
        for j in range(4 * H):
            db[j] += dz2[n, j]
    gemm(x.reshape(T * B, I), dz2, dW[H:], True, False)
    gemm(dz2, W[H:], dx.reshape(T * B, I), False, True)


@numba.njit(**JIT)
def softmax_xent_kernel_v1(logits, targets, dlogits, need_grad, nt):
    """v1 of numba_output.softmax_xent_kernel: the row sum inside the exp loop, one thread (nt is ignored)."""
    N, V = logits.shape
    total = 0.0
    for n in range(N):
        z = logits[n]
        e = dlogits[n] if need_grad else dlogits[0]
        m = z[0]
        for j in range(1, V):
            m = max(m, z[j])
        e[0] = fexp(z[0] - m)
        s = e[0]
        for j in range(1, V):
            e[j] = fexp(z[j] - m)
            s += e[j]
        total += np.log(np.float64(s)) - np.float64(z[targets[n]] - m)
        if need_grad:
            inv = 1 / (s * N)
            for j in range(V):
                e[j] = e[j] * inv
            e[targets[n]] -= 1 / N
    return total / N


def _be():
    from lstm_engine.backends import numba_backend
    return numba_backend


def _split(mode, B, H):
    """(prod, rows, units) for version v2 (mode 0), v3 (1), v4 (2)."""
    nt = numba.get_num_threads()
    if mode == 0 or nt < 2:
        return None, None, None
    return (nt, min(nt, B), None) if mode == 1 else (nt, None, min(nt, H))


def _forward(kernel=None, mode=0):
    return lambda x, W, b, h0, c0: _be()._lstm_forward(x, W, b, h0, c0, kernel=kernel,
                                                       split=_split(mode, *h0.shape))


def _backward(kernel=None, mode=0):
    return lambda dhs, dhT, dcT, cache: _be()._lstm_backward(dhs, dhT, dcT, cache, kernel=kernel,
                                                             split=_split(mode, *dhT.shape))


KERNEL_VERSIONS = {
    "lstm_forward": {"v1": _forward(lstm_forward_kernel_v1), "v2": _forward(), "v3": _forward(mode=1),
                     "v4": _forward(mode=2)},
    "lstm_backward": {"v1": _backward(lstm_backward_kernel_v1), "v2": _backward(), "v3": _backward(mode=1),
                      "v4": _backward(mode=2)},
    "softmax_xent": {
        "v1": lambda logits, targets, need_grad=True: _be().softmax_xent(logits, targets, need_grad,
                                                                          kernel=softmax_xent_kernel_v1),
        "v2": lambda logits, targets, need_grad=True: _be().softmax_xent(logits, targets, need_grad),
    },
}
