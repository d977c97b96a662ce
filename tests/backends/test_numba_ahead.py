"""Compiling ahead (numba_ahead.py): the helper process must call every kernel that a first
training step and evaluation call after the step's forward, with the same argument types, or
this process compiles them anyway.

The first test replaces every kernel by a recorder of its argument types (nothing compiles) and
compares what the trainer's own step and evaluation call with what the helper's step calls, for
each cell, with dropout, and with a vocabulary larger than a window (the gathered path).  The
last runs a first training step in a fresh process on an empty cache and counts what it compiled.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from lstm_engine.backends import numba_ahead_helper as helper_process  # noqa: E402
from lstm_engine.core.generation import eval_chunk_lengths, evaluate_ids  # noqa: E402

MODULES = ("lstm_layer", "output_layer", "adam", "cell_layers", "gru_layer")


class Recorder:
    """A kernel's stand-in: logs (kernel, argument types), returns 0.0 (a loss, a sum of squares)."""

    def __init__(self, name, kernel, log):
        self.name, self.kernel, self.log = name, kernel, log

    def typeof_pyval(self, a):
        return self.kernel.typeof_pyval(a)

    def __call__(self, *args):
        self.log.append((self.name, tuple(str(self.kernel.typeof_pyval(a)) for a in args)))
        return 0.0


def record_kernels(monkeypatch, log):
    """Every jitted function defined in the kernel modules, replaced by a Recorder into log.  Every
    kernels module is imported first: one imported meanwhile would bind a Recorder by
    `from .lstm_layer import mm` for good, and compile against it once the cache is cold."""
    helper_process.import_kernels()
    for m in MODULES:
        mod = importlib.import_module(f"lstm_engine.kernels.numba.{m}")
        for name, fn in list(vars(mod).items()):
            if isinstance(fn, numba.core.dispatcher.Dispatcher) and fn.py_func.__module__ == mod.__name__:
                monkeypatch.setattr(mod, name, Recorder(f"{m}.{name}", fn, log))


FORWARD = {f"{m}.{n}" for m, names in helper_process.FORWARD_KERNELS.items() for n in names}
CASES = {
    "lstm": dict(cell="lstm"),
    "lstm-dropout": dict(cell="lstm", dropout=0.25),
    "lstm-gathered": dict(cell="lstm", seq_len=4, batch_size=2),       # V > T*B: no table
    "gru": dict(cell="gru"),
    "peephole": dict(cell="peephole"),
    "coupled-float64": dict(cell="coupled", dtype="float64"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_helper_calls_every_kernel_a_first_step_calls_after_the_forward(case, tmp_path, monkeypatch):
    import lstm_engine as le
    from lstm_engine.backends import numba_backend
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "off")
    numba_backend._kernels()
    kw = dict(backend="numba", embed_size=16, hidden_size=128, layers=2, batch_size=8, seq_len=32,
              eval_every=1, sample_every=0, save_every=0, log_every=0, out=str(tmp_path / "run"), steps=1)
    kw.update(CASES[case])
    text = "".join(chr(0x4e00 + i % 97) + "ab, cd.\n"[i % 8] for i in range(3000))
    trainer = le.Trainer(le.TrainConfig(**kw), text=text)
    real = []
    record_kernels(monkeypatch, real)
    with np.errstate(all="ignore"):            # recorded kernels write nothing: NumPy's ops read np.empty memory
        trainer.train_step()
        trainer.evaluate()
    first = [name for name, _ in real].index("output_layer.linear_backward_kernel")
    forward = {c for c in real[:first] if c[0] in FORWARD}              # the step's forward, compiled here
    expected = set(real) - forward

    helper = []
    monkeypatch.undo()
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "off")
    record_kernels(monkeypatch, helper)
    for m, names in helper_process.FORWARD_KERNELS.items():             # as the helper's main skips them
        mod = importlib.import_module(f"lstm_engine.kernels.numba.{m}")
        for n in names:
            monkeypatch.setattr(mod, n, helper_process._Skipped(getattr(mod, n)))
    monkeypatch.setattr(helper_process._Skipped, "evaluating", False)
    spec = {"model": trainer.model_cfg.to_dict(), "batch": kw["batch_size"], "seq_len": kw["seq_len"],
            "eval": eval_chunk_lengths(len(trainer.val_ids))}
    helper_process.run_step(spec)

    missing = sorted(expected - set(helper))
    assert not missing, f"{case}: the helper does not compile {missing}"
    assert not forward & set(helper), \
        f"{case}: the helper compiled the step's forward, which this process compiles meanwhile"
    assert {n for n, _ in expected} >= {"output_layer.linear_backward_kernel", "adam.adam_kernel"}


def test_a_warm_cache_starts_no_helper(tmp_path, monkeypatch):
    """Once a run has compiled (here or in an earlier process), a run of the same model finds its
    layer-0 backward kernel in the cache (cold() False) and starts nothing."""
    import lstm_engine as le
    from lstm_engine.backends import numba_ahead
    kw = dict(backend="numba", embed_size=8, hidden_size=16, layers=2, batch_size=4, seq_len=8, steps=1,
              eval_every=1, sample_every=0, save_every=0, log_every=0)
    text = "the quick brown fox jumps over the lazy dog. " * 20
    le.Trainer(le.TrainConfig(**kw, out=str(tmp_path / "a")), text=text).run()
    assert not numba_ahead.cold("lstm_layer", "embed_lstm_backward_kernel", "float32")
    assert numba_ahead.cold("lstm_layer", "embed_lstm_backward_kernel", "float16")    # no float16 kernels
    started = []
    monkeypatch.setattr(numba_ahead, "start", lambda spec: started.append(spec))
    le.Trainer(le.TrainConfig(**kw, out=str(tmp_path / "b")), text=text).run()
    assert started == []


def test_cold_reads_the_dtype_and_the_thread_plan_of_each_cached_signature(monkeypatch):
    from types import SimpleNamespace

    from numba import types
    from lstm_engine.backends import numba_ahead
    f32, tokens = types.Array(types.float32, 3, "C"), types.Array(types.int64, 2, "C")
    index = {((f32, tokens, types.int64, types.int64, types.none), "target", "stamp"): "file"}   # ... prod, rows, units
    fake = SimpleNamespace(_cache=SimpleNamespace(_cache_file=SimpleNamespace(_load_index=lambda: index)))
    monkeypatch.setattr(importlib.import_module("lstm_engine.kernels.numba.lstm_layer"),
                        "embed_lstm_backward_kernel", fake)

    def cold(dtype, plan=None):
        return numba_ahead.cold("lstm_layer", "embed_lstm_backward_kernel", dtype, plan)
    assert not cold("float32") and not cold("float32", (2, 2, None))
    assert cold("float64") and cold("float32", (2, None, 2)) and cold("float32", (None, None, None))


def test_eval_chunk_lengths_are_those_evaluate_ids_calls():
    class Probe:
        be = importlib.import_module("lstm_engine.backends.numpy_backend")

        def __init__(self):
            self.seen = set()

        def zero_state(self, B):
            return None

        def loss(self, tokens, targets, state):
            self.seen.add(tokens.shape[0])
            return 0.0, state
    import numpy as np
    for n in (2, 200, 257, 513, 1000):
        probe = Probe()
        evaluate_ids(probe, np.zeros(n, np.int64))
        assert sorted(probe.seen) == eval_chunk_lengths(n), n


_FIRST_RUN = textwrap.dedent(r"""
    import json, sys
    from numba.core import event as ev
    compiled, depth = {"train": [], "generate": []}, [0]
    phase = ["train"]
    class L(ev.Listener):
        def on_start(self, e):
            depth[0] += 1
            if depth[0] == 1:
                compiled[phase[0]].append(e.data["dispatcher"].py_func.__qualname__)
        def on_end(self, e):
            depth[0] -= 1
    ev.register("numba:compile", L())
    import lstm_engine as le
    from lstm_engine.core.generation import generate_text
    text = "the quick brown fox jumps over the lazy dog. " * 60
    cfg = le.TrainConfig(backend="numba", embed_size=8, hidden_size=64, layers=2, batch_size=4, seq_len=8,
                         steps=2, eval_every=2, sample_every=0, save_every=0, log_every=0, out=sys.argv[1])
    trainer = le.Trainer(cfg, text=text)
    trainer.run()
    phase[0] = "generate"
    generate_text(trainer.model, trainer.vocab, "the ", 40, seed=1)
    print(json.dumps(compiled))
""")
FORWARD_NAMES = {"embed_lstm_forward_kernel", "lstm_forward_kernel", "linear_forward_kernel", "softmax_xent_kernel"}


def test_a_first_run_on_an_empty_cache_compiles_only_the_forward_and_the_one_thread_sampler(tmp_path):
    """Two processes compile at once: about two thirds of the serial minutes, on any machine with 2 cores."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the helpers need two usable cores")
    tune = tmp_path / "t.json"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), LSTM_ENGINE_TUNE_FILE=str(tune),
               LSTM_ENGINE_TUNE="auto")
    env.pop("NUMBA_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", _FIRST_RUN, str(tmp_path / "run")], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    compiled = json.loads(out.stdout.strip().splitlines()[-1])
    assert compiled["train"] and set(compiled["train"]) <= FORWARD_NAMES, compiled["train"]
    assert "numba tune: sample lstm" in out.stderr, out.stderr[-2000:]          # one thread and a team measured
    assert "generate_kernel" in compiled["generate"] and "team_worker" not in compiled["generate"], compiled
