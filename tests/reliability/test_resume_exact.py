"""Resume equivalence: N steps in one go == N/2 steps, stop (or crash), resume to N -- bit-identical on numpy.

Dropout > 0 (the mask RNG must be restored), a decaying learning rate, an epoch boundary, and
eval / sample / save cadences that cross the resume point."""
import json
import os

import pytest

import lstm_engine as le
from lstm_engine.storage import checkpoint

from helpers import markov_text, run_cli, tiny_args, tiny_cfg, write_corpus
from parity import backend_params

TEXT = markov_text(200)          # 600 chars: 16 windows per epoch, so 24 steps cross an epoch boundary
CADENCE = dict(steps=24, dropout=0.2, lr_decay=True, eval_every=5, sample_every=4, save_every=3, log_every=2)


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path / "state"))


class Recorder:
    """Keeps the log / eval / sample events (what a user sees), in order."""

    def __init__(self, stop_at=None, crash_at=None):
        self.events, self.stop_at, self.crash_at, self.trainer = [], stop_at, crash_at, None

    def __call__(self, kind, info):
        if kind == "log":
            self.events.append(("log", info["step"], info["loss"], info["grad_norm"]))
        elif kind == "eval":
            self.events.append(("eval", info["step"], info["val_loss"], info["best"]))
        elif kind == "sample":
            self.events.append(("sample", info["step"], info["text"]))


def train(out, rec, resume=None, **kw):
    trainer = le.Trainer(tiny_cfg(out, **dict(CADENCE, **kw)), text=TEXT, resume=resume, on_event=rec)
    rec.trainer = trainer
    one_step = trainer.train_step

    def train_step():
        out = one_step()
        if trainer.st.step == rec.stop_at:
            trainer.stop_requested = True           # what the SIGINT handler does
        if trainer.st.step == rec.crash_at:
            raise RuntimeError("simulated crash")
        return out
    trainer.train_step = train_step
    trainer.run()
    return trainer


def final_state(trainer):
    tensors, meta = checkpoint.load(trainer.rundir.latest)
    rows = [{k: v for k, v in json.loads(line).items() if k != "time"}
            for log in ("history.jsonl", "train_log.jsonl") for line in open(os.path.join(trainer.out, log))]
    best, _ = checkpoint.load(trainer.rundir.best)
    return tensors, meta["trainer"]["rng"], rows, best


def assert_same(a, b):
    ta, rng_a, hist_a, best_a = a
    tb, rng_b, hist_b, best_b = b
    assert sorted(ta) == sorted(tb)
    for name in ta:                                   # weights, Adam moments, carried state: bit for bit
        assert ta[name].tobytes() == tb[name].tobytes(), name
    assert rng_a == rng_b and hist_a == hist_b
    assert all(best_a[n].tobytes() == best_b[n].tobytes() for n in best_a)


@pytest.fixture(scope="module", params=backend_params(("numpy", "numba")))
def backend(request):
    """The CPU backends, where the claim is bit-identity (the same thread count in both runs)."""
    return request.param


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, backend):
    rec = Recorder()
    trainer = train(tmp_path_factory.mktemp("full") / "run", rec, backend=backend)
    assert len([e for e in rec.events if e[0] == "log"]) == 12
    return rec.events, final_state(trainer)


@pytest.mark.parametrize("stop_at", [7, 10, 12, 16])
def test_stop_and_resume_is_bit_identical(tmp_path, backend, uninterrupted, stop_at):
    """7: off every cadence; 10: an eval; 12: a sample and a save; 16: the epoch boundary."""
    full_events, full_state = uninterrupted
    out = tmp_path / "run"
    first = Recorder(stop_at=stop_at)
    t1 = train(out, first, backend=backend)
    assert t1.st.step == stop_at
    second = Recorder()
    t2 = train(out, second, resume=str(out), backend=backend)
    assert first.events + second.events == full_events
    assert_same(final_state(t2), full_state)


def test_stop_and_resume_without_dropout_is_bit_identical(tmp_path, backend):
    """Without dropout no mask is drawn between the steps: the resumed run still continues exactly."""
    full = Recorder()
    t_full = train(tmp_path / "full", full, backend=backend, dropout=0.0)
    first, second = Recorder(stop_at=7), Recorder()
    train(tmp_path / "part", first, backend=backend, dropout=0.0)
    t2 = train(tmp_path / "part", second, resume=str(tmp_path / "part"), backend=backend, dropout=0.0)
    assert first.events + second.events == full.events
    assert_same(final_state(t2), final_state(t_full))


def test_crash_and_resume_from_the_last_periodic_save(tmp_path, backend, uninterrupted):
    """Crash at step 11 (eval at 10 already in history.jsonl, last save at 9): resume redoes 10..24 exactly."""
    full_events, full_state = uninterrupted
    out = tmp_path / "run"
    first = Recorder(crash_at=11)
    with pytest.raises(RuntimeError):
        train(out, first, backend=backend)
    assert checkpoint.read_meta(str(out))["trainer"]["step"] == 9
    second = Recorder()
    t2 = train(out, second, resume=str(out), backend=backend)
    upto_9 = [e for e in first.events if e[1] <= 9]
    assert upto_9 + second.events == full_events
    assert_same(final_state(t2), full_state)


def test_resume_from_a_step_file_into_a_new_directory(tmp_path, backend, uninterrupted):
    full_events, full_state = uninterrupted
    first = Recorder(stop_at=13)
    train(tmp_path / "a", first, backend=backend)
    second = Recorder()
    t2 = train(tmp_path / "b", second, resume=str(tmp_path / "a" / "step-000012.safetensors"), backend=backend)
    assert [e for e in first.events if e[1] <= 12] + second.events == full_events
    ta = final_state(t2)[0]
    assert all(ta[n].tobytes() == full_state[0][n].tobytes() for n in ta)


def test_cli_resume_takes_the_options_from_the_checkpoint(tmp_path):
    """`train --resume DIR` alone continues with every option of the run; an explicit --lr overrides.
    (No --lr-decay here: the cosine schedule depends on --steps, which this test changes.)"""
    corpus = write_corpus(tmp_path)
    args = dict(dropout=0.1, save_every=2, eval_every=3, seed=5, keep=2, grad_clip=0.5)
    full = run_cli(tiny_args(corpus, tmp_path / "full", steps=8, **args))
    assert full.exit_code == 0, full.output
    r = run_cli(tiny_args(corpus, tmp_path / "part", steps=5, **args))
    assert r.exit_code == 0, r.output
    copy = tmp_path / "same-text.txt"                  # the same text under another name is accepted
    copy.write_bytes(open(corpus, "rb").read())
    r = run_cli(["train", "--resume", tmp_path / "part", "--steps", "8", "--corpus", copy])
    assert r.exit_code == 0, r.output
    a, _ = checkpoint.load(str(tmp_path / "full"))
    b, meta = checkpoint.load(str(tmp_path / "part"))
    assert meta["train"]["seed"] == 5 and meta["train"]["grad_clip"] == 0.5 and meta["train"]["keep"] == 2
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)
    r = run_cli(["train", "--resume", tmp_path / "part", "--steps", "10", "--lr", "0.001"])
    assert r.exit_code == 0, r.output
    assert checkpoint.read_meta(str(tmp_path / "part"))["train"]["lr"] == 0.001
    assert sorted(n for n in os.listdir(tmp_path / "part") if n.startswith("step-")) == \
        ["step-000008.safetensors", "step-000010.safetensors"]
