"""The LSTM_ENGINE_* environment variables: what each accepts, checked where it is read.

A bad value is one line naming the variable and what it accepts, on every path: a misspelt value
must not make `--backend auto` skip a backend silently, and a name one typo away from a known one
is refused with the name it probably meant (a variable nobody reads would otherwise be ignored).
"""
from __future__ import annotations

import difflib
import os

from ..errors import UserError

PREFIX = "LSTM_ENGINE_"
TYPO = 0.93          # difflib ratio of a one-letter slip in a name this long (not a different word)


def _path(value):
    return bool(value) and "\x00" not in value


def _url(value):
    return value.startswith(("http://", "https://", "file://")) and len(value) > len("file://")


def _choices(*values):
    return lambda value: value in values


# name -> (what it accepts, in words; the check)
VARIABLES = {
    "LSTM_ENGINE_STATE_DIR": ("a directory path (where the last run is remembered)", _path),
    "LSTM_ENGINE_CACHE": ("a directory path (the corpus cache)", _path),
    "LSTM_ENGINE_REGISTRY": ("the path of a corpus registry JSON file", _path),
    "LSTM_ENGINE_BASE_URL": ("an http://, https:// or file:// URL (a mirror of the corpus sources)", _url),
    "LSTM_ENGINE_CUPY_STEP": ("one of auto, fused, cublas, persist", _choices("auto", "fused", "cublas", "persist")),
    "LSTM_ENGINE_CUPY_BLAS": ("one of direct, matmul", _choices("direct", "matmul")),
    "LSTM_ENGINE_CUPY_GRAPHS": ("0 or 1", _choices("0", "1")),
    "LSTM_ENGINE_GPU_REPORT": ("a file path (the GPU parity report of the tests)", _path),
    "LSTM_ENGINE_EMU_CACHE": ("a directory path (the CUDA emulator's cache of the tests)", _path),
}


def bad_value(name, value):
    accepts = VARIABLES[name][0]
    return UserError(f"environment variable {name}={value[:60]!r} is not valid: it takes {accepts}; "
                     f"fix it or unset it")


def get(name, default=None):
    """The value of a known variable, checked; `default` when unset (an empty value counts as unset)."""
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    if not VARIABLES[name][1](value):
        raise bad_value(name, value)
    return value


def check_all(environ=None):
    """Check every LSTM_ENGINE_* variable that is set: known ones by value, unknown ones one typo
    away from a known name are refused naming it."""
    environ = os.environ if environ is None else environ
    for name in sorted(n for n in environ if n.startswith(PREFIX)):
        if name in VARIABLES:
            value = environ[name]
            if value and not VARIABLES[name][1](value):
                raise bad_value(name, value)
            continue
        near = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=TYPO)
        if near:
            raise UserError(f"environment variable {name} is not one lstm-engine reads; did you mean {near[0]}? "
                            f"rename or unset it")
