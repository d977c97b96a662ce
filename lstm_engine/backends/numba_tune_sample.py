"""One thread or a team of threads for the numba backend's batch-1 generation, chosen per machine.

A team (numba_team.py) splits each layer's hidden units over its threads; whether that beats one
thread depends on the core's cache bandwidth, the model's size and the barrier's cost here.  At
the first generate of a shape (cell, L, H, E, V, dtype, table or not) with a generation cache,
LSTM_ENGINE_TUNE=auto, both ways generate the same characters from copies of the caller's state
with throwaway uniforms (the caller's state, generator and text are untouched), in calls of
CALL_CHARS as generate_text makes them; the team is kept only when MARGIN faster and its ids and
state match the one-thread kernel's (a team that does not win its first ROUNDS is timed for as many
again, each way's best kept: a busy moment of the host slows a team more than one thread).  The record goes into numba_tune's file under the same key
rules (CPU model, threads, versions, kernels' stamp) and budget.  Any other mode keeps
numba_backend's fixed rule (SAMPLE_ROWS_PER_THREAD, SAMPLE_TEAM_MIN_MACS).

Dimension legend: L layers, H hidden, E embedding, V vocabulary, nt threads of the team.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np

from . import numba_ahead, numba_tune

MIN_H = 64                   # below this a team's barrier outweighs its share of the rows: not measured
CALL_CHARS = 32              # characters a call while timing (generate_text's first, smallest, calls)
ROUND_MACS = 1 << 27         # multiply-adds a timed round (its characters: this / the weights a character,
ROUND_CHARS = (64, 512)      # within these bounds)
ROUNDS = 5                   # rounds each way, taken in turns; each way's best counts (twice that
                             # when the team did not win the first ones)
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}   # tests/parity.py 'steps'

_memory = {}                 # (*shape, threads) -> 'one' or 'team', this process
_again = []                  # [records] while `lstm-engine tune` measures whatever is cached


def active(cache, threads, H):
    """True when the choice is measured rather than ruled: auto mode (or `lstm-engine tune`), a
    generation cache (a team outlives the call), two or more threads, H of at least MIN_H."""
    return cache is not None and (_again or numba_tune.mode() == "auto") and threads >= 2 and H >= MIN_H


def describe(cell, L, H, E, V, dtype, table):
    """The shape a choice is kept for (the record's key beside the machine's)."""
    return {"cell": cell, "L": int(L), "H": int(H), "E": int(E), "V": int(V), "dtype": np.dtype(dtype).name,
            "table": bool(table)}


def key_of(shape, threads):
    return json.dumps([numba_tune.machine_key(threads), "sample", shape], sort_keys=True)


def choose(shape, threads, new_team, run, h, c, token, rule=False):
    """The team to generate with, or None for the one-thread kernel, for this shape on `threads`
    numba threads: from this process's memory or the file, else measured now (new_team() -> a
    Team; run(team or None, h, c, token, us) -> ids, h and c updated in place), else (busy, or
    the budget spent) the fixed rule's way (rule: a team) for this process.  A team made for
    timing is returned when chosen, closed otherwise."""
    mem = (*shape.values(), threads)                     # asked every call: no file key built then
    got = None if _again else _memory.get(mem)
    key = key_of(shape, threads) if got is None else None
    if got is None and not _again:
        record = numba_tune.cached(key)
        got = record["choice"] if record is not None and record.get("choice") in ("one", "team") else None
    if got is None:
        if not _again and not numba_tune.may_measure():
            _memory[mem] = "team" if rule else "one"      # unrecorded: a later run measures
            return new_team() if rule else None
        t0 = numba_tune._clock()
        record, team = measure(shape, threads, new_team, run, h, c, token)
        # the check call compiles what a first generate compiles anyway: not charged to the budget
        numba_tune._spent[0] += max(0.0, numba_tune._clock() - t0 - record["check_seconds"])
        path = numba_tune.store(key, record)
        if _again:
            _again[-1].append(record)
        else:
            print(f"numba tune: {numba_tune.report_line(record)} (cached in {path})", file=sys.stderr)
        got = record["choice"]
        if got == "team":
            _memory[mem] = got
            return team
        team.close()
    _memory[mem] = got
    return new_team() if got == "team" else None


def measure(shape, threads, new_team, run, h, c, token):
    """Check the team against one thread on one call, then time both ways on copies of h, c (L,H)
    -> (record, the team timed)."""
    t_start = time.perf_counter()
    weights = shape["L"] * 4 * shape["H"] * 2 * shape["H"] + shape["H"] * shape["V"]   # a character's MACs, roughly
    chars = int(np.clip(ROUND_MACS // max(weights, 1), *ROUND_CHARS))
    us = np.random.default_rng(0).random(chars)       # throwaway uniforms: never the caller's generator

    def one_round(way, n):
        hk, ck, ids, t0 = h.copy(), c.copy(), [], time.perf_counter()
        for k0 in range(0, n, CALL_CHARS):
            ids.append(run(way, hk, ck, token if k0 == 0 else ids[-1][-1], us[k0:min(n, k0 + CALL_CHARS)]))
        return time.perf_counter() - t0, np.concatenate(ids), hk

    t_check = numba_tune._clock()
    check = {"one": one_round(None, CALL_CHARS)}      # also compiles
    numba_ahead.join()                                # a helper compiling the team's worker meanwhile
    ways = {"one": None, "team": new_team()}
    check["team"] = one_round(ways["team"], CALL_CHARS)                        # compiles or loads, starts threads
    check_seconds = numba_tune._clock() - t_check
    (_, ids1, h1), (_, ids2, h2) = check["one"], check["team"]
    error = float(np.abs(h2 - h1).max() / max(np.abs(h1).max(), 1e-30))
    same = bool((ids1 == ids2).all())
    valid = same and error <= TOLERANCE[np.dtype(h.dtype)]
    timed = ways if valid else {"one": None}
    best = {name: float("inf") for name in timed}
    for again in range(2):
        for _ in range(ROUNDS):
            for name, way in timed.items():
                best[name] = min(best[name], one_round(way, chars)[0])
        # a busy moment slows the team (it needs every core at each barrier) more than one thread
        if again or not valid or best["team"] * numba_tune.MARGIN <= best["one"]:
            break
    calls = -(-chars // CALL_CHARS)
    rows = [{"name": "one", "error": 0.0, "seconds": best["one"] / calls, "valid": True},
            {"name": "team", "error": error, "seconds": best["team"] / calls if valid else None, "valid": valid}]
    choice, why = decide(rows[0], rows[1], same)
    desc = f"L{shape['L']} H{shape['H']} E{shape['E']} V{shape['V']}{' table' if shape['table'] else ''}"
    return ({"choice": choice, "why": why, "product": f"sample {shape['cell']}", "shape": desc, "timed": desc,
             "dtype": shape["dtype"], "threads": ways["team"].nt, "rows": rows, "untimed": [], "chars": chars,
             "check_seconds": round(check_seconds, 3), "rounds": ROUNDS * (again + 1),
             "tuned_seconds": round(time.perf_counter() - t_start, 3)}, ways["team"])


def decide(one, team, same):
    """'team' when valid and MARGIN faster than one thread, else 'one' -> (choice, why)."""
    if not team["valid"]:
        return "one", ("the team's ids differ from one thread's" if not same
                       else f"the team's state is {team['error']:.1e} from one thread's")
    ratio = one["seconds"] / team["seconds"]
    if ratio >= numba_tune.MARGIN:
        return "team", f"{ratio:.2f}x faster than one thread"
    return "one", f"team {ratio:.2f}x (< {numba_tune.MARGIN}x)"


@contextlib.contextmanager
def retuning():
    """Within: every choice is measured again whatever is cached, the records collected in the
    list yielded (`lstm-engine tune`)."""
    _again.append([])
    try:
        yield _again[-1]
    finally:
        _again.pop()


def forget():
    """Drop what this process remembers (tests; the file stays)."""
    _memory.clear()
