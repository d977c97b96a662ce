"""Batch-1 sampling on the numba backend with float32, bfloat16 and int8 weights, beside PyTorch.

    python benchmarks/sample_weights.py [CONFIG ...] [--seconds S] [--repeats R] [--threads N]
                                        [--top-k K] [--top-p P]
    python benchmarks/sample_weights.py --checkpoint CKPT

    (default configs: seed medium E128,H256,L2,B32,T50,V6746; any `lstm-engine bench` config)

What `lstm-engine generate --products float32|bf16|int8` streams a character: the model's float32
weights as stored, rounded to bfloat16, or 8-bit codes with a float32 scale per column
(docs/numba.md, "Batch-1 sampling").  Each config is one model (the bench's weights), sampled in
the bench's calls of SAMPLE_CHUNK characters; the four samplers take turns, repeat by repeat, so
a ratio to PyTorch is of the same seconds (median over the repeats); % bound: of the chars/s at which
the numba threads read the weights a character needs (`lstm-engine bench`'s memory-bandwidth bound,
lstm_engine/bench/harness.py), for each sampler's bytes.  --top-k / --top-p: every
sampler (PyTorch's by topk / sort, cumsum and multinomial) draws from the filtered set.  Run it on
an idle machine.
--checkpoint: the other side of the trade, the loss of a trained model on the val split of its
corpus with its weights as each sampler multiplies them (float32 on the values they stand for).
"""
import argparse
import statistics

import numpy as np

from lstm_engine.backends import numba_backend as nb
from lstm_engine.bench.configs import parse_configs
from lstm_engine.bench.harness import SAMPLE_CHUNK, WEIGHT_BYTES, EngineRunner, make_batch, time_batch, warm_up
from lstm_engine.bench.machine import machine_info, machine_line, thread_settings
from lstm_engine.bench.stream import read_rate
from lstm_engine.bench.torch_peer import TorchRunner

WEIGHTS = ("float32", "bf16", "int8")


class WeightsRunner:
    """An EngineRunner whose samples stream `weights` (numba_backend.use_products), each with its
    own generation cache, so that the packed weights of one never replace another's."""

    def __init__(self, runner, weights, filters):
        self.runner, self.weights, self.filters = runner, weights, filters

    def sample(self):
        nb.use_products(self.weights)
        try:
            return self.runner.sample(SAMPLE_CHUNK, **self.filters)
        finally:
            nb.use_products("float32")


def measure(cfg, seconds, repeats, filters):
    """-> {name: [chars/s per repeat]} for the numba samplers and PyTorch, taking turns; filters
    the top_k, top_p every sampler applies."""
    batch = make_batch(cfg)
    runners = {f"numba {w}": WeightsRunner(EngineRunner(nb, cfg, batch), w, filters).sample for w in WEIGHTS}
    peer = TorchRunner("cpu", cfg, batch)
    runners["torch"] = lambda: peer.sample(SAMPLE_CHUNK, **filters)
    calls = {name: warm_up(fn, lambda: None, seconds, repeats)[1] for name, fn in runners.items()}
    out = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            out[name].append(SAMPLE_CHUNK / time_batch(fn, lambda: None, calls[name]))
    return out


def score(path):
    """Print the val loss of the checkpoint at `path` with each sampler's weights."""
    from lstm_engine import api
    from lstm_engine.backends import numba_team
    from lstm_engine.core.generation import evaluate_ids
    model, vocab, meta = api.load_model(path, "numba")
    ids = api.val_split_ids(meta, vocab, path)
    H, L = model.cfg.hidden_size, model.cfg.layers
    stored = {k: v.copy() for k, v in model.params.items()}                        # the float32 weights
    coded = {"float32": lambda M: M, "bf16": numba_team.bf16_values, "int8": numba_team.int8_values}
    for name in WEIGHTS:
        for k in [f"W{l}" for l in range(L)]:                                      # h rows and x rows apart
            model.params[k][:H], model.params[k][H:] = coded[name](stored[k][:H]), coded[name](stored[k][H:])
        model.params["Wy"][...] = coded[name](stored["Wy"])
        loss, n = evaluate_ids(model, ids)
        print(f"{path}: {name:8s} weights: val loss {loss:.6f} nats/char over {n:,} chars", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", default=["seed", "medium", "E128,H256,L2,B32,T50,V6746"])
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per sampler and config")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="numba and torch threads (default: as they are)")
    ap.add_argument("--checkpoint", default=None, help="score this checkpoint's val split with each sampler's weights")
    ap.add_argument("--top-k", type=int, default=0, help="keep the k most likely symbols (0: off)")
    ap.add_argument("--top-p", type=float, default=1.0, help="keep the shortest prefix with this mass (1: off)")
    a = ap.parse_args()
    if a.top_k < 0 or not 0 < a.top_p <= 1:
        ap.error(f"--top-k must be >= 0 and --top-p in (0, 1] (got {a.top_k}, {a.top_p})")
    filters = {"top_k": a.top_k, "top_p": a.top_p}
    if a.checkpoint:
        return score(a.checkpoint)
    with thread_settings(a.threads, torch_too=True):
        print(machine_line(machine_info(a.threads)))
        print(f"sampling: temperature 1, top-k {a.top_k or 'off'}, top-p {a.top_p if a.top_p < 1 else 'off'}")
        print(f"{'config':<28} {'sampler':<14} {'chars/s':>9} {'spread':>7} {'vs torch':>9} {'MB/char':>8} "
              f"{'% bound':>8}")
        rates = {}                                        # read GB/s by bytes: measured once a size
        for cfg in parse_configs(",".join(a.configs)):
            got = measure(cfg, a.seconds, a.repeats, filters)
            for name, speeds in got.items():
                med = statistics.median(speeds)
                spread = 100 * (max(speeds) - min(speeds)) / 2 / med
                ratio = "-" if name == "torch" else f"{statistics.median(np.divide(speeds, got['torch'])):.1f}x"
                nbytes = cfg.weight_bytes_per_char(*WEIGHT_BYTES["float32" if name == "torch" else name.split()[1]])
                if nbytes not in rates:
                    rates[nbytes] = read_rate(nbytes)
                bound = rates[nbytes] * 1e9 / nbytes
                print(f"{cfg.name:<28} {name:<14} {med:>9,.0f} {spread:>6.0f}% {ratio:>9} {nbytes / 1e6:>8.2f} "
                      f"{100 * med / bound:>7.0f}%", flush=True)
    print("chars/s: median over the repeats; vs torch: the median of the repeat-by-repeat ratios; MB/char: the "
          "weights a character reads; % bound: of the chars/s the numba threads' read rate for that many bytes allows")


if __name__ == "__main__":
    main()
