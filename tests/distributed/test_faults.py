"""A rank that raises or dies stops every rank within seconds (MPI abort, no hang), the last
checkpoint stays intact; SIGTERM to mpiexec saves once and exits."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from helpers import tiny_args, write_corpus
from lstm_engine.storage import checkpoint
from mpi_run import HERE, needs_mpi, run, start

pytestmark = needs_mpi
FLAGS = dict(dtype="float64", batch_size=4, steps=100000, eval_every=0, save_every=3, log_every=1)
STOP_WITHIN = 15.0          # seconds from the fault to mpiexec's exit


def saved_step(out):
    _, meta = checkpoint.load(os.path.join(out, "latest.safetensors"))     # checks the digest too
    return meta["trainer"]["step"]


def rows(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_failed_rank_stops_every_rank(tmp_path, kind):
    corpus = write_corpus(tmp_path)
    out, fault_at = str(tmp_path / "out"), str(tmp_path / "fault_at")
    r = run(2, ["1:8:" + kind, *tiny_args(corpus, out, **FLAGS)], timeout=120,
            driver=os.path.join(HERE, "fault_driver.py"), FAULT_AT=fault_at)
    ended = time.time()
    with open(fault_at) as f:
        assert ended - float(f.read()) < STOP_WITHIN
    assert r.returncode != 0
    assert saved_step(out) == 6                    # the save of step 6 is intact; none came after
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in r.stderr + r.stdout
    if kind == "raise":
        assert len(errors) == 1, r.stderr
        assert errors[0].startswith("error: rank 1 of 2 failed in step 8: RuntimeError: injected fault"), errors
        assert f"resume with: mpiexec -n 2 lstm-engine train --resume {out}" in errors[0]
    else:       # the launcher names the pid that died; rank 0's start line says whose it is
        pid = re.search(r"rank 1 pid (\d+) on ", r.stderr).group(1)
        assert re.search(rf"PID {pid} RUNNING AT .*\n.*EXIT CODE: 9", r.stdout + r.stderr), (r.stdout, r.stderr)


def test_a_setup_failure_on_one_rank_is_one_line_from_rank_0(tmp_path):
    corpus = write_corpus(tmp_path)
    out = str(tmp_path / "out")
    r = run(2, ["1:0:setup", *tiny_args(corpus, out, **FLAGS)], timeout=60,
            driver=os.path.join(HERE, "fault_driver.py"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == ["error: rank 1 of 2: the corpus is not readable on this machine"], r.stderr
    assert not os.path.exists(os.path.join(out, "latest.safetensors"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_mpiexec_saves_once(tmp_path, signum):
    """mpiexec forwards SIGTERM and SIGINT (Ctrl-C) to every rank; they stop after the same step."""
    corpus = write_corpus(tmp_path)
    out = str(tmp_path / "out")
    p = start(2, tiny_args(corpus, out, **dict(FLAGS, save_every=0)))
    try:
        log = os.path.join(out, "train_log.jsonl")
        deadline = time.time() + 120
        while rows(log) < 3:
            assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "slow"
            time.sleep(0.2)
        p.send_signal(signum)
        t0 = time.time()
        _, err = p.communicate(timeout=60)
        assert time.time() - t0 < STOP_WITHIN, err
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 128 + signum, err
    assert err.count("interrupted at step") == 1 and err.count("stopping after this step") <= 1, err
    assert f"resume with: mpiexec -n 2 lstm-engine train --resume {out}" in err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert 3 <= step < 100000 and saved_step(out) == step
