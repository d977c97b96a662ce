"""How fast one core streams the sampler's weights: kernels/numba/sample.py's products alone,
the row loop (matvec_acc, over M as it is stored) beside the panel loop the sampler runs
(panel_acc, over M cut into panels of PANEL columns by numba_team.as_panels).

    python benchmarks/sample_matvec.py [KxG ...]     (default: the seed-size sampler's products)

Batch-1 sampling reads every weight once a character, so its speed is bound by this figure:
z (G,) += v (K,) @ M (K,G) in float32, the matrix resident in the core's L2 (it is re-read at
every call, as at every character).  Each product is checked against float64 NumPy first (the
panel loop against the row loop bit for bit), then timed in loops of calls on one thread, the
two loops in turns, best of 7 each; GB/s counts the matrix's bytes.  Run it on an idle machine.
"""
import sys
import time

import numba
import numpy as np

from lstm_engine.bench.machine import machine_info, machine_line
from lstm_engine.kernels.numba.jit import JIT
from lstm_engine.backends.numba_team import as_panels
from lstm_engine.kernels.numba.sample import PANEL, matvec_acc, panel_acc

DEFAULT = ["128x512", "256x512", "128x384", "256x384", "64x384", "128x65"]   # lstm, gru layers; output


@numba.njit(**JIT)
def row_calls(v, M, z, n):
    """n calls of matvec_acc on the same operands (z accumulates; only the time counts)."""
    for _ in range(n):
        matvec_acc(v, M, z)


@numba.njit(**JIT)
def panel_calls(v, Mp, z, n):
    """n calls of panel_acc on the same operands."""
    for _ in range(n):
        panel_acc(v, Mp, z)


def main(shapes):
    print(machine_line(machine_info()))
    print(f"{'K x G':>10} {'KiB':>6} {'loop':>6} {'us a call':>10} {'GB/s':>7} {'GFLOP/s':>8} {'max rel err':>12}")
    rng = np.random.default_rng(0)
    for shape in shapes:
        K, G = map(int, shape.split("x"))
        M = rng.standard_normal((K, G)).astype(np.float32)                  # (K,G)
        Mp = as_panels(M, PANEL)                                            # (nb,K,PANEL)
        v = rng.standard_normal(K).astype(np.float32)                       # (K,)
        z = np.zeros(G, np.float32)                                         # (G,)
        zp = np.zeros(Mp.shape[0] * PANEL, np.float32)                      # (nb PANEL,)
        row_calls(v, M, z, 1)
        panel_calls(v, Mp, zp, 1)
        if not np.array_equal(z, zp[:G]):
            raise SystemExit(f"{shape}: the panel loop's sums differ from the row loop's")
        want = v.astype(np.float64) @ M.astype(np.float64)                  # (G,)
        err = np.abs(z - want).max() / np.abs(want).max()
        n = max(1, int(2e8 // (K * G)))
        best = {"rows": np.inf, "panels": np.inf}
        for _ in range(7):
            best["rows"] = min(best["rows"], _timed(row_calls, v, M, z, n) / n)
            best["panels"] = min(best["panels"], _timed(panel_calls, v, Mp, zp, n) / n)
        for loop, t in best.items():
            print(f"{shape:>10} {M.nbytes / 1024:6.0f} {loop:>6} {t * 1e6:10.2f} {M.nbytes / t / 1e9:7.1f} "
                  f"{2 * K * G / t / 1e9:8.1f} {err:12.1e}")


def _timed(calls, v, M, z, n):
    t0 = time.perf_counter()
    calls(v, M, z, n)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
