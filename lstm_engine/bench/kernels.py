"""Per-kernel micro-benchmarks: each candidate for a kernel is validated against the NumPy reference, then timed.

Dimension legend: T time, B batch, E embedding (the input size I of the layer), H hidden, G = 4H,
V vocab, N = T*B.

Kernels (the backend function names):  lstm_forward (gate forward), lstm_backward (gate backward),
softmax_xent, adam_update, generate (sampling step, batch 1, SAMPLE_CHUNK characters a call).

Candidates for a kernel:
  * every requested backend's own function of that name (row "numba", "cupy", ...);
  * the versions the caller passes in `modules`, a list of (label, backend name, versions) with
        versions = {"lstm_forward": {"v1": fn, ...}, "lstm_backward": {...}, "softmax_xent": {...},
                    "adam_update": {...}, "generate": {...}}
    each fn with the signature of the backend function of that name, taking that backend's arrays
    (row "LABEL:VERSION"; only for backends that were asked for, or numpy).  A version of
    lstm_backward gets its cache from the lstm_forward version of the same name if there is one,
    else from the backend's own.  The package has no versions of its own: the experiments live
    outside it and pass theirs in (docs/numba.md).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from .. import backends as backends_mod
from ..backends import numpy_backend
from .harness import SAMPLE_CHUNK, parse_configs, time_calls
from ..errors import UserError
from ..core.model import init_params

KERNELS = ("lstm_forward", "lstm_backward", "softmax_xent", "adam_update", "generate")
ALIASES = {"gate-forward": "lstm_forward", "gate-backward": "lstm_backward", "softmax-xent": "softmax_xent",
           "adam": "adam_update", "sample-step": "generate"}
RTOL = 1e-4                 # float32: max |error| of each output <= RTOL * its max |reference|


@dataclass
class Candidate:
    label: str              # row name: backend name or MODULE:VERSION
    be: object              # backend module whose arrays the function takes
    fn: object
    forward: object = None  # lstm_backward only: the lstm_forward that makes its cache


def parse_kernels(spec):
    names = [ALIASES.get(k.strip(), k.strip()) for k in spec.split(",") if k.strip()]
    for k in names:
        if k not in KERNELS:
            raise UserError(f"unknown kernel {k!r}; choose from {', '.join(KERNELS)} "
                            f"(or {', '.join(ALIASES)})")
    return list(dict.fromkeys(names)) or list(KERNELS)


def candidates(kernel, backend_names, modules):
    """-> ([Candidate], [notes]) for one kernel: the backends' own functions, then module versions."""
    out, notes, loaded = [], [], {}
    for n in dict.fromkeys(["numpy", *backend_names]):
        try:
            loaded[n] = backends_mod.get_backend(n)
        except UserError as e:
            notes.append(f"{n}: {e}")
            continue
        out.append(Candidate(n, loaded[n], getattr(loaded[n], kernel), loaded[n].lstm_forward))
    for mod_name, be_name, versions in modules:
        if not versions.get(kernel) or (be_name not in backend_names and be_name != "numpy"):
            continue          # versions of a backend that was not asked for
        be = loaded.get(be_name)
        if be is None:
            try:
                be = loaded[be_name] = backends_mod.get_backend(be_name)
            except UserError as e:
                notes.append(f"{mod_name} (backend {be_name}): {e}")
                continue
        for v, fn in versions[kernel].items():
            fwd = versions.get("lstm_forward", {}).get(v, be.lstm_forward)
            out.append(Candidate(f"{mod_name}:{v}", be, fn, fwd))
    return out, notes


# ----------------------------------------------------------------------------
# Inputs, reference outputs, and one call of a candidate
# ----------------------------------------------------------------------------

def make_inputs(cfg, seed=0):
    """Host float32 inputs for every kernel at config cfg (one layer of E -> H for the gate kernels)."""
    rng = np.random.default_rng(seed)
    T, B, E, H, V = cfg.T, cfg.B, cfg.E, cfg.H, cfg.V
    f32 = np.float32
    k = 1.0 / np.sqrt(H)
    params = init_params(cfg.model_config(), seed=seed)
    return {
        "x": rng.standard_normal((T, B, E)).astype(f32),               # (T,B,E)
        "W": rng.uniform(-k, k, (H + E, 4 * H)).astype(f32),           # (H+E,G)
        "b": rng.uniform(-k, k, 4 * H).astype(f32),                    # (G,)
        "h0": (0.5 * rng.standard_normal((B, H))).astype(f32),         # (B,H)
        "c0": (0.5 * rng.standard_normal((B, H))).astype(f32),         # (B,H)
        "dhs": (0.1 * rng.standard_normal((T, B, H))).astype(f32),     # (T,B,H)
        "dhT": (0.1 * rng.standard_normal((B, H))).astype(f32),        # (B,H)
        "dcT": (0.1 * rng.standard_normal((B, H))).astype(f32),        # (B,H)
        "logits": (2.0 * rng.standard_normal((T * B, V))).astype(f32), # (N,V)
        "targets": rng.integers(0, V, T * B),                          # (N,)
        "params": params,
        "grads": {n: (0.01 * rng.standard_normal(p.shape)).astype(f32) for n, p in params.items()},
        "m": {n: (0.001 * rng.standard_normal(p.shape)).astype(f32) for n, p in params.items()},
        "v": {n: (1e-5 * rng.random(p.shape)).astype(f32) for n, p in params.items()},
        "state": [[np.zeros((1, H), f32), np.zeros((1, H), f32)] for _ in range(cfg.L)],
    }


def make_call(kernel, c, inp, greedy):
    """-> (call(): runs the candidate once on its backend's arrays, result(): host outputs to compare)."""
    be = c.be

    def dev(a):    # a fresh copy on the backend: adam_update and generate write into their arguments
        return {n: dev(v) for n, v in a.items()} if isinstance(a, dict) else be.asarray(np.array(a))
    last = {}
    if kernel == "lstm_forward":
        args = [dev(inp[n]) for n in ("x", "W", "b", "h0", "c0")]

        def call():
            last["out"] = c.fn(*args)[:3]                                # hs, hT, cT
    elif kernel == "lstm_backward":
        cache = c.forward(*[dev(inp[n]) for n in ("x", "W", "b", "h0", "c0")])[3]
        args = [dev(inp[n]) for n in ("dhs", "dhT", "dcT")]

        def call():
            last["out"] = c.fn(*args, cache)                             # dx, dW, db, dh0, dc0
    elif kernel == "softmax_xent":
        logits, targets = dev(inp["logits"]), dev(inp["targets"])

        def call():
            last["out"] = c.fn(logits, targets, True)                    # loss, dlogits
    elif kernel == "adam_update":
        p, g, m, v = (dev(inp[n]) for n in ("params", "grads", "m", "v"))

        def call():
            c.fn(p, g, m, v, 10, 2e-3, 0.9, 0.999, 1e-8, 0.5)
            last["out"] = (p, m, v)
    else:
        weights = dev(inp["params"])
        state = [[dev(h), dev(cc)] for h, cc in inp["state"]]
        rng = np.random.default_rng(0)

        def call():
            last["out"] = (c.fn(weights, state, 0, SAMPLE_CHUNK, 1.0, 0, 1.0, greedy, rng), state)
    return call, lambda: _host(be, last["out"])


def _host(be, out):
    """Nested outputs -> flat list of host arrays / floats."""
    if isinstance(out, dict):
        return [x for k in sorted(out) for x in _host(be, out[k])]
    if isinstance(out, (list, tuple)):
        return [x for o in out for x in _host(be, o)]
    if out is None or isinstance(out, (int, float)):
        return [np.asarray(out if out is not None else np.nan)]
    return [np.array(be.to_numpy(out))]                 # a copy: later calls may write into `out`


def max_error(got, ref):
    """-> (max |got - ref| over all outputs, worst relative error: max over outputs of max|diff| / max|ref|)."""
    if len(got) != len(ref):
        return float("inf"), float("inf")
    err, rel = 0.0, 0.0
    for g, r in zip(got, ref):
        if g.shape != r.shape or not np.array_equal(np.isfinite(g), np.isfinite(r)):
            return float("inf"), float("inf")
        if not r.size:
            continue
        d = float(np.nanmax(np.abs(g.astype(np.float64) - r.astype(np.float64))))
        err = max(err, d)
        rel = max(rel, d / max(float(np.nanmax(np.abs(r))), 1e-30))
    return err, rel


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def bench_kernel(kernel, cfg, backend_names, modules, seconds, repeats):
    """Rows for one kernel: every candidate validated (max error) then timed (median µs per call)."""
    inp = make_inputs(cfg)
    ref_call, ref_result = make_call(kernel, Candidate("ref", numpy_backend, getattr(numpy_backend, kernel),
                                                       numpy_backend.lstm_forward), inp, greedy=True)
    ref_call()
    ref = ref_result()
    cands, notes = candidates(kernel, backend_names, modules)
    rows = []
    for c in cands:
        row = {"kernel": kernel, "candidate": c.label, "backend": c.be.NAME, "shape": cfg.shape,
               "max_abs_err": None, "max_rel_err": None, "valid": False, "status": "ok", "reason": "",
               "median_us": None,
               "spread_pct": None, "compile_s": None, "vs_numpy": None}
        try:
            call, result = make_call(kernel, c, inp, greedy=True)
            call()
            err, rel = max_error(result(), ref)
            row.update(max_abs_err=err, max_rel_err=rel, valid=bool(rel <= RTOL))
            if not row["valid"]:
                row.update(status="invalid", reason=f"error {rel:.1e} of the largest reference value > {RTOL:g}")
            timed, _ = make_call(kernel, c, inp, greedy=False)
            first, per_call, _ = time_calls(timed, c.be.synchronize, seconds, repeats)
        except Exception as e:                               # a broken version must not stop the others
            row.update(status="error", valid=False, reason=f"{type(e).__name__}: {e}")
            rows.append(row)
            continue
        med = statistics.median(per_call)
        row.update(median_us=1e6 * med, spread_pct=100 * (max(per_call) - min(per_call)) / 2 / med,
                   compile_s=max(0.0, first - med))
        rows.append(row)
    base = next((r["median_us"] for r in rows if r["candidate"] == "numpy" and r["median_us"]), None)
    for r in rows:
        r["vs_numpy"] = base / r["median_us"] if base and r["median_us"] else None
    return rows, notes


def run_micro(kernels="", configs="seed", backends="", seconds=1.0, repeats=5, modules=()):
    """-> (rows, notes).  backends '' means every available one; modules: the extra versions
    (see the module docstring)."""
    ks = parse_kernels(kernels)
    cfgs = parse_configs(configs)
    names = [b.strip() for b in backends.split(",") if b.strip()] or backends_mod.available_backends()
    for n in names:
        if n not in backends_mod.BACKENDS:
            raise UserError(f"unknown backend {n!r}; choose from {', '.join(backends_mod.BACKENDS)}")
    notes, rows = [], []
    for cfg in cfgs:
        for k in ks:
            r, n = bench_kernel(k, cfg, names, modules, seconds, repeats)
            rows += r
            notes += [x for x in n if x not in notes]
    return rows, notes


def format_micro(rows):
    """One block per kernel x shape: candidate, max error, valid, median µs, spread, speed vs numpy."""
    out = []
    for key in dict.fromkeys((r["kernel"], r["shape"]) for r in rows):
        block = [r for r in rows if (r["kernel"], r["shape"]) == key]
        w = max(9, *(len(r["candidate"]) for r in block))
        out.append(f"{key[0]}  ({key[1]})")
        out.append(f"  {'candidate':<{w}}  {'max err':>8}  {'valid':<7}  {'median µs':>10}  {'spread':>6}  "
                   f"{'vs numpy':>8}  {'compile s':>9}")
        for r in block:
            err = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.1e}"
            ok = "yes" if r["valid"] else r["status"].upper() if r["status"] == "invalid" else r["status"]
            us = "-" if r["median_us"] is None else f"{r['median_us']:,.1f}"
            sp = "-" if r["spread_pct"] is None else f"±{r['spread_pct']:.0f}%"
            vs = "-" if r["vs_numpy"] is None else f"{r['vs_numpy']:.2f}x"
            cs = "-" if r["compile_s"] is None else f"{r['compile_s']:.2g}"
            out.append(f"  {r['candidate']:<{w}}  {err:>8}  {ok:<7}  {us:>10}  {sp:>6}  {vs:>8}  {cs:>9}")
            if r["reason"]:
                out.append(f"  {'':<{w}}  {r['reason']}")
    return "\n".join(out)
