"""The layout of a training run's output directory (every write through storage.atomic).

    DIR/latest.safetensors        the newest checkpoint (always written first)
    DIR/step-000250.safetensors   the newest --keep periodic checkpoints (hard links to what latest was)
    DIR/best.safetensors          the checkpoint with the lowest validation loss so far
    DIR/history.jsonl             one JSON row per evaluation
    DIR/train_log.jsonl           one JSON row per log line (train loss, gradient norm)
    DIR/.lock                     flock()ed by the training process; the kernel drops it when the process dies
    DIR/.tmp-*                    a write in progress; a killed save leaves one, removed at the next start

Every file is replaced by rename, never rewritten in place, so a process killed at any moment
(SIGKILL, power loss after the fsyncs) leaves each name pointing at a complete old or new file.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile

from ..errors import UserError
from .atomic import UMASK, atomic_link, atomic_write_bytes

EXT = ".safetensors"
_STEP_RE = re.compile(r"^step-(\d+)\.safetensors$")
_REASONS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOTDIR: "a part of the path is a file, not a directory",
            errno.EEXIST: "a file of that name is in the way"}
if hasattr(errno, "EDQUOT"):
    _REASONS[errno.EDQUOT] = "the disk quota is exceeded"


def reason(e):
    """A short human reason for an OSError."""
    return _REASONS.get(e.errno) or e.strerror or str(e)


def write_error(path, e, hint="free some disk space or choose another --out directory"):
    return UserError(f"could not write {path!r}: {reason(e)}; {hint}")


def step_files(d):
    """-> [(step, path)] of DIR/step-NNNNNN.safetensors, oldest first."""
    try:
        names = os.listdir(d)
    except OSError:
        return []
    found = [(int(m.group(1)), os.path.join(d, n)) for n in names if (m := _STEP_RE.match(n))]
    return sorted(found)


class RunDir:
    """The output directory of one training run: checks, lock, atomic saves, pruning, history."""

    def __init__(self, path, keep=3):
        self.path, self.keep = path, keep
        self.latest = os.path.join(path, "latest" + EXT)
        self.best = os.path.join(path, "best" + EXT)
        self.history = os.path.join(path, "history.jsonl")
        self.logs = ("history.jsonl", "train_log.jsonl")     # JSON-lines files with a "step" in each row
        self.saved_step = None            # the newest step saved in this directory, when known
        self._lock_fd = None

    def refuse_taken(self):
        """UserError when the directory already holds a run's checkpoints (checks only; creates nothing)."""
        there = [p for p in (self.latest, self.best) if os.path.exists(p)] + [p for _, p in step_files(self.path)]
        if there:
            raise UserError(f"--out {self.path!r} already holds a training run ({os.path.basename(there[0])}); "
                            f"continue it with --resume {self.path} or choose another --out")

    def prepare(self, resume_step=None):
        """Create the directory and prove it writable before any training time is spent.

        resume_step: step of the checkpoint continued in this same directory; None for a fresh run here.
        A fresh run never overwrites another run's checkpoints, a resumed one never those past its step.
        """
        try:
            os.makedirs(self.path, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"cannot write to the output directory {self.path!r}: {reason(e)}; "
                            f"pass another --out") from None
        steps = step_files(self.path)
        if resume_step is None:
            self.refuse_taken()
        else:
            later = [s for s, _ in steps if s > resume_step]
            if later:
                raise UserError(f"--out {self.path!r} already has checkpoints past step {resume_step} (up to step "
                                f"{max(later)}); resume from {self.latest} or pass another --out to branch off")
            self.saved_step = resume_step

    # -- lock and leftovers --------------------------------------------------
    def acquire(self):
        """Take the directory's lock (one trainer per directory) and remove stray temp files of a killed save."""
        try:
            import fcntl
        except ImportError:                    # no flock on this platform: no protection against two trainers
            fcntl = None
        if fcntl is not None:
            fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise UserError(f"another training process (pid {pid or '?'}) is writing to {self.path!r}; "
                                f"wait for it to finish or pass another --out") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
        return self.clean_tmp()

    def release(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)            # closing drops the flock; the file itself stays (no unlink race)
            self._lock_fd = None

    def clean_tmp(self):
        """Remove .tmp-* leftovers of an interrupted write.  -> how many."""
        n = 0
        for name in os.listdir(self.path):
            if name.startswith(".tmp-"):
                try:
                    os.unlink(os.path.join(self.path, name))
                    n += 1
                except OSError:
                    pass
        return n

    # -- saves ---------------------------------------------------------------
    def _failed(self, path, e):
        kept = f" (latest: step {self.saved_step})" if self.saved_step is not None else ""
        return write_error(path, e, f"the checkpoints already in {self.path!r} are intact{kept}; "
                                    f"free some disk space, then continue with --resume {self.path}")

    def save_latest(self, data, step):
        """latest <- data, then step-NNNNNN -> the same file, then prune.  -> path of latest."""
        step_path = os.path.join(self.path, f"step-{step:06d}{EXT}")
        try:
            atomic_write_bytes(self.latest, data)
        except OSError as e:
            raise self._failed(self.latest, e) from None
        self.saved_step = step
        try:
            atomic_link(self.latest, step_path, data)
        except OSError as e:
            raise self._failed(step_path, e) from None
        self.prune()
        return self.latest

    def save_best(self, data):
        try:
            atomic_write_bytes(self.best, data)
        except OSError as e:
            raise self._failed(self.best, e) from None
        return self.best

    def prune(self):
        """Keep the newest `keep` step files (latest and best are separate names and stay)."""
        for _, p in step_files(self.path)[:-self.keep]:
            try:
                os.unlink(p)
            except OSError:
                pass

    # -- history and training log ---------------------------------------------
    def reset_logs(self, upto_step):
        """In every log file keep the rows of steps <= upto_step (the checkpoint being continued); drop
        rows of a lost future and a line torn by a kill."""
        for name in self.logs:
            self._reset_log(os.path.join(self.path, name), upto_step)

    def _reset_log(self, path, upto_step):
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError):
            lines = []
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= upto_step:
                keep.append(json.dumps(row) + "\n")
        try:
            atomic_write_bytes(path, "".join(keep).encode("utf-8"))
        except OSError as e:
            raise self._failed(path, e) from None

    def append_log(self, row, name="history.jsonl"):
        path = os.path.join(self.path, name)
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise self._failed(path, e) from None
