"""Benchmark output: the aligned terminal table, JSON lines, and the bar chart (matplotlib, optional)."""
from __future__ import annotations

import json
import math
import sys
import textwrap

from ..errors import UserError

COLUMNS = ("config", "backend", "what", "chars/s", "spread", "GFLOP/s", "% peak", "vs torch", "compile s", "valid")


def _num(x, digits=3):
    """Human number: thousands separators for large values, `digits` significant digits for small."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _cells(r):
    if r["chars_per_s"] is None:
        return [r["config"], r["backend"], r["what"]] + ["-"] * 6 + [r["status"]]
    return [r["config"], r["backend"], r["what"], _num(r["chars_per_s"]), f"±{r['spread_pct']:.0f}%",
            _num(r["gflops"]), _num(100 * r["frac_peak"], 2) if r.get("frac_peak") is not None else "-",
            f"{r['vs_torch']:.2f}x" if r.get("vs_torch") else "-", _num(r["compile_s"], 2),
            "yes" if r["valid"] else "INVALID" if r["status"] == "invalid" else r["status"]]


def format_table(rows):
    """Aligned table, one line per measurement (one per backend x config when none ran);
    then one note per backend x config that is not a clean pass, saying why."""
    shown, collapsed = [], set()
    for r in rows:
        if r["status"] in ("unavailable", "error") and r["chars_per_s"] is None:
            key = (r["config"], r["backend"])
            if key in collapsed:
                continue
            collapsed.add(key)
            r = dict(r, what="all")
        shown.append(r)
    body = [_cells(r) for r in shown]
    widths = [max(len(c), *(len(b[k]) for b in body)) if body else len(c) for k, c in enumerate(COLUMNS)]
    right = {3, 4, 5, 6, 7, 8}

    def line(cells):
        return "  ".join(c.rjust(w) if k in right else c.ljust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(COLUMNS), line(["-" * w for w in widths])] + [line(b) for b in body]
    notes, seen = [], set()
    for r in shown:
        key = (r["backend"], r["config"], r["status"], r["reason"])
        if r["status"] != "ok" and key not in seen:
            seen.add(key)
            notes.append(f"  {r['backend']} on {r['config']} ({r['what']}): {r['status']}: {r['reason']}")
    return "\n".join(out + (["notes:"] + notes if notes else []))


def legend(rows):
    """What the columns mean, printed under the table."""
    peers = sorted({r["torch_peer"] for r in rows if r.get("torch_peer")})
    return ("chars/s: median over repeats (spread: half the min-max range); GFLOP/s from the FLOP model "
            "(per char forward sum_l 2(I_l+H)4H + 2HV, train 3x forward); % peak: of the same device's "
            "float32 sgemm peak measured in this run; "
            "compile s: first call minus a steady call (JIT compile, warm-up); "
            + (f"vs torch: speed / the torch peer's, median over the repeats (the backends take turns, so each "
               f"repeat's pair is timed seconds apart), on the same device when it ran ({', '.join(peers)})" if peers
               else "vs torch: no torch peer in this run"))


def write_jsonl(rows, path):
    """One JSON object per backend x config x measurement; '-' writes to stdout."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"cannot write --json {path}: {e.strerror}") from None


def require_matplotlib():
    """Fail early, in one line, when --plot is asked for without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'lstm-engine[plot]'") from None


def plot(rows, path, title=""):
    """Bar chart of chars/s (log scale): one panel per measurement, bars per config x backend."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r["chars_per_s"]]
    whats = list(dict.fromkeys(r["what"] for r in timed))
    if not whats:
        raise UserError("nothing was timed, so there is nothing to plot")
    backends = list(dict.fromkeys(r["backend"] for r in timed))
    configs = list(dict.fromkeys(r["config"] for r in timed))
    fig, axes = plt.subplots(1, len(whats), figsize=(5 * len(whats), 1.2 + 0.5 * len(configs) * len(backends)),
                             squeeze=False)
    height = 0.8 / len(backends)
    for ax, what in zip(axes[0], whats):
        for j, be in enumerate(backends):
            ys, xs, hatches = [], [], []
            for i, cfg in enumerate(configs):
                r = next((r for r in timed if r["what"] == what and r["backend"] == be and r["config"] == cfg), None)
                if r:
                    ys.append(i + j * height)
                    xs.append(r["chars_per_s"])
                    hatches.append("" if r["valid"] else "//")
            bars = ax.barh(ys, xs, height=height, label=be)
            for bar, h, x in zip(bars, hatches, xs):
                bar.set_hatch(h)
                ax.annotate(_num(x), (x, bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize="x-small")
        ax.set_xscale("log")
        low = min(r["chars_per_s"] for r in timed if r["what"] == what)
        high = max(r["chars_per_s"] for r in timed if r["what"] == what)
        ax.set_xlim(10 ** math.floor(math.log10(low) - 0.3), high * 4)   # bars start at a power of ten
        ax.invert_yaxis()                                # first config on top, as in the table
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(configs))], configs)
        ax.set_title(what)
        ax.set_xlabel("chars/s (log; hatched = invalid)")
    axes[0][0].legend(loc="best", fontsize="small")
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 60 * len(whats))), fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UserError(f"cannot write --plot {path}: {e.strerror}") from None
    finally:
        plt.close(fig)
