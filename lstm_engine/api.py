"""The small Python API the CLI is built on; it works the same from a notebook.

    import lstm_engine as le
    text = le.load_corpus("python-docs")
    trainer = le.train(le.TrainConfig(steps=200, out="runs/demo"))
    model, vocab, meta = le.load_model("runs/demo/latest.safetensors")
    print(le.generate(model, vocab, prime="def ", length=100, seed=1))
    print(le.evaluate(model, vocab, text[-5000:]))
"""
from __future__ import annotations

import os

from .storage import checkpoint
from .corpora import registry as corpora
from .backends import get_backend
from .core.data import Vocab, load_corpus
from .errors import UserError
from .core.generation import bits, evaluate_ids, generate_text
from .core.model import Model, ModelConfig
from .core.train import TrainConfig, Trainer


def state_dir():
    """Where the engine remembers the last run ($LSTM_ENGINE_STATE_DIR or XDG state home)."""
    d = os.environ.get("LSTM_ENGINE_STATE_DIR")
    if not d:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        d = os.path.join(base, "lstm-engine")
    return d


def remember_last_run(out_dir):
    try:
        os.makedirs(state_dir(), exist_ok=True)
        with open(os.path.join(state_dir(), "last_run"), "w") as f:
            f.write(os.path.abspath(out_dir))
    except OSError:
        pass   # remembering is a convenience; never fail a run over it


def last_checkpoint():
    """Path of the latest checkpoint of the last run, or a UserError saying what to pass."""
    try:
        with open(os.path.join(state_dir(), "last_run")) as f:
            run = f.read().strip()
    except OSError:
        run = ""
    path = os.path.join(run, "latest" + checkpoint.EXT) if run else ""
    if not path or not os.path.exists(path):
        raise UserError("no checkpoint given and no previous run found; train first "
                        "(`lstm-engine train`) or pass a checkpoint path")
    return path


def corpus_defaults(corpus, encoding="utf-8", given=()):
    """--embed-size / --max-vocab for a new run, where not in `given` (the options set explicitly):
    the corpus's suggestions (`corpus info`): the engine defaults 64 / all symbols up to 256
    symbols, fitted values above.  -> ({option: value} for the options filled in, corpus text)."""
    text = load_corpus(corpus, encoding)
    suggested = corpora.suggest_train_options(text)
    return {k: v for k, v in suggested.items() if k not in given}, text


def train(cfg: TrainConfig, text=None, resume=None, on_event=None):
    """Train a model; -> the Trainer (its .model, .vocab, .st hold the result)."""
    trainer = Trainer(cfg, text=text, resume=resume, on_event=on_event)
    remember_last_run(trainer.out)
    trainer.run()
    return trainer


def load_model(path, backend="auto"):
    """-> (Model on the chosen backend, Vocab, metadata dict) from a checkpoint file."""
    tensors, meta = checkpoint.load(path)
    cfg = ModelConfig(**meta["model"])
    params = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")}
    return Model(cfg, get_backend(backend), params), Vocab(meta["vocab"]), meta


def evaluate(model, vocab, text):
    """Mean loss of `text` scored as one stream from a zero state.

    -> dict(loss_nats, bits_per_char, chars)."""
    loss, n = evaluate_ids(model, vocab.encode(text))
    return {"loss_nats": loss, "bits_per_char": bits(loss), "chars": n}


def generate(model, vocab, prime="", length=200, temperature=1.0, top_k=0, top_p=1.0,
             greedy=False, seed=None, on_text=None):
    """Sample text after `prime` (see generation.generate_text)."""
    return generate_text(model, vocab, prime, length, temperature, top_k, top_p, greedy, seed, on_text)


__all__ = ["TrainConfig", "Trainer", "ModelConfig", "Model", "Vocab", "UserError", "load_corpus",
           "train", "load_model", "evaluate", "generate", "last_checkpoint", "get_backend"]
