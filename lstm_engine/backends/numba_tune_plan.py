"""How a numba LSTM layer uses the threads in training, chosen per machine from measurements.

Three plans (the None-or-int arguments of kernels/numba/lstm_layer.py): `one` (the calling
thread), `rows` (each thread the whole window for its slice of the batch, no barrier in the
loop) and `units` (each thread a slice of the hidden units, one barrier per step).
numba_backend._threads rules between them by PARALLEL_MIN_MACS and COLUMNS_MIN_MACS; with
LSTM_ENGINE_TUNE=auto, where the rule threads a layer, the first use of its shape (T, B, H, dtype)
runs one layer (I = H) forward and backward on random inputs by each plan whose kernels are
already compiled (numba_tune.compiled: a plan compiles the loops it uses, for seconds on a cold
cache), checks each against the one-thread plan, and keeps the fastest when MARGIN faster than the
rule's plan.  Records, keys, budget and the busy check are numba_tune's; `off` or a forced GEMM
name keeps the rule.

Dimension legend: T window, B batch, H hidden; nt numba's threads.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from . import numba_tune

ROUNDS = 2                   # timed rounds of each plan after its checked first run; its best counts
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}   # tests/parity.py 'wide'

_memory = {}                 # (T, B, H, dtype, nt) -> plan name ('': the rule's), this process


def plans(B, H, nt):
    """name -> (prod, rows, units) of the plans a layer of batch B, hidden H can use on nt threads."""
    out = {"one": (None, None, None), "rows": (nt, min(nt, B), None)}
    if H >= nt:
        out["units"] = (nt, None, nt)
    return out


def key_of(T, B, H, dtype, nt):
    return json.dumps([numba_tune.machine_key(nt), "plan", np.dtype(dtype).name, int(T), int(B), int(H)],
                      sort_keys=True)


def choose(T, B, H, dtype, nt, rule, probe):
    """The plan (prod, rows, units) for a layer of this shape: `rule` (numba_backend's) unless
    tuning is on and a record or a measurement now says another is MARGIN faster.  probe() ->
    (ready(plan) -> bool, run(plan) -> (hs, dW)) on random inputs of the shape, made only when
    measuring."""
    if numba_tune.mode() != "auto":
        return rule
    every = plans(B, H, nt)
    mem = (T, B, H, np.dtype(dtype).name, nt)            # asked every step: no file key built then
    name = _memory.get(mem)
    if name is None:
        key = key_of(T, B, H, dtype, nt)
        record = numba_tune.cached(key)
        name = record["choice"] if record is not None and record.get("choice") in every else None
        if name is None:
            name = _first_use(key, every, rule, probe)
        _memory[mem] = name
    return every.get(name, rule)


def _first_use(key, every, rule, probe):
    """Measure the compiled plans and store the record -> plan name; '' (the rule), nothing
    stored, when the machine is busy, the budget is spent or fewer than two plans are compiled."""
    if not numba_tune.may_measure():
        return ""
    t0 = numba_tune._clock()
    ready, run = probe()
    fns = {name: plan for name, plan in every.items() if ready(plan)}
    rule_name = next((n for n, p in every.items() if p == rule), None)
    if rule_name not in fns or len(fns) < 2:
        numba_tune._spent[0] += numba_tune._clock() - t0
        cold = ", ".join(n for n in every if n not in fns)
        numba_tune._say("plan", f"numba tune: thread plans not measured: {cold} not compiled yet for this shape; "
                                f"the fixed rule runs")
        return ""
    record = measure(fns, rule_name, run)
    numba_tune._spent[0] += numba_tune._clock() - t0
    path = numba_tune.store(key, record)
    print(f"numba tune: {numba_tune.report_line(record)} (cached in {path})", file=sys.stderr)
    return record["choice"]


def measure(fns, rule_name, run):
    """Check each plan's layer against the one-thread plan's, then time the valid ones in turns ->
    record (as numba_tune's, rows named after the plans)."""
    t_start = time.perf_counter()
    outs = {name: run(plan) for name, plan in fns.items()}                  # also loads the kernels
    ref = outs.get("one") or outs[rule_name]
    errors = {}
    for name, out in outs.items():
        errors[name] = max(float(np.abs(a - r).max() / max(np.abs(r).max(), 1e-30)) for a, r in zip(out, ref))
    tol = TOLERANCE[np.dtype(ref[0].dtype)]
    valid = {name: plan for name, plan in fns.items() if errors[name] <= tol}
    best = {name: float("inf") for name in valid}
    for _ in range(ROUNDS):
        for name, plan in valid.items():
            t0 = time.perf_counter()
            run(plan)
            best[name] = min(best[name], time.perf_counter() - t0)
    rows = [{"name": n, "error": errors[n], "seconds": best.get(n), "valid": n in valid} for n in fns]
    choice, why = decide(rows, rule_name)
    dt = np.dtype(ref[0].dtype).name
    T, B, H = ref[0].shape
    return {"choice": choice, "why": why, "product": "layer plan", "shape": f"T{T} B{B} H{H}",
            "timed": f"T{T} B{B} H{H}", "dtype": dt, "threads": max(p[0] or 1 for p in fns.values()), "rows": rows,
            "untimed": [], "tuned_seconds": round(time.perf_counter() - t_start, 3)}


def decide(rows, rule_name):
    """The fastest valid plan when MARGIN faster than the rule's, else the rule's -> (name, why)."""
    valid = [r for r in rows if r["valid"]]
    rule = next((r for r in valid if r["name"] == rule_name), None)
    best = min(valid, key=lambda r: r["seconds"])
    if rule is None:
        return best["name"], f"fastest valid plan (the rule's {rule_name} failed the check)"
    if best["name"] != rule_name and best["seconds"] * numba_tune.MARGIN <= rule["seconds"]:
        return best["name"], f"{rule['seconds'] / best['seconds']:.2f}x faster than the rule's {rule_name}"
    return rule_name, "the rule's plan" + ("" if best["name"] == rule_name else
                                           f" ({best['name']} only {rule['seconds'] / best['seconds']:.2f}x faster)")


def retune(T, B, H, dtype, nt, rule, probe):
    """Measure every plan of this shape again, compiling what it needs, and store the choice
    (`lstm-engine tune`) -> record."""
    every = plans(B, H, nt)
    rule_name = next(n for n, p in every.items() if p == rule)
    record = measure(every, rule_name, probe()[1])
    numba_tune.store(key_of(T, B, H, dtype, nt), record)
    _memory[T, B, H, np.dtype(dtype).name, nt] = record["choice"]
    return record


def forget():
    """Drop what this process remembers (tests; the file stays)."""
    _memory.clear()
