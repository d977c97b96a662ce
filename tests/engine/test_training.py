"""Training end to end on the reference backend: learning, checkpoints, resume, batching."""
import math

import numpy as np
import pytest

import lstm_engine as le
from lstm_engine.storage import checkpoint
from lstm_engine.core.data import Batcher, Vocab, split
from lstm_engine.core.generation import evaluate_ids

from helpers import markov_text       # entropy rate ln(2)/3 nats/char exactly


def small_cfg(tmp_path, **kw):
    base = dict(backend="numpy", embed_size=8, hidden_size=16, layers=1, batch_size=8, seq_len=24, steps=30,
                eval_every=0, sample_every=0, save_every=0, log_every=1, lr=1e-2, out=str(tmp_path / "run"))
    base.update(kw)
    return le.TrainConfig(**base)


def test_learns_a_source_of_known_entropy(tmp_path):
    """Val loss must come within 0.03 nats/char of the source's entropy rate (ln2/3 = 0.231)."""
    text = markov_text(6000, seed=0)
    cfg = small_cfg(tmp_path, steps=250, eval_every=250)
    trainer = le.train(cfg, text=text)
    val = trainer.evaluate()
    entropy_rate = math.log(2) / 3
    print(f"val loss {val:.4f}, entropy rate {entropy_rate:.4f}, unigram entropy {trainer.entropy:.4f}")
    assert val < entropy_rate + 0.03
    assert val > entropy_rate - 0.03          # nothing can beat the source's entropy (beyond sampling noise)


def test_batcher_targets_are_next_chars_never_wrapped():
    ids = np.arange(103, dtype=np.int32)
    b = Batcher(ids, B=4, T=5)
    assert b.S == 25 and b.windows == 5
    for k in range(b.windows):
        x, y = b.window(k)
        assert x.shape == (5, 4)
        assert np.array_equal(y, x + 1)                       # the real next character
        assert np.array_equal(x[:, 1], 25 + k * 5 + np.arange(5))   # stream 1 is contiguous
    assert b.targets.max() <= 100                             # the last target exists in the text


def test_a_checkpoint_from_before_locked_dropout_resumes_with_per_step_masks(tmp_path):
    """Its masks were drawn anew at every step, so continuing it keeps doing that (on the CLI's
    path, config_for_resume, and on the API's, Trainer(resume=...)); new runs lock them."""
    from lstm_engine.core.train import config_for_resume
    text = markov_text(400, seed=2)
    le.train(small_cfg(tmp_path, steps=4, dropout=0.2), text=text)
    path = str(tmp_path / "run" / "latest.safetensors")
    tensors, meta = checkpoint.load(path)
    assert meta["train"]["locked_dropout"] is True
    del meta["train"]["locked_dropout"]
    checkpoint.save(path, tensors, meta)
    assert config_for_resume(checkpoint.read_meta(path), {"steps": 8}, path).locked_dropout is False
    resumed = le.Trainer(small_cfg(tmp_path, steps=8, dropout=0.2), text=text, resume=path)
    assert resumed.cfg.locked_dropout is False


def test_vocab_max_vocab_and_unk():
    v = Vocab.build("aaabbc\u4e2d", max_vocab=3)
    assert v.symbols == ["a", "b", "<unk>"]
    assert list(v.encode("abc\u4e2d")) == [0, 1, 2, 2]
    with pytest.raises(le.UserError):
        v.encode("abz", strict=True) if v.unk is None else Vocab(["a", "b"]).encode("abz", strict=True)


def test_checkpoint_round_trip_keeps_weights_vocab_and_loss(tmp_path):
    text = markov_text(500, seed=1) + "\u4e2d\u6587"
    trainer = le.train(small_cfg(tmp_path, steps=5), text=text)
    path = tmp_path / "run" / "latest.safetensors"
    model, vocab, meta = le.load_model(str(path), backend="numpy")
    assert vocab.symbols == trainer.vocab.symbols
    for n, p in trainer.model.params.items():
        assert np.array_equal(p, model.params[n])
    ids = vocab.encode(text[:300])
    assert evaluate_ids(model, ids)[0] == evaluate_ids(trainer.model, ids)[0]
    tensors, meta2 = checkpoint.load(str(path))
    assert meta2["trainer"]["step"] == 5 and "adam.m.W0" in tensors


def test_lr_decay_is_cosine_to_ten_percent():
    from lstm_engine.core.optim import lr_at
    assert lr_at(1, 100, 1.0, True) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, True) == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, False) == 1.0


def test_split_is_contiguous():
    ids = np.arange(100)
    tr, va = split(ids, 0.1)
    assert np.array_equal(np.concatenate([tr, va]), ids) and len(va) == 10
