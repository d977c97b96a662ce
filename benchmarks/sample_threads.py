"""Batch-1 generation on the numba backend: the one-thread kernel against a team of threads.

    python benchmarks/sample_threads.py [H ...]        (default: 64 128 192 256 384 512 1024)

Random float32 weights, E128 L2 V65, the layer-0 table on, 2,000 characters in calls of 32
(as generation.generate_text makes them, so the team's hand-over between calls is in the
figure), best of 5; chars/s for the one-thread kernel (generate_kernel) and the team
(numba_team.py, numba.get_num_threads() threads), side by side in one process, taking
turns.  This is what SAMPLE_ROWS_PER_THREAD in lstm_engine/backends/numba_backend.py was
chosen from.  Run it on an idle machine.
"""
import sys
import time

import numba
import numpy as np

from lstm_engine.backends import numba_backend as nb

E, L, V = 128, 2, 65
CHUNK = 32


def weights(H, rng):
    w = {"Emb": rng.standard_normal((V, E)).astype(np.float32) * 0.1,
         "Wy": rng.standard_normal((H, V)).astype(np.float32) * 0.1, "by": np.zeros(V, np.float32)}
    for l in range(L):
        w[f"W{l}"] = rng.standard_normal((H + (E if l == 0 else H), 4 * H)).astype(np.float32) * 0.05
        w[f"b{l}"] = np.zeros(4 * H, np.float32)
    return w


def chars_per_s(w, H, team, n=2000, reps=5):
    nb.SAMPLE_ROWS_PER_THREAD = 1 if team else 1 << 62
    best = np.inf
    for _ in range(reps):
        cache = {"chars": n}
        state = [[np.zeros((1, H), np.float32), np.zeros((1, H), np.float32)] for _ in range(L)]
        rng, token = np.random.default_rng(1), 0
        t0 = time.perf_counter()
        for k in range(0, n, CHUNK):
            token = int(nb.generate(w, state, token, min(CHUNK, n - k), 1.0, 0, 1.0, False, rng, cache)[-1])
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(sizes):
    keep = nb.SAMPLE_ROWS_PER_THREAD
    print(f"numba threads: {numba.get_num_threads()}; E{E} L{L} V{V} float32, {CHUNK} characters a call; "
          f"SAMPLE_ROWS_PER_THREAD now {keep}")
    print(f"{'H':>5} {'weights':>10} {'one thread':>11} {'team':>10} {'ratio':>6}")
    try:
        for H in sizes:
            w = weights(H, np.random.default_rng(0))
            chars_per_s(w, H, False, 64, 1), chars_per_s(w, H, True, 64, 1)      # compile, warm caches
            one = par = 0.0
            for _ in range(2):
                one, par = max(one, chars_per_s(w, H, False)), max(par, chars_per_s(w, H, True))
            n_w = sum(w[f"W{l}"].size for l in range(L))
            print(f"{H:>5} {n_w:>10,} {one:>11,.0f} {par:>10,.0f} {par / one:>5.2f}x", flush=True)
    finally:
        nb.SAMPLE_ROWS_PER_THREAD = keep


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [64, 128, 192, 256, 384, 512, 1024])
