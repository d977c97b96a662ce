"""The numba backend's output layer at a config's size: its three calls (linear_forward,
softmax_xent, linear_backward) and the passes over the (N,V) logits beside the products (the bias
added, the bias gradient summed: on one thread and on numba's threads; Wy^T copied, which the BLAS
product of dy Wy^T does without).

    python benchmarks/output_layer.py [CONFIG] [--rounds 30]     (default: the Tang poems' E128,H256,L2,B32,T50,V6746)

Dimension legend: N = B*T rows, H hidden, V vocabulary.  Every row is timed once a round, the rows
in turns, so the host's drift reaches them alike; medians and minima in ms.  The three calls are
first checked against the NumPy reference.  At a large vocabulary the logits (N x V float32) are
tens of megabytes, beyond the caches: each pass over them is a pass through memory.  Run it on an
idle machine.
"""
import argparse
import time

import numba
import numpy as np

from lstm_engine.backends import numba_backend as be
from lstm_engine.backends import numpy_backend as ref
from lstm_engine.bench.configs import parse_configs
from lstm_engine.bench.machine import machine_info, machine_line


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="E128,H256,L2,B32,T50,V6746")
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    cfg = parse_configs(a.config)[0]
    N, H, V, nt = cfg.B * cfg.T, cfg.H, cfg.V, numba.get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, H)).astype(np.float32)                        # (N,H)
    W = (rng.standard_normal((H, V)) / np.sqrt(H)).astype(np.float32)         # (H,V)
    b = rng.standard_normal(V).astype(np.float32)                             # (V,)
    targets = rng.integers(0, V, N)                                           # (N,)
    K = be._kernels().out
    logits = be.linear_forward(x, W, b)                                       # (N,V)
    loss, dy = be.softmax_xent(logits, targets)                               # dy (N,V)
    want = ref.linear_forward(x, W, b)
    assert np.abs(logits - want).max() <= 1e-4 * np.abs(want).max(), "linear_forward"
    assert abs(loss - ref.softmax_xent(want, targets)[0]) <= 1e-4 * abs(loss), "softmax_xent"
    for name, got, exp in zip(("dx", "dWy", "dby"), be.linear_backward(x, dy, W), ref.linear_backward(x, dy, W)):
        assert np.abs(got - exp).max() <= 1e-4 * np.abs(exp).max(), name
    y, db = np.empty_like(logits), np.empty(V, np.float32)                    # (N,V), (V,)
    rows = {"linear_forward": lambda: be.linear_forward(x, W, b),
            "softmax_xent": lambda: be.softmax_xent(logits, targets),
            "linear_backward": lambda: be.linear_backward(x, dy, W),
            "bias added, 1 thread": lambda: K.add_bias(y, b, None),
            f"bias added, {nt} threads": lambda: K.add_bias(y, b, nt),
            "bias gradient, 1 thread": lambda: K.bias_grad(dy, db, None),
            f"bias gradient, {nt} threads": lambda: K.bias_grad(dy, db, nt),
            "Wy^T copied": lambda: np.ascontiguousarray(W.T)}
    for fn in rows.values():
        fn()
    times = {name: [] for name in rows}
    for _ in range(a.rounds):
        for name, fn in rows.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(machine_line(machine_info()))
    print(f"output layer N{N} H{H} V{V}, float32, {nt} numba threads, {a.rounds} rounds in turns")
    for name, ts in times.items():
        print(f"  {name:26s} median {np.median(ts) * 1e3:8.2f} ms   min {min(ts) * 1e3:8.2f}")


if __name__ == "__main__":
    main()
