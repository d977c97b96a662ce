"""The child process of bench/memory.py: one backend, one config, one training run, then one JSON line.

Dimension legend: V vocab, E embedding, H hidden, L layers, B batch, T time steps.
Run as `python -m lstm_engine.bench.memory_child BACKEND E H L B T V CELL STEPS THREADS`.
"""
from __future__ import annotations

import json
import resource
import sys

import numpy as np

from .memory import EVAL_CHARS, RSS_UNIT

CHUNK = 256               # evaluate_ids' chunk: characters per forward call of the closing evaluation


def _engine_run(name, cfg, steps, batch, ids):
    from .. import backends as backends_mod
    from ..core.generation import evaluate_ids
    from .harness import EngineRunner
    runner = EngineRunner(backends_mod.get_backend(name), cfg, batch)
    for _ in range(steps):
        runner.train_step()
    evaluate_ids(runner.model, ids)


def _torch_run(cfg, steps, batch, ids, threads):
    from .torch_peer import TorchRunner
    runner = TorchRunner("cpu", cfg, batch, threads)
    t = runner.torch
    for _ in range(steps):
        runner.train_step()
    with t.inference_mode():
        state = runner._zero_state(1)
        for s in range(0, len(ids) - 1, CHUNK):
            e = min(s + CHUNK, len(ids) - 1)
            x = t.as_tensor(ids[s:e].reshape(-1, 1))                       # (T,1)
            y = t.as_tensor(ids[s + 1:e + 1])                              # (T,)
            logits, state = runner._logits(x, state)                       # (T,V)
            t.nn.functional.cross_entropy(logits, y)


def child(argv):
    backend, *dims = argv
    E, H, L, B, T, V = (int(d) for d in dims[:6])
    cell, steps, threads = dims[6], int(dims[7]), int(dims[8]) or None
    from ..errors import UserError
    from .harness import BenchConfig, make_batch
    from .machine import thread_settings
    torch_peer = backend.startswith("torch")
    if torch_peer:
        import torch  # noqa: F401  (counted in the imports' share, as the engine's numba is)
    elif backend == "numba":
        from ..core.environment import import_numba
        import_numba()
    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT
    cfg = BenchConfig("memory", E, H, L, B, T, V, cell)
    batch = make_batch(cfg)
    ids = np.random.default_rng(1).integers(0, V, EVAL_CHARS)              # (EVAL_CHARS,)
    try:
        with thread_settings(threads, torch_too=torch_peer):
            if torch_peer:
                _torch_run(cfg, steps, batch, ids, threads)
            else:
                _engine_run(backend, cfg, steps, batch, ids)
    except UserError as e:
        print(f"UserError: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT,
                      "import_rss_bytes": import_rss, "torch_imported": "torch" in sys.modules,
                      "note": f"{steps} training steps + the closing evaluation ({EVAL_CHARS} chars)"}))
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
