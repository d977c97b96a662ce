"""In-process failure injection: full disk, unwritable directory, divergence, two trainers, leftovers."""
import errno
import os

import numpy as np
import pytest

import lstm_engine as le
from lstm_engine.storage import checkpoint
from lstm_engine.storage import rundir as storage
from lstm_engine.errors import UserError

from helpers import markov_text, snapshot, tiny_cfg

TEXT = markov_text(600)


def trainer_failing_after(tmp_path, step, arm, **kw):
    """A Trainer (saves and evals every 2 steps) that calls arm() once it has finished `step` steps."""
    cfg = tiny_cfg(tmp_path / "run", steps=12, save_every=2, eval_every=2, **kw)
    trainer = le.Trainer(cfg, text=TEXT)
    seen = []

    def on_event(kind, info):
        if kind == "save" and info["step"] == step and info["kind"] == "latest":
            seen.append(snapshot(trainer.out))
            arm()
    trainer.on_event = on_event
    return trainer, seen


def assert_intact(trainer, before, step):
    """Every checkpoint that existed before the failure is unchanged and loads; latest is at `step`.
    (history.jsonl and train_log.jsonl may have grown by rows of the failed step.)"""
    after = snapshot(trainer.out)
    before = {k: v for k, v in before.items() if not k.endswith(".jsonl")}
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [n for n in os.listdir(trainer.out) if n.startswith(".tmp-")]
    for name in after:
        if name.endswith(".safetensors"):
            checkpoint.load(os.path.join(trainer.out, name))
    assert checkpoint.read_meta(trainer.out)["trainer"]["step"] == step


class FullDisk:
    """A file whose every write fails with errno `code` (a full disk by default); closes the real one."""
    def __init__(self, f, code=errno.ENOSPC):
        self.f, self.code = f, code

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()

    def write(self, data):
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code, needle", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"),
                                          (errno.EIO, "error")])
def test_disk_full_while_saving(tmp_path, monkeypatch, code, needle):
    """The write of a checkpoint fails (ENOSPC): one clear error, earlier checkpoints byte-identical."""
    real_fdopen = os.fdopen

    def arm():
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k), code))
    trainer, seen = trainer_failing_after(tmp_path, 4, arm)
    with pytest.raises(UserError) as e:
        trainer.run()
    msg = str(e.value)
    assert needle in msg.lower() and "intact (latest: step 4)" in msg and "--resume" in msg and "\n" not in msg
    assert_intact(trainer, seen[0], 4)


def test_directory_becomes_unwritable_while_saving(tmp_path, monkeypatch):
    real_mkstemp = storage.tempfile.mkstemp

    def arm():
        def deny(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(storage.tempfile, "mkstemp", deny)
    trainer, seen = trainer_failing_after(tmp_path, 6, arm)
    with pytest.raises(UserError, match="permission denied"):
        trainer.run()
    monkeypatch.setattr(storage.tempfile, "mkstemp", real_mkstemp)
    assert_intact(trainer, seen[0], 6)


def test_rename_fails_midway(tmp_path, monkeypatch):
    """latest is written but the step file cannot be linked or copied: still a clean error, all intact."""
    def arm():
        def fail(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "link", fail)
    trainer, seen = trainer_failing_after(tmp_path, 4, arm)
    with pytest.raises(UserError, match="no space left.*intact \\(latest: step 6\\)"):
        trainer.run()
    after = snapshot(trainer.out)
    for name, digest in seen[0].items():
        if name not in ("latest.safetensors", "best.safetensors") and not name.endswith(".jsonl"):
            assert after[name] == digest
    assert checkpoint.read_meta(trainer.out)["trainer"]["step"] == 6     # latest itself was complete


def test_unwritable_out_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to the output directory"):
        le.Trainer(tiny_cfg(blocker / "run", steps=3), text=TEXT)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_loss_or_gradient_stops_and_keeps_checkpoints(tmp_path, where):
    trainer, seen = trainer_failing_after(tmp_path, 4, lambda: None)
    real = trainer.model.forward_backward

    def poisoned(*a, **k):
        loss, grads, state = real(*a, **k)
        if trainer.st.step == 4:                   # the 5th step goes wrong
            if where == "loss":
                loss = float("nan")
            else:
                grads["Wy"] = grads["Wy"] * np.float32(np.inf)
        return loss, grads, state
    trainer.model.forward_backward = poisoned
    with pytest.raises(UserError) as e:
        trainer.run()
    msg = str(e.value)
    assert "diverged at step 5" in msg and "step 4" in msg and "lower --lr" in msg and "\n" not in msg
    assert_intact(trainer, seen[0], 4)
    assert snapshot(trainer.out)["best.safetensors"] == seen[0]["best.safetensors"]


def test_non_finite_parameters_are_never_saved(tmp_path):
    trainer = le.Trainer(tiny_cfg(tmp_path / "run", steps=3), text=TEXT)
    trainer.model.params["by"][0] = np.inf
    with pytest.raises(UserError, match="diverged.*parameter by holds non-finite"):
        trainer.save("latest")
    assert not os.path.exists(trainer.rundir.latest)


def test_keep_prunes_old_step_files_and_latest_is_the_newest(tmp_path):
    trainer = le.train(tiny_cfg(tmp_path / "run", steps=10, save_every=2, eval_every=3, keep=2), text=TEXT)
    names = sorted(os.listdir(trainer.out))
    assert [n for n in names if n.startswith("step-")] == ["step-000008.safetensors", "step-000010.safetensors"]
    assert "best.safetensors" in names and not [n for n in names if n.startswith(".tmp-")]
    with open(trainer.rundir.latest, "rb") as a, open(os.path.join(trainer.out, "step-000010.safetensors"), "rb") as b:
        assert a.read() == b.read()
    best = checkpoint.read_meta(trainer.rundir.best)["trainer"]
    assert best["step"] in (3, 6, 9, 10) and best["best_val"] == min(r["val_loss"] for r in trainer.st.history)


def test_stray_temp_files_are_ignored_then_cleaned(tmp_path):
    le.train(tiny_cfg(tmp_path / "run", steps=4, save_every=2), text=TEXT)
    stray = tmp_path / "run" / ".tmp-latest.safetensors-abc123"
    stray.write_bytes(b"half a checkpoint")
    assert checkpoint.read_meta(str(tmp_path / "run"))["trainer"]["step"] == 4     # the stray is ignored
    trainer = le.Trainer(tiny_cfg(tmp_path / "run", steps=6, save_every=2), text=TEXT,
                         resume=str(tmp_path / "run"))
    trainer.run()
    assert not stray.exists() and trainer.st.step == 6


def test_two_trainers_on_one_directory(tmp_path):
    first = le.Trainer(tiny_cfg(tmp_path / "run", steps=4), text=TEXT)
    first.rundir.acquire()
    try:
        second = le.Trainer(tiny_cfg(tmp_path / "run", steps=4), text=TEXT)
        with pytest.raises(UserError, match=f"another training process \\(pid {os.getpid()}\\)"):
            second.run()
    finally:
        first.rundir.release()
    first.run()


@pytest.mark.parametrize("log", ["history.jsonl", "train_log.jsonl"])
def test_log_rows_of_a_lost_future_and_a_torn_line_are_dropped_on_resume(tmp_path, log):
    le.train(tiny_cfg(tmp_path / "run", steps=4, save_every=2, eval_every=2), text=TEXT)
    hist = tmp_path / "run" / log
    kept = hist.read_text()
    assert kept.count("\n") >= 2
    with open(hist, "a") as f:            # as if the run had gone on to step 6, then was killed mid-line
        f.write('{"step": 6, "time": 1.0, "train_loss": 1.0, "val_loss": 1.0}\n{"step": 8, "ti')
    trainer = le.Trainer(tiny_cfg(tmp_path / "run", steps=6, save_every=2, eval_every=2), text=TEXT,
                         resume=str(tmp_path / "run"))
    trainer.rundir.acquire()
    trainer.rundir.reset_logs(trainer.st.step)
    trainer.rundir.release()
    assert hist.read_text() == kept


def test_disk_full_while_inspect_writes_its_page(tmp_path, monkeypatch):
    """inspect's HTML page is replaced whole or not at all: a failed write leaves the earlier page."""
    import builtins

    from lstm_engine.core.model import Model, ModelConfig
    from lstm_engine.backends import numpy_backend
    from lstm_engine.core.data import Vocab
    from lstm_engine.teaching import inspect_cells

    text = "(ab)\ncd(a)\n" * 4
    vocab = Vocab.build(text)
    model = Model(ModelConfig(vocab_size=len(vocab), embed_size=4, hidden_size=6, layers=1), numpy_backend)
    page = tmp_path / "page.html"
    page.write_text("the earlier page")

    real_open, real_fdopen = builtins.open, os.fdopen

    def full_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return FullDisk(f) if any(c in mode for c in "wax") else f
    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(UserError) as e:
        inspect_cells.inspect(model, vocab, text, str(page))
    monkeypatch.undo()
    assert "could not write" in str(e.value) and "\n" not in str(e.value)
    assert page.read_text() == "the earlier page"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
