"""Batch-1 generation on the numba backend: one thread against the row-split kernel on all threads.

    python benchmarks/sample_threads.py [H ...]        (default: 128 192 256 384 512 1024)

Random float32 weights, E128 L2 V65, the layer-0 table on, 2,000 characters a call, best of 5;
chars/s for the one-thread kernel (generate_kernel) and the threaded one (generate_kernel_par),
side by side in one process.  This is what SAMPLE_PARALLEL_MIN_MACS in
lstm_engine/backends/numba_backend.py was chosen from.  Run it on an idle machine.
"""
import sys
import time

import numba
import numpy as np

from lstm_engine.backends import numba_backend as nb

E, L, V = 128, 2, 65


def weights(H, rng):
    w = {"Emb": rng.standard_normal((V, E)).astype(np.float32) * 0.1,
         "Wy": rng.standard_normal((H, V)).astype(np.float32) * 0.1, "by": np.zeros(V, np.float32)}
    for l in range(L):
        w[f"W{l}"] = rng.standard_normal((H + (E if l == 0 else H), 4 * H)).astype(np.float32) * 0.05
        w[f"b{l}"] = np.zeros(4 * H, np.float32)
    return w


def chars_per_s(w, H, threaded, n=2000, reps=5):
    nb.SAMPLE_PARALLEL_MIN_MACS = 0 if threaded else 1 << 62
    cache, best = {"chars": 10 ** 6}, np.inf
    for _ in range(reps):
        state = [[np.zeros((1, H), np.float32), np.zeros((1, H), np.float32)] for _ in range(L)]
        t0 = time.perf_counter()
        nb.generate(w, state, 0, n, temperature=1.0, rng=np.random.default_rng(1), cache=cache)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(sizes):
    keep = nb.SAMPLE_PARALLEL_MIN_MACS
    print(f"numba threads: {numba.get_num_threads()}; E{E} L{L} V{V} float32; threshold now {keep:,} weights")
    print(f"{'H':>5} {'weights':>10} {'one thread':>11} {'threaded':>10} {'ratio':>6}")
    try:
        for H in sizes:
            w = weights(H, np.random.default_rng(0))
            chars_per_s(w, H, False, 50, 1), chars_per_s(w, H, True, 50, 1)      # compile, warm caches
            one, par = chars_per_s(w, H, False), chars_per_s(w, H, True)
            n_w = sum(w[f"W{l}"].size for l in range(L))
            print(f"{H:>5} {n_w:>10,} {one:>11,.0f} {par:>10,.0f} {par / one:>5.2f}x")
    finally:
        nb.SAMPLE_PARALLEL_MIN_MACS = keep


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [128, 192, 256, 384, 512, 1024])
