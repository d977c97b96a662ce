"""`lstm-engine plot` and the trainer's train_log.jsonl it reads."""
import json
import math
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import lstm_engine as le
from lstm_engine.cli import main
from lstm_engine.teaching.plot import load_run

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


@pytest.fixture
def mpl():
    """Skip (before any training) where matplotlib, an optional extra, is not installed."""
    return pytest.importorskip("matplotlib")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    losses = []
    real = le.Trainer.train_step

    def recording(self):
        loss, norm = real(self)
        losses.append(loss)
        return loss, norm
    monkeypatch.setattr(le.Trainer, "train_step", recording)
    out = tmp_path / "run"
    cfg = le.TrainConfig(backend="numpy", embed_size=8, hidden_size=16, layers=1, batch_size=4, seq_len=16,
                         steps=30, eval_every=10, log_every=5, sample_every=0, save_every=0, out=str(out))
    le.train(cfg, text=TEXT)
    return out, losses


def test_trainer_logs_the_mean_train_loss_of_each_log_interval(run_dir):
    out, losses = run_dir
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    for r in rows:
        assert r["train_loss"] == pytest.approx(np.mean(losses[r["step"] - 5:r["step"]]), rel=1e-12)
    assert all(b["time"] >= a["time"] for a, b in zip(rows, rows[1:]))
    evals = [json.loads(line) for line in open(out / "history.jsonl")]
    assert [r["step"] for r in evals] == [10, 20, 30]


def test_plot_draws_train_val_and_entropy(mpl, run_dir, tmp_path):
    from lstm_engine.teaching.plot import plot_run
    out, _ = run_dir
    png = tmp_path / "loss.png"
    fig = plot_run(str(out), str(png), dpi=50)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == (600, 230)                                # figsize (12, 4.6) at 50 dpi
    run = load_run(str(out))
    by_step, by_time = fig.axes[0], fig.axes[1]
    lines = {ln.get_label(): ln for ln in by_step.get_lines()}
    np.testing.assert_allclose(lines["train loss"].get_ydata(), [r["train_loss"] for r in run["train"]])
    np.testing.assert_allclose(lines["val loss"].get_xdata(), [10, 20, 30])
    ent = [ln for label, ln in lines.items() if label.startswith("unigram entropy")][0]
    assert ent.get_ydata()[0] == pytest.approx(run["entropy"])
    assert f"{run['entropy'] / math.log(2):.3f} bits" in ent.get_label()
    assert by_time.get_xlabel().startswith("wall time")
    sec = [c for c in by_step.get_children() if c.__class__.__name__ == "SecondaryAxis"][0]
    lo, hi = by_step.get_ylim()
    assert sec.get_ylim() == pytest.approx((lo / math.log(2), hi / math.log(2)))   # the bits/char scale
    assert sec.get_ylabel() == "bits/char"


def test_plot_falls_back_to_the_checkpoint_history(mpl, run_dir, tmp_path):
    out, _ = run_dir
    os.remove(out / "history.jsonl")
    os.remove(out / "train_log.jsonl")
    run = load_run(str(out))
    assert [r["step"] for r in run["evals"]] == [10, 20, 30]     # trainer.history in latest.safetensors
    r = CliRunner().invoke(main, ["plot", str(out), "-o", str(tmp_path / "l.svg")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "l.svg").read_text().lstrip().startswith("<?xml")


def test_plot_errors_are_one_line(tmp_path, monkeypatch):
    r = CliRunner().invoke(main, ["plot", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output and r.output.count("\n") == 1
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["plot", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no loss history" in r.output
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)    # as if matplotlib were not installed
    (tmp_path / "empty" / "history.jsonl").write_text('{"step": 1, "time": 0.5, "train_loss": 3.0, "val_loss": 3.1}\n')
    r = CliRunner().invoke(main, ["plot", str(tmp_path / "empty")])
    assert r.exit_code == 2
    assert r.output == "error: lstm-engine plot needs matplotlib; install it with: pip install 'lstm-engine[plot]'\n"
