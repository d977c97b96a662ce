"""Checkpoints: one safetensors file (no pickle, nothing executes on load), written atomically.

Tensors:   param.<name>, adam.m.<name>, adam.v.<name>, state.h<l>, state.c<l>
Metadata:  one JSON document under the key "lstm_engine" holding the format version,
           model config, training config, vocabulary, step, RNG state, data position, history.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .errors import UserError

FORMAT = "lstm-engine-checkpoint"
VERSION = 1
EXT = ".safetensors"
_META_KEY = "lstm_engine"
_DTYPES = ("float32", "float64")


def atomic_write_bytes(path, data):
    """Write data to path so that a crash at any moment leaves either the old or the new file.

    temp file in the same directory -> write -> flush + fsync -> rename -> fsync the directory.
    """
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=EXT, dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(path, tensors, meta):
    """tensors: dict name -> host ndarray; meta: JSON-able dict.  Atomic."""
    from safetensors.numpy import save as st_save
    meta = dict(meta, format=FORMAT, version=VERSION)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    try:
        data = st_save(arrays, metadata={_META_KEY: json.dumps(meta)})
        atomic_write_bytes(path, data)
    except OSError as e:
        raise UserError(f"could not write checkpoint {path!r}: {e.strerror or e}; "
                        f"free some disk space or choose another --out directory") from None


def load(path):
    """-> (tensors dict, meta dict).  Any malformed file gives a one-line UserError."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path!r} does not exist; pass the path of a .safetensors checkpoint "
                        f"(train writes DIR/latest{EXT} and DIR/best{EXT})")
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path!r} is a directory; pass {os.path.join(path, 'latest' + EXT)}")
    with open(path, "rb") as f:
        raw = f.read()
    return parse(raw, path)


def _bad(path, why):
    return UserError(f"{path!r} is not a usable lstm-engine checkpoint ({why}); "
                     f"pass a checkpoint written by `lstm-engine train`")


def parse(raw, path="<bytes>"):
    """Parse checkpoint bytes without executing anything (safetensors: JSON header + raw data)."""
    from safetensors.numpy import load as st_load
    if len(raw) < 8:
        raise _bad(path, "file too short")
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or 8 + n > len(raw):
        raise _bad(path, "no safetensors header")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
        meta = json.loads(header.get("__metadata__", {}).get(_META_KEY, "null"))
    except (UnicodeDecodeError, ValueError, AttributeError, TypeError):
        raise _bad(path, "header is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(path, "not written by lstm-engine")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise _bad(path, f"format version {meta.get('version')!r} is newer than this lstm-engine "
                         f"understands ({VERSION}); upgrade lstm-engine")
    try:
        tensors = st_load(raw)
    except Exception as e:   # safetensors raises its own error types for malformed data
        raise _bad(path, f"tensor data is damaged: {str(e).splitlines()[0][:80]}") from None
    _validate(tensors, meta, path)
    return tensors, meta


def _validate(tensors, meta, path):
    """Shapes and dtypes must agree with the model config stored beside them."""
    from .model import ModelConfig
    try:
        cfg = ModelConfig(**meta["model"])
        vocab = meta["vocab"]
        assert isinstance(vocab, list) and all(isinstance(s, str) for s in vocab)
        assert cfg.vocab_size == len(vocab) and cfg.dtype in _DTYPES
        assert min(cfg.vocab_size, cfg.embed_size, cfg.hidden_size, cfg.layers) >= 1
    except (KeyError, TypeError, AssertionError, ValueError):
        raise _bad(path, "model config or vocabulary missing or inconsistent") from None
    for name, shape in cfg.param_shapes().items():
        t = tensors.get("param." + name)
        if t is None:
            raise _bad(path, f"tensor param.{name} is missing")
        if tuple(t.shape) != tuple(shape) or t.dtype != np.dtype(cfg.dtype):
            raise _bad(path, f"tensor param.{name} has shape {tuple(t.shape)} {t.dtype}, "
                             f"expected {tuple(shape)} {cfg.dtype}")
        if not np.all(np.isfinite(t)):
            raise _bad(path, f"tensor param.{name} holds non-finite values")
