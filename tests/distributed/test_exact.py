"""K ranks under mpiexec train the model one process trains: same losses, weights, moments and
carried state (float64, max |difference| <= 1e-10 after 20 steps), on numpy and numba, with and
without dropout; checkpoints hold every stream and resume on any number of ranks."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from helpers import run_cli, tiny_args, write_corpus
from lstm_engine.storage import checkpoint
from mpi_run import needs_mpi, run
from parity import Parity

pytestmark = needs_mpi
TOL = 1e-10
FLAGS = dict(dtype="float64", batch_size=6, steps=20, eval_every=10, save_every=7, log_every=1)


def losses(out):
    with open(os.path.join(out, "train_log.jsonl")) as f:
        return {row["step"]: row["train_loss"] for row in map(json.loads, f)}


def final(out):
    tensors, meta = checkpoint.load(os.path.join(out, "latest.safetensors"))
    return tensors, meta["trainer"]


def assert_same_run(out, ref, title, backend="numpy", steps=20):
    """Losses of every step and every tensor of the final checkpoint (weights, Adam moments, the
    carried state of all streams) agree: max |difference| <= TOL, and scale-relative within the
    parity table's float64 'steps' tolerance; data position and RNG state are the same."""
    a, b = losses(out), losses(ref)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    (ta, ma), (tb, mb) = final(out), final(ref)
    names = sorted(set(ta) & set(tb))
    with Parity(title, backend=backend, ref="one process") as p:
        p.equal("tensor names", sorted(ta), sorted(tb))
        p.check("losses", [a[s] for s in sorted(a)], [b[s] for s in sorted(b)], "float64", "steps")
        for name in names:
            p.check(name, ta[name], tb[name], "float64", "steps")
        p.equal("step, position", [ma["step"], ma["position"]], [mb["step"], mb["position"]])
        p.equal("rng state", json.dumps(ma["rng"]), json.dumps(mb["rng"]))
    worst = max([abs(a[s] - b[s]) for s in a] + [float(np.max(np.abs(ta[n] - tb[n]))) for n in names])
    assert worst <= TOL, f"max |difference| {worst:.3g} > {TOL}"


def one_process(corpus, out, **kw):
    r = run_cli(tiny_args(corpus, out, **dict(FLAGS, **kw)))
    assert r.exit_code == 0, r.output
    return str(out)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_ranks_reproduce_one_process(tmp_path, backend, dropout):
    corpus = write_corpus(tmp_path)
    ref = one_process(corpus, tmp_path / "one", backend=backend, dropout=dropout)
    for K in (2, 3):
        out = tmp_path / f"k{K}"
        r = run(K, tiny_args(corpus, out, **dict(FLAGS, backend=backend, dropout=dropout)))
        assert r.returncode == 0, r.stderr
        assert_same_run(str(out), ref, f"{K} ranks, dropout {dropout}", f"{backend} K={K}")
        steps = [line for line in r.stderr.splitlines() if line.startswith("step ") and "/20 " in line]
        assert len(steps) == 20 and f"K={K} all-reduce " in steps[-1], r.stderr     # rank 0 alone logs
        assert r.stderr.count("done at step 20") == 1


def test_resume_on_other_rank_counts(tmp_path):
    """A 2-rank checkpoint at step 10 continues on 2 ranks, on 3, and in one process to the run one
    process trains in 20 steps without stopping."""
    corpus = write_corpus(tmp_path)
    kw = dict(FLAGS, backend="numpy", dropout=0.25)
    ref = one_process(corpus, tmp_path / "one", **kw)
    half = tmp_path / "half"
    r = run(2, tiny_args(corpus, half, **dict(kw, steps=10)))
    assert r.returncode == 0, r.stderr
    for args in (["eval", half / "latest.safetensors"], ["generate", half, "--length", 20, "--seed", 1]):
        r1 = run_cli(args)                              # a checkpoint of K ranks is like any other
        assert r1.exit_code == 0, r1.output
    for K in (2, 3, 1):
        out = tmp_path / f"resume{K}"
        shutil.copytree(half, out)
        args = ["train", "--resume", out, "--steps", 20]
        if K == 1:
            r1 = run_cli(args)
            assert r1.exit_code == 0, r1.output
        else:
            r = run(K, args)
            assert r.returncode == 0, r.stderr
        assert_same_run(str(out), ref, f"2-rank checkpoint resumed on {K}", f"numpy K={K}")


def test_batch_not_divisible_is_one_line(tmp_path):
    corpus = write_corpus(tmp_path)
    r = run(3, tiny_args(corpus, tmp_path / "out", **dict(FLAGS, batch_size=4)), timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --batch-size 4 does not split over 3 ranks"), r.stderr
    assert "3 or 6" in lines[0]
    assert not os.path.exists(tmp_path / "out" / "latest.safetensors")


def test_one_process_never_imports_mpi(tmp_path):
    import subprocess
    import sys
    corpus = write_corpus(tmp_path)
    code = ("import sys; from lstm_engine.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\nprint('ok')")
    args = tiny_args(corpus, tmp_path / "out", **dict(FLAGS, steps=2))
    from mpi_run import env
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_mpi_flag_without_a_launcher_trains_as_one_rank(tmp_path):
    """--mpi joins MPI without mpiexec (a launcher that sets no size variable): one rank, the same run."""
    import subprocess
    import sys
    from mpi_run import env
    corpus = write_corpus(tmp_path)
    ref = one_process(corpus, tmp_path / "one", backend="numpy", dropout=0.25)
    args = tiny_args(corpus, tmp_path / "flag", **dict(FLAGS, backend="numpy", dropout=0.25)) + ["--mpi"]
    r = subprocess.run([sys.executable, "-m", "lstm_engine.cli", *map(str, args)], env=env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "MPI ranks: rank 0 pid " in r.stderr
    assert_same_run(str(tmp_path / "flag"), ref, "--mpi without a launcher", "numpy K=1")
