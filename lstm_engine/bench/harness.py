"""Benchmark harness: validate every backend against the NumPy reference, then time it.

Dimension legend: V vocab (65 unless a config says V), E embedding, H hidden, L layers, B batch, T time steps,
I_l input size of layer l (E for layer 0, H above), G gate columns of a layer (4H: lstm, peephole; 3H: coupled, gru).

What is timed (the engine's own code paths, warm-up excluded and reported separately):
    train    one full step: Model.forward_backward (forward, BPTT), global-norm clip, Adam   B*T chars
    forward  Model.loss: forward and the cross-entropy, no gradients                          B*T chars
    sample   backend.generate at batch 1, SAMPLE_CHUNK characters a call                      SAMPLE_CHUNK chars

FLOP model (matrix products only; the elementwise gate math is left out):
    forward, per character:  sum over layers l of 2*(I_l + H)*G  +  2*H*V
    train step:              3 x forward    (backward = 2 x forward: gradients of inputs and of weights)
    sample (batch 1):        1 x forward
GFLOP/s = FLOP per char * chars/s / 1e9, shown against the sgemm peak measured in the same run.

Memory-bandwidth bound of a sample row on the CPU (add_bounds): a character reads every weight once,
    bytes per char:          itemsize * (sum_l H*G + sum_{l>=1} I_l*G + G + H*V)
                             (layer 0's input projection is one row of the Emb @ W_x table; biases left out)
    bound chars/s:           the rate the numba threads read that many bytes (bench/stream.py) / bytes per char
The sampler's weights are float32 (4 bytes) unless the numba sampler streams bfloat16 (2) or int8
(1, plus a float32 scale per column).
"""
from __future__ import annotations

import importlib.util
import math
import statistics
import sys
import time
from dataclasses import replace

import numpy as np

from .. import backends as backends_mod
from .configs import (CONFIGS, DEFAULT_BACKENDS, DEFAULT_CONFIGS, MAX_VOCAB, SAMPLE_CHUNK, VOCAB,  # noqa: F401
                      WHATS, BenchConfig, parse_backends, parse_cells, parse_configs, parse_whats)
from . import memory as bench_memory
from . import torch_peer as bench_torch
from .machine import machine_info, sgemm_peak_cpu, sgemm_peak_gpu, thread_settings
from ..backends import numpy_backend
from ..errors import UserError
from ..core.model import Model, init_params
from ..core.optim import Adam, AdamConfig
from ..core.resources import check_training_memory

GREEDY_CHECK = 16          # greedy characters compared with the reference
LR = AdamConfig().lr
LOSS_RTOL = 1e-4           # float32 loss agreement with the reference
NORM_RTOL = 1e-3           # gradient-norm agreement
BF16_SCALE = 10            # both widened this much for bfloat16 products (LSTM_ENGINE_TUNE=bf16): 2^-9 a operand


# ----------------------------------------------------------------------------
# The engine runner: the same calls the trainer and sampler make
# ----------------------------------------------------------------------------

def make_batch(cfg, seed=0):
    """Fixed benchmark batch: tokens, targets (T,B) int64, drawn uniformly from the vocabulary."""
    ids = np.random.default_rng(seed).integers(0, cfg.V, (cfg.T + 1, cfg.B))   # (T+1,B)
    return ids[:-1].copy(), ids[1:].copy()


class EngineRunner:
    """One backend module on one config: train_step / forward / sample / check / sync."""

    def __init__(self, be, cfg, batch, name=None):
        self.be, self.cfg, self.name = be, cfg, name or be.NAME
        self.device = "cpu" if be.xp is np else "gpu"
        self.model = Model(cfg.model_config(), be, init_params(cfg.model_config(), seed=0))
        self.opt = Adam(self.model.params, be, AdamConfig())
        self.tokens, self.targets = be.asarray(batch[0]), be.asarray(batch[1])   # (T,B) each
        self.zero = self.model.zero_state(cfg.B)
        self.state = self.model.zero_state(cfg.B)
        self.sample_state, self.token = self.model.zero_state(1), 0
        self.rng = np.random.default_rng(0)
        self.sample_cache = {"chars": math.inf}   # as generate_text keeps one per text; reset when weights change
        tune_first = getattr(be, "tune_first_use", None)    # the numba backend: as a training run's first step
        if tune_first is not None:
            tune_first(cfg.model_config(), cfg.B, cfg.T)

    def sync(self):
        self.be.synchronize()

    def train_step(self):
        loss, grads, self.state = self.model.forward_backward(self.tokens, self.targets, self.state)
        norm, scale = self.opt.clip_scale(grads)
        self.opt.update(self.model.params, grads, LR, scale)
        self.sample_cache = {"chars": math.inf}
        return loss, norm

    def forward(self):
        return self.model.loss(self.tokens, self.targets, self.zero)[0]

    def sample(self, n=SAMPLE_CHUNK, greedy=False, state=None, token=None, top_k=0, top_p=1.0):
        st = self.sample_state if state is None else state
        cell = {} if self.cfg.cell == "lstm" else {"cell": self.cfg.cell}
        ids = self.be.generate(self.model.params, st, self.token if token is None else token, n,
                               1.0, top_k, top_p, greedy, self.rng, self.sample_cache, **cell)
        ids = np.asarray(self.be.to_numpy(ids))
        if state is None:
            self.token = int(ids[-1])
        return ids

    def check(self, n_greedy=GREEDY_CHECK):
        """Numbers compared with the reference: loss, greedy ids, then one train step and the loss after it."""
        m = self.model
        loss = float(self.forward())
        greedy = [int(i) for i in self.sample(n_greedy, True, m.zero_state(1), 0)]
        self.state = m.zero_state(self.cfg.B)
        train_loss, norm = self.train_step()
        return {"loss": loss, "greedy": greedy, "train_loss": float(train_loss), "grad_norm": float(norm),
                "loss_after_step": float(self.forward())}


def compare(got, ref, scale=1):
    """-> {what: (valid, reason)} from a runner's check() against the reference's, the loss and
    norm tolerances times scale."""
    def rel(key):
        return abs(got[key] - ref[key]) / max(abs(ref[key]), 1e-12)

    def close(key, rtol):
        return np.isfinite(got[key]) and rel(key) <= rtol

    loss_ok = close("loss", LOSS_RTOL * scale)
    fwd = f"loss {got['loss']:.6f} vs reference {ref['loss']:.6f} (rel. error {rel('loss'):.1e})"
    out = {"forward": (loss_ok, fwd)}
    bad = [k for k, tol in (("train_loss", LOSS_RTOL), ("grad_norm", NORM_RTOL), ("loss_after_step", LOSS_RTOL))
           if not close(k, tol * scale)]
    if not loss_ok:
        out["train"] = (False, fwd)
    elif bad:
        out["train"] = (False, "; ".join(f"{k} {got[k]:.6f} vs reference {ref[k]:.6f}" for k in bad))
    else:
        out["train"] = (True, "loss, gradient norm and loss after one Adam step agree with the reference"
                        + (f" (tolerances x{scale:g}: bfloat16 products)" if scale != 1 else ""))
    same = got["greedy"] == ref["greedy"]
    first = next((i for i, (a, b) in enumerate(zip(got["greedy"], ref["greedy"])) if a != b), None)
    out["sample"] = (same, f"{GREEDY_CHECK} greedy characters match the reference" if same else
                     f"greedy characters differ from the reference at position {first}")
    return out


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------

def warm_up(fn, sync, seconds, repeats):
    """The first call (timed apart: JIT compile lands here), then more calls for about a tenth
    of `seconds` to estimate one call's time -> (first call s, k calls per repeat), k chosen
    so that all repeats together take about `seconds`."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while n < 2 or (time.perf_counter() - t0 < 0.1 * seconds and n < 1000):
        fn()
        sync()
        n += 1
    one = (time.perf_counter() - t0) / n
    return first, max(1, int(seconds / max(repeats, 1) / max(one, 1e-9)))


def time_batch(fn, sync, k):
    """One repeat: k calls -> seconds per call."""
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    sync()
    return (time.perf_counter() - t0) / k


def time_calls(fn, sync, seconds, repeats):
    """warm_up, then `repeats` timed batches of k calls -> (first call s, [s per call, one per repeat], k)."""
    first, k = warm_up(fn, sync, seconds, repeats)
    return first, [time_batch(fn, sync, k) for _ in range(max(repeats, 1))], k


def stats(per_call, chars):
    """Median and spread of the per-call times -> row fields (chars/s at median, min, max)."""
    med = statistics.median(per_call)
    return {"seconds_per_call": med, "chars_per_s": chars / med,
            "chars_per_s_min": chars / max(per_call), "chars_per_s_max": chars / min(per_call),
            "spread_pct": 100.0 * (max(per_call) - min(per_call)) / 2.0 / med}


# ----------------------------------------------------------------------------
# The run: every backend x config x measurement
# ----------------------------------------------------------------------------

def _row(name, cfg, what, device=None, status="ok", valid=False, reason=""):
    return {"backend": name, "config": cfg.name, "cell": cfg.cell, "shape": cfg.shape, "E": cfg.E, "H": cfg.H,
            "L": cfg.L, "B": cfg.B, "T": cfg.T, "V": cfg.V, "what": what, "device": device, "status": status,
            "valid": valid, "reason": reason, "chars_per_s": None, "chars_per_s_min": None,
            "chars_per_s_max": None, "chars_per_s_each": None, "spread_pct": None, "seconds_per_call": None,
            "first_call_s": None, "compile_s": None, "repeats": 0, "calls_per_repeat": 0, "gflops": None,
            "flops_per_char": cfg.flops_per_char(what) if what in WHATS else None}


def _module_missing(path):
    """True when the backend's module is not in this installation (e.g. not merged yet)."""
    if path in sys.modules:
        return False
    try:
        return importlib.util.find_spec(path) is None
    except (ImportError, ValueError):
        return True


def resolve(names, threads):
    """Backend names -> [(row name, factory(cfg, batch) or None, reason or '', device)]."""
    engine, out = [], []
    for n in names:
        if n in bench_torch.NAMES:
            continue
        try:
            be = backends_mod.get_backend(n)
        except UserError as e:
            missing = _module_missing(backends_mod.BACKENDS[n])
            out.append((n, None, f"{backends_mod.BACKENDS[n]} is not part of this installation" if missing
                        else str(e), None))
            continue
        dev = "cpu" if be.xp is np else "gpu"
        engine.append(dev)
        out.append((n, lambda cfg, batch, be=be: EngineRunner(be, cfg, batch), "", dev))
    for n in names:
        if n in bench_torch.NAMES:
            out.extend(bench_torch.resolve(n, set(engine), threads))
    return out


def prepare_entry(entry, cfg, batch, ref, whats):
    """Build one backend on one config and validate it -> (runner, verdict, None), or
    (None, None, rows) when it is unavailable, lacks the config's cell or raised."""
    name, factory, reason, device = entry[:4]
    if factory is None:
        status = "skipped" if len(entry) > 4 and entry[4] == "skipped" else "unavailable"
        return None, None, [_row(name, cfg, w, device, status, False, reason) for w in whats]
    if isinstance(ref, Exception):
        return None, None, [_row(name, cfg, w, device, "skipped", False, f"no reference to validate against: {ref}")
                            for w in whats]
    try:
        runner = factory(cfg, batch)
        scale = BF16_SCALE if name == "numba" and _numba_mode() == "bf16" else 1
        return runner, compare(runner.check(GREEDY_CHECK), ref, scale), None
    except UserError as e:                               # a backend without this cell says so in a UserError
        return None, None, [_row(name, cfg, w, device, "skipped", False, str(e)) for w in whats]
    except Exception as e:                               # a backend bug must not stop the other rows
        return None, None, [_row(name, cfg, w, device, "error", False, f"{type(e).__name__}: {e}") for w in whats]


def _new_tune_budget():
    """Each config's numba rows start with the first-use tuning budget (numba_tune.FIRST_USE_SECONDS)
    that a training run of that config would have: one config's tuning does not leave the next
    config's products untuned."""
    from ..backends import numba_tune
    numba_tune.new_budget()


def _numba_mode():
    """The numba backend's products ('bf16' under LSTM_ENGINE_TUNE=bf16 or set_products), as it runs them."""
    from ..backends import numba_tune
    return numba_tune.mode()


def _timed(runner, what):
    return {"train": runner.train_step, "forward": runner.forward,
            "sample": lambda: runner.sample(SAMPLE_CHUNK)}[what]


def bench_config(entries, cfg, batch, ref, whats, seconds, repeats, cells=None, refs=None):
    """Rows for every backend on one config (backend by backend, each in the order of whats).

    The backends take turns: for each measurement every backend is warmed up, then repeat 1
    of every backend is timed, then repeat 2, and so on.  A shared host's speed drifts within
    minutes, so a backend's repeat and its peer's lie seconds apart and the ratio to the peer
    can be taken repeat by repeat (add_peer_ratios).

    cells: one cell per entry (default cfg.cell for all), validated against refs[cell]
    (default ref), so the cells of one config take turns too (the ratio to the lstm)."""
    cfgs = [replace(cfg, cell=c) for c in cells] if cells else [cfg] * len(entries)
    prepared = [prepare_entry(e, c, batch, refs[c.cell] if refs else ref, whats) for e, c in zip(entries, cfgs)]
    rows = {}
    for what in whats:
        turns = []                                        # [(entry index, fn, k, first s)]
        for i, (entry, (runner, verdict, _)) in enumerate(zip(entries, prepared)):
            if runner is None:
                continue
            valid, why = verdict[what]
            rows[i, what] = _row(entry[0], cfgs[i], what, runner.device, "ok" if valid else "invalid", bool(valid), why)
            try:
                first, k = warm_up(_timed(runner, what), runner.sync, seconds, repeats)
                turns.append((i, _timed(runner, what), runner.sync, k, first))
            except Exception as e:
                rows[i, what].update(status="error", valid=False, reason=f"{type(e).__name__}: {e}")
        per_call = {i: [] for i, *_ in turns}
        for _ in range(max(repeats, 1)):
            for i, fn, sync, k, _ in turns:
                if rows[i, what]["status"] == "error":
                    continue
                try:
                    per_call[i].append(time_batch(fn, sync, k))
                except Exception as e:
                    rows[i, what].update(status="error", valid=False, reason=f"{type(e).__name__}: {e}")
        for i, _, _, k, first in turns:
            row = rows[i, what]
            if row["status"] == "error":
                continue
            chars = cfgs[i].chars_per_call(what)
            row.update(stats(per_call[i], chars), first_call_s=first, repeats=len(per_call[i]),
                       calls_per_repeat=k, compile_s=max(0.0, first - statistics.median(per_call[i])),
                       chars_per_s_each=[chars / t for t in per_call[i]])
            row["gflops"] = row["flops_per_char"] * row["chars_per_s"] / 1e9
    out = []
    for i, (runner, _, fixed) in enumerate(prepared):
        out.extend(fixed if runner is None else [rows[i, w] for w in whats])
    return out


def paired_ratio(mine, peer):
    """Speed relative to the peer: the median over repeats of mine / peer in the same turn
    (bench_config), or, without repeats taken in turns, the ratio of the medians."""
    a, b = mine.get("chars_per_s_each"), peer.get("chars_per_s_each")
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return mine["chars_per_s"] / peer["chars_per_s"]


def add_peer_ratios(rows, peaks):
    """Fraction of the device's sgemm peak, speed relative to the torch peer of the same cell on the
    same device, and (cells other than lstm) relative to the same backend's lstm on the same config."""
    def cell(r):
        return r.get("cell", "lstm")
    peers = {(r["config"], cell(r), r["what"], r["device"]): r for r in rows
             if r["backend"] in bench_torch.NAMES and r["chars_per_s"]}
    lstms = {(r["backend"], r["config"], r["what"]): r for r in rows if cell(r) == "lstm" and r["chars_per_s"]}
    for r in rows:
        peak = peaks.get(r["device"])
        r["peak_gflops"] = peak
        r["frac_peak"] = r["gflops"] / peak if r["gflops"] and peak else None
        r["vs_torch"], r["torch_peer"], r["vs_lstm"] = None, None, None
        if not r["chars_per_s"]:
            continue
        own = lstms.get((r["backend"], r["config"], r["what"]))
        if cell(r) != "lstm" and own:
            r["vs_lstm"] = paired_ratio(r, own)
        if r["backend"] in bench_torch.NAMES:
            continue
        peer = peers.get((r["config"], cell(r), r["what"], r["device"])) or next(
            (p for (c, k, w, _), p in peers.items() if c == r["config"] and k == cell(r) and w == r["what"]), None)
        if peer:
            r["vs_torch"], r["torch_peer"] = paired_ratio(r, peer), peer["backend"]


def references(cfg, cells, batch):
    """{cell: the NumPy reference's check() on cfg with that cell, or the UserError saying it has none}."""
    refs = {}
    for c in cells:
        try:
            refs[c] = EngineRunner(numpy_backend, replace(cfg, cell=c), batch).check(GREEDY_CHECK)
        except UserError as e:
            refs[c] = e
    return refs


def run_cells(cells):
    """The cells to run: those asked for, with the lstm first where peephole or coupled (which
    PyTorch lacks) need it as their yardstick."""
    if "lstm" not in cells and any(c in ("peephole", "coupled") for c in cells):
        return ["lstm", *cells]
    return list(cells)


def run_bench(backends=DEFAULT_BACKENDS, configs=DEFAULT_CONFIGS, what="train,forward,sample", seconds=2.0,
              repeats=5, threads=None, on_progress=None, cell="lstm"):
    """Validate then time each backend x config x cell x measurement.

    configs: a spec for parse_configs or a list of BenchConfig (the sweep's).
    -> (machine dict, rows); each row is a flat dict that already carries the machine fields.
    """
    names, whats = parse_backends(backends), parse_whats(what)
    memory, whats = "memory" in whats, [w for w in whats if w != "memory"]
    cfgs = configs if isinstance(configs, list) else parse_configs(configs)
    cells = run_cells(parse_cells(cell))
    check_options(seconds, repeats, threads)
    for c in cfgs:
        for cl in cells:
            check_training_memory(c.V, c.E, c.H, c.L, c.B, c.T, "float32", cl)
    say = on_progress or (lambda msg: None)
    with thread_settings(threads, torch_too=any(n in bench_torch.NAMES for n in names)):
        entries = resolve(names, threads)
        devices = {e[3] for e in entries if e[1] is not None}
        say("measuring the sgemm peak ...")
        peaks = {"cpu": sgemm_peak_cpu(), "gpu": sgemm_peak_gpu() if "gpu" in devices else None}
        machine = machine_info(threads)
        machine.update(sgemm_cpu_gflops=peaks["cpu"], sgemm_gpu_gflops=peaks["gpu"])
        rows = []
        for cfg in cfgs:
            if "numba" in names:
                _new_tune_budget()
            if whats:
                batch = make_batch(cfg)
                say(f"{cfg.name}: reference loss (numpy) ...")
                refs = references(cfg, cells, batch)
                say(f"{cfg.name}: {', '.join(e[0] for e in entries)}"
                    + (f" x {', '.join(cells)}" if cells != ["lstm"] else "") + ", taking turns ...")
                rows.extend(bench_config([e for _ in cells for e in entries], cfg, batch, None, whats, seconds,
                                         repeats, cells=[c for c in cells for _ in entries], refs=refs))
            if memory:
                say(f"{cfg.name}: peak memory of {bench_memory.MEMORY_STEPS} training steps, a fresh process each ...")
                rows.extend(memory_rows(entries, cfg, cells, threads))
        if any(_bounded(r) for r in rows):
            say("measuring the memory-bandwidth bound of sampling ...")
        add_bounds(rows)
    add_peer_ratios(rows, peaks)
    for r in rows:
        r.update(machine)
    return machine, rows


WEIGHT_BYTES = {"float32": (4, 0), "bf16": (2, 0), "int8": (1, 4)}   # (bytes a weight, bytes a column's scale)


def sampler_itemsize(name):
    """WEIGHT_BYTES of what backend `name` samples a float32 model with: the numba sampler's bfloat16
    or int8 weights where they are chosen (numba_tune.sampler_weights), else float32."""
    if name == "numba":
        from ..backends import numba_tune
        return WEIGHT_BYTES[numba_tune.sampler_weights() or "float32"]
    return WEIGHT_BYTES["float32"]


def _bounded(r):
    """True for a timed sample row on the CPU (the rows add_bounds bounds)."""
    return r["what"] == "sample" and r["device"] == "cpu" and bool(r["chars_per_s"])


def add_bounds(rows, seconds=0.2):
    """Sample rows on the CPU: the bytes of weights a character reads (the module docstring), the rate
    the numba threads read that many bytes (bench/stream.py, once per size), the chars/s that rate
    allows and the fraction of it the row reached; None in the other rows."""
    from . import stream as bench_stream
    rates = {}
    for r in rows:
        r.update(weight_bytes_per_char=None, read_gbps=None, bound_chars_per_s=None, frac_bound=None)
    for r in filter(_bounded, rows):
        cfg = BenchConfig(r["config"], r["E"], r["H"], r["L"], r["B"], r["T"], r["V"], r.get("cell", "lstm"))
        nbytes = cfg.weight_bytes_per_char(*sampler_itemsize(r["backend"]))
        if nbytes not in rates:
            rates[nbytes] = bench_stream.read_rate(nbytes, seconds)
        bound = rates[nbytes] * 1e9 / nbytes
        r.update(weight_bytes_per_char=nbytes, read_gbps=rates[nbytes], bound_chars_per_s=bound,
                 frac_bound=r["chars_per_s"] / bound)


def memory_rows(entries, cfg, cells, threads):
    """One 'memory' row per backend x cell: the peak resident memory of a training run in a fresh
    process (bench/memory.py), and its ratio to the torch peer's of the same cell."""
    rows = []
    for cell in cells:
        c = replace(cfg, cell=cell)
        for name, factory, reason, device in (e[:4] for e in entries):
            row = _row(name, c, "memory", device, "unavailable", False, reason)
            if factory is not None and device == "gpu":
                row.update(status="skipped", reason="the peak resident memory is measured for CPU backends only")
            elif factory is not None:
                if name in bench_memory.JIT_BACKENDS:   # fill the on-disk cache: the compiler's memory is not the run's
                    bench_memory.measure(name, c, steps=1, threads=threads)
                got = bench_memory.measure(name, c, threads=threads)
                row.update(got, valid=got["status"] == "ok")
            rows.append(row)
        peer = next((r for r in rows[-len(entries):] if r["backend"] == "torch-cpu" and r.get("peak_rss_bytes")), None)
        for r in rows[-len(entries):]:
            r["memory_vs_torch"] = (r["peak_rss_bytes"] / peer["peak_rss_bytes"]
                                    if peer and r.get("peak_rss_bytes") and r is not peer else None)
    return rows


def check_options(seconds, repeats, threads):
    if not seconds > 0:
        raise UserError(f"--seconds must be > 0 (got {seconds})")
    if not seconds <= 3600:                     # inf would time one measurement for ever
        raise UserError(f"--seconds must be at most 3600 (got {seconds})")
    if repeats < 1:
        raise UserError(f"--repeats must be >= 1 (got {repeats})")
    if repeats > 1000 or (threads is not None and threads > 4096):
        raise UserError(f"--repeats must be at most 1000 and --threads at most 4096 (got {repeats}, {threads})")
