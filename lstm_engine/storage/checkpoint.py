"""Checkpoints: one safetensors file (no pickle, nothing executes on load), written atomically.

Tensors:   param.<name>, adam.m.<name>, adam.v.<name>, state.h<l>, state.c<l>
Metadata:  one JSON document under the key "lstm_engine" holding the format version,
           model config, training config, vocabulary, step, RNG state, data position, history;
           and "lstm_engine_sha256", a digest of that document and of every tensor (name, dtype,
           shape, bytes), so that a damaged file is refused instead of loaded with wrong numbers.

Reading never trusts the file: the header is parsed as JSON by our own strict reader (dtypes,
shapes and byte ranges checked against each other and the file size before any tensor is
touched), the digest is checked, then shapes, dtypes and values are checked against the model
config stored beside them.  Every problem becomes one UserError line.

Dimension legend: V vocab, E embedding, H hidden, B batch (of the training run), G = 4H.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from ..errors import UserError
from . import schema
from .atomic import atomic_write_bytes
from .files import open_regular
from .rundir import write_error

FORMAT = "lstm-engine-checkpoint"
VERSION = 1
EXT = ".safetensors"
_META_KEY = "lstm_engine"
_DIGEST_KEY = "lstm_engine_sha256"
_ST_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}   # safetensors name -> little-endian dtype
_MAX_HEADER = 100 * 1024 * 1024                                 # safetensors' own limit
_MAGIC = ((b"PK\x03\x04", "a ZIP archive (e.g. a NumPy .npz or PyTorch .pt file)"),
          (b"\x93NUMPY", "a NumPy .npy file"), (b"\x80", "a Python pickle"),
          (b"\x89HDF", "an HDF5 file"), (b"\x1f\x8b", "a gzip file"), (b"GGUF", "a GGUF file"))


# -- writing ------------------------------------------------------------------
def _digest(meta_json, tensors):
    """sha256 over the metadata document and every tensor (name, dtype, shape, raw bytes) in name order.

    tensors: name -> (safetensors dtype string, shape tuple, bytes-like)."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        h.update(json.dumps([name, dtype, list(shape), len(data)]).encode("utf-8"))
        h.update(data)
    return h.hexdigest()


def serialize(tensors, meta):
    """tensors: dict name -> host ndarray (float32/float64); meta: JSON-able dict.  -> file bytes."""
    from safetensors.numpy import save as st_save
    meta_json = json.dumps(dict(meta, format=FORMAT, version=VERSION), allow_nan=False)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    names = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
    described = {k: (names[a.dtype], a.shape, a.tobytes()) for k, a in arrays.items()}
    return st_save(arrays, metadata={_META_KEY: meta_json, _DIGEST_KEY: _digest(meta_json, described)})


def save(path, tensors, meta):
    """Write one checkpoint file atomically (a crash leaves the old file or the new one, never half)."""
    data = serialize(tensors, meta)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise write_error(path, e) from None


# -- reading ------------------------------------------------------------------
def _bad(path, why):
    return UserError(f"{path!r} is not a usable lstm-engine checkpoint ({why}); "
                     f"pass a checkpoint written by `lstm-engine train`")


def resolve(path):
    """A checkpoint path, or a run directory -> its latest checkpoint (or newest step file)."""
    if os.path.isdir(path):
        latest = os.path.join(path, "latest" + EXT)
        if os.path.exists(latest):
            return latest
        from .rundir import step_files
        steps = step_files(path)
        if steps:
            return steps[-1][1]
        raise UserError(f"{path!r} is a directory without checkpoints; pass a .safetensors checkpoint "
                        f"(train writes DIR/latest{EXT}, DIR/best{EXT} and DIR/step-NNNNNN{EXT})")
    return path


def _open_checked(path):
    """-> (open binary file, size); one-line errors for missing / not-a-file / unreadable."""
    path = resolve(path)
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path!r} does not exist; pass the path of a .safetensors checkpoint "
                        f"(train writes DIR/latest{EXT} and DIR/best{EXT})")
    return open_regular(path, "checkpoint", lambda why: _bad(path, f"not a regular file: {why}"))


def read_meta(path):
    """Only the metadata of a checkpoint (reads the header, not the tensors).  -> meta dict."""
    f, size = _open_checked(path)
    with f:
        head = f.read(8)
        n = _header_length(head, size, path)
        header = _parse_header(f.read(n), path, head)
    entries = _check_layout(header, size - 8 - n, path)
    return _checked_meta(header, entries, path)


def load(path):
    """-> (tensors dict, meta dict).  Any malformed file gives a one-line UserError."""
    path = resolve(path)
    f, size = _open_checked(path)
    with f:
        head = f.read(8)
        n = _header_length(head, size, path)
        header = _parse_header(f.read(n), path, head)
        _check_layout(header, size - 8 - n, path)       # before reading what may be gigabytes of junk
        f.seek(0)
        raw = f.read()
    return parse(raw, path)


def _foreign(head, path, why):
    """The error for bytes that are no safetensors file, naming a known foreign format when it is one."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return _bad(path, f"it is {what}, which lstm-engine never loads")
    return _bad(path, why)


def _header_length(head, size, path):
    if len(head) < 8:
        raise _foreign(head, path, "file too short" if size else "file is empty")
    n = int.from_bytes(head, "little")
    if n < 2 or n > _MAX_HEADER or 8 + n > size:
        raise _foreign(head, path, "no safetensors header; the file is truncated or of another format")
    return n


def _parse_header(raw_header, path, head=b""):
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _foreign(head, path, "header is not valid JSON; the file is damaged or of another format") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    return header


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _check_layout(header, data_len, path):
    """Every tensor entry well-formed; byte ranges tile [0, data_len) exactly.  -> [(name, dtype, shape, a, b)]."""
    entries = []
    for name, e in header.items():
        if name == "__metadata__":
            if not isinstance(e, dict) or not all(isinstance(v, str) for v in e.values()):
                raise _bad(path, "header metadata is not a string map")
            continue
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}):
            raise _bad(path, f"tensor {name[:40]!r} has a malformed header entry")
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dt, str) or dt not in _ST_DTYPES:
            raise _bad(path, f"tensor {name[:40]!r} has dtype {str(dt)[:10]!r}; only F32 and F64 are used")
        if not (isinstance(shape, list) and len(shape) <= 4 and all(_is_int(s) and s >= 0 for s in shape)):
            raise _bad(path, f"tensor {name[:40]!r} has a malformed shape")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise _bad(path, f"tensor {name[:40]!r} has malformed data offsets")
        if offs[1] - offs[0] != math.prod(shape) * _ST_DTYPES[dt].itemsize:
            raise _bad(path, f"tensor {name[:40]!r}: shape and byte range disagree")
        entries.append((name, dt, tuple(shape), offs[0], offs[1]))
    entries.sort(key=lambda t: (t[3], t[4]))
    end = 0
    for name, _, _, a, b in entries:
        if a != end:
            raise _bad(path, "tensor byte ranges overlap or leave gaps")
        end = b
    if end != data_len:
        why = "truncated" if end > data_len else "has trailing bytes"
        raise _bad(path, f"file {why}: the header describes {end} bytes of tensor data, the file holds {data_len}")
    return entries


def _meta_of(header, path):
    md = header.get("__metadata__") or {}
    if _META_KEY not in md:
        raise _bad(path, "not written by lstm-engine (no lstm_engine metadata)")
    try:
        meta = json.loads(md[_META_KEY])
    except (ValueError, RecursionError):
        raise _bad(path, "metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(path, "not written by lstm-engine")
    v = meta.get("version")
    if not _is_int(v) or v < 1:
        raise _bad(path, f"format version {v!r} is not valid")
    if v > VERSION:
        raise UserError(f"checkpoint {path!r} has format version {v}, newer than this lstm-engine understands "
                        f"({VERSION}); upgrade lstm-engine (pip install -U lstm-engine)")
    return meta


def _checked_meta(header, entries, path):
    """The metadata, checked against the schema and the tensor shapes the header describes."""
    meta = _meta_of(header, path)
    described = {name: (_ST_DTYPES[dt].name, shape) for name, dt, shape, _, _ in entries}
    try:
        return schema.check_meta(meta, described)
    except schema.SchemaError as e:
        raise _bad(path, str(e)) from None


def parse(raw, path="<bytes>"):
    """Parse checkpoint bytes without executing anything.  -> (tensors dict, meta dict)."""
    raw = bytes(raw)
    n = _header_length(bytes(raw[:8]), len(raw), path)
    header = _parse_header(raw[8:8 + n], path, raw[:8])
    entries = _check_layout(header, len(raw) - 8 - n, path)
    meta = _checked_meta(header, entries, path)
    base = 8 + n
    described = {name: (dt, shape, raw[base + a:base + b]) for name, dt, shape, a, b in entries}
    if header["__metadata__"].get(_DIGEST_KEY) != _digest(header["__metadata__"][_META_KEY], described):
        raise _bad(path, "checksum mismatch: the file was damaged after it was written")
    tensors = {name: np.frombuffer(raw, _ST_DTYPES[dt], math.prod(shape), base + a).reshape(shape).copy()
               for name, dt, shape, a, _ in entries}
    validate_model(tensors, meta, path)
    return tensors, meta


# -- validation ---------------------------------------------------------------
def model_config(meta, path="<checkpoint>"):
    """The ModelConfig stored in meta, checked field by field (with the vocabulary; see schema.py)."""
    from ..core.model import ModelConfig
    try:
        m = schema.check_model(meta.get("model"))
        why = schema.vocab_problem(meta.get("vocab"))
        if why or len(meta["vocab"]) != m["vocab_size"]:
            raise schema.SchemaError(f"vocab: {why or 'its length is not model.vocab_size'}")
    except schema.SchemaError as e:
        raise _bad(path, f"model config or vocabulary missing or inconsistent: {e}") from None
    return ModelConfig(**m)


def _check_tensor(tensors, name, shape, dtype, path):
    t = tensors.get(name)
    if t is None:
        raise _bad(path, f"tensor {name} is missing")
    if tuple(t.shape) != tuple(shape) or t.dtype != np.dtype(dtype):
        raise _bad(path, f"tensor {name} has shape {tuple(t.shape)} {t.dtype}, expected {tuple(shape)} {dtype}")
    if not np.all(np.isfinite(t)):
        raise _bad(path, f"tensor {name} holds non-finite values")


def validate_model(tensors, meta, path="<checkpoint>"):
    """Parameter tensors agree with the stored model config (what eval and generate need)."""
    cfg = model_config(meta, path)
    for name, shape in cfg.param_shapes().items():
        _check_tensor(tensors, "param." + name, shape, cfg.dtype, path)
    return cfg


def validate_resumable(tensors, meta, path="<checkpoint>"):
    """Everything a resume restores is present and consistent: moments, carried state, trainer state."""
    cfg = validate_model(tensors, meta, path)
    train, t = meta.get("train"), meta.get("trainer")
    B = train.get("batch_size", 0) if isinstance(train, dict) else 0
    if B is None:
        B = 1                   # imported: no batch was used; a (1,H) zero state broadcasts to any batch
    if not (_is_int(B) and B >= 1 and isinstance(t, dict)):
        raise _bad(path, "training config or trainer state missing")
    for name, shape in cfg.param_shapes().items():
        _check_tensor(tensors, "adam.m." + name, shape, cfg.dtype, path)
        _check_tensor(tensors, "adam.v." + name, shape, cfg.dtype, path)
    for l in range(cfg.layers):
        _check_tensor(tensors, f"state.h{l}", (B, cfg.hidden_size), cfg.dtype, path)
        _check_tensor(tensors, f"state.c{l}", (B, cfg.hidden_size), cfg.dtype, path)
    try:
        schema.check_trainer(t)
    except schema.SchemaError as e:
        raise _bad(path, f"trainer state (step, position, best loss, RNG) is malformed: {e}") from None
    return cfg
