"""How fast one core streams the sampler's weights: kernels/numba/sample.py's matvec_acc alone.

    python benchmarks/sample_matvec.py [KxG ...]     (default: the seed-size sampler's products)

Batch-1 sampling reads every weight once a character, so its speed is bound by this figure:
z (G,) += v (K,) @ M (K,G) in float32, the matrix resident in the core's L2 (it is re-read at
every call, as at every character).  Each product is checked against float64 NumPy first, then
timed in loops of calls on one thread, best of 7; GB/s counts the matrix's bytes.  Run it on an
idle machine.
"""
import sys
import time

import numba
import numpy as np

from lstm_engine.bench.machine import machine_info, machine_line
from lstm_engine.kernels.numba.jit import JIT
from lstm_engine.kernels.numba.sample import matvec_acc

DEFAULT = ["128x512", "256x512", "128x384", "256x384", "64x384", "128x65"]   # lstm, gru layers; output


@numba.njit(**JIT)
def calls(v, M, z, n):
    """n calls of matvec_acc on the same operands (z accumulates; only the time counts)."""
    for _ in range(n):
        matvec_acc(v, M, z)


def main(shapes):
    print(machine_line(machine_info()))
    print(f"{'K x G':>10} {'KiB':>6} {'us a call':>10} {'GB/s':>7} {'GFLOP/s':>8} {'max rel err':>12}")
    rng = np.random.default_rng(0)
    for shape in shapes:
        K, G = map(int, shape.split("x"))
        M = rng.standard_normal((K, G)).astype(np.float32)                  # (K,G)
        v = rng.standard_normal(K).astype(np.float32)                       # (K,)
        z = np.zeros(G, np.float32)                                         # (G,)
        calls(v, M, z, 1)
        want = v.astype(np.float64) @ M.astype(np.float64)                  # (G,)
        err = np.abs(z - want).max() / np.abs(want).max()
        n = max(1, int(2e8 // (K * G)))
        best = min(_timed(v, M, z, n) for _ in range(7)) / n
        print(f"{shape:>10} {M.nbytes / 1024:6.0f} {best * 1e6:10.2f} {M.nbytes / best / 1e9:7.1f} "
              f"{2 * K * G / best / 1e9:8.1f} {err:12.1e}")


def _timed(v, M, z, n):
    t0 = time.perf_counter()
    calls(v, M, z, n)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
