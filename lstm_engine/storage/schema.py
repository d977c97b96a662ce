"""The checkpoint metadata schema: every field any command reads, checked once when a checkpoint is read.

The digest detects accidents, not forgery: anyone can write a file whose digest matches crafted
metadata.  So every field is checked here for its type, its range and finiteness, the required
sections for their presence, the vocabulary for distinct single characters that UTF-8 can encode,
and the model's sizes against the tensor shapes (from the header, before any tensor is read).
After `check_meta` the commands may index the metadata without further checks.

Sections:  model (required; its cell optional, absent = lstm), vocab (required), train (required), trainer,
           unigram_entropy, corpus, imported (optional; typed when present).  Unknown keys are ignored (never read).

Dimension legend: V vocab, E embedding, H hidden, L layers, G the gate blocks (4H lstm, peephole; 3H coupled, gru),
B batch of the training run.
"""
from __future__ import annotations

import codecs
import math
import os
import re

import numpy as np

from ..core.model import CELLS, cell_param_shapes

UNK = "<unk>"                       # the one multi-character vocabulary entry (core.data.UNK)
SIZE_MAX = 2 ** 31 - 1              # sizes the kernels index with 32-bit integers
INT_MAX = 2 ** 63 - 1               # counters and seeds stored as 64-bit integers
HISTORY_MAX = 100_000               # evaluation rows kept in a checkpoint (training keeps 2000)
HISTORY_NUMBERS = ("time", "train_loss", "val_loss")      # what plot and resume read from a history row
LOSS_MAX = 1e9                      # nats/char: far beyond any loss a finite model reports, below overflow in plots
TIME_MAX = 1e12                     # seconds (some 30,000 years) of recorded training time
ENTROPY_MAX = math.log(SIZE_MAX + 1)  # nats: the entropy of a uniform choice among the most symbols a model has
MODEL_KEYS = ("vocab_size", "embed_size", "hidden_size", "layers", "dropout", "dtype")
MODEL_OPTIONAL = ("cell",)          # absent in checkpoints written before the cell variants: an lstm
DTYPES = {"float32": "F32", "float64": "F64"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SchemaError(ValueError):
    """A metadata field that breaks the schema; str() names the field and what it must be."""


def _short(x):
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x):
    """An int or float that is finite (JSON's NaN and Infinity are refused)."""
    return (is_int(x) or isinstance(x, float)) and math.isfinite(x)


def need_int(x, where, lo=0, hi=INT_MAX, null=False):
    if x is None and null:
        return
    if not (is_int(x) and lo <= x <= hi):
        raise SchemaError(f"{where} must be an integer in [{lo}, {hi}]{' or null' if null else ''} (got {_short(x)})")


def need_real(x, where, lo=-math.inf, hi=math.inf, hi_open=False, null=False):
    if x is None and null:
        return
    ok = is_real(x) and lo <= x and (x < hi if hi_open else x <= hi)
    if not ok:
        span = f" in [{lo}, {hi}{')' if hi_open else ']'}" if math.isfinite(hi) else f" >= {lo}" if math.isfinite(lo) \
            else ""
        raise SchemaError(f"{where} must be a finite number{span}{' or null' if null else ''} (got {_short(x)})")


def need_str(x, where, choices=None):
    if not isinstance(x, str) or (choices is not None and x not in choices):
        what = f"one of {', '.join(choices)}" if choices else "a string"
        raise SchemaError(f"{where} must be {what} (got {_short(x)})")
    if not utf8_ok(x):
        raise SchemaError(f"{where} holds a lone surrogate, which UTF-8 cannot encode")


def need_path(x, where):
    """A file name as the OS gave it: a file name that is not UTF-8 arrives with surrogate escapes."""
    if not isinstance(x, str):
        raise SchemaError(f"{where} must be a string (got {_short(x)})")
    try:
        os.fsencode(x)
    except UnicodeEncodeError:
        raise SchemaError(f"{where} holds a lone surrogate that is no escaped file-name byte") from None


def need_dict(x, where):
    if not isinstance(x, dict):
        raise SchemaError(f"section {where} must be a JSON object (got {type(x).__name__})")
    return x


def utf8_ok(s):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- the vocabulary ---------------------------------------------------------------------------------
def vocab_problem(symbols):
    """None, or what is wrong with a vocabulary list: entries must be distinct, each one character
    that UTF-8 can encode (no lone surrogate) or the <unk> token.  One pass, a set for duplicates."""
    if not isinstance(symbols, list):
        return f"it is a {type(symbols).__name__}, not a list"
    seen = set()
    for i, s in enumerate(symbols):
        if not isinstance(s, str) or not (len(s) == 1 or s == UNK):
            return f"entry {i} ({_short(s)}) is not a single character or {UNK!r}"
        if not utf8_ok(s):
            return f"entry {i} ({_short(s)}) is a lone surrogate, which UTF-8 cannot encode"
        if s in seen:
            return f"entry {i} ({_short(s)}) appears twice; each symbol needs its own index"
        seen.add(s)
    return None


# -- sections ---------------------------------------------------------------------------------------
def check_model(m):
    """The model section -> dict of its fields (MODEL_KEYS, and the cell when present)."""
    need_dict(m, "model")
    if not set(MODEL_KEYS) <= set(m) <= set(MODEL_KEYS + MODEL_OPTIONAL):
        raise SchemaError(f"section model must hold exactly {', '.join(MODEL_KEYS)} and optionally "
                          f"{', '.join(MODEL_OPTIONAL)} (has {', '.join(sorted(map(str, m)))})")
    for k in MODEL_KEYS[:4]:
        need_int(m[k], f"model.{k}", 1, SIZE_MAX)
    need_real(m["dropout"], "model.dropout", 0, 1, hi_open=True)
    need_str(m["dtype"], "model.dtype", tuple(DTYPES))
    if "cell" in m:
        need_str(m["cell"], "model.cell", CELLS)
    return m


PRODUCTS = ("auto", "float32", "bf16")     # train.products: what the GEMMs multiply (core/train.resolve_products)

# train field -> (kind, lo, hi, nullable); kinds: int, real, bool, str, path (a file name); every field optional
TRAIN_FIELDS = {
    "corpus": ("path",), "encoding": ("encoding",), "backend": ("str",), "out": ("path",), "recipe": ("str",),
    "dtype": ("dtype",), "cell": ("cell",), "lr_decay": ("bool",), "locked_dropout": ("bool",),
    "products": ("products",),
    "embed_size": ("int", 1, SIZE_MAX), "hidden_size": ("int", 1, SIZE_MAX), "layers": ("int", 1, SIZE_MAX),
    "batch_size": ("int", 1, SIZE_MAX, True), "seq_len": ("int", 1, SIZE_MAX, True),
    "steps": ("int", 1, INT_MAX), "keep": ("int", 1, SIZE_MAX), "seed": ("int", 0, INT_MAX),
    "eval_every": ("int", 0, INT_MAX), "sample_every": ("int", 0, INT_MAX), "save_every": ("int", 0, INT_MAX),
    "log_every": ("int", 0, INT_MAX), "max_vocab": ("int", 0, SIZE_MAX),
    "dropout": ("real", 0, 1, False, True), "val_fraction": ("real", 0, 1, False, True),
    "lr": ("real", 0, math.inf), "grad_clip": ("real", 0, math.inf), "time_budget": ("real", 0, math.inf),
}


def _check_train_field(k, v, spec):
    where, kind = f"train.{k}", spec[0]
    if kind == "str":
        need_str(v, where)
    elif kind == "path":
        need_path(v, where)
    elif kind == "dtype":
        need_str(v, where, tuple(DTYPES))
    elif kind == "cell":
        need_str(v, where, CELLS)
    elif kind == "products":
        need_str(v, where, PRODUCTS)
    elif kind == "bool":
        if not isinstance(v, bool):
            raise SchemaError(f"{where} must be true or false (got {_short(v)})")
    elif kind == "encoding":
        need_str(v, where)
        try:
            ok = codecs.lookup(v)._is_text_encoding
        except LookupError:
            ok = False
        if not ok:
            raise SchemaError(f"{where} must name a text encoding (got {_short(v)})")
    elif kind == "int":
        need_int(v, where, spec[1], spec[2], null=len(spec) > 3 and spec[3])
    else:
        need_real(v, where, spec[1], spec[2], hi_open=len(spec) > 4 and spec[4])
        if k == "lr" and not v > 0:
            raise SchemaError(f"{where} must be > 0 (got {_short(v)})")


def check_train(t, model):
    need_dict(t, "train")
    for k, spec in TRAIN_FIELDS.items():
        if k in t:
            _check_train_field(k, t[k], spec)
    for k in ("embed_size", "hidden_size", "layers", "dtype"):
        if k in t and t[k] != model[k]:
            raise SchemaError(f"train.{k} ({_short(t[k])}) disagrees with model.{k} ({_short(model[k])})")
    if "cell" in t and t["cell"] != model.get("cell", "lstm"):
        raise SchemaError(f"train.cell ({_short(t['cell'])}) disagrees with model.cell ({model.get('cell', 'lstm')})")
    if t.get("max_vocab") and model["vocab_size"] > t["max_vocab"]:
        raise SchemaError(f"model.vocab_size {model['vocab_size']} exceeds train.max_vocab {t['max_vocab']}")


def _check_history(rows, where):
    if not isinstance(rows, list) or len(rows) > HISTORY_MAX:
        raise SchemaError(f"{where} must be a list of at most {HISTORY_MAX} rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SchemaError(f"{where}[{i}] must be a JSON object (got {_short(row)})")
        need_int(row.get("step"), f"{where}[{i}].step")
        for k in HISTORY_NUMBERS:
            need_real(row.get(k), f"{where}[{i}].{k}", 0, TIME_MAX if k == "time" else LOSS_MAX, null=True)


def check_rng(state, where="trainer.rng"):
    """A PCG64 state dict NumPy accepts (as training seeds its dropout generator)."""
    try:
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        raise SchemaError(f"{where} is not a PCG64 random state") from None


def check_trainer(t):
    need_dict(t, "trainer")
    need_int(t.get("step"), "trainer.step")
    need_int(t.get("position"), "trainer.position")
    need_real(t.get("best_val"), "trainer.best_val", 0, LOSS_MAX, null=True)
    need_real(t.get("elapsed"), "trainer.elapsed", 0, TIME_MAX)
    need_real(t.get("log_loss_sum", 0.0), "trainer.log_loss_sum")
    need_int(t.get("log_loss_n", 0), "trainer.log_loss_n")
    _check_history(t.get("history", []), "trainer.history")
    check_rng(t.get("rng"))


def check_optional(meta):
    need_real(meta.get("unigram_entropy"), "unigram_entropy", 0, ENTROPY_MAX, null=True)
    fp = meta.get("corpus")
    if fp is not None:
        need_dict(fp, "corpus")
        need_int(fp.get("chars"), "corpus.chars")
        if not (isinstance(fp.get("sha256"), str) and _HEX64.fullmatch(fp["sha256"])):
            raise SchemaError(f"corpus.sha256 must be 64 lowercase hex digits (got {_short(fp.get('sha256'))})")
    imp = meta.get("imported")
    if imp is not None:
        for k, v in need_dict(imp, "imported").items():
            need_path(v, f"imported.{k}")


# -- sizes against the tensors ----------------------------------------------------------------------
def param_shapes(m):
    """Parameter name -> shape of a model section (as core.model.ModelConfig.param_shapes)."""
    V, E, H, L = m["vocab_size"], m["embed_size"], m["hidden_size"], m["layers"]
    shapes = {"Emb": (V, E)}
    for l in range(L):
        for k, shape in cell_param_shapes(m.get("cell", "lstm"), E if l == 0 else H, H).items():
            shapes[f"{k}{l}"] = shape                                # W (H+I, G), b (G,), ...
    shapes["Wy"] = (H, V)
    shapes["by"] = (V,)
    return shapes


def check_shapes(m, described):
    """Every parameter tensor is described with the model's shape and dtype.

    described: tensor name -> (dtype name 'float32'/'float64', shape tuple)."""
    if m["layers"] > len(described):              # each layer needs tensors: no loop over a crafted count
        raise SchemaError(f"model.layers {m['layers']} exceeds the tensors the file holds")
    for name, shape in param_shapes(m).items():
        key = "param." + name
        if key not in described:
            raise SchemaError(f"tensor {key} is missing")
        dt, got = described[key]
        if tuple(got) != tuple(shape) or dt != m["dtype"]:
            raise SchemaError(f"tensor {key} has shape {tuple(got)} {dt}, expected {tuple(shape)} {m['dtype']}")


def _within(prefix, fn, *args):
    """Run one section's check; its error starts with `prefix` (what the section is for)."""
    try:
        return fn(*args)
    except SchemaError as e:
        raise SchemaError(f"{prefix}: {e}") from None


def _check_vocab(meta, m):
    why = vocab_problem(meta["vocab"])
    if why:
        raise SchemaError(f"vocab: {why}")
    if len(meta["vocab"]) != m["vocab_size"]:
        raise SchemaError(f"vocab has {len(meta['vocab'])} entries but model.vocab_size is {m['vocab_size']}")


def check_meta(meta, described):
    """The whole schema; raises SchemaError naming the first field that breaks it.

    described: tensor name -> (dtype name, shape) of every tensor in the file."""
    for key in ("model", "vocab", "train"):
        if key not in meta:
            raise SchemaError(f"required section {key} is missing")
    m = _within("model config or vocabulary invalid", check_model, meta["model"])
    _within("model config or vocabulary invalid", _check_vocab, meta, m)
    check_shapes(m, described)
    _within("training config invalid", check_train, meta["train"], m)
    if "trainer" in meta:
        _within("trainer state (step, position, best loss, RNG) is malformed", check_trainer, meta["trainer"])
    check_optional(meta)
    return meta
