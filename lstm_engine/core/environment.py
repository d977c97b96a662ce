"""The LSTM_ENGINE_* environment variables: what each accepts, checked where it is read.

A bad value is one line naming the variable and what it accepts, on every path: a misspelt value
must not make `--backend auto` skip a backend silently, and a name one typo away from a known one
is refused with the name it probably meant (a variable nobody reads would otherwise be ignored).
"""
from __future__ import annotations

import difflib
import os
import sys

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
    "LSTM_ENGINE_TUNE": ("auto, off, or a GEMM to force: own, gemm12x32, gemm6x16, blas (the numba backend's "
                         "per-machine kernel choice)", _choices("auto", "off", "own", "gemm12x32", "gemm6x16", "blas")),
    "LSTM_ENGINE_TUNE_FILE": ("a file path (where the numba backend's kernel choices are cached)", _path),
    "LSTM_ENGINE_NUMBA_ISA": ("one of native, avx2 (the instruction set numba compiles for)",
                              _choices("native", "avx2")),
}
AVX2_CPU = "haswell"        # the target numba compiles for under LSTM_ENGINE_NUMBA_ISA=avx2


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


def apply_numba_isa():
    """LSTM_ENGINE_NUMBA_ISA=avx2: make numba compile for an AVX2 CPU (Haswell, its own features
    only), with its disk cache in an isa-avx2 folder beside the usual one so the two never mix.
    numba reads its target when it is imported, so this runs before that (the kernels package and
    numba_backend.is_available call it); once numba is imported for another target it refuses.
    -> the ISA in effect ('native' or 'avx2')."""
    isa = get("LSTM_ENGINE_NUMBA_ISA", "native")
    if isa == "native":
        return isa
    if "numba" in sys.modules:
        from numba.core import config
        if (config.CPU_NAME or "").lower() != AVX2_CPU:
            raise UserError("LSTM_ENGINE_NUMBA_ISA=avx2 takes effect only when set before numba is imported; "
                            "set it in the environment before starting Python")
        return isa
    os.environ["NUMBA_CPU_NAME"] = AVX2_CPU
    os.environ["NUMBA_CPU_FEATURES"] = ""                       # the named CPU's features, not the host's
    base = os.environ.get("NUMBA_CACHE_DIR") or _default_numba_cache()
    if os.path.basename(os.path.normpath(base)) != "isa-avx2":  # a child process inherits the folder
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "isa-avx2")
    return isa


def _default_numba_cache():
    """Where numba caches the kernels without NUMBA_CACHE_DIR: their __pycache__ when writable,
    else the user's cache directory."""
    from .. import kernels
    tree = os.path.join(os.path.dirname(os.path.abspath(kernels.__file__)), "numba", "__pycache__")
    if os.access(tree if os.path.isdir(tree) else os.path.dirname(tree), os.W_OK):
        return tree
    base = os.environ.get("XDG_CACHE_HOME", "")
    base = base if os.path.isabs(base) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lstm-engine", "numba")
