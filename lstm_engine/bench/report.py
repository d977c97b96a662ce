"""Benchmark output: the aligned terminal table, JSON lines, and the bar chart (matplotlib, optional)."""
from __future__ import annotations

import json
import math
import sys
import textwrap

from ..errors import UserError

COLUMNS = ("config", "backend", "what", "chars/s", "spread", "GFLOP/s", "% peak", "% bound", "vs torch", "compile s",
           "valid")


def _num(x, digits=3):
    """Human number: thousands separators for large values, `digits` significant digits for small."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _cells(r):
    if r["chars_per_s"] is None:
        return [r["config"], r["backend"], r["what"]] + ["-"] * 7 + [r["status"]]
    return [r["config"], r["backend"], r["what"], _num(r["chars_per_s"]), f"±{r['spread_pct']:.0f}%",
            _num(r["gflops"]), _num(100 * r["frac_peak"], 2) if r.get("frac_peak") is not None else "-",
            _num(100 * r["frac_bound"], 2) if r.get("frac_bound") is not None else "-",
            f"{r['vs_torch']:.2f}x" if r.get("vs_torch") else "-", _num(r["compile_s"], 2),
            "yes" if r["valid"] else "INVALID" if r["status"] == "invalid" else r["status"]]


def _with_cells(columns, body, rows):
    """Insert the cell column after config, and 'vs lstm' after 'vs torch', when a cell other than lstm ran."""
    if all(r.get("cell", "lstm") == "lstm" for r in rows):
        return columns, body
    columns = list(columns)
    columns[1:1] = ["cell"]
    columns.insert(columns.index("vs torch") + 1, "vs lstm")
    out = []
    for r, b in zip(rows, body):
        b = list(b)
        b[1:1] = [r.get("cell", "lstm")]
        b.insert(columns.index("vs lstm"), f"{r['vs_lstm']:.2f}x" if r.get("vs_lstm") else "-")
        out.append(b)
    return columns, out


def format_table(rows):
    """Aligned table, one line per measurement (one per backend x config x cell when none ran);
    then one note per backend x config that is not a clean pass, saying why."""
    shown, collapsed = [], set()
    for r in rows:
        if r["what"] == "memory":
            continue
        if r["status"] in ("unavailable", "error", "skipped") and r["chars_per_s"] is None:
            key = (r["config"], r.get("cell"), r["backend"])
            if key in collapsed:
                continue
            collapsed.add(key)
            r = dict(r, what="all")
        shown.append(r)
    columns, body = _with_cells(COLUMNS, [_cells(r) for r in shown], shown)
    widths = [max(len(c), *(len(b[k]) for b in body)) if body else len(c) for k, c in enumerate(columns)]
    right = {k for k, c in enumerate(columns) if c not in ("config", "cell", "backend", "what", "valid")}

    def line(cells):
        return "  ".join(c.rjust(w) if k in right else c.ljust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(columns), line(["-" * w for w in widths])] + [line(b) for b in body]
    notes, seen = [], set()
    for r in shown:
        key = (r["backend"], r["config"], r.get("cell"), r["status"], r["reason"])
        if r["status"] != "ok" and key not in seen:
            seen.add(key)
            cell = f" {r['cell']}" if r.get("cell", "lstm") != "lstm" else ""
            notes.append(f"  {r['backend']} on {r['config']}{cell} ({r['what']}): {r['status']}: {r['reason']}")
    return "\n".join(out + (["notes:"] + notes if notes else []))


def legend(rows):
    """What the columns mean, printed under the table."""
    peers = sorted({r["torch_peer"] for r in rows if r.get("torch_peer")})
    return ("chars/s: median over repeats (spread: half the min-max range); GFLOP/s from the FLOP model "
            "(per char forward sum_l 2(I_l+H)G + 2HV, G = 4H lstm/peephole, 3H coupled/gru; train 3x forward); "
            "% peak: of the same device's "
            "float32 sgemm peak measured in this run; "
            "% bound (sample rows on the CPU): of the chars/s at which the numba threads read the weights a "
            "character needs, at the rate measured in this run for that many bytes (memory-bandwidth bound); "
            "compile s: first call minus a steady call (JIT compile, warm-up); "
            + (f"vs torch: speed / the torch peer's, median over the repeats (the backends take turns, so each "
               f"repeat's pair is timed seconds apart), on the same device when it ran ({', '.join(peers)})" if peers
               else "vs torch: no torch peer in this run")
            + ("; vs lstm: speed / the same backend's lstm on the same config, paired the same way"
               if any(r.get("vs_lstm") for r in rows) else ""))


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
    if any(r.get("cell", "lstm") != "lstm" for r in timed):
        timed = [dict(r, config=f"{r['config']} {r['cell']}") for r in timed]
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


def _mb(n):
    return "-" if n is None else f"{n / 2 ** 20:,.0f}"


def format_memory(rows):
    """The peak resident memory of a training run per config x cell x backend, beside the torch peer's."""
    mem = [r for r in rows if r["what"] == "memory"]
    if not mem:
        return ""
    head = ("config", "cell", "backend", "peak MiB", "imports MiB", "vs torch", "status")
    body = [[r["config"], r.get("cell", "lstm"), r["backend"], _mb(r.get("peak_rss_bytes")),
             _mb(r.get("import_rss_bytes")),
             f"{r['memory_vs_torch']:.2f}x" if r.get("memory_vs_torch") else "-",
             "ok" if r["status"] == "ok" else f"{r['status']}: {r['reason']}"] for r in mem]
    widths = [max(len(h), *(len(b[k]) for b in body)) for k, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.rjust(w) if 3 <= k <= 5 else c.ljust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()
    steps = next((r["memory_steps"] for r in mem if r.get("memory_steps")), None)
    what = (f"{steps} training steps + the closing evaluation" if steps else "a training run")
    return "\n".join([f"peak resident memory of {what}, each backend in a fresh process "
                      f"(ru_maxrss; imports: its peak before any model existed; vs torch: peak / the torch peer's)",
                      line(head), line(["-" * w for w in widths])] + [line(b) for b in body])
