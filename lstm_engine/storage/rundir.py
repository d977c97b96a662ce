"""The layout of a training run's output directory (every write through storage.atomic).

    DIR/latest.safetensors        the newest checkpoint (always written first)
    DIR/step-000250.safetensors   the newest --keep periodic checkpoints (hard links to what latest was)
    DIR/best.safetensors          the checkpoint with the lowest validation loss so far
    DIR/history.jsonl             one JSON row per evaluation
    DIR/train_log.jsonl           one JSON row per log line (train loss, gradient norm)
    DIR/.lock                     flock()ed by the training process; the kernel drops it when the process dies
    DIR/.tmp-NAME-RANDOM          a write of NAME in progress; a killed save leaves one, removed at the next start

A run writes only these names: a fresh run in a directory with other files (a history it did not
write, another tool's temp files) appends to the logs and leaves everything else as it was.

Every file is replaced by rename, never rewritten in place, so a process killed at any moment
(SIGKILL, power loss after the fsyncs) leaves each name pointing at a complete old or new file.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import time

from ..errors import UserError
from .atomic import UMASK, atomic_link, atomic_write_bytes
from .files import refuse_non_regular

EXT = ".safetensors"
_STEP_RE = re.compile(r"^step-(\d+)\.safetensors$")
# temp files of our own writes (atomic.py: .tmp-NAME-RANDOM); others' are left alone
_TMP_RE = re.compile(r"^\.tmp-((latest|best|step-\d+)\.safetensors|(history|train_log)\.jsonl|probe)-[A-Za-z0-9_]+$")
_PID_WIDTH = 20                   # the pid is written in place, padded, so the lock file is never truncated
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


def default_run_dir(base="runs"):
    """runs/run-DATE-TIME: the name a run without --out starts from (RunDir(claim=True) makes it unique)."""
    return os.path.join(base, time.strftime("run-%Y%m%d-%H%M%S"))


def _claim(path):
    """Create a new directory at path, or at path-2, path-3, ... if taken -> the path created.

    mkdir is atomic: two runs started in the same second never share a directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for k in range(1, 10_000):
        candidate = path if k == 1 else f"{path}-{k}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "too many runs of that name")


class RunDir:
    """The output directory of one training run: checks, lock, atomic saves, pruning, history.

    claim=True: `path` is a default name; prepare() creates a new directory from it (see _claim)."""

    def __init__(self, path, keep=3, claim=False):
        self.path, self.keep, self.claim = path, keep, claim
        self.latest = os.path.join(path, "latest" + EXT)
        self.best = os.path.join(path, "best" + EXT)
        self.history = os.path.join(path, "history.jsonl")
        self.logs = ("history.jsonl", "train_log.jsonl")     # JSON-lines files with a "step" in each row
        self.saved_step = None            # the newest step saved in this directory, when known
        self.resumed = False              # prepare(resume_step): continuing a run of this directory
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
            if self.claim:                      # the same attributes, for the directory actually created
                self.__init__(_claim(self.path), self.keep)
            os.makedirs(self.path, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"cannot write to the output directory {self.path!r}: {reason(e)}; "
                            f"pass another --out") from None
        for name in self.logs:                 # appending to a FIFO would block for ever
            refuse_non_regular(os.path.join(self.path, name), "run log")
        steps = step_files(self.path)
        self.resumed = resume_step is not None
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
            fd = self._open_lock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = (os.pread(fd, _PID_WIDTH + 1, 0).decode("ascii", "replace").split() or [""])[0]
                os.close(fd)
                raise UserError(f"another training process (pid {pid or '?'}) is writing to {self.path!r}; "
                                f"wait for it to finish or pass another --out") from None
            os.pwrite(fd, f"{os.getpid():<{_PID_WIDTH}}\n".encode(), 0)
            self._lock_fd = fd
        return self.clean_tmp()

    def _open_lock(self):
        """DIR/.lock opened without following a link and without truncating; refused unless it is a
        regular file with one name (a planted link or hard link must not lead our pid into another file)."""
        lock = os.path.join(self.path, ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                         0o666 & ~UMASK)
        except OSError as e:
            why = "it is a symbolic link" if e.errno == errno.ELOOP else reason(e)
            raise UserError(f"cannot use the lock file {lock!r}: {why}; remove it or pass another --out") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise UserError(f"the lock file {lock!r} is not a regular file of its own (a device, FIFO or hard "
                            f"link); remove it or pass another --out")
        return fd

    def release(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)            # closing drops the flock; the file itself stays (no unlink race)
            self._lock_fd = None

    def clean_tmp(self):
        """Remove .tmp-* leftovers of an interrupted write.  -> how many."""
        n = 0
        for name in os.listdir(self.path):
            if _TMP_RE.match(name):
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
        rows of a lost future and a line torn by a kill.  A fresh run leaves the logs it finds alone
        (it appends): they are not its own."""
        if not self.resumed:
            return
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
