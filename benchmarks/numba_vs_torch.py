"""Numba backend against PyTorch on this machine: training and batch-1 sampling chars/s.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/numba_vs_torch.py seed --steps 5

Training: nn.Embedding -> nn.LSTM -> nn.Linear -> cross-entropy -> backward ->
clip_grad_norm_(5) -> Adam against Model.forward_backward -> clip -> Adam of lstm-engine,
chars/s = B*T per step.  The two are timed step by step in alternation, so a busy
neighbour slows both alike; the median step time is reported.  Sampling: n characters
one at a time (torch: a Python loop over LSTM steps; numba: one generate call).

Dimension legend: E embedding, H hidden, L layers, B batch, T window, V = 65 vocabulary.
"""
from __future__ import annotations

import argparse
import statistics
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
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb, lstm, lin = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)
    params = [*emb.parameters(), *lstm.parameters(), *lin.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    x = torch.randint(0, V, (T, B))
    y = torch.randint(0, V, (T, B))
    state = (torch.zeros(L, B, H), torch.zeros(L, B, H))

    def step():
        out, _ = lstm(emb(x), state)
        loss = torch.nn.functional.cross_entropy(lin(out).reshape(T * B, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    return step


def torch_sample_fn(E, H, L, n, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb, lstm, lin = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)

    @torch.no_grad()
    def sample():
        state = (torch.zeros(L, 1, H), torch.zeros(L, 1, H))
        tok = torch.zeros(1, 1, dtype=torch.long)
        for _ in range(n):
            out, state = lstm(emb(tok), state)
            p = torch.softmax(lin(out[0, 0]) / 0.8, -1)
            tok = torch.multinomial(p, 1).view(1, 1)
    return sample


def engine_train_step_fn(backend, E, H, L, B, T):
    from lstm_engine.backends import get_backend
    from lstm_engine.model import Model, ModelConfig
    from lstm_engine.optim import Adam, AdamConfig
    be = get_backend(backend)
    model = Model(ModelConfig(V, E, H, L), be, seed=0)
    opt = Adam(model.params, be, AdamConfig())
    rng = np.random.default_rng(0)
    x, y = be.asarray(rng.integers(0, V, (T, B))), be.asarray(rng.integers(0, V, (T, B)))
    state = model.zero_state(B)

    def step():
        loss, grads, _ = model.forward_backward(x, y, state)
        _, scale = opt.clip_scale(grads)
        opt.update(model.params, grads, 2e-3, scale)
    return step


def engine_sample_fn(backend, E, H, L, n):
    from lstm_engine.backends import get_backend
    from lstm_engine.model import Model, ModelConfig
    be = get_backend(backend)
    model = Model(ModelConfig(V, E, H, L), be, seed=0)

    def sample():
        be.generate(model.params, model.zero_state(1), 0, n, 0.8, 0, 1.0, False, np.random.default_rng(0))
    return sample


def alternate(fns, seconds, min_reps=3):
    """Call each fn once (warm-up, compile), then in turns until `seconds` -> median times."""
    first = {}
    for name, f in fns.items():
        t = time.perf_counter()
        f()
        first[name] = time.perf_counter() - t
    times = {name: [] for name in fns}
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or min(len(v) for v in times.values()) < min_reps:
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}, first


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", choices=CONFIGS)
    ap.add_argument("--what", default="both", choices=("train", "sample", "both"))
    ap.add_argument("--seconds", type=float, default=10.0, help="time per comparison after warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--chars", type=int, default=0, help="characters per sampling call (default by size)")
    ap.add_argument("--numpy", action="store_true", help="also time the numpy backend")
    a = ap.parse_args()
    E, H, L, B, T = CONFIGS[a.config]
    backends = ["numba"] + (["numpy"] if a.numpy else [])
    print(f"{a.config}: E{E} H{H} L{L} B{B} T{T} V{V}, torch threads {a.threads}")
    if a.what in ("train", "both"):
        fns = {"torch": torch_train_step_fn(E, H, L, B, T, a.threads)}
        fns.update({be: engine_train_step_fn(be, E, H, L, B, T) for be in backends})
        med, first = alternate(fns, a.seconds)
        for name, t in med.items():
            print(f"  train  {name:6s} {B * T / t:10,.0f} chars/s  ({t * 1e3:8.2f} ms/step, first call "
                  f"{first[name]:.2f} s)  x{med['torch'] / t:.2f} of torch")
    if a.what in ("sample", "both"):
        n = a.chars or max(50, min(2000, int(2e8 / (8 * H * H * L + 1))))
        fns = {"torch": torch_sample_fn(E, H, L, n, a.threads)}
        fns.update({be: engine_sample_fn(be, E, H, L, n) for be in backends})
        med, first = alternate(fns, a.seconds)
        for name, t in med.items():
            print(f"  sample {name:6s} {n / t:10,.0f} chars/s  ({n} chars per call, first call "
                  f"{first[name]:.2f} s)  x{med['torch'] / t:.2f} of torch")


if __name__ == "__main__":
    main()
