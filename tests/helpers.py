"""Shared test helpers (tiny corpora, tiny configs, CLI runners, directory snapshots)."""
import hashlib
import os

import numpy as np
from click.testing import CliRunner

import lstm_engine as le
from lstm_engine.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def markov_text(n_units, seed=0):
    """'a' then x or y (a fair coin) then '.', repeated."""
    rng = np.random.default_rng(seed)
    return "".join("a" + ("x" if c else "y") + "." for c in rng.integers(0, 2, n_units))


def write_corpus(tmp_path, n_units=700, name="corpus.txt"):
    p = tmp_path / name
    p.write_text(markov_text(n_units) + "\nthe end, \u4e2d\u6587.\n", encoding="utf-8")
    return str(p)


TINY = dict(backend="numpy", embed_size=4, hidden_size=8, layers=2, batch_size=4, seq_len=8, lr=1e-2,
            eval_every=0, sample_every=0, save_every=0, log_every=1)


def tiny_cfg(out, **kw):
    return le.TrainConfig(**dict(TINY, out=str(out), **kw))


def tiny_args(corpus, out, **kw):
    """CLI arguments of a tiny training run; kw overrides (underscores become dashes)."""
    opts = dict(TINY, corpus=corpus, out=str(out), **kw)
    args = ["train"]
    for k, v in opts.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


def run_cli(args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


def assert_one_line_error(r, needle=None):
    """Exit status != 0, exactly one line on stderr, no traceback anywhere."""
    assert r.exit_code not in (0, None), r.output
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), repr(r.stderr)
    if needle is not None:
        assert needle.lower() in r.stderr.lower(), (needle, r.stderr)


def snapshot(d):
    """{relative name: sha256} of every file under d (to prove nothing was overwritten)."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
    return out


SAMPLER_TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 20


def peaky_model(cell, backend="numba", dtype="float32", H=24, L=2, seed=3):
    """A model on SAMPLER_TEXT's vocabulary with its weights scaled up: peaky predictions, so that
    sampled text varies and a change in the weights shows in it."""
    from lstm_engine.backends import get_backend
    from lstm_engine.core.model import Model, ModelConfig, init_params
    cfg = ModelConfig(len(le.Vocab.build(SAMPLER_TEXT)), 6, H, L, dtype=dtype, cell=cell)
    params = init_params(cfg, seed=seed)
    for name in [f"W{l}" for l in range(L)] + ["Wy"]:
        params[name] *= 4
    return Model(cfg, get_backend(backend), params)


def tiny_numba_checkpoints(tmp_path, dtypes=("float32", "float64")):
    """Train a tiny numba model on SAMPLER_TEXT for three steps per dtype -> {dtype: its latest
    checkpoint path}."""
    corpus = tmp_path / "sampler.txt"
    corpus.write_text(SAMPLER_TEXT, encoding="utf-8")
    out = {}
    for dtype in dtypes:
        r = run_cli(["train", "--corpus", corpus, "--backend", "numba", "--embed-size", 8, "--hidden-size", 16,
                     "--batch-size", 4, "--seq-len", 16, "--steps", 3, "--dtype", dtype, "--out", tmp_path / dtype])
        assert r.exit_code == 0, r.output
        out[dtype] = str(tmp_path / dtype / "latest.safetensors")
    return out


def force_sampler_path(monkeypatch, team, table):
    """Make the numba sampler run on a team of threads (or one thread) and with (or without) the
    layer-0 table whatever the model's size; skip where numba has one thread and a team is asked."""
    import numba
    import pytest

    from lstm_engine.backends import numba_backend as nb
    if team and numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "off")                  # the fixed rule picks team or one thread
    monkeypatch.setattr(nb, "SAMPLE_ROWS_PER_THREAD", 1 if team else 10 ** 9)
    monkeypatch.setattr(nb, "SAMPLE_TEAM_MIN_MACS", 0)
    monkeypatch.setattr(nb, "V_TABLE_MIN_CHARS_PER_ROW", 0 if table else 10 ** 9)
