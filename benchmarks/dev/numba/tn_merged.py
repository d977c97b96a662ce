"""A layer's two weight-gradient products, h^T dz and x^T dz, as one packed product over the stacked
rows of [h | x]: each panel of dz is packed once for both instead of once for each.

    python benchmarks/dev/numba/tn_merged.py 2450 128 128 256     # N H I n: karpathy's layer 1, one thread's columns

Dimension legend: N rows of the window (T*B less the first step's), H and I the rows of C that h and x
give (A1 (N,H), A2 (N,I)), n columns of dz (one thread's share of 4H).  One thread; the shipped
`gemm._gemm_tn` twice, the merged version, and BLAS (np.dot twice) take turns in each round, each
validated against NumPy first.  Not a kernel version for micro.py (no KERNEL_VERSIONS): a product.
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from lstm_engine.kernels.numba import gemm as g
from lstm_engine.kernels.numba.jit import JIT

DEV = dict(JIT, cache=False)           # experiments stay out of the package's stamped disk cache


@numba.njit(**DEV)
def gemm_tn2(A1f, lda1, m1, A2f, lda2, m2, Bf, ldb, Cf, ldc, n, k, alpha, overwrite):
    """C (m1+m2, n) (+)= alpha [A1 | A2]^T (m1+m2, k) @ B (k, n), as g._gemm_tn for one A: per k
    block, A1's and A2's rows packed one after the other, then each column panel of B packed once
    and passed over by the row blocks of both."""
    m = m1 + m2
    kb = min(k, g.KC)
    Ap = np.empty(m * kb, Cf.dtype)                                  # (m, kc) both A's k block, by blocks
    P = g.line_buffer(kb * g.NR, Cf)                                 # (kc, NR) one panel of B
    one, zero = np.int64(1), np.int64(0)
    for k0 in range(0, k, g.KC):
        k1 = min(k0 + g.KC, k)
        kc, add = k1 - k0, k0 > 0 or not overwrite
        g.pack_a_t(A1f, lda1, k0, k1, m1, Ap, g.MR, g.LAST)
        g.pack_a_t(A2f, lda2, k0, k1, m2, Ap[m1 * kc:], g.MR, g.LAST)
        for j0 in range(0, n, g.NR):
            nr = min(g.NR, n - j0)
            g._pack(Bf, ldb, k0, k1, j0, nr, P)
            for s, e in ((zero, np.int64(m1)), (np.int64(m1), np.int64(m))):   # A1's blocks, then A2's
                i0 = s
                while i0 < e:
                    mr = g._block_rows(e - i0)
                    g._rows(Ap[i0 * kc - i0:], one, mr, P, g.NR, 0, Cf, ldc, i0, mr, j0, nr, zero, kc, alpha, add)
                    i0 += mr


@numba.njit(**DEV)
def two(A1, A2, B, C):
    """C[:H] = A1^T B, C[H:] = A2^T B by the shipped _gemm_tn, one call each (B packed twice)."""
    k, m1 = A1.shape
    m2, n, ldb = A2.shape[1], C.shape[1], B.strides[0] // B.itemsize
    g._gemm_tn(g._flat(A1), m1, g._flat(B), ldb, g._flat(C), n, m1, n, k, 1.0, True)
    g._gemm_tn(g._flat(A2), m2, g._flat(B), ldb, g._flat(C[m1:]), n, m2, n, k, 1.0, True)


@numba.njit(**DEV)
def merged(A1, A2, B, C):
    """The same C by gemm_tn2 (B packed once)."""
    k, m1 = A1.shape
    m2, n, ldb = A2.shape[1], C.shape[1], B.strides[0] // B.itemsize
    gemm_tn2(g._flat(A1), m1, m1, g._flat(A2), m2, m2, g._flat(B), ldb, g._flat(C), n, n, k, 1.0, True)


def blas(A1, A2, B, C):
    np.dot(A1.T, B, out=C[:A1.shape[1]])
    np.dot(A2.T, B, out=C[A1.shape[1]:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("N", type=int)
    ap.add_argument("H", type=int)
    ap.add_argument("I", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    A1 = rng.standard_normal((a.N, a.H)).astype(np.float32)                         # (N,H) h_{t-1} rows
    A2 = rng.standard_normal((a.N, a.I)).astype(np.float32)                         # (N,I) x_t rows
    dz = rng.standard_normal((a.N, a.n + g.PAD)).astype(np.float32)[:, :a.n]       # (N,n) padded rows, as the layer's
    ref = np.concatenate([A1.astype(np.float64).T @ dz, A2.astype(np.float64).T @ dz])   # (H+I,n)
    runs = {"two": two, "merged": merged, "blas": blas}
    outs = {name: np.zeros((a.H + a.I, a.n), np.float32) for name in runs}          # (H+I,n) each
    for name, f in runs.items():
        f(A1, A2, dz, outs[name])
        err = np.abs(outs[name] - ref).max() / np.abs(ref).max()
        print(f"{name}: max error {err:.1e} of the largest value" + ("" if err <= 1e-4 else "  INVALID"))
    print(f"N{a.N} H{a.H} I{a.I} n{a.n}, one thread, µs: medians of {a.calls} calls a round, in turns")
    for _ in range(a.rounds):
        line = []
        for name, f in runs.items():
            ts = []
            for _ in range(a.calls):
                t = time.perf_counter()
                f(A1, A2, dz, outs[name])
                ts.append(time.perf_counter() - t)
            line.append(f"{name} {np.median(ts) * 1e6:7.0f}")
        print("  ".join(line))


if __name__ == "__main__":
    main()
