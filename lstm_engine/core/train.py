"""The training loop: truncated BPTT over B streams, Adam, evaluation, checkpoints.

Dimension legend: T seq-len, B batch, H hidden, V vocab.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import parallel
from ..backends import compile_ahead, get_backend, tune_first_use
from ..errors import UserError
from ..storage import checkpoint
from ..storage.rundir import RunDir, default_run_dir
from . import budget
# TrainConfig and config_for_resume are also imported from here by callers that predate core.config
from .config import FIXED_ON_RESUME, TrainConfig, config_for_resume, explicit_fields, resume_conflict  # noqa: F401
from .data import Batcher, Vocab, load_corpus, split, unigram_entropy
from .generation import eval_chunk_lengths, evaluate_ids, generate_text
from .model import Model
from .optim import Adam, AdamConfig, lr_at
from .resources import check_training_memory

EXT = checkpoint.EXT


@dataclass
class TrainState:
    """Everything besides weights and moments that a resume must restore."""
    step: int = 0
    position: int = 0              # windows consumed since the start of training
    best_val: float = math.inf
    elapsed: float = 0.0           # seconds of training before this process
    history: list = field(default_factory=list)
    log_loss_sum: float = 0.0      # train loss summed since the last log row (train_log.jsonl averages it)
    log_loss_n: int = 0


def corpus_fingerprint(text):
    """{'chars', 'sha256'} of a corpus text: a resume must see the very same text."""
    return {"chars": len(text), "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()}


def resolve_products(requested, be, dtype, budgeted):
    """--products -> 'float32' or 'bf16', handed to the backend for this process.  auto: bf16 under
    a time budget where the backend offers it (numba on a CPU with AVX512_BF16, a float32 model,
    LSTM_ENGINE_TUNE auto) and a layer trains faster with it on this machine (measured once,
    be.bf16_pays), or where LSTM_ENGINE_TUNE=bf16 forces it; else float32: rounding the operands
    buys speed, which only a budget of time turns into a better model (docs/time-budget.md)."""
    from . import environment
    offers = getattr(be, "bf16_products", None)              # (ok, why); the numba backend only
    tune = environment.get("LSTM_ENGINE_TUNE", "auto") if offers else "auto"
    usable = offers is not None and dtype == "float32"
    if requested == "auto":
        if usable and (tune == "bf16" or budgeted and tune == "auto" and offers()[0] and be.bf16_pays()):
            requested = "bf16"
        else:
            requested = "float32"
    elif requested == "bf16":
        if offers is None:
            raise UserError(f"--products bf16 needs the numba backend (this run uses {be.NAME}); "
                            f"pass --backend numba or --products float32")
        if dtype != "float32":
            raise UserError("--products bf16 trains float32 models; drop --dtype float64 or pass --products float32")
        ok, why = offers()
        if not ok:
            raise UserError(f"--products bf16: {why}; pass --products float32")
    elif tune == "bf16" and usable:
        raise UserError("--products float32 and LSTM_ENGINE_TUNE=bf16 disagree; unset one of them")
    if offers is not None:
        be.use_products(requested)
    return requested


class Trainer:
    """Holds model, optimiser, data and state; `run()` trains to cfg.steps.

    Events go to `on_event(kind, info)`: 'start', 'log', 'eval', 'sample', 'save', 'done'.
    With resume=PATH (a checkpoint or a run directory) everything a checkpoint holds is restored,
    so the run continues exactly as if it had never stopped.
    group: the data-parallel group (lstm_engine.parallel; default the one connect() made, or one
    process); this rank trains its shard of the streams, only rank 0 reports, evaluates and saves.
    """

    def __init__(self, cfg: TrainConfig, text=None, resume=None, on_event=None, explicit=None, group=None):
        self._clock0 = time.perf_counter()     # a --time-budget covers everything from here
        cfg.check()
        self.cfg = cfg
        self.dist = group or parallel.current()
        self._check_parallel()
        self.on_event = (on_event if self.dist.root else None) or (lambda kind, info: None)
        self.stop_requested = False
        self._stop_agreed = False          # a stop every rank has seen (in the step's all-reduce)
        self._gathered = (None, None)      # (step, every stream's carried state on rank 0)
        self._first_use_asked = False      # the backend's tuner asked about this model's products (tune_first_use)
        self.be = get_backend(cfg.backend)
        tensors, meta = (None, None)
        if resume:
            resume = checkpoint.resolve(resume)
            tensors, meta = checkpoint.load(resume)
            checkpoint.validate_resumable(tensors, meta, resume)
            self._check_resume_matches(meta)
        text = load_corpus(cfg.corpus, cfg.encoding) if text is None else text
        self.fingerprint = corpus_fingerprint(text)
        if resume:
            self._check_same_corpus(meta)
        self.vocab = Vocab(meta["vocab"]) if resume else Vocab.build(text, cfg.max_vocab)
        if len(self.vocab) < 2:
            raise UserError("the corpus has a single distinct character; there is nothing to learn - "
                            "pass a text with at least two different characters")
        self.entropy = unigram_entropy(text)
        ids = self.vocab.encode(text)
        self.train_ids, self.val_ids = split(ids, cfg.val_fraction)
        self.out = cfg.out or ((os.path.dirname(resume) or ".") if resume else default_run_dir())
        cfg.products = resolve_products(cfg.products, self.be, cfg.dtype, bool(cfg.time_budget))
        if cfg.time_budget and not resume:
            RunDir(self.out, cfg.keep).refuse_taken()     # a taken --out fails before calibration time is spent
            self._plan_budget(explicit)
        check_training_memory(len(self.vocab), cfg.embed_size, cfg.hidden_size, cfg.layers, cfg.batch_size,
                              cfg.seq_len, cfg.dtype, cfg.cell)
        self.streams = parallel.shard(cfg.batch_size, self.dist.size, self.dist.rank)   # this rank's streams
        self.batcher = Batcher(self.train_ids, cfg.batch_size, cfg.seq_len, self.streams)
        self.model_cfg = cfg.model_config(len(self.vocab))
        params = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")} if tensors else None
        if params is None and not self.dist.root:     # rank 0 draws the initial weights and broadcasts them
            params = {n: np.zeros(shape, cfg.dtype) for n, shape in self.model_cfg.param_shapes().items()}
        self.model = Model(self.model_cfg, self.be, params, seed=cfg.seed)
        self.opt = Adam(self.model.params, self.be, AdamConfig(cfg.lr, grad_clip=cfg.grad_clip))
        self.rng = np.random.default_rng(cfg.seed + 1)   # dropout masks
        self.st = TrainState()
        self.state = self.model.zero_state(self._local_batch())
        if resume:
            self._restore(tensors, meta)
        self._saved = {}                                  # step -> checkpoint bytes (this step only)
        self._reserve = self._estimate_reserve() if cfg.time_budget else 0.0   # before the run directory is touched
        if cfg.time_budget and not resume:
            budget.check_minimum(cfg.time_budget, time.perf_counter() - self._clock0, self._reserve, self._step_s)
            self.on_event("recipe", {"text": cfg.recipe})
        self.rundir = RunDir(self.out, cfg.keep, claim=not (cfg.out or resume))
        same_dir = resume and os.path.realpath(os.path.dirname(resume)) == os.path.realpath(self.out)
        if self.dist.root:                                # only rank 0 writes
            self.rundir.prepare(self.st.step if same_dir else None)
        self.out = self.rundir.path                       # a default name may have taken a suffix

    def _plan_budget(self, explicit):
        """Let the time-budget recipe choose what the user did not set (see budget.plan)."""
        cfg = self.cfg
        if explicit is None:       # API use: a field differing from its default counts as set
            explicit = explicit_fields(cfg)
        for name, value in (("steps", 10 ** 9), ("eval_every", 0), ("sample_every", 0)):
            if name not in explicit:
                setattr(cfg, name, value)       # the clock ends the run; evaluation comes at its end
        cfg.recipe, speed = budget.plan(cfg, explicit, self.train_ids, len(self.vocab), self.be,
                                        say=lambda text: None)       # reported once the budget is known to fit
        self._step_s = cfg.batch_size * cfg.seq_len / speed       # seconds per step at the measured speed

    # -- resume ------------------------------------------------------------
    def _check_resume_matches(self, meta):
        saved = dict(meta["train"], **{k: meta["model"][k] for k in ("embed_size", "hidden_size", "layers", "dtype")},
                     cell=meta["model"].get("cell", "lstm"))         # absent: a checkpoint of an lstm
        if meta["train"] and "locked_dropout" not in meta["train"]:
            self.cfg.locked_dropout = False     # a run from before locked masks: keep drawing one per step
        for key in FIXED_ON_RESUME:
            if saved.get(key) is not None and saved[key] != getattr(self.cfg, key):
                raise resume_conflict(key, getattr(self.cfg, key), saved[key])
        step = meta["trainer"]["step"]
        if step >= self.cfg.steps:
            raise UserError(f"the --resume checkpoint is already at step {step} and --steps is {self.cfg.steps}; "
                            f"pass a larger --steps to train further")

    def _check_same_corpus(self, meta):
        fp = meta.get("corpus")
        if fp and fp != self.fingerprint:
            raise UserError(f"the corpus ({self.cfg.corpus!r}, {self.fingerprint['chars']:,} chars) is not the text "
                            f"the --resume checkpoint was trained on ({fp.get('chars')} chars); "
                            f"pass the same --corpus and --encoding to continue it")

    def _restore(self, tensors, meta):
        be = self.be
        for n in self.model.params:
            self.opt.m[n][...] = be.asarray(tensors["adam.m." + n])
            self.opt.v[n][...] = be.asarray(tensors["adam.v." + n])
        t = meta["trainer"]
        self.opt.step = t["step"]
        best = t.get("best_val")                                    # absent or null: no best yet (schema.check_trainer)
        best = math.inf if best is None else best
        self.st = TrainState(t["step"], t["position"], best, t["elapsed"], t.get("history", []),
                             t.get("log_loss_sum", 0.0), t.get("log_loss_n", 0))
        self.rng.bit_generator.state = t["rng"]
        for l in range(self.model_cfg.layers):
            for j, name in enumerate((f"state.h{l}", f"state.c{l}")):
                t = tensors[name]                                   # (B,H), or (1,H) zeros of an import
                self.state[l][j][...] = be.asarray(t[self.streams] if len(t) == self.cfg.batch_size else t)

    # -- checkpoints -------------------------------------------------------
    def checkpoint_bytes(self):
        """The complete state after the current step, serialised (once per step)."""
        st = self.st
        if st.step in self._saved:
            return self._saved[st.step]
        be = self.be
        params = {n: be.to_numpy(p) for n, p in self.model.params.items()}
        for n, p in params.items():
            if not np.all(np.isfinite(p)):
                raise self._diverged(f"parameter {n} holds non-finite values")
        tensors, meta = checkpoint_contents(
            params,
            {n: be.to_numpy(a) for n, a in self.opt.m.items()},
            {n: be.to_numpy(a) for n, a in self.opt.v.items()},
            self._host_state(),
            self.model_cfg, self.cfg, self.vocab, self.entropy,
            {"step": st.step, "position": st.position, "best_val": _finite_or_none(st.best_val),
             "elapsed": st.elapsed + self._elapsed(), "history": st.history[-2000:],
             "rng": self.rng.bit_generator.state, "log_loss_sum": st.log_loss_sum, "log_loss_n": st.log_loss_n})
        meta["corpus"] = self.fingerprint
        self._saved = {st.step: checkpoint.serialize(tensors, meta)}
        return self._saved[st.step]

    def save(self, name="latest"):
        """Write DIR/latest (+ a step file, pruned to --keep) or DIR/best atomically.  -> path."""
        data = self.checkpoint_bytes()
        if name == "best":
            path = self.rundir.save_best(data)
        else:
            path = self.rundir.save_latest(data, self.st.step)
        self.on_event("save", {"path": path, "step": self.st.step, "kind": name})
        return path

    def _diverged(self, what):
        last = (f"the last good checkpoint {self.rundir.latest} (step {self.rundir.saved_step}) and "
                f"{os.path.basename(self.rundir.best)} are kept; resume from it with a lower --lr "
                f"(e.g. --resume {self.out} --lr {self.cfg.lr / 4:g})" if self.rundir.saved_step is not None else
                f"no checkpoint was written yet; start again with a lower --lr (e.g. --lr {self.cfg.lr / 4:g})")
        return UserError(f"training diverged at step {self.st.step + 1} ({what}); stopped without saving: {last}")

    # -- loop --------------------------------------------------------------
    def _elapsed(self):
        return time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0

    def train_step(self):
        """One window: forward, BPTT, clip, Adam.  -> (loss, grad norm)."""
        cfg, be, b = self.cfg, self.be, self.batcher
        if not self._first_use_asked and self.dist.size == 1:     # a first step outside run(): from a notebook
            self._first_use_asked = True
            tune_first_use(be, self.model_cfg, self._local_batch(), cfg.seq_len)
        k = self.st.position % b.windows
        if k == 0:
            self.state = self.model.zero_state(self._local_batch())   # a new epoch starts from zero state
        x, y = b.window(k)
        tokens, targets = be.asarray(x), be.asarray(y)            # (T,b) each: this rank's streams
        masks = self.model.dropout_masks(cfg.seq_len, cfg.batch_size, self.rng, locked=cfg.locked_dropout,
                                         streams=self.streams)
        loss, grads, new_state = self.model.forward_backward(tokens, targets, self.state, masks)
        # every rank gets the mean over all B streams (and any rank's stop request) from one all-reduce
        grads, loss, self._stop_agreed = self.dist.reduce_step(grads, loss, self.stop_requested)
        norm, scale = self.opt.clip_scale(grads)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            e = self._diverged(f"loss {loss}, gradient norm {norm}")
            e.collective = True                       # every rank sees the same reduced loss and norm
            raise e
        if cfg.time_budget:
            lr = budget.lr_at_time(self._trained_fraction(), cfg.lr) if cfg.lr_decay else cfg.lr
        else:
            lr = lr_at(self.st.step + 1, cfg.steps, cfg.lr, cfg.lr_decay)
        self.opt.update(self.model.params, grads, lr, scale)
        self.state = new_state
        self.st.step += 1
        self.st.position += 1
        return loss, norm

    def _trained_fraction(self):
        """Fraction of the budget's training time gone: the schedule spans the training alone, so the
        warm-up is never spent while calibration, compiling and timing the reserve run first."""
        left = self.cfg.time_budget - self._reserve - self._setup_s      # earlier processes' setup is not counted either
        return (self.st.elapsed + self._elapsed()) / max(left, 1e-9)

    def _used(self):
        """Seconds of the time budget used so far (earlier processes of a resumed run included)."""
        return self._elapsed_before + time.perf_counter() - self._clock0

    def _estimate_reserve(self):
        """Seconds to keep for the closing evaluation and saves: time a slice of the val stream,
        after a first pass over the same slice has met its chunk shapes (JIT compile, first-use
        tuning: seconds that, timed, would be scaled up to the whole val stream)."""
        n = min(len(self.val_ids), 2001)
        if n < 2:
            return 1.0
        evaluate_ids(self.model, self.val_ids[:n])                  # warm-up: the same chunks as timed
        t0 = time.perf_counter()
        evaluate_ids(self.model, self.val_ids[:n])
        per_char = (time.perf_counter() - t0) / (n - 1)
        t0 = time.perf_counter()
        self.checkpoint_bytes()
        save = time.perf_counter() - t0
        self._saved = {}
        return 1.2 * per_char * len(self.val_ids) + 3 * save + 1.0

    def _budget_left(self, step_time):
        """True while another step still fits before the reserve."""
        return self._used() + step_time + self._reserve < self.cfg.time_budget

    def evaluate(self):
        loss, _ = evaluate_ids(self.model, self.val_ids)
        return loss

    def run(self):
        """Train to cfg.steps (or until stop_requested); the directory lock is held meanwhile.

        With several ranks every rank calls run(); a failure on one rank stops them all (dist.fail)."""
        root = self.dist.root
        self.dist.agree(self.rundir.acquire if root else lambda: None)
        try:
            if root:
                self.rundir.reset_logs(self.st.step)
            self._join()
            self._announce()                              # before compile_ahead's tuning reports its choices
            with self._compile_ahead():
                return self._run()
        except BaseException as e:
            if self.dist.size > 1:
                if getattr(e, "collective", False):       # raised on every rank alike: rank 0 reports it
                    raise e if root else parallel.QuietError(str(e)) from None
                self.dist.fail(e, self.st.step, self.out)
            raise
        finally:
            if root:
                self.rundir.release()

    def _announce(self):
        """The 'start' event: what trains, on what, from which step."""
        self.on_event("start", {"out": self.out, "vocab": len(self.vocab), "entropy": self.entropy,
                                "train_chars": len(self.train_ids), "val_chars": len(self.val_ids),
                                "backend": self.be.NAME, "model": self.model_cfg.to_dict(), "step": self.st.step,
                                "products": self.cfg.products,
                                "params": sum(int(np.prod(p.shape)) for p in self.model.params.values()),
                                **({"ranks": self.members} if self.members else {})})

    def _compile_ahead(self):
        """The backend's compile_ahead for this run's first step and evaluation (one process only)."""
        if self.dist.size > 1:
            return contextlib.nullcontext()
        self._first_use_asked = True                      # compile_ahead asks the tuner itself
        cfg = self.cfg
        evals = eval_chunk_lengths(len(self.val_ids)) if cfg.eval_every or cfg.time_budget else []
        return compile_ahead(self.be, self.model_cfg, self._local_batch(), cfg.seq_len, evals)

    # -- data-parallel ranks (lstm_engine.parallel) ---------------------------
    def _check_parallel(self):
        K = self.dist.size
        if K > 1:
            parallel.check_batch(self.cfg.batch_size, K)
            if self.cfg.time_budget:
                raise UserError(f"--time-budget runs in one process (its calibration would differ between the "
                                f"{K} ranks); pass --steps instead, or run without mpiexec")

    def _local_batch(self):
        return self.streams.stop - self.streams.start

    def _join(self):
        """Collective: the gradient buffer and transport, rank 0's weights and run directory on every rank."""
        self.dist.bind(self.be, self.model_cfg.param_shapes(), self.model_cfg.dtype)
        self.dist.broadcast_params(self.model.params)
        self.out = self.dist.share(self.out)
        self.members = self.dist.members()               # [(host, pid)] per rank; None in one process

    @property
    def interrupted(self):
        """The run stopped on request (Ctrl-C / SIGTERM on any rank) before --steps."""
        return self._stopping()

    def _stopping(self):
        """One process stops when asked; ranks stop together, after the step whose all-reduce carried the request."""
        return self.stop_requested if self.dist.size == 1 else self._stop_agreed

    def _gather_state(self):
        """Collective: every stream's carried state on rank 0, for the checkpoints of this step."""
        host = [[self.be.to_numpy(h), self.be.to_numpy(c)] for h, c in self.state]    # per layer (b,H) x 2
        self._gathered = (self.st.step, self.dist.gather_streams(host))

    def _host_state(self):
        """Per layer (h (B,H), c (B,H)) on the host: the carried state of all B streams."""
        if self.dist.size == 1:
            return [(self.be.to_numpy(h), self.be.to_numpy(c)) for h, c in self.state]
        step, state = self._gathered
        assert step == self.st.step, "the state is gathered (collectively) before rank 0 saves"
        return [tuple(hc) for hc in state]

    def _run(self):
        cfg, st = self.cfg, self.st
        self._t0 = time.perf_counter()
        self._setup_s = self._t0 - self._clock0           # this process's time before its first step
        self._elapsed_before = st.elapsed
        start_step, t_log, last_loss, n_chars = st.step, time.perf_counter(), float("nan"), 0
        saved_at, step_time, root = None, 0.0, self.dist.root
        self._reduce_mark = self.dist.reduce_seconds
        while st.step < cfg.steps and not self._stopping():
            if cfg.time_budget and not self._budget_left(step_time):
                break
            t_step = time.perf_counter()
            last_loss, norm = self.train_step()
            step_time = time.perf_counter() - t_step
            st.log_loss_sum, st.log_loss_n = st.log_loss_sum + last_loss, st.log_loss_n + 1
            n_chars += cfg.batch_size * cfg.seq_len
            s = st.step
            if self.dist.size > 1:
                self._gather_if_saving(s)
                if not root:
                    continue                                  # only rank 0 logs, evaluates, samples and saves
            if cfg.log_every and (s % cfg.log_every == 0 or s == cfg.steps):
                now = time.perf_counter()
                self.on_event("log", self._log_info(s, last_loss, norm, n_chars / max(now - t_log, 1e-9), now - t_log))
                t_log, n_chars = now, 0
                self.rundir.append_log({"step": s, "time": st.elapsed + self._elapsed(),
                                        "train_loss": st.log_loss_sum / st.log_loss_n, "grad_norm": norm},
                                       "train_log.jsonl")   # for `lstm-engine plot`
                st.log_loss_sum, st.log_loss_n = 0.0, 0
            if len(self.val_ids) > 1 and cfg.eval_every and (s % cfg.eval_every == 0 or s == cfg.steps):
                self._eval_and_keep_best(last_loss)
            if cfg.sample_every and s % cfg.sample_every == 0 and s != cfg.steps:
                text = generate_text(self.model, self.vocab, "", 200, temperature=0.8, seed=s)
                self.on_event("sample", {"step": s, "text": text})
            if cfg.save_every and s % cfg.save_every == 0:
                self.save("latest")
                saved_at = s
            if s - start_step == 1:
                t_log, n_chars = time.perf_counter(), 0       # keep compile/warm-up out of chars/s
                self._reduce_mark = self.dist.reduce_seconds
        if cfg.time_budget and len(self.val_ids) > 1 and not self.stop_requested and \
                not (st.history and st.history[-1]["step"] == st.step):
            self._eval_and_keep_best(last_loss)          # the budget closes with evaluation and `best`
        if self.dist.size > 1 and self._gathered[0] != st.step:
            self._gather_state()
        if not root:
            return st
        path = self.rundir.latest if saved_at == st.step else self.save("latest")
        self.on_event("done", {"step": st.step, "path": path, "best_val": st.best_val,
                               "interrupted": self.interrupted})
        return st

    def _log_info(self, s, loss, norm, speed, seconds):
        """The progress line's numbers; with several ranks also K and the all-reduce's share of the time."""
        cfg = self.cfg
        eta = (cfg.steps - s) * cfg.batch_size * cfg.seq_len / max(speed, 1e-9)
        if cfg.time_budget:
            eta = min(eta, cfg.time_budget - self._used())
        info = {"step": s, "steps": None if cfg.time_budget else cfg.steps,   # a budget: open-ended
                "loss": loss, "grad_norm": norm, "chars_per_s": speed, "eta_s": eta, "entropy": self.entropy}
        if self.dist.size > 1:
            reduced, self._reduce_mark = self.dist.reduce_seconds - self._reduce_mark, self.dist.reduce_seconds
            info.update(ranks=self.dist.size, allreduce_share=min(reduced / max(seconds, 1e-9), 1.0))
        return info

    def _gather_if_saving(self, s):
        """Collective, at the steps where rank 0 may save (an evaluation can save `best`)."""
        cfg = self.cfg
        evaluating = len(self.val_ids) > 1 and cfg.eval_every and (s % cfg.eval_every == 0 or s == cfg.steps)
        if evaluating or (cfg.save_every and s % cfg.save_every == 0):
            self._gather_state()

    def _eval_and_keep_best(self, train_loss):
        st = self.st
        val = self.evaluate()
        best = val < st.best_val
        st.history.append({"step": st.step, "time": st.elapsed + self._elapsed(),
                           "train_loss": _finite_or_none(train_loss), "val_loss": val})
        self.rundir.append_log(st.history[-1], "history.jsonl")
        if best:
            st.best_val = val
            self.save("best")
        self.on_event("eval", {"step": st.step, "val_loss": val, "best": best, "entropy": self.entropy})


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
