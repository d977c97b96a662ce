"""The training options and how a run's options are resolved: engine defaults, the user's explicit
choices, the corpus's suggestions (new runs) and the checkpoint's options (resumed runs).

The Python API and the CLI both resolve through these functions, so both pick the same options.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

from ..corpora.registry import suggest_train_options
from ..errors import UserError
from .resources import check_training_memory
from ..storage import checkpoint
from ..storage.schema import INT_MAX, PRODUCTS, SIZE_MAX  # noqa: F401  (PRODUCTS: the CLI's choices)
from .model import CELLS, ModelConfig, check_cell
from .optim import AdamConfig

# options a resumed run must share with its checkpoint (shapes, data windows, random streams)
FIXED_ON_RESUME = ("cell", "embed_size", "hidden_size", "layers", "dtype", "batch_size", "seq_len", "max_vocab",
                   "val_fraction", "seed", "locked_dropout")
# options the corpus's suggestions fill in for a new run (`lstm-engine corpus info`)
SUGGESTED = ("embed_size", "max_vocab")

# integer options: (smallest, largest); sizes are indexed with 32-bit integers by the kernels
INT_RANGES = {**{k: (1, SIZE_MAX) for k in ("embed_size", "hidden_size", "layers", "batch_size", "seq_len", "keep")},
              **{k: (0, INT_MAX) for k in ("eval_every", "sample_every", "save_every", "log_every", "seed")},
              "steps": (1, INT_MAX), "max_vocab": (0, SIZE_MAX)}
FLOAT_OPTIONS = ("dropout", "lr", "grad_clip", "val_fraction", "time_budget")

_MODEL = ModelConfig(vocab_size=0)      # the model's and the optimiser's defaults are the training defaults
_ADAM = AdamConfig()


@dataclass
class TrainConfig:
    """Every option of a training run; `lstm-engine train --NAME` is field NAME with this default."""
    corpus: str = "python-docs"
    encoding: str = "utf-8"
    backend: str = "auto"
    cell: str = _MODEL.cell        # the recurrent cell, one of core.model.CELLS
    embed_size: int = _MODEL.embed_size
    hidden_size: int = _MODEL.hidden_size
    layers: int = _MODEL.layers
    dropout: float = _MODEL.dropout
    batch_size: int = 32
    seq_len: int = 64
    lr: float = _ADAM.lr
    lr_decay: bool = False
    grad_clip: float = _ADAM.grad_clip
    locked_dropout: bool = True    # one dropout mask per window and sequence, shared by its time steps
    steps: int = 1000
    eval_every: int = 250
    sample_every: int = 250
    save_every: int = 250
    log_every: int = 10
    seed: int = 0
    dtype: str = _MODEL.dtype
    max_vocab: int = 0
    val_fraction: float = 0.1
    out: str = ""
    keep: int = 3                  # step-numbered checkpoints kept besides latest and best
    time_budget: float = 0.0       # seconds of wall clock for the whole run (0: train to --steps)
    recipe: str = ""               # what the time-budget recipe chose, and why
    products: str = "auto"         # GEMM operands: float32, bf16, auto (core/train.resolve_products)

    def check(self):
        """Reject impossible values with one line each, and sizes that cannot fit in memory."""
        for name, (lo, hi) in INT_RANGES.items():
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
                raise UserError(f"--{name.replace('_', '-')} must be an integer in [{lo}, {hi}] (got {v!r})")
        for name in FLOAT_OPTIONS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number (got {v!r})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be > 0 (got {self.lr})")
        if not self.grad_clip >= 0:
            raise UserError(f"--grad-clip must be >= 0 (got {self.grad_clip}); 0 switches clipping off")
        if self.cell not in CELLS:
            raise UserError(f"--cell must be one of {', '.join(CELLS)} (got {self.cell!r})")
        if self.products not in PRODUCTS:
            raise UserError(f"--products must be one of {', '.join(PRODUCTS)} (got {self.products!r})")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"--dtype must be float32 or float64 (got {self.dtype!r})")
        if not (self.time_budget >= 0 and math.isfinite(self.time_budget)):
            raise UserError(f"--time-budget must be positive (got {self.time_budget})")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1) (got {self.val_fraction})")
        # the vocabulary is not known yet: --max-vocab (or 2 symbols) is a lower bound
        check_training_memory(max(self.max_vocab, 2), self.embed_size, self.hidden_size, self.layers,
                              self.batch_size, self.seq_len, self.dtype, self.cell)

    def model_config(self, vocab_size):
        return ModelConfig(vocab_size, self.embed_size, self.hidden_size, self.layers, self.dropout, self.dtype,
                           check_cell(self.cell))


def defaults():
    """{field: default} of TrainConfig (the CLI's option defaults come from here)."""
    return {f.name: f.default for f in fields(TrainConfig)}


def explicit_fields(cfg):
    """Names of the fields of `cfg` that differ from the defaults: what an API caller counts as set."""
    return {name for name, value in defaults().items() if getattr(cfg, name) != value}


def check_names(options):
    """Refuse option names that are not TrainConfig fields (a typo would otherwise be dropped silently)."""
    unknown = sorted(set(options) - set(defaults()))
    if unknown:
        raise UserError(f"unknown training option(s) {', '.join(unknown)}; see TrainConfig's fields")


def with_corpus_suggestions(cfg, explicit, text):
    """A new run's cfg with the corpus's suggestions (SUGGESTED) where not in `explicit`.

    -> (cfg, {option: value} of the suggestions that differ from the engine defaults).  `cfg` is
    returned unchanged (the same object) when no suggestion changes it."""
    filled = {k: v for k, v in suggest_train_options(text).items() if k in SUGGESTED and k not in explicit}
    changed = {k: v for k, v in filled.items() if v != getattr(cfg, k)}
    base = defaults()
    noted = {k: v for k, v in filled.items() if v != base[k]}
    return (replace(cfg, **changed) if changed else cfg), noted


def config_for_resume(meta, given, resume_path):
    """The TrainConfig that continues a checkpoint's run.

    given: the options the user passed explicitly (name -> value).  Options not given come from the
    checkpoint; given ones override the adjustable options (--steps, --lr, cadences, ...) and must
    agree with the fixed ones (FIXED_ON_RESUME).  --out defaults to the checkpoint's directory.
    """
    names = set(defaults())
    # None (or an empty corpus) is what an imported checkpoint records: "not fixed, take the option"
    saved = {k: v for k, v in (meta.get("train") or {}).items() if k in names and v not in (None, "")}
    if "corpus" not in saved and "corpus" not in given:
        raise UserError(f"--resume {resume_path!r} records no training corpus (it was imported); "
                        f"pass --corpus FILE")
    if meta.get("train") and "locked_dropout" not in saved:
        saved["locked_dropout"] = False         # written before locked masks existed: it drew one per step
    saved["cell"] = (meta.get("model") or {}).get("cell", "lstm")   # the weights' cell; absent: an lstm
    for key in FIXED_ON_RESUME:
        if key in given and key in saved and given[key] != saved[key]:
            raise resume_conflict(key, given[key], saved[key])
    values = dict(saved, **{k: v for k, v in given.items() if k in names})
    if "out" not in given:
        values["out"] = os.path.dirname(checkpoint.resolve(resume_path)) or "."
    try:
        return TrainConfig(**values)
    except TypeError:
        raise UserError(f"--resume {resume_path!r}: the stored training options are malformed; "
                        f"pass a checkpoint written by `lstm-engine train`") from None


def resume_conflict(key, asked, saved):
    opt = "--" + key.replace("_", "-")
    return UserError(f"{opt} {asked} conflicts with the --resume checkpoint, which was trained with {opt} {saved}; "
                     f"leave {opt} out to continue the run, or start a new run without --resume")
