"""The numba kernels' hand-written GEMM (kernels/numba/gemm.py) against SciPy's BLAS (benchmarks/dev/numba/blas.py),
the same GEMM reading op(B) from a copy with padded rows and from column panels packed once (the time loops'
products: `padded`, `panels`), and the bfloat16 ones where the CPU has them: vdpbf16ps (kernels/numba/gemm_bf16.py, AVX512_BF16) and
AMX tiles (kernels/numba/gemm_amx.py).

    python benchmarks/gemm.py [--threads 1] [--seconds 0.3]

Each row is one product shape the LSTM kernels issue (m, k, n; op(A) (m,k) @ op(B) (k,n),
trans flags as the kernels pass them).  Both are first checked against NumPy in float64
(scale-relative error), then timed on one thread (BLAS pinned to one thread, as the kernels
run it); GFLOP/s = 2 m k n / best time.  The bfloat16 columns pack both operands every call (as
LSTM_ENGINE_TUNE=bf16 runs the big products; the time loops pack W_h once a call) and their error is
against the float32 operands' product.  Run it on an idle machine; the machine line says
which BLAS kernels OpenBLAS picked (OPENBLAS_CORETYPE moves BLAS, not the hand-written GEMM).
"""
import argparse
import importlib.util
import time
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from lstm_engine.kernels.numba import gemm_amx, gemm_bf16
from lstm_engine.kernels.numba.gemm import gemm as own_gemm
from lstm_engine.kernels.numba.gemm import gemm_panels, padded, padded_t, panels, panels_t


def _load(path):
    """A module of benchmarks/dev by its path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"dev_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


blas_gemm = _load(Path(__file__).resolve().parent / "dev" / "numba" / "blas.py").gemm

# (what, m, k, n, trans_a, trans_b)
SHAPES = (
    ("seed: h W_h per thread (16 of 32 rows)", 16, 128, 512, False, False),
    ("karpathy: h W_h per thread (25 of 50 rows)", 25, 128, 512, False, False),
    ("seed: dz W_h^T per thread (transposed copy)", 16, 512, 128, False, False),
    ("H384: h W_h (64 rows, one thread's columns)", 64, 384, 768, False, False),
    ("medium: h W_h (64 rows, one thread's columns)", 64, 512, 1024, False, False),
    ("medium: dz W_h^T (64 rows, one thread's units)", 64, 2048, 256, False, True),
    ("seed: dW_h = H^T dZ (1600 rows)", 128, 1600, 512, True, False),
    ("karpathy: dW_h = H^T dZ (2500 rows, one thread's columns)", 128, 2500, 256, True, False),
    ("medium: dW_h = H^T dZ (6400 rows, one thread's columns)", 512, 6400, 1024, True, False),
    ("seed: dx = dZ W_x^T", 1600, 512, 128, False, True),
    ("H384: x W_x (3200 rows)", 3200, 384, 1536, False, False),
    ("output: x Wy (1600 x 128 x 65)", 1600, 128, 65, False, False),
)


@numba.njit
def _run_blas(A, B, C, ta, tb, reps):
    for _ in range(reps):
        blas_gemm(A, B, C, ta, tb, 1.0, 0.0)


@numba.njit
def _run_own(A, B, C, ta, tb, reps):
    for _ in range(reps):
        own_gemm(A, B, C, ta, tb, 1.0, 0.0)


@numba.njit
def _run_padded(A, Bp, C, reps):
    for _ in range(reps):
        own_gemm(A, Bp, C, False, False, 1.0, 0.0)


@numba.njit
def _run_panels(A, P, C, reps):
    for _ in range(reps):
        gemm_panels(A, P, C, 1.0, 0.0)


def _packed_runs(B, tb):
    """op(B) copied once as the time loops copy W_h: (padded run, panels run), each a run(A, B, C, ta, tb, reps)."""
    Bp = padded_t(B) if tb else padded(B)
    P = panels_t(B) if tb else panels(B)
    return (lambda A, _B, C, ta, tb, reps: _run_padded(A, Bp, C, reps),
            lambda A, _B, C, ta, tb, reps: _run_panels(A, P, C, reps))


def _run_bf16(A, B, C, ta, tb, reps):
    for _ in range(reps):
        gemm_bf16.mm_bf16(A, B, C, ta, tb, 1.0, 0.0, None)


def _run_amx(A, B, C, ta, tb, reps):
    for _ in range(reps):
        gemm_amx.mm_amx(A, B, C, ta, tb, 1.0, 0.0, None)


def _rate(run, A, B, C, ta, tb, flops, seconds):
    run(A, B, C, ta, tb, 1)                                       # compile / warm up
    reps = max(1, int(0.02 * 100e9 / flops))                      # ~20 ms a timing at 100 GFLOP/s
    best, t_end = float("inf"), time.perf_counter() + seconds
    while best == float("inf") or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        run(A, B, C, ta, tb, reps)
        best = min(best, (time.perf_counter() - t0) / reps)
    return flops / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="timed seconds per candidate and shape")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    blas = "; ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})" for i in threadpool_info()
                     if i.get("user_api") == "blas")
    bf16 = gemm_bf16.available()                                    # (ok, why not) each
    amx = gemm_amx.available() if bf16[0] else (False, "no bfloat16 products")
    extra = [(name, run) for name, run, ok in (("bf16", _run_bf16, bf16), ("amx", _run_amx, amx)) if ok[0]]
    runs = [_run_blas, _run_own] + [run for _, run in extra]
    print(f"one thread; BLAS: {blas}; bfloat16: {'yes' if bf16[0] else bf16[1]}; AMX: {'yes' if amx[0] else amx[1]}")
    print(f"{'shape':48s} {'m x k x n':>18s}  {'BLAS GF/s':>9s}  {'own GF/s':>8s}  {'own/BLAS':>8s}"
          f"  {'padded GF/s':>11s}  {'panels GF/s':>11s}"
          + "".join(f"  {n + ' GF/s':>9s}  {n + '/BLAS':>9s}" for n, _ in extra)
          + "  err " + " / ".join(["BLAS", "own"] + [n for n, _ in extra]))
    with threadpool_limits(1, user_api="blas"):
        for what, m, k, n, ta, tb in SHAPES:
            A = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            B = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
            C = np.empty((m, n), np.float32)
            rates, errs = [], []
            for run in runs:
                rates.append(_rate(run, A, B, C, ta, tb, 2.0 * m * k * n, args.seconds))
                run(A, B, C, ta, tb, 1)
                errs.append(np.abs(C - want).max() / np.abs(want).max())
            loops = ""                                              # the time loops' products: op(A) = A
            for run in (_packed_runs(B, tb) if not ta else ()):
                rate = _rate(run, A, B, C, ta, tb, 2.0 * m * k * n, args.seconds)
                run(A, B, C, ta, tb, 1)
                assert np.abs(C - want).max() <= 1e-5 * np.abs(want).max(), "padded / panels product differs"
                loops += f"  {rate:11.0f}"
            loops = loops or f"  {'-':>11s}  {'-':>11s}"
            cols = "".join(f"  {r:9.0f}  {r / rates[0]:8.2f}x" for r in rates[2:])
            print(f"{what:48s} {f'{m} x {k} x {n}':>18s}  {rates[0]:9.0f}  {rates[1]:8.0f}  {rates[1] / rates[0]:7.2f}x"
                  f"{loops}{cols}  " + " / ".join(f"{e:.1e}" for e in errs))


if __name__ == "__main__":
    main()
