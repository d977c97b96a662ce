"""`lstm-engine plot`: a run's train and val loss against steps and wall time.

Reads RUN_DIR/history.jsonl (one row {step, time, train_loss, val_loss} per evaluation),
RUN_DIR/train_log.jsonl (one row {step, time, train_loss, grad_norm} per log step: the mean
training loss since the previous row) and the unigram entropy from the run's checkpoint.
A run without history.jsonl falls back to the history kept in the checkpoint's metadata.
matplotlib is an optional extra: pip install 'lstm-engine[plot]'.
"""
from __future__ import annotations

import json
import math
import os

from ..storage import checkpoint
from ..storage.files import display_name, refuse_non_regular
from ..errors import UserError

LN2 = math.log(2)
MISSING = "lstm-engine plot needs matplotlib; install it with: pip install 'lstm-engine[plot]'"


def read_jsonl(path):
    """Rows of a JSON-lines file; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    refuse_non_regular(path, "run log")          # a FIFO would block the read for ever
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def _by_step(rows, key):
    """Rows that have `key`, one per step (a resumed run may repeat steps: the last row wins), by step."""
    keep = {}
    for r in rows:
        if isinstance(r, dict) and isinstance(r.get(key), (int, float)) and type(r.get("step")) is int:
            keep[r["step"]] = r
    return [keep[s] for s in sorted(keep)]


def load_run(run_dir):
    """-> dict(evals=[rows with val_loss], train=[rows with train_loss], entropy=float or None, name=str)."""
    if os.path.isfile(run_dir):
        run_dir = os.path.dirname(run_dir) or "."
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir!r} does not exist; pass the --out directory of a training run")
    meta = None
    for name in ("latest", "best"):
        path = os.path.join(run_dir, name + checkpoint.EXT)
        if os.path.exists(path):
            meta = checkpoint.load(path)[1]
            break
    hist_path = os.path.join(run_dir, "history.jsonl")
    if os.path.exists(hist_path):
        history = read_jsonl(hist_path)
    else:
        history = (meta or {}).get("trainer", {}).get("history", [])
    log_path = os.path.join(run_dir, "train_log.jsonl")
    train = _by_step(read_jsonl(log_path), "train_loss") if os.path.exists(log_path) else []
    evals = _by_step(history, "val_loss")
    if not train:
        train = _by_step(history, "train_loss")
    if not evals and not train:
        raise UserError(f"{run_dir!r} holds no loss history (history.jsonl, train_log.jsonl or a checkpoint "
                        f"with history); train with --eval-every or --log-every above 0")
    entropy = (meta or {}).get("unigram_entropy")
    name = display_name(os.path.basename(os.path.abspath(run_dir)))      # a title: bytes that are not UTF-8 as U+FFFD
    return {"evals": evals, "train": train, "entropy": entropy, "name": name}


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _time_axis(seconds):
    """Wall time in a readable unit -> (scale divisor, label)."""
    top = max(seconds or [0])
    if top >= 7200:
        return 3600.0, "wall time (hours)"
    if top >= 120:
        return 60.0, "wall time (minutes)"
    return 1.0, "wall time (seconds)"


def plot_run(run_dir, out, title=None, dpi=110):
    """Draw the two panels and save them to `out` (.png, .svg or .pdf by its extension) -> the Figure."""
    run = load_run(run_dir)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(MISSING) from None
    fig = Figure(figsize=(12, 4.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    series = [("train", run["train"], "train_loss", "#1f77b4", 1.4), ("val", run["evals"], "val_loss", "#d62728", 2.2)]
    times = [r["time"] for _, rows, _, _, _ in series for r in rows if _number(r.get("time"))]
    tdiv, tlabel = _time_axis(times)
    for ax, xkey, xlabel in ((axes[0], "step", "step"), (axes[1], "time", tlabel)):
        for label, rows, key, color, lw in series:
            rows = [r for r in rows if _number(r.get(xkey))]             # a row without its time (null) is left out
            if rows:
                xs = [r[xkey] / (tdiv if xkey == "time" else 1) for r in rows]
                ax.plot(xs, [r[key] for r in rows], color=color, lw=lw, marker="o" if len(rows) < 30 else None,
                        ms=3, label=f"{label} loss")
        if run["entropy"]:
            e = run["entropy"]
            ax.axhline(e, color="#555", ls="--", lw=1,
                       label=f"unigram entropy {e:.3f} nats ({e / LN2:.3f} bits)/char")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        sec = ax.secondary_yaxis("right", functions=(lambda n: n / LN2, lambda b: b * LN2))
        sec.set_ylabel("bits/char")
    axes[0].set_ylabel("loss (nats/char)")
    axes[0].legend(loc="upper right", fontsize=9)
    fig.suptitle(title or f"lstm-engine run {run['name']}")
    try:
        fig.savefig(out)
    except (OSError, ValueError) as e:
        raise UserError(f"could not write {out!r}: {e}; pick a path ending in .png, .svg or .pdf in a "
                        f"writable directory") from None
    return fig
