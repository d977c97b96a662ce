"""The Numba backend against PyTorch, timed step by step in alternation (results: docs/numba.md).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/numba_vs_torch.py seed --reps 8
    ... --what sample --chars 1000        batch-1 generation instead of training
    ... --cold                            first-call time with an empty numba cache (compile), subprocess

Training: nn.Embedding -> nn.LSTM -> nn.Linear -> cross-entropy -> backward ->
clip_grad_norm_(5) -> Adam, against lstm-engine's Model.forward_backward -> clip -> Adam on
the numba backend; chars/s = B*T per step.  Sampling: n characters at batch 1 (torch: a
Python loop of LSTM steps, softmax / 0.8 and multinomial; numba: one generate call).
numba and torch each run with 1 and with 2 threads (numba.set_num_threads,
torch.set_num_threads; BLAS is pinned to one thread by the backend).  All candidates take
turns, one step each, so a busy neighbour slows them alike; medians are reported.

Dimension legend: E embedding, H hidden, L layers, B batch, T window, V = 65 vocabulary.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

CONFIGS = {   # name: (E, H, L, B, T)
    "tiny": (16, 32, 1, 1, 25),
    "seed": (128, 128, 2, 32, 50),
    "karpathy": (65, 128, 2, 50, 50),
    "medium": (128, 512, 2, 64, 100),
    "large": (256, 1024, 3, 64, 100),
}
V = 65


def torch_train_step_fn(E, H, L, B, T, threads):
    import torch
    torch.manual_seed(0)
    emb, lstm, lin = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)
    params = [*emb.parameters(), *lstm.parameters(), *lin.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    x, y = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))
    state = (torch.zeros(L, B, H), torch.zeros(L, B, H))

    def step():
        torch.set_num_threads(threads)
        out, _ = lstm(emb(x), state)
        loss = torch.nn.functional.cross_entropy(lin(out).reshape(T * B, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    return step


def torch_sample_fn(E, H, L, n, threads):
    import torch
    torch.manual_seed(0)
    emb, lstm, lin = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)

    @torch.no_grad()
    def sample():
        torch.set_num_threads(threads)
        state = (torch.zeros(L, 1, H), torch.zeros(L, 1, H))
        tok = torch.zeros(1, 1, dtype=torch.long)
        for _ in range(n):
            out, state = lstm(emb(tok), state)
            tok = torch.multinomial(torch.softmax(lin(out[0, 0]) / 0.8, -1), 1).view(1, 1)
    return sample


def numba_train_step_fn(E, H, L, B, T, threads):
    import numba

    from lstm_engine.backends import get_backend
    from lstm_engine.core.model import Model, ModelConfig
    from lstm_engine.core.optim import Adam, AdamConfig
    be = get_backend("numba")
    model = Model(ModelConfig(V, E, H, L), be, seed=0)
    opt = Adam(model.params, be, AdamConfig())
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    state = [model.zero_state(B)]

    def step():
        numba.set_num_threads(threads)
        loss, grads, state[0] = model.forward_backward(x, y, state[0])      # state carried, as in training
        _, scale = opt.clip_scale(grads)
        opt.update(model.params, grads, 2e-3, scale)
    return step


def numba_sample_fn(E, H, L, n, threads):
    import numba

    from lstm_engine.backends import get_backend
    from lstm_engine.core.model import Model, ModelConfig
    be = get_backend("numba")
    model = Model(ModelConfig(V, E, H, L), be, seed=0)
    rng = np.random.default_rng(0)

    def sample():
        numba.set_num_threads(threads)
        be.generate(model.params, model.zero_state(1), 0, n, 0.8, 0, 1.0, False, rng)
    return sample


def alternate(fns, reps):
    """One warm-up call each, then `reps` rounds of one call each -> {name: median seconds}."""
    for f in fns.values():
        f()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def cold_first_call(config, what, chars):
    """First call in a fresh process with an empty numba cache: import + JIT compile."""
    code = (f"import time, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import numba_vs_torch as b; "
            f"E, H, L, B, T = b.CONFIGS[{config!r}]; t = time.perf_counter(); "
            + ("f = b.numba_train_step_fn(E, H, L, B, T, 2)" if what == "train" else
               f"f = b.numba_sample_fn(E, H, L, {chars}, 2)")
            + "; f(); t1 = time.perf_counter(); f(); print(t1 - t, time.perf_counter() - t1)")
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, NUMBA_CACHE_DIR=cache), check=True).stdout.split()
    return float(out[0]), float(out[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", choices=CONFIGS)
    ap.add_argument("--what", default="train", choices=("train", "sample"))
    ap.add_argument("--reps", type=int, default=5, help="rounds after one warm-up call each")
    ap.add_argument("--chars", type=int, default=500, help="characters per sampling call")
    ap.add_argument("--cold", action="store_true", help="only the first call with an empty numba cache")
    a = ap.parse_args()
    E, H, L, B, T = CONFIGS[a.config]
    if a.cold:
        first, steady = cold_first_call(a.config, a.what, a.chars)
        print(f"{a.config:9s} {a.what:6s} numba first call {first:6.1f} s (empty cache: imports + compile), "
              f"next call {steady:.3f} s")
        return
    chars = B * T if a.what == "train" else a.chars
    fns = {}
    for nt in (1, 2):
        if a.what == "train":
            fns[f"numba-{nt}"] = numba_train_step_fn(E, H, L, B, T, nt)
            fns[f"torch-{nt}"] = torch_train_step_fn(E, H, L, B, T, nt)
        else:
            fns[f"numba-{nt}"] = numba_sample_fn(E, H, L, a.chars, nt)
            fns[f"torch-{nt}"] = torch_sample_fn(E, H, L, a.chars, nt)
    med = alternate(fns, a.reps)
    best_torch = min(med["torch-1"], med["torch-2"])
    load = os.getloadavg()[0]
    for name in sorted(med):
        t = med[name]
        print(f"{a.config:9s} {a.what:6s} {name:8s} {chars / t:11,.0f} chars/s  {t * 1e3:9.2f} ms/call  "
              f"x{best_torch / t:5.2f} of the faster torch   (load {load:.1f})")


if __name__ == "__main__":
    main()
