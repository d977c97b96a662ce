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
    "LSTM_ENGINE_TUNE": ("auto, off, or a GEMM to force: own, gemm12x32, gemm6x16, blas, or bf16 (bfloat16 "
                         "operands, float32 sums: the numba backend's per-machine kernel choice)",
                         _choices("auto", "off", "own", "gemm12x32", "gemm6x16", "blas", "bf16")),
    "LSTM_ENGINE_TUNE_FILE": ("a file path (where the numba backend's kernel choices are cached)", _path),
    "LSTM_ENGINE_NUMBA_ISA": ("one of native, native-256, avx2 (the instruction set numba compiles for)",
                              _choices("native", "native-256", "avx2")),
}
AVX2_CPU = "haswell"        # the target numba compiles for under LSTM_ENGINE_NUMBA_ISA=avx2
WIDE = "-prefer-256-bit"    # LLVM tuning flag off: loops use 512-bit vectors on an AVX-512 CPU
NARROW = "+prefer-256-bit"  # on: 256-bit vectors, as LLVM tunes for Intel's AVX-512 server cores


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
    """numba's target, set before numba builds it (at its first @njit; the kernels package and
    numba_backend.is_available call this).

    native (default): the host CPU and its features; on a CPU with AVX-512, 512-bit vectors.  The
        kernels' register blocks are sized for them (NR = 32 float32: two zmm a row), and LLVM's
        tuning for Intel's AVX-512 server cores (Skylake-X to Emerald Rapids) prefers 256-bit
        vectors, which halves the width of every FMA loop there (docs/numba.md, "Vector width").
    native-256: the host's features with 256-bit vectors preferred (LLVM's choice on those Intel
        cores; for comparing the two on any AVX-512 CPU).
    avx2: an AVX2 CPU (Haswell, its own features only), with the disk cache in an isa-avx2 folder
        beside the usual one so the two never mix; once numba is imported for another target it
        refuses.  (native and native-256 share the cache: numba keys its entries by the features.)
    A NUMBA_CPU_NAME or NUMBA_CPU_FEATURES the user set is left as it is.
    -> the ISA in effect ('native', 'native-256' or 'avx2')."""
    isa = get("LSTM_ENGINE_NUMBA_ISA", "native")
    if isa != "avx2":
        _vector_width(NARROW if isa == "native-256" else WIDE)
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


def import_numba():
    """numba, imported after apply_numba_isa has set its target: the way in for modules outside the
    kernels that may import numba first (bench's thread settings), so LSTM_ENGINE_NUMBA_ISA holds."""
    apply_numba_isa()
    import numba
    return numba


def _vector_width(flag):
    """NUMBA_CPU_FEATURES = the host's features + flag, on a CPU with AVX-512, while numba's CPU
    target is still unbuilt and unless the user chose numba's target (a child process inherits
    the value; numba re-reads its configuration from the environment when it compiles)."""
    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES") or _numba_target_built():
        return
    features = host_features()
    if features is not None and features.get("avx512f"):
        os.environ["NUMBA_CPU_FEATURES"] = f"{features.flatten()},{flag}"
        if "numba" in sys.modules:      # imported already: its configuration read the environment then
            from numba.core import config
            config.CPU_FEATURES = os.environ["NUMBA_CPU_FEATURES"]


def cpuinfo():
    """The first processor's fields of /proc/cpuinfo (what lscpu shows) -> {key: value}; {} elsewhere."""
    out = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                                  # the first processor is enough
                key, _, value = line.partition(":")
                out[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return out


def host_features():
    """LLVM's feature map of this CPU (what numba compiles for under native), None if unknown."""
    try:
        import llvmlite.binding as llvm
        return llvm.get_host_cpu_features()
    except Exception:       # pragma: no cover - llvmlite comes with numba; no features: LLVM's defaults
        return None


def _numba_target_built():
    """Whether numba's CPU target machine exists (built by the process's first @njit), after which
    its features are fixed.  Importing numba alone does not build it."""
    if "numba" not in sys.modules:
        return False
    try:
        from numba.core.registry import cpu_target
        return "_toplevel_target_context" in vars(cpu_target)
    except Exception:       # pragma: no cover - numba internals moved: assume the worst
        return True


# CPU names (LLVM's) with AVX-512, for a target named without a feature list (NUMBA_CPU_FEATURES empty)
AVX512_CPUS = frozenset(("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
                         "icelake-server", "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids",
                         "graniterapids", "graniterapids-d", "diamondrapids", "knl", "knm", "znver4", "znver5",
                         "x86-64-v4"))


def target_has_avx512():
    """Whether numba compiles for a CPU with AVX-512 (32 vector registers): the features numba
    hands LLVM (its CPU_FEATURES, else the host's), or, for a CPU named with its own features
    (CPU_FEATURES empty, as under LSTM_ENGINE_NUMBA_ISA=avx2), whether that CPU has AVX-512."""
    from numba.core import config
    features = config.CPU_FEATURES
    if features is None:
        host = host_features()
        return bool(host is not None and host.get("avx512f"))
    if features:
        return "+avx512f" in features.split(",")
    return (config.CPU_NAME or "").lower() in AVX512_CPUS


def vector_width():
    """The vector width numba's loops prefer in this process: '512-bit', '256-bit' (LLVM's
    tuning or native-256), or 'default' (no AVX-512, or a target the user set)."""
    features = os.environ.get("NUMBA_CPU_FEATURES") or ""
    if features.endswith(WIDE):
        return "512-bit"
    return "256-bit" if features.endswith(NARROW) else "default"


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
