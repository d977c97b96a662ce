"""Whether bfloat16 products make training faster on this machine, measured once per machine.

`--products auto` takes bfloat16 under a time budget only where a layer trains faster with them.
That is not a property of the instruction set: vdpbf16ps does twice the multiply-adds of a float32
FMA per instruction, but a CPU may issue it at half the FMA's rate, and the packing to bfloat16 then
costs more than the products save.  So the backend runs one LSTM layer (SHAPE, I = H) forward and
backward in float32, then with bfloat16 products, in turns, and keeps bfloat16 only when its best
time is numba_tune.MARGIN faster.  The record goes to numba_tune's file under the machine's key
(CPU model, threads, library versions, the kernels' source stamp), so a change of any of them
measures again; `lstm-engine tune` measures it again whatever is cached.  The first runs compile
both layers' kernels (minutes on a cold cache); numba compiles on one core, so a child process
(start_helper: numba_bf16_helper.py) compiles the bfloat16 kernels into numba's disk cache
while this process compiles float32's, and bfloat16's first run here then loads them.

Dimension legend: T window, B batch, H hidden; nt numba's threads.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from . import numba_ahead, numba_tune

SHAPE = (20, 64, 384)        # T, B, H: a ten-minute candidate's layer (docs/time-budget.md) on a shorter window
ROUNDS = 3                   # timed rounds after the first (compiling) run of each; the best counts
NAMES = ("float32", "bf16")
HELPER_MODULE = "lstm_engine.backends.numba_bf16_helper"
HELPER_SECONDS = 300         # the longest bfloat16's first run here waits for the helper (a hung one: then it compiles here)

_memory = {}                 # nt -> True / False, this process


def key_of(nt):
    return json.dumps([numba_tune.machine_key(nt), "products", "bf16 pays", list(SHAPE)], sort_keys=True)


def pays(nt, run, helper=None):
    """True when bfloat16 products train a layer MARGIN faster here: the cached record, else
    measured now by run(name) -> (seconds, hs) of one layer forward and backward with products
    `name` (said on stderr, stored).  False, nothing stored, while the machine is busy.  helper():
    a started process compiling bfloat16's kernels meanwhile (start_helper), or None."""
    got = _memory.get(nt)
    if got is not None:
        return got
    key = key_of(nt)
    record = numba_tune.cached(key)
    if record is None or record.get("choice") not in NAMES:
        if numba_tune.busy():
            numba_tune._say("bf16", f"numba tune: the machine is busy ({numba_tune.busy()}): bfloat16 products "
                                    f"not measured, float32 for now; run `lstm-engine tune` when it is idle")
            return False
        record = measure(run, nt, helper)
        path = numba_tune.store(key, record)
        print(f"numba tune: {numba_tune.report_line(record)} (cached in {path})", file=sys.stderr)
    _memory[nt] = got = record["choice"] == "bf16"
    return got


def measure(run, nt, helper=None):
    """Both products once (compiling, and their outputs compared; bfloat16's kernels compiled by
    helper's process meanwhile where one is given), then ROUNDS timed rounds in turns -> record
    (numba_tune's form; a row's error is its hs against float32's)."""
    t_start = time.perf_counter()
    child = helper() if helper is not None else None
    try:
        outs = {"float32": run("float32")[1]}                             # hs (T,B,H)
        _join(child)                                                      # before timing: cores idle
        outs["bf16"] = run("bf16")[1]                                     # hs (T,B,H)
    finally:
        numba_ahead.stop(child)                                           # killed if still running
    ref = outs["float32"]
    scale = max(float(np.abs(ref).max()), 1e-30)
    best = {name: float("inf") for name in NAMES}
    for _ in range(ROUNDS):
        for name in NAMES:
            best[name] = min(best[name], run(name)[0])
    rows = [{"name": n, "error": float(np.abs(outs[n] - ref).max()) / scale, "seconds": best[n], "valid": True}
            for n in NAMES]
    ratio = best["float32"] / best["bf16"]
    if ratio >= numba_tune.MARGIN:
        choice, why = "bf16", f"{ratio:.2f}x faster than float32"
    else:
        choice, why = "float32", f"bf16 {ratio:.2f}x as fast (< {numba_tune.MARGIN}x): not worth its rounding"
    T, B, H = SHAPE
    shape = f"T{T} B{B} H{H}"
    return {"choice": choice, "why": why, "product": "layer products", "shape": shape, "timed": shape,
            "dtype": "float32", "threads": nt, "rows": rows, "untimed": [],
            "tuned_seconds": round(time.perf_counter() - t_start, 3)}


def retune(nt, run, helper=None):
    """Measure again whatever is cached, store (`lstm-engine tune`) -> record."""
    record = measure(run, nt, helper)
    numba_tune.store(key_of(nt), record)
    _memory[nt] = record["choice"] == "bf16"
    return record


def forget():
    """Drop what this process remembers (tests; the file stays)."""
    _memory.clear()


def start_helper(nt):
    """A child process that runs the probe's bfloat16 layer once on nt threads, so its kernels land
    in numba's disk cache, or None where it cannot help: one usable core, or in an MPI job (a rank
    does not fork: parallel.in_mpi_job).  Its tune file is its own, in a temporary directory:
    nothing it times is kept."""
    return numba_ahead.launch(HELPER_MODULE, [str(nt)], copy_tune=False)


def _join(child):
    """Wait for the helper (at most HELPER_SECONDS; what it left uncompiled compiles here)."""
    if child is not None:
        try:
            child.wait(timeout=HELPER_SECONDS)
        except subprocess.TimeoutExpired:
            pass
