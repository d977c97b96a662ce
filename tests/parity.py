"""The one parity helper: a result against its reference, tensor by tensor, by name.

    p = Parity("lstm layer T5 B3", backend="numba")      # ref="numpy" (the reference backend)
    p.check("dW", got, want, "float32", "grad")          # -> scale-relative error, recorded, printed
    p.equal("text", got, want)                           # exact comparisons (ids, text, bits)
    p.done()                                             # asserts, listing every line of the report
    with Parity(...) as p: ...                           # the same, done() on leaving the block
    check("loss", got, want, "float64", backend="numba")  # one tensor, asserted at once

Error measure per tensor: max_abs = max|got - want|, rel = max_abs / max|want| (scale-relative, so
entries that are exactly zero in the reference do not divide by zero).  NaN or Inf in `got` fails.

TOL[dtype][kind] is the one tolerance table (scale-relative).  Kinds, by how deep the rounding goes:
    forward  one forward pass or kernel call: outputs, logits, loss, states, probabilities
    wide     the same with sums of hundreds of terms or more (I = H = 256 layers, big GEMMs): float32
             rounding grows with the length of the sum
    grad     gradients: backward kernels, backpropagation in time
    steps    after many steps, where rounding compounds: losses, norms, parameters and Adam moments
             of a training run, the state after characters of generation
    fd       float64 analytic gradients against central differences (the difference quotient's
             truncation and round-off, not a backend's rounding)

Every check prints one line "title | backend dtype name shape max abs rel tol [FAIL]" (seen with
`pytest -s` or under a failure) and appends it to $LSTM_ENGINE_GPU_REPORT when that names a file
(benchmarks/gpu_check.sh).  tests/conftest.py ends pytest's summary with one line per reference,
llm.c style: `torch parity: N tensors over ...; worst ...; overall okay` (`-v` lists every tensor).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import numpy as np
import pytest

from lstm_engine.backends import BACKENDS as REGISTERED

TOL = {
    "float64": {"forward": 1e-13, "wide": 1e-12, "grad": 1e-13, "steps": 1e-10, "fd": 1e-7},
    "float32": {"forward": 2e-6, "wide": 1e-5, "grad": 1e-5, "steps": 1e-5},
}
DTYPES = ("float64", "float32")


@dataclass
class Row:
    ref: str          # what the result is compared with: "numpy" (the reference backend), "torch", ...
    backend: str
    dtype: str
    name: str
    max_abs: float
    rel: float
    tol: float

    @property
    def ok(self):
        return self.rel <= self.tol


RESULTS: list[Row] = []   # every check of the session, for the summary line


def max_error(got, want):
    """(max_abs, rel) of got against want, both as float64; NaN when got has NaN or Inf."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.all(np.isfinite(got)):
        return float("nan"), float("nan")
    max_abs = float(np.max(np.abs(got - want))) if got.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return max_abs, max_abs / max(scale, 1e-300)


class Parity:
    """A report of named comparisons; done() fails with every line when any is out of tolerance."""

    def __init__(self, title, backend="", ref="numpy"):
        self.title, self.backend, self.ref = title, backend, ref
        self.lines, self.bad = [], 0

    def check(self, name, got, want, dtype, kind="forward", tol=None):
        """Record got vs want (scale-relative max error) against TOL[dtype][kind] (or tol) -> rel."""
        dtype = np.dtype(dtype).name
        tol = TOL[dtype][kind] if tol is None else tol
        got_shape, want_shape = np.shape(got), np.shape(want)
        if got_shape != want_shape:
            RESULTS.append(Row(self.ref, self.backend, dtype, name, float("nan"), float("inf"), tol))
            self.line(f"{self.backend} {dtype} {name:<12} shape {got_shape} but want {want_shape}  FAIL", True)
            return float("inf")
        max_abs, rel = max_error(got, want)
        RESULTS.append(Row(self.ref, self.backend, dtype, name, max_abs, rel, tol))
        ok = rel <= tol
        self.line(f"{self.backend} {dtype} {name:<12} shape {str(got_shape):<14} max abs {max_abs:.3e}  "
                  f"rel {rel:.3e}  tol {tol:.0e}" + ("" if np.isfinite(rel) else "  NON-FINITE")
                  + ("" if ok else "  FAIL"), not ok)
        return rel

    def equal(self, name, got, want):
        """Record an exact comparison (token ids, text, flags, bit patterns)."""
        got, want = np.asarray(got), np.asarray(want)
        same = got.shape == want.shape and bool(np.all(got == want))
        where = "" if same else f" first difference at {first_diff(got, want)}"
        self.line(f"{name:<12} exact {'equal' if same else 'DIFFER' + where + '  FAIL'}", not same)
        return same

    def line(self, text, bad=False):
        line = f"{self.title} | {text}"
        self.lines.append(line)
        self.bad += bool(bad)
        print(line)
        path = os.environ.get("LSTM_ENGINE_GPU_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")

    def done(self):
        assert self.bad == 0, f"{self.bad} out of tolerance or different:\n" + "\n".join(self.lines)

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is None:
            self.done()


def check(name, got, want, dtype, kind="forward", backend="", ref="numpy", tol=None):
    """One tensor, asserted at once; the message names it and its error."""
    with Parity(name, backend, ref) as p:
        return p.check(name, got, want, dtype, kind, tol)


def first_diff(a, b):
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    idx = np.argwhere(a != b)
    return tuple(int(i) for i in idx[0]) if len(idx) else None


# ----------------------------------------------------------------------------
# The backends to run a parity test on
# ----------------------------------------------------------------------------

def backend_params(names=tuple(REGISTERED)):
    """One pytest.param per backend name, skipped with its reason where it is not usable here."""
    out = []
    for name in names:
        try:
            ok, why = importlib.import_module(REGISTERED[name]).is_available()
        except ImportError as e:
            ok, why = False, f"could not be imported ({e})"
        out.append(pytest.param(name, id=name, marks=() if ok else pytest.mark.skip(reason=f"{name}: {why}")))
    return out


# ----------------------------------------------------------------------------
# The summary line (called from tests/conftest.py's pytest_terminal_summary)
# ----------------------------------------------------------------------------

def summary(terminalreporter):
    """One line per reference: tensors, runs, the worst against its tolerance, overall okay or not."""
    tr = terminalreporter
    for ref in sorted({r.ref for r in RESULTS}, key=lambda s: (s != "torch", s)):
        rows = [r for r in RESULTS if r.ref == ref]
        runs = sorted({f"{r.backend} {r.dtype}".strip() for r in rows})
        bad = [r for r in rows if not r.ok]
        worst = max(rows, key=lambda r: r.rel / r.tol if np.isfinite(r.rel) else np.inf)
        tr.write_sep("-", f"{ref} parity")
        if tr.config.option.verbose > 0:
            for r in rows:
                tr.write_line(f"{r.backend:>6} {r.dtype:<8} {r.name:<14} max abs {r.max_abs:9.2e}  "
                              f"rel {r.rel:9.2e}  (tol {r.tol:.0e})")
        verdict = "overall okay" if not bad else f"{len(bad)} out of tolerance: overall NOT okay"
        tr.write_line(f"{ref} parity: {len(rows)} tensors over {', '.join(runs)}; worst {worst.name} "
                      f"({worst.backend} {worst.dtype}) rel {worst.rel:.1e} = {worst.rel / worst.tol:.2g} x its tol; "
                      f"{verdict}")
