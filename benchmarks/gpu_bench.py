"""Time the cupy backend against PyTorch's cuDNN LSTM on the same GPU (the fallback to `lstm-engine bench`).

    python benchmarks/gpu_bench.py [--configs seed,karpathy,medium,large] [--out FILE.jsonl] [--budget SECONDS]
                                   [--cells lstm,peephole,coupled,gru]

Training: chars/s of whole steps (forward, BPTT, clipping, Adam; the loss read back every step, as
the trainer does) for the cupy backend with each step path (fused kernels with and without CUDA
graphs, cuBLAS + cell kernel) and its automatic choice, against torch nn.LSTM (cuDNN) with TF32 off
(the same FP32 arithmetic) and with PyTorch's defaults (cuDNN may use TF32).
Sampling: tokens/s of 512 tokens for 1 sequence (in chunks of 32, the CLI's first call) and of 256
tokens for 64 sequences at once (generate_batch), graphs on and off, against a torch loop that also
stays on the GPU (multinomial, no host round trip).
--cells: the same rows per cell; the variants (peephole, coupled, gru) run one step path (cuBLAS +
cell kernel, kernels/cuda/cells.cu), so only their `auto` row is timed; the torch peer is nn.GRU
for gru and none for peephole and coupled (PyTorch has neither: compare them with the lstm rows).
Prints a table; writes one JSON line per measurement (with its `cell`).  Stops starting new measurements once
--budget seconds have passed, so it fits a short GPU lease.

Dimension legend: V vocab, E embedding, H hidden, L layers, B batch, T seq-len, S sequences.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONFIGS = {   # the named configs of lstm_engine/bench/harness.py (V = 65), so the two benchmarks line up
    "seed": dict(V=65, E=128, H=128, L=2, B=32, T=50),
    "karpathy": dict(V=65, E=65, H=128, L=2, B=50, T=50),
    "medium": dict(V=65, E=128, H=512, L=2, B=64, T=100),
    "large": dict(V=65, E=256, H=1024, L=3, B=64, T=100),
}
CUPY_TRAIN_VARIANTS = [   # name, step path, graphs, how the cuBLAS path calls cuBLAS
    ("auto", "auto", True, "direct"), ("fused+graph", "fused", True, "direct"),
    ("fused eager", "fused", False, "direct"), ("cublas", "cublas", False, "direct"),
    ("cublas+graph", "cublas", True, "direct"),
    ("cublas-matmul", "cublas", False, "matmul"), ("persist", "persist", True, "direct"),
]


class Budget:
    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds

    def left(self):
        return self.end - time.perf_counter()


def timed(step, sync, warmup=3, min_time=0.4, max_steps=40, min_steps=3):
    """Run step() warmup times, then until min_time has passed (min_steps..max_steps) -> s/step."""
    for _ in range(warmup):
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while n < min_steps or (n < max_steps and time.perf_counter() - t0 < min_time):
        step()
        n += 1
    sync()
    return (time.perf_counter() - t0) / n


# ----------------------------------------------------------------------------
# cupy backend
# ----------------------------------------------------------------------------

def cupy_train(cfg, step_mode, graphs, blas="direct", cell="lstm"):
    from lstm_engine.backends import cupy_backend as cb
    from lstm_engine.core.model import Model, ModelConfig
    from lstm_engine.core.optim import Adam, AdamConfig
    cb.set_options(step=step_mode, graphs=graphs, blas=blas)
    mc = ModelConfig(cfg["V"], cfg["E"], cfg["H"], cfg["L"], 0.0, "float32", cell=cell)
    model = Model(mc, cb, seed=0)
    opt = Adam(model.params, cb, AdamConfig())
    rng = np.random.default_rng(0)
    T, B = cfg["T"], cfg["B"]
    windows = [(cb.asarray(rng.integers(0, cfg["V"], (T, B)).astype(np.int32)),
                cb.asarray(rng.integers(0, cfg["V"], (T, B)).astype(np.int32))) for _ in range(4)]
    box = {"state": model.zero_state(B), "k": 0}

    def step():
        x, y = windows[box["k"] % 4]
        box["k"] += 1
        loss, grads, box["state"] = model.forward_backward(x, y, box["state"])
        _, scale = opt.clip_scale(grads)
        opt.update(model.params, grads, 2e-3, scale)

    sec = timed(step, cb.synchronize)
    return {"chars_per_s": B * T / sec, "ms_per_step": 1e3 * sec,
            "path": cb.step_mode(B, cfg["H"], "float32") if cell == "lstm" else "cublas (cells.cu)"}


def cupy_sample(cfg, S, n, graphs, chunk=32, cell="lstm"):
    from lstm_engine.backends import cupy_backend as cb
    from lstm_engine.core.model import Model, ModelConfig
    cb.set_options(graphs=graphs)
    mc = ModelConfig(cfg["V"], cfg["E"], cfg["H"], cfg["L"], 0.0, "float32", cell=cell)
    model = Model(mc, cb, seed=0)
    rng = np.random.default_rng(0)
    state = model.zero_state(S)
    tokens = list(range(S))

    def run():
        done = 0
        while done < n:
            k = min(chunk, n - done) if S == 1 else n
            ids = cb.generate_batch(model.params, state, tokens, k, temperature=0.8, rng=rng, cell=cell)
            tokens[:] = ids[:, -1].tolist()
            done += k

    sec = timed(run, cb.synchronize, warmup=2, min_time=0.3, max_steps=10, min_steps=2)
    return {"tokens_per_s": S * n / sec, "ms_per_token_step": 1e3 * sec / n}


# ----------------------------------------------------------------------------
# torch cuDNN
# ----------------------------------------------------------------------------

def _torch_model(cfg, cell="lstm"):
    import torch
    from torch import nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(cfg["V"], cfg["E"])
            self.lstm = (nn.GRU if cell == "gru" else nn.LSTM)(cfg["E"], cfg["H"], cfg["L"])
            self.out = nn.Linear(cfg["H"], cfg["V"])

        def forward(self, x, state):
            y, state = self.lstm(self.emb(x), state)
            return self.out(y), state

    torch.manual_seed(0)
    return LM().cuda()


def _torch_tf32(on):
    import torch
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def _torch_state(cell, L, B, H):
    """nn.LSTM's (h, c) or nn.GRU's h, zeros on the GPU."""
    import torch
    h = torch.zeros(L, B, H, device="cuda")
    return h if cell == "gru" else (h, torch.zeros(L, B, H, device="cuda"))


def torch_train(cfg, tf32, cell="lstm"):
    import torch
    import torch.nn.functional as F
    _torch_tf32(tf32)
    model = _torch_model(cfg, cell)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    T, B, V, H, L = cfg["T"], cfg["B"], cfg["V"], cfg["H"], cfg["L"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    windows = [(torch.randint(0, V, (T, B), device="cuda", generator=gen),
                torch.randint(0, V, (T, B), device="cuda", generator=gen)) for _ in range(4)]
    box = {"state": _torch_state(cell, L, B, H), "k": 0}

    def step():
        x, y = windows[box["k"] % 4]
        box["k"] += 1
        logits, state = model(x, box["state"])
        box["state"] = state.detach() if cell == "gru" else tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        loss.item()                     # the loss comes back every step, as in the trainer

    sec = timed(step, torch.cuda.synchronize)
    return {"chars_per_s": B * T / sec, "ms_per_step": 1e3 * sec, "cudnn": torch.backends.cudnn.version()}


def torch_sample(cfg, S, n, cell="lstm"):
    import torch
    _torch_tf32(False)
    model = _torch_model(cfg, cell).eval()
    L, H = cfg["L"], cfg["H"]

    @torch.no_grad()
    def run():
        x = torch.arange(S, device="cuda").reshape(1, S) % cfg["V"]
        state = _torch_state(cell, L, S, H)
        out = torch.empty(n, S, dtype=torch.long, device="cuda")
        for k in range(n):
            logits, state = model(x, state)
            probs = torch.softmax(logits[0] / 0.8, dim=-1)
            x = torch.multinomial(probs, 1).reshape(1, S)
            out[k] = x[0]
        return out

    sec = timed(run, torch.cuda.synchronize, warmup=1, min_time=0.3, max_steps=5, min_steps=1)
    return {"tokens_per_s": S * n / sec, "ms_per_token_step": 1e3 * sec / n}


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------

def device_info():
    info = {}
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        info = {"device": name.decode() if isinstance(name, bytes) else name, "cupy": cupy.__version__,
                "CUPY_TF32": os.environ.get("CUPY_TF32", "unset")}
    except Exception as e:
        info = {"device": f"unknown ({e})"}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="seed,karpathy,medium,large")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "gpu-out"), "gpu_bench.jsonl"))
    ap.add_argument("--budget", type=float, default=85.0, help="seconds after which no new measurement starts")
    ap.add_argument("--what", default="train,sample")
    ap.add_argument("--variants", default=",".join(v[0] for v in CUPY_TRAIN_VARIANTS),
                    help="cupy training variants to time (names as in the table)")
    ap.add_argument("--samples", default="1,64", help="sequence counts S of the sampling rows")
    ap.add_argument("--cells", default="lstm", help="cells to time: lstm, peephole, coupled, gru")
    args = ap.parse_args(argv)
    budget = Budget(args.budget)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    info = device_info()
    print(f"# {json.dumps(info)}", flush=True)
    from lstm_engine.backends import cupy_backend as cb
    ok, why = cb.is_available()
    if not ok:
        print(f"the cupy backend is not available: {why}")
        with open(args.out, "a") as f:
            f.write(json.dumps(dict(error=f"cupy backend not available: {why}", **info)) + "\n")
        return 1
    rows = []

    def record(config, cell, what, impl, variant, fn, *fargs):
        row = dict(config=config, cell=cell, what=what, impl=impl, variant=variant, dtype="float32", **info)
        if budget.left() <= 0:
            row["skipped"] = "time budget spent"
        else:
            try:
                row.update(fn(*fargs))
            except Exception as e:   # one failing measurement must not stop the others
                row["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:400]
        from lstm_engine.backends import cupy_kernels as ck
        if impl == "cupy":
            row["graph_status"] = dict(ck.GRAPH_STATUS)
            row["blas_graph_status"] = dict(ck.BLAS_GRAPH_STATUS)
            try:
                row["blas_lib"] = type(ck.cublas_module()).__name__
            except Exception as e:
                row["blas_lib"] = f"unavailable ({type(e).__name__})"
        rows.append(row)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        speed = row.get("chars_per_s") or row.get("tokens_per_s")
        shown = f"{speed:>12,.0f}" if speed else f"{row.get('skipped') or row.get('error', '?')}"
        extra = f"  path={row['path']}" if "path" in row else ""
        print(f"{config:<9} {cell:<8} {what:<6} {impl:<6} {variant:<22} {shown}{extra}", flush=True)

    wants = set(args.what.split(","))
    names = [c for c in args.configs.split(",") if c]
    try:
        import torch  # noqa: F401
        have_torch = torch.cuda.is_available()
    except ImportError:
        have_torch = False
    print(f"{'config':<9} {'cell':<8} {'what':<6} {'impl':<6} {'variant':<22} {'chars|tokens /s':>12}")
    for name in names:
        for cell in [c for c in args.cells.split(",") if c]:
            bench_config(record, name, cell, wants, args.variants.split(","), args.samples, have_torch)
    summarize(rows)
    return 0


def bench_config(record, name, cell, wants, variants, samples, have_torch):
    """The rows of one config and cell (torch: nn.LSTM for lstm, nn.GRU for gru, none otherwise)."""
    cfg = CONFIGS[name]
    peer = have_torch and cell in ("lstm", "gru")
    if "train" in wants:
        for variant, mode, graphs, blas in CUPY_TRAIN_VARIANTS:
            if variant not in variants or (cell != "lstm" and variant != "auto"):   # the cells have one path
                continue
            record(name, cell, "train", "cupy", variant, cupy_train, cfg, mode, graphs, blas, cell)
        if peer:
            record(name, cell, "train", "torch", "cudnn fp32 (tf32 off)", torch_train, cfg, False, cell)
            record(name, cell, "train", "torch", "cudnn default (tf32)", torch_train, cfg, True, cell)
    if "sample" in wants:
        for S, n in [(S, 512 if S == 1 else 256) for S in map(int, samples.split(","))]:
            for graphs in (True, False):
                record(name, cell, "sample", "cupy", f"S={S} graph={'on' if graphs else 'off'}",
                       cupy_sample, cfg, S, n, graphs, 32, cell)
            if peer:
                record(name, cell, "sample", "torch", f"S={S}", torch_sample, cfg, S, n, cell)


def summarize(rows):
    """cupy (automatic choice) / torch cuDNN with TF32 off, per config and cell; peephole and
    coupled (no torch peer) against the cupy lstm row."""
    print("\n# ratios: cupy auto vs torch cuDNN fp32 (train), cupy graph=on vs torch (sample); "
          "peephole / coupled vs the cupy lstm")
    by = {(r["config"], r["cell"], r["what"], r["impl"], r["variant"]): r for r in rows}
    for (config, cell, what, impl, variant), r in by.items():
        if impl != "cupy" or r.get("chars_per_s", r.get("tokens_per_s")) is None:
            continue
        peer, against = (cell, "torch") if cell in ("lstm", "gru") else ("lstm", "cupy lstm")
        if what == "train":
            t = by.get((config, peer, "train", "torch", "cudnn fp32 (tf32 off)") if peer == cell
                       else (config, "lstm", "train", "cupy", variant), {})
            if t.get("chars_per_s"):
                print(f"{config:<9} {cell:<8} train  {variant:<14} {r['chars_per_s'] / t['chars_per_s']:.2f}x "
                      f"{against}  (path {r.get('path')})")
        if what == "sample" and variant.endswith("graph=on"):
            t = by.get((config, peer, "sample", "torch", variant.split()[0]) if peer == cell
                       else (config, "lstm", "sample", "cupy", variant), {})
            if t.get("tokens_per_s"):
                print(f"{config:<9} {cell:<8} sample {variant.split()[0]:<5} "
                      f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x {against}")


if __name__ == "__main__":
    sys.exit(main())
