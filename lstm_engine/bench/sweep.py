"""How speed grows with size: one dimension of a config swept, every other held, each point a `bench` run.

Dimension legend: E embedding, H hidden, L layers, B batch, T time steps, V vocab.

`--sweep hidden=64,128,256,512,1024` times every backend at H = 64 ... 1024 with E, L, B, T, V of each
--configs config (its base); several --sweep options are swept one after the other, not crossed.
The points take turns like any bench run (harness.bench_config), so the ratio of a backend to the torch
peer at a point is paired repeat by repeat.  Outputs: a markdown table (one per base x dimension x cell x
measurement: chars/s per backend, and each engine backend / the torch peer), the rows as JSON, and a PNG
of chars/s against the swept size (matplotlib, the [plot] extra; without it the PNG is skipped with a note).
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import textwrap
from dataclasses import replace

from ..errors import UserError
from ..storage.atomic import atomic_write_bytes
from .configs import MAX_VOCAB, parse_configs
from .harness import run_bench
from .machine import machine_line

DIMENSIONS = {"hidden": "H", "batch": "B", "embed": "E", "layers": "L", "seq": "T", "vocab": "V"}


def parse_sweep(specs):
    """['hidden=64,128', 'batch=1,32'] -> [('hidden', [64, 128]), ('batch', [1, 32])]."""
    out = []
    for spec in specs:
        m = re.fullmatch(r"\s*([a-z]+)\s*=\s*([\d,\s]+)", spec or "")
        if not m or m.group(1) not in DIMENSIONS:
            raise UserError(f"--sweep {spec!r} is not DIMENSION=N,N,...; DIMENSION is one of {', '.join(DIMENSIONS)} "
                            f"(e.g. --sweep hidden=64,128,256,512,1024)")
        values = list(dict.fromkeys(int(v) for v in m.group(2).split(",") if v.strip()))
        low = 2 if m.group(1) == "vocab" else 1
        high = MAX_VOCAB if m.group(1) == "vocab" else 1 << 20
        if not values or any(not low <= v <= high for v in values):
            raise UserError(f"--sweep {spec!r}: every {m.group(1)} must be between {low} and {high}")
        out.append((m.group(1), values))
    return out


def sweep_configs(bases, sweeps):
    """-> [(BenchConfig, base name, dimension, value)]: each base with one dimension set to each value."""
    out = []
    for base in bases:
        for dim, values in sweeps:
            for v in values:
                c = replace(base, **{DIMENSIONS[dim]: v})
                out.append((replace(c, name=f"{base.name}:{dim}={v}"), base.name, dim, v))
    return out


def run_sweep(sweeps, backends="numba,torch", configs="seed", what="train", seconds=2.0, repeats=5,
              threads=None, on_progress=None, cell="lstm"):
    """Run every point of every sweep -> (machine, rows); rows carry sweep_base, sweep_dim, sweep_value."""
    points = sweep_configs(parse_configs(configs), parse_sweep(sweeps))
    machine, rows = run_bench(backends, [p[0] for p in points], what, seconds, repeats, threads, on_progress, cell)
    where = {c.name: (base, dim, v) for c, base, dim, v in points}
    for r in rows:
        r["sweep_base"], r["sweep_dim"], r["sweep_value"] = where[r["config"]]
    return machine, rows


# ----------------------------------------------------------------------------
# Outputs: markdown, JSON, PNG
# ----------------------------------------------------------------------------

def _groups(rows):
    """{(base, dim, cell, what): rows} in run order, memory rows left out."""
    out = {}
    for r in rows:
        if r["what"] != "memory":
            out.setdefault((r["sweep_base"], r["sweep_dim"], r.get("cell", "lstm"), r["what"]), []).append(r)
    return out


def _chars(r):
    if r is None or not r["chars_per_s"]:
        return "-"
    return f"{r['chars_per_s']:,.0f}" + ("" if r["valid"] else " (INVALID)")


def markdown(machine, rows, command=""):
    """The sweep as markdown: the machine, the command, one table per base x dimension x cell x measurement."""
    out = [f"# bench sweep, {machine['date']}", "", machine_line(machine), ""]
    if command:
        out += ["```", command, "```", ""]
    for (base, dim, cell, what), group in _groups(rows).items():
        backends = list(dict.fromkeys(r["backend"] for r in group))
        engines = [b for b in backends if not b.startswith("torch")]
        peer = next((b for b in backends if b.startswith("torch")), None)
        out.append(f"## {what}, {cell}: {dim} swept from {base}")
        out.append("")
        head = [dim, "shape"] + [f"{b} chars/s" for b in backends]
        head += [f"{b} / {peer}" for b in engines] if peer else []
        out += ["| " + " | ".join(head) + " |", "|" + "|".join(" ---: " for _ in head) + "|"]
        for v in dict.fromkeys(r["sweep_value"] for r in group):
            by = {r["backend"]: r for r in group if r["sweep_value"] == v}
            shape = next(iter(by.values()))["shape"]
            ratios = [f"{by[b]['vs_torch']:.2f}x" if by.get(b) and by[b].get("vs_torch") else "-" for b in engines]
            out.append("| " + " | ".join([str(v), shape] + [_chars(by.get(b)) for b in backends]
                                         + (ratios if peer else [])) + " |")
        notes = sorted({f"{r['backend']} at {dim}={r['sweep_value']}: {r['status']}: {r['reason']}"
                        for r in group if r["status"] not in ("ok", "invalid")})
        out += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(out).rstrip() + "\n"


def _write(path, data, option):
    """Replace path by data (str or bytes) atomically: a failed write leaves what was there."""
    try:
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as e:
        raise UserError(f"cannot write {option} {path}: {e.strerror}") from None


def write_outputs(prefix, machine, rows, command=""):
    """PREFIX.md, PREFIX.json and PREFIX.png -> (written paths, note or '')."""
    md, js, png = f"{prefix}.md", f"{prefix}.json", f"{prefix}.png"
    _write(md, markdown(machine, rows, command), "--sweep-out")
    _write(js, json.dumps({"machine": machine, "command": command, "rows": rows}, indent=1, sort_keys=True) + "\n",
           "--sweep-out")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [md, js], "no PNG: the chart needs matplotlib (pip install 'lstm-engine[plot]')"
    plot(rows, png, title=machine_line(machine))
    return [md, js, png], ""


def plot(rows, path, title=""):
    """One panel per base x dimension x cell x measurement: chars/s (log) against the swept size (log 2)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {k: g for k, g in _groups(rows).items() if any(r["chars_per_s"] for r in g)}
    if not groups:
        raise UserError("nothing was timed, so there is nothing to plot")
    cols = min(len(groups), 3)
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows + 0.8), squeeze=False)
    for ax, ((base, dim, cell, what), group) in zip(axes.flat, groups.items()):
        for be in dict.fromkeys(r["backend"] for r in group):
            pts = [(r["sweep_value"], r["chars_per_s"]) for r in group if r["backend"] == be and r["chars_per_s"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=be)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"{dim} ({base}: others held)")
        ax.set_ylabel("chars/s")
        ax.set_title(f"{what}, {cell}", fontsize="small")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 70 * cols)), fontsize="x-small")
    fig.tight_layout()
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        plt.close(fig)
    _write(path, png.getvalue(), "--sweep-out")


def check_options(plot_path, prefix):
    """Before anything runs: --plot draws the bar chart of a plain run (a sweep has its own chart), and
    the outputs' folder must exist."""
    if plot_path:
        raise UserError("--plot draws the bar chart of a run without --sweep; a sweep writes its chart to "
                        "--sweep-out PREFIX.png")
    folder = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(folder):
        raise UserError(f"--sweep-out {prefix!r}: the folder {folder!r} does not exist; create it or choose another")
