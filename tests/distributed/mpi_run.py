"""Launching the CLI on K MPI ranks from a test: mpiexec (the mpich wheel's, beside the Python
running the tests) over loopback, with a timeout, so that a hang fails the test instead of CI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def mpiexec():
    """Path of mpiexec, or None."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


def _why_not():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install '.[mpi]' adds it and the mpich library)"
    if mpiexec() is None:
        return "no mpiexec on PATH or beside the Python running the tests (pip install '.[mpi]')"
    return None


WHY_NOT = _why_not()
needs_mpi = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def env(**extra):
    """The test's environment (plus extra) without the variables of an enclosing MPI launch."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    return dict(e, **extra)


def command(n, args, driver=None):
    """mpiexec -n N python -m lstm_engine.cli ARGS (or python DRIVER ARGS)."""
    target = [driver] if driver else ["-m", "lstm_engine.cli"]
    return [mpiexec(), "-n", str(n), sys.executable, *target, *[str(a) for a in args]]


def run(n, args, timeout=180, driver=None, **extra_env):
    """Run to the end (or the timeout, a failure) -> CompletedProcess with text stdout/stderr."""
    try:
        return subprocess.run(command(n, args, driver), env=env(**extra_env), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpiexec -n {n} did not finish within {timeout} s (a hang?): {e.stderr!r}")


def start(n, args, driver=None):
    """Start without waiting -> Popen (stderr piped as text)."""
    return subprocess.Popen(command(n, args, driver), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
