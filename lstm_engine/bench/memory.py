"""Peak resident memory of a training run, each backend in a fresh process.

Dimension legend: V vocab, E embedding, H hidden, L layers, B batch, T time steps.

The run measured (the same for the engine and the PyTorch peer): build the model from the engine's
initial weights, MEMORY_STEPS training steps on the benchmark batch (B x T), then the closing
evaluation as the trainer does it (evaluate_ids: EVAL_CHARS characters as one stream at batch 1,
in chunks of 256; the peer does the same with nn.LSTM / nn.GRU under inference_mode).
The parent starts `python -m lstm_engine.bench.memory_child ...` per backend and reads the child's peak
resident set from os.wait4 (ru_maxrss): nothing the parent has imported or allocated counts.
The child also reports its own peak after the imports, before any model exists (the libraries' share).
A backend in JIT_BACKENDS runs once with one step first, so that its kernels come from numba's on-disk
cache in the measured run, as in a user's every run after the first: LLVM's memory while compiling
(hundreds of MiB) would otherwise be the peak.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

MEMORY_STEPS = 12
EVAL_CHARS = 2001
JIT_BACKENDS = ("numba",)   # compiled on first use into numba's cache: one short run first, not counted
# ru_maxrss is in kibibytes on Linux, in bytes on macOS
RSS_UNIT = 1 if sys.platform == "darwin" else 1024
# A process's peak counts its parent's at fork and keeps it across exec (Linux: signal->maxrss), so the
# child is started by a bare interpreter that imports nothing of ours; its last stderr line is the
# grandchild's exit status and ru_maxrss from os.wait4.
LAUNCHER = ("import json, os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[1:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "p.returncode = rc = os.waitstatus_to_exitcode(status)\n"
            "print('MEMORY-CHILD ' + json.dumps([rc, usage.ru_maxrss]), file=sys.stderr)\n"
            "sys.exit(rc if rc >= 0 else 1)\n")


def _child_argv(backend, cfg, steps, threads):
    return [sys.executable, "-m", "lstm_engine.bench.memory_child", backend, str(cfg.E), str(cfg.H), str(cfg.L),
            str(cfg.B), str(cfg.T), str(cfg.V), cfg.cell, str(steps), str(threads or 0)]


def measure(backend, cfg, steps=MEMORY_STEPS, threads=None, timeout=3600):
    """Run one backend's training run in a fresh process -> row fields: status, reason, peak_rss_bytes
    (the child's ru_maxrss from os.wait4), import_rss_bytes (its peak after the imports), ..."""
    argv = [sys.executable, "-c", LAUNCHER, *_child_argv(backend, cfg, steps, threads)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True, start_new_session=True)
        if not _wait(proc, timeout):
            return {"status": "error", "reason": f"the memory run took more than {timeout} s", "peak_rss_bytes": None}
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines or not lines[-1].startswith("MEMORY-CHILD "):
        why = lines[-1] if lines else "the launcher said nothing"
        return {"status": "error", "reason": why, "peak_rss_bytes": None}
    rc, maxrss = json.loads(lines.pop().split(" ", 1)[1])
    if rc != 0:
        why = lines[-1] if lines else f"exit status {rc}"
        status = "skipped" if why.startswith("UserError: ") else "error"
        return {"status": status, "reason": why.removeprefix("UserError: "), "peak_rss_bytes": None}
    report = json.loads(stdout.strip().splitlines()[-1])
    return {"status": "ok", "reason": report["note"], "peak_rss_bytes": maxrss * RSS_UNIT,
            "import_rss_bytes": report["import_rss_bytes"], "memory_steps": steps,
            "eval_chars": EVAL_CHARS, "torch_imported": report["torch_imported"]}


def _wait(proc, timeout):
    """Wait for the launcher -> finished in time.  On a timeout or Ctrl-C its whole session (launcher and
    child, which the terminal's SIGINT does not reach) is killed first."""
    try:
        proc.wait(timeout)
        return True
    except BaseException as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            return False
        raise
