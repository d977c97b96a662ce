"""Real processes, real signals: SIGKILL at random moments and at chosen points inside a save, SIGINT and
SIGTERM.  After every kill each remaining checkpoint must load, and resuming must end in exactly the
weights of a run that was never interrupted (numpy backend, bit for bit)."""
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from lstm_engine.storage import checkpoint

from helpers import REPO, markov_text, run_cli, tiny_args

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
RUN = dict(steps=40, save_every=2, eval_every=5, dropout=0.1, keep=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(corpus path, {file: tensors} of latest and best of an uninterrupted in-process run, its duration in s)."""
    d = tmp_path_factory.mktemp("kill")
    corpus = d / "corpus.txt"
    corpus.write_text(markov_text(300), encoding="utf-8")
    args = tiny_args(str(corpus), d / "ref", **RUN)
    t0 = time.perf_counter()
    r = run_cli(args, env={"LSTM_ENGINE_STATE_DIR": str(d)})
    assert r.exit_code == 0, r.output
    duration = time.perf_counter() - t0
    files = ("latest.safetensors", "best.safetensors")
    return str(corpus), {n: checkpoint.load(str(d / "ref" / n))[0] for n in files}, duration


def start(args, log, hook=None):
    """Start the CLI as a real process (optionally with an os.<name> hook that SIGKILLs at its n-th call)."""
    code = ("import os, signal, sys\n"
            "name, n = sys.argv[1], int(sys.argv[2]); real = getattr(os, name); calls = [0]\n"
            "def hooked(*a, **k):\n"
            "    calls[0] += 1\n"
            "    if calls[0] == n: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(*a, **k)\n"
            "setattr(os, name, hooked)\n"
            "from lstm_engine.cli import main\n"
            "main(sys.argv[3:], prog_name='lstm-engine')\n")
    pre = ["-c", code, hook[0], str(hook[1])] if hook else ["-m", "lstm_engine.cli"]
    return subprocess.Popen([sys.executable] + pre + [str(a) for a in args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for(log, pattern, proc, timeout=60):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if re.search(pattern, open(log).read()) or proc.poll() is not None:
            return
        time.sleep(0.01)
    raise AssertionError(f"{pattern!r} never appeared in {log}")


def check_dir(out, last_step):
    """Every checkpoint in `out` loads; latest never goes back.  -> (latest step, temp files seen)."""
    names = os.listdir(out) if os.path.isdir(out) else []
    for n in names:
        if n.endswith(".safetensors"):
            tensors, meta = checkpoint.load(os.path.join(out, n))       # raises on any damage
            checkpoint.validate_resumable(tensors, meta)
    step = checkpoint.read_meta(out)["trainer"]["step"] if "latest.safetensors" in names else 0
    assert step >= last_step
    return step, sum(n.startswith(".tmp-") for n in names)


def segment_args(corpus, out):
    if os.path.exists(os.path.join(out, "latest.safetensors")):
        return ["train", "--resume", out]                  # every option comes from the checkpoint
    return tiny_args(corpus, out, **RUN)


def finish_and_compare(corpus, out, reference):
    n_steps = [RUN["keep"], RUN["keep"] + 1]      # a kill after the last save but before its pruning leaves one more
    if checkpoint.read_meta(out)["trainer"]["step"] < RUN["steps"]:
        r = run_cli(segment_args(corpus, out))
        assert r.exit_code == 0, r.output
        assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
        n_steps = [RUN["keep"]]
    assert len([n for n in os.listdir(out) if n.startswith("step-")]) in n_steps
    for file, ref in reference.items():           # latest and best, bit for bit
        final, meta = checkpoint.load(os.path.join(out, file))
        for name in ref:
            assert final[name].tobytes() == ref[name].tobytes(), (file, name)
    assert checkpoint.read_meta(out)["trainer"]["step"] == RUN["steps"]


def test_sigkill_at_random_moments(tmp_path, setup):
    corpus, reference, duration = setup
    out, log = str(tmp_path / "run"), str(tmp_path / "log")
    rng = random.Random(1234)
    step, kills, tmp_seen = 0, 0, 0
    while kills < 10 and step < RUN["steps"]:
        proc = start(segment_args(corpus, out), log)
        wait_for(log, r"step +\d+/", proc)                   # training has begun
        time.sleep(rng.uniform(0.0, duration / 6))          # ~10 kills per run; saves are a good part of it
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(30)
        if rc == 0:
            break                                            # it finished first
        assert rc == -signal.SIGKILL, open(log).read()
        kills += 1
        step, tmp = check_dir(out, step)
        tmp_seen += tmp
    print(f"{kills} kills, last at step {step}, {tmp_seen} temp files of interrupted saves found")
    finish_and_compare(corpus, out, reference)


# (os function, call number): the process SIGKILLs itself just before that call.  fsync: a temp file is
# written but not yet renamed, or (even calls) a rename is done but the directory not yet fsynced; replace:
# just before a rename; link: latest is replaced but its step file not yet made; unlink: removing a stray
# temp file or pruning old step files.
KILL_POINTS = [("fsync", 1), ("replace", 3), ("link", 2), ("fsync", 8), ("unlink", 1), ("replace", 6), ("link", 4)]


def test_sigkill_inside_saves(tmp_path, setup):
    corpus, reference, _ = setup
    out, log = str(tmp_path / "run"), str(tmp_path / "log")
    step = 0
    for hook in KILL_POINTS:
        proc = start(segment_args(corpus, out), log, hook=hook)
        assert proc.wait(60) == -signal.SIGKILL, (hook, open(log).read())
        step, _ = check_dir(out, step)
    finish_and_compare(corpus, out, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_finish_the_step_save_and_explain(tmp_path, setup, sig):
    corpus, _, _ = setup
    out, log = str(tmp_path / "run"), str(tmp_path / "log")
    proc = start(tiny_args(corpus, out, steps=100000, save_every=0, log_every=1), log)
    wait_for(log, r"step +3/", proc)
    proc.send_signal(sig)
    assert proc.wait(60) == 128 + sig
    err = open(log).read()
    assert "Traceback" not in err and "stopping after this step and saving" in err
    m = re.search(r"interrupted at step (\d+); checkpoint saved to (\S+)\nresume with: (.*)\n", err)
    assert m, err
    stopped = int(m.group(1))
    assert checkpoint.read_meta(m.group(2))["trainer"]["step"] == stopped
    resume = shlex.split(m.group(3))
    assert resume[:4] == ["lstm-engine", "train", "--resume", out]
    r = run_cli(resume[1:] + ["--steps", str(stopped + 2)])      # the printed command works
    assert r.exit_code == 0, r.output
    assert checkpoint.read_meta(out)["trainer"]["step"] == stopped + 2
