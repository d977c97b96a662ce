"""Compiling ahead: on a cold numba cache, a helper process compiles the kernels that a model's
first training step needs after its forward pass, while this process compiles the forward.

Numba compiles on one core, one function after another, and a first training step meets its
kernels in order: the layers' forward, the output layer, the loss, the output layer's and the
layers' backward, clipping, Adam, then the first evaluation's.  The helper (`python -m
lstm_engine.backends.numba_ahead_helper SPEC`) builds the same model (sizes, dtype, cell, numba threads,
a copy of the tuning file) and runs one training step, in which the forward kernels are no-ops
(their outputs stay uninitialised: the compiler sees only argument types), and then one
evaluation chunk of each length the run will evaluate, so everything else compiles into numba's
disk cache.  This process's output-layer backward, the first call after its forward, waits for
the helper (`join`, from numba_backend.linear_backward) and then loads that code instead of
compiling it.  No helper where the disk cache already holds the cell's layer-0 backward kernel
for the dtype and thread plan, on one usable core, or in an MPI job (docs/numba.md, "Two processes compile a
first training step").

Generation the same way (sample_session): a first generate on a cold cache measures one thread
against a team (numba_tune_sample.py), compiling the one-thread sampler and then the team's
worker; a helper builds the team for the same model and generates once, while this process
compiles the prime's forward and the one-thread sampler, and the measurement joins it before
making its team.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HELPER_MODULE = "lstm_engine.backends.numba_ahead_helper"
HELPER_SECONDS = 600         # the longest the first backward waits for the helper (hung: the rest compiles here)

LAYERS = {"lstm": ("lstm_layer", "lstm"), "peephole": ("cell_layers", "cell"),   # cell -> its kernels
          "coupled": ("cell_layers", "cell"), "gru": ("gru_layer", "gru")}

_running = [None]            # the helper that join() waits for, until joined


# ----------------------------------------------------------------------------
# This process
# ----------------------------------------------------------------------------

def layer0_backward(cell, table):
    """(module, name) of the kernel a cell's layer 0 runs its backward in: with the table (V <= T*B)
    or on gathered embeddings."""
    module, name = LAYERS[cell]
    return module, (f"embed_{name}_backward_kernel" if table else f"{name}_backward_kernel")


@contextlib.contextmanager
def session(model_cfg, batch, seq_len, eval_lengths=(), table=True, plan=None):
    """Within it, a helper compiles a first training step's later kernels when the cache is cold
    for them (cold: the layer-0 backward kernel, `table` or not, with the thread plan `plan`
    (prod, rows, units)); on leaving (done, an error or Ctrl-C) a helper still running is killed."""
    child = None
    if cold(*layer0_backward(model_cfg.cell, table), model_cfg.dtype, plan):
        child = start({"model": model_cfg.to_dict(), "batch": int(batch), "seq_len": int(seq_len),
                       "eval": sorted({int(n) for n in eval_lengths if n > 0})})
    with _joined_on_exit(child):
        yield child


@contextlib.contextmanager
def sample_session(model_cfg, chars, measured):
    """Within it, a helper compiles the sampler's team (numba_team) for this model when the cache
    is cold and a first generate will measure it (measured: numba_tune_sample.active); killed on
    leaving."""
    from . import numba_tune
    child = None
    if measured and cold("sample_team", "team_worker", model_cfg.dtype):
        child = start({"model": model_cfg.to_dict(), "sample": int(chars),
                       "products": numba_tune._products[0], "sampler": numba_tune._sampler[0]})
    with _joined_on_exit(child):
        yield child


@contextlib.contextmanager
def _joined_on_exit(child):
    before, _running[0] = _running[0], child
    try:
        yield
    finally:
        _running[0] = before if _running[0] is child else _running[0]
        stop(child)


def start(spec):
    """The helper process for spec (its model, and a training step's shapes or the characters to
    generate), or None where it would not help: one usable core, an MPI job, no JIT."""
    import numba
    if numba.config.DISABLE_JIT:
        return None
    return launch(HELPER_MODULE, [json.dumps(dict(spec, threads=numba.get_num_threads()))], copy_tune=True)


def launch(module, args, copy_tune):
    """`python -m module *args` with its own tune file in a temporary directory (a copy of this
    process's when copy_tune: the same choices, written apart; else empty: nothing it times is
    kept) -> the child (.tmp: that directory), or None on one usable core or in an MPI job (a rank
    does not fork: parallel.in_mpi_job)."""
    from ..parallel import in_mpi_job
    from . import numba_tune
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or in_mpi_job():
        return None
    tmp = tempfile.mkdtemp(prefix="lstm-engine-helper-")
    tune = os.path.join(tmp, numba_tune.FILE_NAME)
    if copy_tune:
        with contextlib.suppress(OSError):
            shutil.copyfile(numba_tune.tune_file(), tune)
    env = dict(os.environ, LSTM_ENGINE_TUNE_FILE=tune)
    try:
        child = subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    child.tmp = tmp
    return child


def cold(module, name, dtype, plan=None):
    """True when numba's disk cache holds no compiled code of kernels/numba/{module}.{name} whose
    first array argument has this dtype and, given a thread plan (prod, rows, units: each None or a
    count), whose last three arguments are None where the plan's are (a first run, a new version
    of the kernels, another dtype or plan)."""
    import importlib
    fn = getattr(importlib.import_module(f"lstm_engine.kernels.numba.{module}"), name)
    try:
        index = fn._cache._cache_file._load_index()  # (sig, target, code hash) -> file; stale source: {}
    except Exception:  # noqa: BLE001 - no disk cache, or numba's internals moved: nothing to share
        return False
    name = np.dtype(dtype).name
    nones = None if plan is None else tuple(p is None for p in plan)

    def fits(sig):
        first = next((t for t in sig if hasattr(t, "dtype")), None)                # the model's arrays
        return str(getattr(first, "dtype", "")) == name and \
            (nones is None or tuple(str(t) == "none" for t in sig[-3:]) == nones)
    return not any(fits(key[0]) for key in index)


def join():
    """Wait for the running helper (at most HELPER_SECONDS), once: numba_backend.linear_backward
    and numba_tune_sample.measure call this before the kernels the helper compiles."""
    child = _running[0]
    if child is None:
        return
    _running[0] = None
    try:
        child.wait(timeout=HELPER_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()                                 # what it left compiles here; the cores are ours
        child.wait()


def stop(child):
    """The helper ended (killed if still running) and its directory gone."""
    if child is not None:
        if child.poll() is None:
            child.kill()
            child.wait()
        shutil.rmtree(child.tmp, ignore_errors=True)
