"""The training loop: truncated BPTT over B streams, Adam, evaluation, checkpoints.

Dimension legend: T seq-len, B batch, H hidden, V vocab.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import checkpoint
from .backends import get_backend
from .data import Batcher, Vocab, load_corpus, split, unigram_entropy
from .errors import UserError
from .generation import evaluate_ids, generate_text
from .model import Model, ModelConfig
from .optim import Adam, AdamConfig, lr_at

EXT = checkpoint.EXT


@dataclass
class TrainConfig:
    corpus: str = "python-docs"
    encoding: str = "utf-8"
    backend: str = "auto"
    embed_size: int = 64
    hidden_size: int = 128
    layers: int = 2
    dropout: float = 0.0
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 2e-3
    lr_decay: bool = False
    grad_clip: float = 5.0
    steps: int = 1000
    eval_every: int = 250
    sample_every: int = 250
    save_every: int = 250
    log_every: int = 10
    seed: int = 0
    dtype: str = "float32"
    max_vocab: int = 0
    val_fraction: float = 0.1
    out: str = ""

    def check(self):
        """Reject impossible values with one line each."""
        for name in ("embed_size", "hidden_size", "layers", "batch_size", "seq_len", "steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("eval_every", "sample_every", "save_every", "log_every", "max_vocab"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0 (got {self.lr})")
        if self.grad_clip < 0:
            raise UserError(f"--grad-clip must be >= 0 (got {self.grad_clip}); 0 switches clipping off")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"--dtype must be float32 or float64 (got {self.dtype!r})")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1) (got {self.val_fraction})")

    def model_config(self, vocab_size):
        return ModelConfig(vocab_size, self.embed_size, self.hidden_size, self.layers, self.dropout, self.dtype)


@dataclass
class TrainState:
    """Everything besides weights and moments that a resume must restore."""
    step: int = 0
    position: int = 0              # windows consumed since the start of training
    best_val: float = math.inf
    elapsed: float = 0.0           # seconds of training before this process
    history: list = field(default_factory=list)


class Trainer:
    """Holds model, optimiser, data and state; `run()` trains to cfg.steps.

    Events go to `on_event(kind, info)`: 'start', 'log', 'eval', 'sample', 'save', 'done'.
    """

    def __init__(self, cfg: TrainConfig, text=None, resume=None, on_event=None):
        cfg.check()
        self.cfg = cfg
        self.on_event = on_event or (lambda kind, info: None)
        self.stop_requested = False
        self.be = get_backend(cfg.backend)
        text = load_corpus(cfg.corpus, cfg.encoding) if text is None else text
        tensors, meta = (None, None)
        if resume:
            tensors, meta = checkpoint.load(resume)
            self.vocab = Vocab(meta["vocab"])
            self._check_resume_matches(meta)
        else:
            self.vocab = Vocab.build(text, cfg.max_vocab)
        if len(self.vocab) < 2:
            raise UserError("the corpus has a single distinct character; there is nothing to learn - "
                            "pass a text with at least two different characters")
        self.entropy = unigram_entropy(text)
        ids = self.vocab.encode(text)
        self.train_ids, self.val_ids = split(ids, cfg.val_fraction)
        self.batcher = Batcher(self.train_ids, cfg.batch_size, cfg.seq_len)
        self.model_cfg = cfg.model_config(len(self.vocab))
        params = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")} if tensors else None
        self.model = Model(self.model_cfg, self.be, params, seed=cfg.seed)
        self.opt = Adam(self.model.params, self.be, AdamConfig(cfg.lr, grad_clip=cfg.grad_clip))
        self.rng = np.random.default_rng(cfg.seed + 1)   # dropout masks
        self.st = TrainState()
        self.state = self.model.zero_state(cfg.batch_size)
        if resume:
            self._restore(tensors, meta)
        self.out = cfg.out or os.path.join("runs", time.strftime("run-%Y%m%d-%H%M%S"))

    # -- resume ------------------------------------------------------------
    def _check_resume_matches(self, meta):
        m = meta["model"]
        c = self.cfg
        for key, val in (("embed_size", c.embed_size), ("hidden_size", c.hidden_size),
                         ("layers", c.layers), ("dtype", c.dtype)):
            if m[key] != val:
                raise UserError(f"--resume checkpoint has {key.replace('_', '-')}={m[key]} but the options ask for "
                                f"{val}; drop the option or pass --{key.replace('_', '-')} {m[key]}")
        t = meta.get("train", {})
        for key in ("batch_size", "seq_len"):
            if t.get(key) not in (None, getattr(c, key)):
                raise UserError(f"--resume checkpoint was trained with --{key.replace('_', '-')} {t[key]}; "
                                f"pass the same value to continue it exactly")

    def _restore(self, tensors, meta):
        be = self.be
        for n in self.model.params:
            self.opt.m[n][...] = be.asarray(tensors["adam.m." + n])
            self.opt.v[n][...] = be.asarray(tensors["adam.v." + n])
        t = meta["trainer"]
        self.opt.step = t["step"]
        best = t["best_val"] if t["best_val"] is not None else math.inf
        self.st = TrainState(t["step"], t["position"], best, t["elapsed"], t.get("history", []))
        self.rng.bit_generator.state = t["rng"]
        for l in range(self.model_cfg.layers):
            self.state[l][0][...] = be.asarray(tensors[f"state.h{l}"])
            self.state[l][1][...] = be.asarray(tensors[f"state.c{l}"])

    # -- checkpoints -------------------------------------------------------
    def save(self, name):
        be = self.be
        st = self.st
        tensors, meta = checkpoint_contents(
            {n: be.to_numpy(p) for n, p in self.model.params.items()},
            {n: be.to_numpy(a) for n, a in self.opt.m.items()},
            {n: be.to_numpy(a) for n, a in self.opt.v.items()},
            [(be.to_numpy(h), be.to_numpy(c)) for h, c in self.state],
            self.model_cfg, self.cfg, self.vocab, self.entropy,
            {"step": st.step, "position": st.position, "best_val": _finite_or_none(st.best_val),
             "elapsed": st.elapsed + self._elapsed(), "history": st.history[-2000:],
             "rng": self.rng.bit_generator.state})
        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, name + EXT)
        checkpoint.save(path, tensors, meta)
        self.on_event("save", {"path": path, "step": st.step})
        return path

    # -- loop --------------------------------------------------------------
    def _elapsed(self):
        return time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0

    def train_step(self):
        """One window: forward, BPTT, clip, Adam.  -> (loss, grad norm)."""
        cfg, be, b = self.cfg, self.be, self.batcher
        k = self.st.position % b.windows
        if k == 0:
            self.state = self.model.zero_state(cfg.batch_size)   # a new epoch starts from zero state
        x, y = b.window(k)
        tokens, targets = be.asarray(x), be.asarray(y)            # (T,B) each
        masks = self.model.dropout_masks(cfg.seq_len, cfg.batch_size, self.rng)
        loss, grads, new_state = self.model.forward_backward(tokens, targets, self.state, masks)
        norm, scale = self.opt.clip_scale(grads)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise UserError(f"training diverged at step {self.st.step + 1} (loss {loss}, gradient norm {norm}); "
                            f"the last good checkpoint is kept - resume from it with a lower --lr")
        lr = lr_at(self.st.step + 1, cfg.steps, cfg.lr, cfg.lr_decay)
        self.opt.update(self.model.params, grads, lr, scale)
        self.state = new_state
        self.st.step += 1
        self.st.position += 1
        return loss, norm

    def evaluate(self):
        loss, _ = evaluate_ids(self.model, self.val_ids)
        return loss

    def run(self):
        cfg, st = self.cfg, self.st
        self._t0 = time.perf_counter()
        self.on_event("start", {"out": self.out, "vocab": len(self.vocab), "entropy": self.entropy,
                                "train_chars": len(self.train_ids), "val_chars": len(self.val_ids),
                                "backend": self.be.NAME, "model": self.model_cfg.to_dict(), "step": st.step,
                                "params": sum(int(np.prod(p.shape)) for p in self.model.params.values())})
        start_step, t_log, last_loss, n_chars = st.step, time.perf_counter(), float("nan"), 0
        loss_sum, loss_n = 0.0, 0                                 # train loss since the last log row
        while st.step < cfg.steps and not self.stop_requested:
            last_loss, norm = self.train_step()
            loss_sum, loss_n = loss_sum + last_loss, loss_n + 1
            n_chars += cfg.batch_size * cfg.seq_len
            s = st.step
            if cfg.log_every and (s % cfg.log_every == 0 or s == cfg.steps):
                now = time.perf_counter()
                speed = n_chars / max(now - t_log, 1e-9)
                eta = (cfg.steps - s) * cfg.batch_size * cfg.seq_len / max(speed, 1e-9)
                self.on_event("log", {"step": s, "steps": cfg.steps, "loss": last_loss, "grad_norm": norm,
                                      "chars_per_s": speed, "eta_s": eta, "entropy": self.entropy})
                t_log, n_chars = now, 0
                self._append_history({"step": s, "time": st.elapsed + self._elapsed(), "train_loss": loss_sum / loss_n,
                                      "grad_norm": norm}, "train_log.jsonl")   # for `lstm-engine plot`
                loss_sum, loss_n = 0.0, 0
            if len(self.val_ids) > 1 and cfg.eval_every and (s % cfg.eval_every == 0 or s == cfg.steps):
                self._eval_and_keep_best(last_loss)
            if cfg.sample_every and s % cfg.sample_every == 0 and s != cfg.steps:
                text = generate_text(self.model, self.vocab, "", 200, temperature=0.8, seed=s)
                self.on_event("sample", {"step": s, "text": text})
            if cfg.save_every and s % cfg.save_every == 0:
                self.save("latest")
            if s - start_step == 1:
                t_log, n_chars = time.perf_counter(), 0       # keep compile/warm-up out of chars/s
        path = self.save("latest")
        self.on_event("done", {"step": st.step, "path": path, "best_val": st.best_val,
                               "interrupted": self.stop_requested})
        return st

    def _eval_and_keep_best(self, train_loss):
        st = self.st
        val = self.evaluate()
        best = val < st.best_val
        st.history.append({"step": st.step, "time": st.elapsed + self._elapsed(),
                           "train_loss": train_loss, "val_loss": val})
        self._append_history(st.history[-1])
        if best:
            st.best_val = val
            self.save("best")
        self.on_event("eval", {"step": st.step, "val_loss": val, "best": best, "entropy": self.entropy})

    def _append_history(self, row, name="history.jsonl"):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, name), "a") as f:
            f.write(json.dumps(row) + "\n")


def checkpoint_contents(params, adam_m, adam_v, state, model_cfg, train_cfg, vocab, entropy, trainer):
    """Host arrays and settings -> (tensors, meta) in the layout checkpoint.load and Trainer._restore read.

    params, adam_m, adam_v: name -> ndarray;  state: per layer (h (B,H), c (B,H));
    trainer: dict(step, position, best_val, elapsed, history, rng).  Used by Trainer.save and interop.
    """
    tensors = {}
    for n, p in params.items():
        tensors["param." + n] = p
        tensors["adam.m." + n] = adam_m[n]
        tensors["adam.v." + n] = adam_v[n]
    for l, (h, c) in enumerate(state):
        tensors[f"state.h{l}"] = h
        tensors[f"state.c{l}"] = c
    meta = {"model": model_cfg.to_dict(), "train": asdict(train_cfg), "vocab": list(vocab.symbols),
            "unigram_entropy": entropy, "trainer": trainer}
    return tensors, meta


def _finite_or_none(x):
    return x if math.isfinite(x) else None

