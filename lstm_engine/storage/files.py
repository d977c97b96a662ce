"""Opening what the user names, and choosing where a command may write.

Inputs (checkpoints, corpora, vocabularies, histories) are opened without blocking and checked to
be regular files before a byte is read: a FIFO would hang the reader, a device never ends.
Outputs are compared with the command's inputs and with existing checkpoints and run directories
after resolving links, so that no command writes onto what it reads or onto a run it did not make.
"""
from __future__ import annotations

import os
import re
import stat

from ..errors import UserError

EXT = ".safetensors"
# the files a training run writes into its directory (storage/rundir.py)
RUN_FILE = re.compile(r"^(latest|best|step-\d+)\.safetensors$|^(history|train_log)\.jsonl$|^\.lock$")


def display_name(path):
    """A file name for text meant to be read (a page, a plot title): bytes that are not UTF-8 become U+FFFD."""
    try:
        return os.fsencode(path).decode("utf-8", "replace")
    except UnicodeEncodeError:
        return path.encode("utf-8", "replace").decode("utf-8")


def _kind(mode):
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def open_regular(path, what, error=None):
    """Open `path` for reading only if it is a regular file -> (binary file, size in bytes).

    O_NONBLOCK makes the open of a FIFO return at once (instead of waiting for a writer), so the
    fstat check below refuses it without a hang.  error(why) builds the UserError (default: one
    naming `what`)."""
    error = error or (lambda why: UserError(f"{what} {path!r} is {why}; pass a regular file"))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UserError(f"{what} {path!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise error("a directory") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(_kind(st.st_mode))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return open(fd, "rb"), st.st_size


def read_regular(path, what, error=None):
    """The bytes of a regular file (see open_regular)."""
    f, _ = open_regular(path, what, error)
    try:
        with f:
            return f.read()
    except OSError as e:
        raise UserError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def refuse_non_regular(path, what):
    """UserError when `path` exists and is not a regular file (a FIFO, device or directory)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path!r} is {_kind(st.st_mode)}; remove it or choose another path")


# -- outputs ----------------------------------------------------------------------------------------
def same_file(a, b):
    """True when paths a and b name one file (links resolved; hard links by inode)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def holds_run(d):
    """True when directory d holds a training run's checkpoints or lock."""
    try:
        names = os.listdir(d or ".")
    except OSError:
        return False
    return any(RUN_FILE.match(n) and n not in ("history.jsonl", "train_log.jsonl") for n in names)


def is_checkpoint(path):
    """True when path is a regular file that starts like an lstm-engine checkpoint (header sniffed only)."""
    try:
        f, size = open_regular(path, "file")
    except UserError:
        return False
    with f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        return 2 <= n <= min(size - 8, 100 * 1024 * 1024) and b'"lstm_engine"' in f.read(n)


def check_output(out, inputs, option, force=False):
    """Refuse to write `out` when it is one of `inputs` (any force), a file of a training run's
    directory (any force), or an existing checkpoint (unless force; None: the command has no --force).
    Links are resolved first."""
    for src in inputs:
        if src and os.path.exists(src) and same_file(src, out):
            raise UserError(f"{option} {out!r} is the input file {src!r} of this command; choose another output path")
    real = os.path.realpath(out)
    if os.path.isdir(real):
        raise UserError(f"{option} {out!r} is a directory; pass a file name")
    if RUN_FILE.match(os.path.basename(real)) and holds_run(os.path.dirname(real)):
        raise UserError(f"{option} {out!r} is a file of the training run in {os.path.dirname(real)!r}; "
                        f"choose a path outside the run directory")
    if not force and is_checkpoint(real):
        hint = " or pass --force to replace it" if force is False else ""
        raise UserError(f"{option} {out!r} is an existing lstm-engine checkpoint; choose another path{hint}")
    refuse_non_regular(real, option)
