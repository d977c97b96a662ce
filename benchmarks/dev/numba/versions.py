"""Earlier Numba kernel versions next to the current ones, for benchmarks/dev/micro.py.

Each entry of KERNEL_VERSIONS has the signature of the numba backend function of its name,
so micro.py validates every version against the NumPy reference and times it next to the
others.  The versions (docs/numba.md has their timings):

lstm_forward / lstm_backward
    v1  the gate math as one fused loop per row (forward) and three loops (backward), products
        through BLAS (blas.py), one thread: LLVM does not vectorise these gate loops (too many
        arrays for its run-time alias checks).
    v2  kernels/numba/lstm_layer.py on the calling thread: one short loop per gate and quantity.
    v3  the same on numba's threads, each running the whole time loop for its slice of the batch
        (rows never interact: no barrier per step), the big products split by columns.
    v4  the same on numba's threads split by hidden units, a barrier per step
        (kernels/numba/lstm_layer_columns.py).
softmax_xent
    v1  the row sum accumulated in the exp loop: a sequential reduction, not vectorised.
    v2  the exps in one loop (fexp), then a reassociated sum that vectorises.
    v3  kernels/numba/output_layer.py on the calling thread: v2 with fexp_nonpos (the shifted
        logits are <= 0: one 2^n factor, no upper clamp).

The current versions are called as kernels with the thread plan each wants (the backend's
own choice is the "numba" row).  The earlier ones compile without an on-disk cache.

Dimension legend: T time, B batch, I input, H hidden, G = 4H, N = T*B, V vocabulary.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numba
import numpy as np

from lstm_engine.backends.numba_backend import LayerCache
from lstm_engine.kernels.numba import lstm_layer, output_layer
from lstm_engine.kernels.numba.fastmath import fexp, fsigmoid, ftanh, like
from lstm_engine.kernels.numba.jit import JIT

BACKEND = "numba"
DEV = dict(JIT, cache=False)     # not stamped with the package's kernels: compiled per process


def _sibling(stem):
    """benchmarks/dev/numba/<stem>.py, loaded by path once per process."""
    name = f"dev_numba_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), f"{stem}.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


gemm = _sibling("blas").gemm


@numba.njit(inline="always", **DEV)
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


@numba.njit(inline="always", **DEV)
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


@numba.njit(**DEV)
def lstm_forward_kernel_v1(x, W, b, h0, c0, hs, cs, acts, prod, rows, units):
    """lstm_layer.lstm_forward_kernel with the v1 gates, one thread (prod, rows, units are ignored)."""
    T, B, I = x.shape
    H = h0.shape[1]
    gemm(x.reshape(T * B, I), W[H:], acts.reshape(T * B, 4 * H))
    for t in range(T):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gemm(h_prev, W[:H], acts[t], False, False, 1.0, 1.0)
        gates_forward_v1(acts[t], b, c_prev, cs[t], hs[t])


@numba.njit(**DEV)
def lstm_backward_kernel_v1(dhs, x, W, h0, c0, hs, cs, acts, dzs, dh, dc, dx, dW, db, prod, rows, units):
    """lstm_layer.lstm_backward_kernel with the v1 gates, one thread (prod, rows, units are ignored)."""
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


@numba.njit(**DEV)
def softmax_xent_kernel_v1(logits, targets, dlogits, need_grad, nt):
    """v1 of output_layer.softmax_xent_kernel: the row sum inside the exp loop, one thread (nt is ignored)."""
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


@numba.njit(**DEV)
def softmax_xent_kernel_v2(logits, targets, dlogits, need_grad, nt):
    """v2 of output_layer.softmax_xent_kernel: the row sum apart from the exp loop, whose exps are
    fexp's (two 2^n factors, both clamps), one thread (nt is ignored)."""
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
        s = output_layer.row_sum(e)
        total += np.log(np.float64(s)) - np.float64(z[targets[n]] - m)
        if need_grad:
            inv = like(s, 1 / (s * N))
            for j in range(V):
                e[j] = e[j] * inv
            e[targets[n]] -= 1 / N
    return total / N


# ----------------------------------------------------------------------------
# The versions as backend functions: each calls its kernel with the thread plan it wants
# ----------------------------------------------------------------------------

def _plan(mode, B, H):
    """(prod, rows, units) as lstm_layer's entry kernels take them: v2 the calling thread (mode 0),
    v3 threads on slices of the batch (1), v4 threads on slices of the hidden units (2)."""
    nt = numba.get_num_threads()
    if mode == 0 or nt < 2:
        return None, None, None
    return (nt, min(nt, B), None) if mode == 1 else (nt, None, min(nt, H))


def _forward(kernel, mode=0):
    """lstm_forward (the backend's signature) through kernel (lstm_forward_kernel's signature)."""
    def lstm_forward(x, W, b, h0, c0):
        x, W, b, h0, c0 = (np.ascontiguousarray(a) for a in (x, W, b, h0, c0))
        T, B, _ = x.shape
        H = h0.shape[1]
        hs, cs = np.empty((T, B, H), x.dtype), np.empty((T, B, H), x.dtype)     # (T,B,H)
        acts = np.empty((T, B, 4 * H), x.dtype)                                 # (T,B,G)
        kernel(x, W, b, h0, c0, hs, cs, acts, *_plan(mode, B, H))
        return hs, hs[-1], cs[-1], LayerCache(x, None, None, W, h0, c0, hs, cs, acts)
    return lstm_forward


def _backward(kernel, mode=0):
    """lstm_backward (the backend's signature) through kernel (lstm_backward_kernel's signature)."""
    def lstm_backward(dhs, dhT, dcT, cache):
        x, W = cache.x, cache.W
        T, B, H = cache.hs.shape
        dh, dc = np.array(dhT, order="C"), np.array(dcT, order="C")          # (B,H) in: at T, out: at 0
        dzs = np.empty((T, B, 4 * H), x.dtype)                                  # (T,B,G)
        dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty(4 * H, x.dtype)
        kernel(np.ascontiguousarray(dhs), x, W, cache.h0, cache.c0, cache.hs, cache.cs, cache.acts, dzs, dh, dc,
               dx, dW, db, *_plan(mode, B, H))
        return dx, dW, db, dh, dc
    return lstm_backward


def _softmax(kernel):
    """softmax_xent (the backend's signature) through kernel (softmax_xent_kernel's), on the calling thread.
    The gradient buffer is kept between calls, as the backend's pool keeps it: a fresh (N,V) array at a
    large vocabulary is a fresh mmap whose page faults would outweigh the kernel."""
    kept = {}

    def softmax_xent(logits, targets, need_grad=True):
        logits, targets = np.ascontiguousarray(logits), np.ascontiguousarray(targets, dtype=np.int64)
        shape = logits.shape if need_grad else (1, logits.shape[1])
        d = kept.get((shape, logits.dtype))
        if d is None:
            d = kept[shape, logits.dtype] = np.empty(shape, logits.dtype)                # (N,V) or scratch
        loss = kernel(logits, targets, d, bool(need_grad), None)
        return float(loss), (d if need_grad else None)
    return softmax_xent


KERNEL_VERSIONS = {
    "lstm_forward": {"v1": _forward(lstm_forward_kernel_v1), "v2": _forward(lstm_layer.lstm_forward_kernel),
                     "v3": _forward(lstm_layer.lstm_forward_kernel, mode=1),
                     "v4": _forward(lstm_layer.lstm_forward_kernel, mode=2)},
    "lstm_backward": {"v1": _backward(lstm_backward_kernel_v1), "v2": _backward(lstm_layer.lstm_backward_kernel),
                      "v3": _backward(lstm_layer.lstm_backward_kernel, mode=1),
                      "v4": _backward(lstm_layer.lstm_backward_kernel, mode=2)},
    "softmax_xent": {"v1": _softmax(softmax_xent_kernel_v1), "v2": _softmax(softmax_xent_kernel_v2),
                     "v3": _softmax(output_layer.softmax_xent_kernel)},
}
