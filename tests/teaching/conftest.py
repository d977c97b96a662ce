"""A small trained checkpoint for the explorer's tests (trained once per session)."""
import random

import pytest

import lstm_engine as le


def quote_bracket_corpus(n, seed):
    """Letters and spaces with quotes and nested ( ) up to depth 3; newlines only outside both."""
    rng = random.Random(seed)
    out, depth, quoted = [], 0, False
    while len(out) < n:
        r = rng.random()
        if not quoted and depth < 3 and r < 0.08:
            out.append("(")
            depth += 1
        elif not quoted and depth > 0 and r < 0.16:
            out.append(")")
            depth -= 1
        elif r < 0.21:
            out.append('"')
            quoted = not quoted
        elif depth == 0 and not quoted and r < 0.25:
            out.append("\n")
        else:
            out.append(rng.choice("abcd "))
    return "".join(out)


@pytest.fixture(scope="session")
def explore_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "run"
    cfg = le.TrainConfig(backend="numpy", embed_size=8, hidden_size=16, layers=2, batch_size=16, seq_len=32,
                         steps=400, lr=1e-2, eval_every=0, sample_every=0, save_every=0, log_every=0, seed=0,
                         out=str(out))
    le.Trainer(cfg, text=quote_bracket_corpus(20000, 1)).run()
    return str(out / "latest.safetensors")


@pytest.fixture(scope="session")
def cell_ckpt(tmp_path_factory):
    """cell_ckpt(cell) -> a checkpoint of that cell with explore_ckpt's sizes (2 layers, E8 H16), trained
    100 steps on the same kind of text, once per session."""
    made = {}

    def make(cell):
        if cell not in made:
            out = tmp_path_factory.mktemp(f"explore-{cell}") / "run"
            cfg = le.TrainConfig(backend="numpy", cell=cell, embed_size=8, hidden_size=16, layers=2, batch_size=16,
                                 seq_len=32, steps=100, lr=1e-2, eval_every=0, sample_every=0, save_every=0,
                                 log_every=0, seed=0, out=str(out))
            le.Trainer(cfg, text=quote_bracket_corpus(20000, 1)).run()
            made[cell] = str(out / "latest.safetensors")
        return made[cell]
    return make
