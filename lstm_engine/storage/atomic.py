"""The one way lstm-engine replaces a file: temp file beside it, write, fsync, rename, fsync the folder.

A process killed at any moment (SIGKILL, power loss after the fsyncs) leaves the destination
naming a complete old or new file, never a partial one.  Temp files are named `.tmp-NAME-*`,
which a run directory removes at its next start.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile

UMASK = os.umask(0o022)
os.umask(UMASK)


def fsync_dir(d):
    """Make a rename in directory d durable (a no-op where the OS cannot fsync directories)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_file(path, make_dirs=False):
    """Yield (binary file, temp path) in path's folder; on a clean exit the file is fsynced and
    renamed onto path, on an exception it is removed and path is untouched.  The body may check
    the temp file (by its path) before the rename."""
    d = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=d)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)           # mkstemp makes 0600; files follow the umask
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(d)


def atomic_write_bytes(path, data, make_dirs=False):
    """Replace path by `data` atomically; raises OSError (leaving path as it was) when anything fails."""
    with atomic_file(path, make_dirs) as (f, _):
        f.write(data)


def atomic_link(src, dst, data):
    """Make dst name the same file as src (a hard link, renamed into place); copy `data` where links fail."""
    d = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(d, f".tmp-{os.path.basename(dst)}-{secrets.token_hex(4)}")
    try:
        os.link(src, tmp)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", -1)):
            raise
        atomic_write_bytes(dst, data)            # no hard links on this file system
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(d)
