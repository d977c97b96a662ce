"""Where a numba training step's time goes, by backend call, beside a PyTorch step.

    python benchmarks/step_profile.py karpathy [--steps 40] [--alone]

The bench harness's runners (lstm_engine/bench): one numba step and one PyTorch step take turns
(--alone: numba only), after five warm-up steps each; every call the model makes into the numba
backend is timed, and the table gives its milliseconds per step.  The numbers depend on the host's
speed of the minute: compare rows within one run.
"""
import argparse
import collections
import time

import numpy as np

from lstm_engine.backends import numba_backend as be
from lstm_engine.bench.configs import parse_configs
from lstm_engine.bench.harness import EngineRunner, make_batch

CALLS = ["embed_lstm_forward", "embed_lstm_backward", "lstm_forward", "lstm_backward", "embed_cell_forward",
         "embed_cell_backward", "cell_forward", "cell_backward", "linear_forward", "linear_backward",
         "softmax_xent", "global_norm", "adam_update"]


def timed(totals, counts):
    """Wrap every backend call in CALLS so its time adds to totals[name]; a call made from inside
    another (cell_forward runs lstm_forward for the lstm) counts for the outer one only."""
    depth = [0]
    for name in CALLS:
        fn = getattr(be, name)

        def wrapper(*args, _fn=fn, _name=name, **kwargs):
            depth[0] += 1
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    totals[_name] += time.perf_counter() - t
                    counts[_name] += 1
        setattr(be, name, wrapper)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="karpathy", help="a bench config (name or E,H,L,B,T[,V])")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--alone", action="store_true", help="no PyTorch steps in between")
    a = ap.parse_args()
    cfg = parse_configs(a.config)[0]
    batch = make_batch(cfg)
    totals, counts = collections.defaultdict(float), collections.Counter()
    timed(totals, counts)
    engine = EngineRunner(be, cfg, batch)
    peer = None
    if not a.alone:
        from lstm_engine.bench.torch_peer import TorchRunner
        peer = TorchRunner("cpu", cfg, batch, threads=None)
    for _ in range(5):
        engine.train_step()
        if peer:
            peer.train_step()
    totals.clear()
    counts.clear()
    mine, theirs = [], []
    for _ in range(a.steps):
        t = time.perf_counter()
        engine.train_step()
        mine.append(time.perf_counter() - t)
        if peer:
            t = time.perf_counter()
            peer.train_step()
            theirs.append(time.perf_counter() - t)
    ms = np.median(mine) * 1e3
    line = f"{cfg.name}: numba step median {ms:.2f} ms (min {min(mine) * 1e3:.2f})"
    if peer:
        tm = np.median(theirs) * 1e3
        line += f"; torch {tm:.2f} ms (min {min(theirs) * 1e3:.2f}); torch / numba {tm / ms:.3f}"
    print(line)
    total = sum(totals.values())
    for name in sorted(totals, key=totals.get, reverse=True):
        print(f"  {name:22s} {totals[name] / a.steps * 1e3:7.3f} ms/step  {counts[name] // a.steps} call(s)"
              f"  {totals[name] / total * 100:5.1f}%")
    print(f"  {'backend calls':22s} {total / a.steps * 1e3:7.3f} ms/step (the rest: Python between them)")


if __name__ == "__main__":
    main()
