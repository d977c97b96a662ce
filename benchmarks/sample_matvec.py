"""How fast one core streams the sampler's weights: kernels/numba/sample.py's products alone,
the row loop (matvec_acc, over M as it is stored) beside the panel loop the sampler runs
(panel_acc, over M cut into panels of PANEL columns by numba_team.as_panels), and the panel loop
over the panels as bfloat16 pairs (numba_team.bf16_pairs: the sampler under
LSTM_ENGINE_TUNE=bf16 or --products bf16).

    python benchmarks/sample_matvec.py [KxG ...]     (default: the seed-size sampler's products)

Batch-1 sampling reads every weight once a character, so its speed is bound by this figure:
z (G,) += v (K,) @ M (K,G) in float32, the matrix resident in the core's L2 (it is re-read at
every call, as at every character).  Each product is checked against float64 NumPy first (the
panel loop against the row loop bit for bit, the bfloat16 loop against the panel loop over M
rounded to bfloat16 bit for bit), then timed in loops of calls on one thread, the loops in
turns, best of 7 each; GB/s counts the bytes the loop streams.  Run it on an idle machine.
"""
import sys
import time

import numba
import numpy as np

from lstm_engine.bench.machine import machine_info, machine_line
from lstm_engine.kernels.numba.jit import JIT
from lstm_engine.backends.numba_team import as_panels, bf16_pairs, bf16_values
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
        Mb = bf16_pairs(Mp)                                                 # (nb,K,PANEL/2) uint32
        Mr = bf16_values(Mp)                                                # (nb,K,PANEL) the values Mb holds
        zb, zr = np.zeros_like(zp), np.zeros_like(zp)                       # (nb PANEL,)
        row_calls(v, M, z, 1)
        panel_calls(v, Mp, zp, 1)
        panel_calls(v, Mb, zb, 1)
        panel_calls(v, Mr, zr, 1)
        if not np.array_equal(z, zp[:G]):
            raise SystemExit(f"{shape}: the panel loop's sums differ from the row loop's")
        if not np.array_equal(zb, zr):
            raise SystemExit(f"{shape}: the bfloat16 loop's sums differ from the panel loop's over rounded weights")
        want = v.astype(np.float64) @ M.astype(np.float64)                  # (G,)
        errs = {"rows": np.abs(z - want).max(), "bf16": np.abs(zb[:G] - want).max()}
        n = max(1, int(2e8 // (K * G)))
        loops = {"rows": (row_calls, M, z), "panels": (panel_calls, Mp, zp), "bf16": (panel_calls, Mb, zb)}
        best = dict.fromkeys(loops, np.inf)
        for _ in range(7):
            for loop, (calls, A, out) in loops.items():
                best[loop] = min(best[loop], _timed(calls, v, A, out, n) / n)
        for loop, t in best.items():
            err = errs.get(loop, errs["rows"]) / np.abs(want).max()
            nbytes = M.nbytes // 2 if loop == "bf16" else M.nbytes
            print(f"{shape:>10} {M.nbytes / 1024:6.0f} {loop:>6} {t * 1e6:10.2f} {nbytes / t / 1e9:7.1f} "
                  f"{2 * K * G / t / 1e9:8.1f} {err:12.1e}")


def _timed(calls, v, M, z, n):
    t0 = time.perf_counter()
    calls(v, M, z, n)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
