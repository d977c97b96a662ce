"""Every cell trains end to end on the reference: several layers, dropout, TBPTT state carried between
windows, float32 and float64, checkpoints that record the cell, and exact resume.

Dimension legend: B batch, H hidden, L layers.
"""
import numpy as np
import pytest

import lstm_engine as le
from lstm_engine.core.config import config_for_resume
from lstm_engine.core.model import CELLS, Model
from lstm_engine.backends import numpy_backend as ref
from lstm_engine.errors import UserError
from lstm_engine.storage import checkpoint

from helpers import markov_text, tiny_cfg

TEXT = markov_text(200)                     # 600 chars: 16 windows of B4 x T8 per epoch
RUN = dict(steps=12, dropout=0.2, lr_decay=True, eval_every=5, save_every=3, log_every=1)


class Losses:
    def __init__(self):
        self.rows = []

    def __call__(self, kind, info):
        if kind in ("log", "eval"):
            self.rows.append((kind, info["step"], info.get("loss", info.get("val_loss"))))


def train(out, cell, resume=None, stop_at=None, **kw):
    rec = Losses()
    trainer = le.Trainer(tiny_cfg(out, cell=cell, **dict(RUN, **kw)), text=TEXT, resume=resume, on_event=rec)
    if stop_at:
        step = trainer.train_step

        def stopping_step():
            out = step()
            trainer.stop_requested = trainer.st.step == stop_at     # what the SIGINT handler does
            return out
        trainer.train_step = stopping_step
    trainer.run()
    return trainer, rec.rows


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_trains_and_its_checkpoint_records_it(tmp_path, cell, dtype):
    """Losses fall over a short run; the checkpoint holds the cell's tensors (and the carried state of
    every layer), and loading it gives the same model and loss."""
    trainer, rows = train(tmp_path / "run", cell, dtype=dtype, steps=60, lr=3e-2)
    losses = [loss for kind, _, loss in rows if kind == "log"]
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
    tensors, meta = checkpoint.load(trainer.rundir.latest)
    assert meta["model"]["cell"] == meta["train"]["cell"] == cell
    assert {n[6:] for n in tensors if n.startswith("param.")} == set(trainer.model.params)
    assert all(tensors[f"state.{s}{l}"].shape == (4, 8) for s in "hc" for l in range(2))
    model, vocab, _ = le.load_model(trainer.rundir.latest, backend="numpy")
    assert model.cfg.cell == cell and model.cfg.dtype == dtype
    for n, p in trainer.model.params.items():
        assert model.params[n].tobytes() == p.tobytes(), n
    ids = vocab.encode(TEXT[:65])
    tokens, targets = ids[:-1].reshape(8, 8), ids[1:].reshape(8, 8)        # (T,B)
    assert model.loss(tokens, targets, model.zero_state(8))[0] == trainer.model.loss(
        tokens, targets, trainer.model.zero_state(8))[0]


@pytest.mark.parametrize("cell", ["gru", "peephole", "coupled"])
def test_stop_and_resume_is_bit_identical(tmp_path, cell):
    """12 steps in one go == 7, stop, resume to 12: every loss and every tensor (weights, Adam moments,
    the carried state, the mask RNG) bit for bit, with dropout and a decaying learning rate."""
    full, full_rows = train(tmp_path / "full", cell)
    part, first = train(tmp_path / "part", cell, stop_at=7)
    assert part.st.step == 7
    resumed, second = train(tmp_path / "part", cell, resume=str(tmp_path / "part"))
    assert first + second == full_rows
    ta, ma = checkpoint.load(full.rundir.latest)
    tb, mb = checkpoint.load(resumed.rundir.latest)
    assert sorted(ta) == sorted(tb) and ma["trainer"]["rng"] == mb["trainer"]["rng"]
    for name in ta:
        assert ta[name].tobytes() == tb[name].tobytes(), name


def test_resume_with_another_cell_is_refused_in_one_line(tmp_path):
    train(tmp_path / "run", "gru", steps=2)
    path = str(tmp_path / "run")
    with pytest.raises(UserError, match="--cell lstm conflicts with the --resume checkpoint.*--cell gru") as e:
        config_for_resume(checkpoint.read_meta(path), {"cell": "lstm"}, path)
    assert "\n" not in str(e.value)
    assert config_for_resume(checkpoint.read_meta(path), {"steps": 4}, path).cell == "gru"   # taken from it
    with pytest.raises(UserError, match="--cell coupled conflicts"):
        train(tmp_path / "run", "coupled", resume=path, steps=4)


def test_a_checkpoint_without_a_cell_is_an_lstm(tmp_path):
    """Checkpoints written before the cell variants have no model.cell: they load and resume as an lstm."""
    trainer, _ = train(tmp_path / "run", "lstm", steps=2)
    path = trainer.rundir.latest
    tensors, meta = checkpoint.load(path)
    del meta["model"]["cell"], meta["train"]["cell"]
    checkpoint.save(path, tensors, meta)
    model, _, _ = le.load_model(path, backend="numpy")
    assert model.cfg.cell == "lstm"
    assert config_for_resume(checkpoint.read_meta(path), {"steps": 4}, path).cell == "lstm"
    train(tmp_path / "run", "lstm", resume=str(tmp_path / "run"), steps=4)


@pytest.mark.parametrize("bad", [{"model": {"cell": "rnn"}}, {"model": {"cell": 3}}, {"train": {"cell": "gru"}}])
def test_a_crafted_cell_field_is_refused_on_load(tmp_path, bad):
    """An unknown cell, or train.cell disagreeing with model.cell, is a one-line error naming the field."""
    trainer, _ = train(tmp_path / "run", "lstm", steps=1)
    path = trainer.rundir.latest
    tensors, meta = checkpoint.load(path)
    for section, fields in bad.items():
        meta[section].update(fields)
    checkpoint.save(path, tensors, meta)
    with pytest.raises(UserError, match="cell") as e:
        checkpoint.load(path)
    assert "\n" not in str(e.value)


def test_a_gru_checkpoint_with_lstm_shaped_tensors_is_refused(tmp_path):
    trainer, _ = train(tmp_path / "run", "lstm", steps=1)
    tensors, meta = checkpoint.load(trainer.rundir.latest)
    meta["model"]["cell"] = meta["train"]["cell"] = "coupled"          # W is (H+I,4H), coupled needs 3H
    checkpoint.save(trainer.rundir.latest, tensors, meta)
    with pytest.raises(UserError, match="param.W0 has shape"):
        checkpoint.load(trainer.rundir.latest)


@pytest.mark.parametrize("cell", CELLS)
def test_generation_follows_the_cell_and_carries_the_state(cell):
    """The reference's sampler steps the cell's own equations: its logits are those of Model.forward over
    the same characters, the state carried one character at a time."""
    cfg = le.ModelConfig(vocab_size=6, embed_size=3, hidden_size=5, layers=2, dtype="float64", cell=cell)
    model = Model(cfg, ref, seed=1)
    ids = [1, 4, 2, 5, 0]
    state = model.zero_state(1)
    stepped = [ref.step_logits(model.params, state, i, cell) for i in ids]             # (V,) each
    logits, full_state, _ = model.forward(np.array(ids).reshape(-1, 1), model.zero_state(1))
    np.testing.assert_allclose(np.array(stepped), logits, rtol=0, atol=1e-13)
    for l in range(2):
        np.testing.assert_allclose(state[l][0], full_state[l][0], rtol=0, atol=1e-13)
    out = ref.generate(model.params, model.zero_state(1), 1, 5, greedy=True, cell=cell)
    assert out.shape == (5,)


@pytest.mark.parametrize("cell", CELLS)
def test_the_time_budget_counts_and_calibrates_the_cell(cell, monkeypatch):
    """The recipe's parameter count is the cell's, and its calibration trains a model of the cell."""
    from lstm_engine.core import budget
    cfg = le.ModelConfig(vocab_size=7, embed_size=4, hidden_size=8, layers=2, cell=cell)
    assert budget.n_params(7, 4, 8, 2, cell) == sum(int(np.prod(s)) for s in cfg.param_shapes().values())
    seen, forward_backward = [], Model.forward_backward

    def recording(self, *args, **kw):
        seen.append(self.cfg.cell)
        return forward_backward(self, *args, **kw)
    monkeypatch.setattr(Model, "forward_backward", recording)
    tcfg = le.TrainConfig(cell=cell, time_budget=60.0, embed_size=4, hidden_size=8, layers=1, batch_size=2,
                          seq_len=4)
    _, speed = budget.plan(tcfg, {"embed_size", "hidden_size", "layers", "batch_size", "seq_len"},
                              np.arange(200) % 7, 7, ref, say=lambda text: None)
    assert speed > 0 and seen and set(seen) == {cell}


def test_the_python_api_takes_the_cell(tmp_path):
    """le.train with TrainConfig(cell=...) trains that cell; an unknown cell is one line naming the choices."""
    trainer = le.train(tiny_cfg(tmp_path / "run", cell="coupled", steps=2), text=TEXT)
    assert trainer.model.cfg.cell == "coupled" and "wc0" not in trainer.model.params
    assert trainer.model.params["W1"].shape == (16, 24)                             # (H+H, 3H)
    with pytest.raises(UserError, match="--cell must be one of lstm, peephole, coupled, gru") as e:
        le.train(tiny_cfg(tmp_path / "bad", cell="rnn", steps=2), text=TEXT)
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()
