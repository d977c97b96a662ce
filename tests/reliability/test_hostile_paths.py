"""Output paths and non-regular files: no command writes onto its own input, an existing checkpoint or a
run's file; a planted lock link leads nowhere; a fresh run leaves files it did not write alone; a FIFO,
device or directory given as an input is refused before reading (without hanging)."""
import os

import pytest

import lstm_engine as le
from lstm_engine.storage import rundir

from helpers import assert_one_line_error, run_cli, snapshot, tiny_args, tiny_cfg
from hostile_helpers import deadline, files_of, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("paths"))


def latest(run):
    return os.path.join(run[1], "latest.safetensors")


# -- outputs onto inputs, checkpoints and run files -----------------------------------------------------
def test_export_never_writes_onto_its_input_or_a_run(tmp_path, run):
    before = snapshot(run[1])
    link = tmp_path / "link.safetensors"
    link.symlink_to(latest(run))
    for out, force, needle in ((latest(run), True, "input"), (link, True, "input"),
                               (os.path.join(run[1], "best.safetensors"), True, "training run"),
                               (os.path.join(run[1], "step-000002.safetensors"), True, "training run")):
        extra = ["--force"] if force else []
        assert_one_line_error(run_cli(["export", latest(run), "-o", out] + extra), needle)
    # a run directory as the argument: its latest is the input
    assert_one_line_error(run_cli(["export", run[1], "-o", latest(run), "--force"]), "input")
    assert snapshot(run[1]) == before


def test_an_existing_checkpoint_needs_force(tmp_path, run):
    other = tmp_path / "other.safetensors"
    other.write_bytes(open(os.path.join(run[1], "step-000002.safetensors"), "rb").read())
    kept = other.read_bytes()
    assert_one_line_error(run_cli(["export", latest(run), "-o", other]), "--force")
    assert other.read_bytes() == kept
    sd = tmp_path / "sd.safetensors"
    assert run_cli(["export", latest(run), "-o", sd]).exit_code == 0
    assert_one_line_error(run_cli(["import", sd, "-o", other]), "--force")
    assert other.read_bytes() == kept
    assert run_cli(["import", sd, "-o", other, "--force"]).exit_code == 0
    assert other.read_bytes() != kept
    assert_one_line_error(run_cli(["import", sd, "-o", sd, "--force"]), "input")
    assert_one_line_error(run_cli(["import", sd, "-o", tmp_path / "sd.vocab.json"]), "input")
    assert_one_line_error(run_cli(["import", sd, "-o", latest(run), "--force"]), "training run")


def test_teaching_outputs_never_overwrite_an_input(tmp_path, run):
    before = snapshot(run[1])
    text = tmp_path / "text.txt"
    text.write_text("ax.ay.ax.", encoding="utf-8")
    assert_one_line_error(run_cli(["explain", "--checkpoint", latest(run), "--text", "ax", "-o", latest(run)]),
                          "input")
    assert_one_line_error(run_cli(["inspect", latest(run), "--text", text, "--html", text]), "input")
    assert text.read_text(encoding="utf-8") == "ax.ay.ax."
    assert_one_line_error(run_cli(["inspect", run[1], "--prime", "ax.ay", "--html", latest(run)]), "input")
    assert_one_line_error(run_cli(["plot", run[1], "-o", os.path.join(run[1], "history.jsonl")]), "input")
    assert snapshot(run[1]) == before


def test_explore_html_never_overwrites_a_checkpoint_or_an_input(tmp_path, run):
    """explore --html goes through the same output check as the other writers, and writes atomically."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("latest.safetensors", "history.jsonl"):
        (copy / name).write_bytes(open(os.path.join(run[1], name), "rb").read())
    other = tmp_path / "other.safetensors"
    other.write_bytes(open(os.path.join(run[1], "step-000002.safetensors"), "rb").read())
    before, kept = snapshot(copy), other.read_bytes()
    ckpt = copy / "latest.safetensors"
    for out, needle in ((ckpt, "input"), (other, "existing lstm-engine checkpoint"),
                        (copy / "history.jsonl", "training run"), (tmp_path, "directory")):
        assert_one_line_error(run_cli(["explore", ckpt, "--html", out, "--text", "ax.ay"]), needle)
    assert_one_line_error(run_cli(["explore", copy, "--html", ckpt, "--text", "ax.ay"]), "input")
    assert snapshot(copy) == before and other.read_bytes() == kept
    page = tmp_path / "page.html"
    page.write_text("an older page", encoding="utf-8")
    assert_one_line_error(run_cli(["explore", ckpt, "--html", page, "--text", "a"]), "--text")
    assert page.read_text(encoding="utf-8") == "an older page"        # a refused run leaves it as it was
    assert run_cli(["explore", ckpt, "--html", page, "--text", "ax.ay"]).exit_code == 0
    assert "EXPLORER_BAKED" in page.read_text(encoding="utf-8")
    assert sorted(os.listdir(tmp_path)) == ["copy", "other.safetensors", "page.html"]    # no temporary file left


def test_bench_never_writes_onto_a_checkpoint(tmp_path, run):
    before = snapshot(run[1])
    for option in ("--json", "--plot"):
        r = run_cli(["bench", "--backends", "numpy", "--configs", "tiny", "--what", "forward", option, latest(run)])
        assert_one_line_error(r, "training run")
    assert snapshot(run[1]) == before


# -- the lock file and a fresh run in a used directory --------------------------------------------------
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_lock_file_leads_nowhere(tmp_path, run, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    if kind == "symlink":
        (out / ".lock").symlink_to(victim)
    else:
        os.link(victim, out / ".lock")
    assert_one_line_error(run_cli(tiny_args(run[0], out, steps=2)), "lock file")
    assert victim.read_text() == "precious\n"


def test_the_lock_file_is_not_truncated(tmp_path, run):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text("x" * 100)
    assert run_cli(tiny_args(run[0], out, steps=2)).exit_code == 0
    content = (out / ".lock").read_text()
    assert len(content) == 100 and content.split()[0].isdigit()     # our pid, written in place


def test_a_fresh_run_leaves_files_it_did_not_write(tmp_path, run):
    out = tmp_path / "out"
    out.mkdir()
    foreign = {"history.jsonl": b'{"step": 7, "val_loss": 1.5}\nmy notes\n', "train_log.jsonl": b"mine\n",
               ".tmp-editor-swap": b"unsaved work", ".tmp-latest.safetensors": b"not ours either", "notes.txt": b"n"}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    r = run_cli(tiny_args(run[0], out, steps=2, eval_every=1))
    assert r.exit_code == 0, r.output
    after = files_of(out)
    for name, data in foreign.items():
        assert after[name].startswith(data), name            # logs appended to, everything else untouched
    assert after["history.jsonl"] != foreign["history.jsonl"]    # the run's own rows follow


def test_default_run_names_never_collide(tmp_path, monkeypatch, run):
    """Two runs without --out started in the same second get two directories."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, *a: "run-20260101-000000")
    text = open(run[0], encoding="utf-8").read()
    outs = [le.prepare_training(tiny_cfg("", steps=1), text=text).out for _ in range(3)]
    assert len(set(map(os.path.realpath, outs))) == 3, outs
    assert all(os.path.isdir(o) for o in outs)
    assert os.path.basename(outs[0]) == "run-20260101-000000"


def test_two_fresh_runs_claim_distinct_directories():
    """The claim itself: mkdir either creates or fails, so two claims of one name never share."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "runs", "run-x")
        got = {rundir._claim(base) for _ in range(4)}
        assert got == {base, base + "-2", base + "-3", base + "-4"}


# -- non-regular files as inputs ------------------------------------------------------------------------
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


@needs_fifo
def test_a_fifo_as_checkpoint_is_refused_without_hanging(tmp_path, run):
    fifo = tmp_path / "ck.safetensors"
    os.mkfifo(fifo)
    cmds = [["generate", fifo, "--length", "2"], ["eval", fifo, "--corpus", run[0]],
            ["train", "--resume", fifo, "--steps", "9"], ["explain", "--checkpoint", fifo, "--text", "ax"],
            ["inspect", fifo, "--prime", "ax.", "--html", tmp_path / "p.html"],
            ["export", fifo, "-o", tmp_path / "sd.safetensors"]]
    for args in cmds:
        with deadline(20):
            r = run_cli(args)
        assert_one_line_error(r, "FIFO")
    assert not (tmp_path / "p.html").exists() and not (tmp_path / "sd.safetensors").exists()


@needs_fifo
def test_a_fifo_as_vocabulary_state_dict_or_history_is_refused(tmp_path, run):
    sd = tmp_path / "sd.safetensors"
    assert run_cli(["export", latest(run), "-o", sd]).exit_code == 0
    os.unlink(tmp_path / "sd.vocab.json")
    os.mkfifo(tmp_path / "sd.vocab.json")
    with deadline(20):
        assert_one_line_error(run_cli(["import", sd, "-o", tmp_path / "i.safetensors"]), "FIFO")
    os.mkfifo(tmp_path / "fifo.pt")
    with deadline(20):
        assert_one_line_error(run_cli(["import", tmp_path / "fifo.pt", "--vocab", tmp_path / "x.json",
                                       "-o", tmp_path / "j.safetensors"]), "FIFO")
    plotted = tmp_path / "plotted"
    plotted.mkdir()
    os.mkfifo(plotted / "history.jsonl")
    with deadline(20):
        assert_one_line_error(run_cli(["plot", plotted, "-o", tmp_path / "l.png"]), "FIFO")
    resumed = tmp_path / "resumed"
    r = run_cli(tiny_args(run[0], resumed, steps=2, save_every=2))
    assert r.exit_code == 0, r.output
    os.unlink(resumed / "train_log.jsonl")
    os.mkfifo(resumed / "train_log.jsonl")
    with deadline(20):
        assert_one_line_error(run_cli(["train", "--resume", resumed, "--steps", "4"]), "FIFO")


def test_devices_and_directories_are_refused(tmp_path, run):
    if os.path.exists("/dev/zero"):
        with deadline(20):
            assert_one_line_error(run_cli(["train", "--corpus", "/dev/zero", "--backend", "numpy",
                                           "--out", tmp_path / "o"]), "device")
            assert_one_line_error(run_cli(["generate", "/dev/zero"]), "device")
    (tmp_path / "v.json").mkdir()
    sd = tmp_path / "sd.safetensors"
    assert run_cli(["export", latest(run), "-o", sd]).exit_code == 0
    assert_one_line_error(run_cli(["import", sd, "--vocab", tmp_path / "v.json", "-o", tmp_path / "i.safetensors"]),
                          "directory")


# -- file names that are not UTF-8 ----------------------------------------------------------------------
def test_file_names_that_are_not_utf8_work_in_every_command(tmp_path):
    """A byte that is not UTF-8 in the corpus and run names (Python's surrogate escape) travels through
    training, the checkpoint's metadata, the last-run record, pages and plots."""
    weird = os.fsdecode(b"\xff")
    try:
        (tmp_path / f"c{weird}.txt").write_text("probe")
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system takes no such names")
    corpus = tiny_run(tmp_path)[0]
    named = str(tmp_path / f"c{weird}.txt")
    os.replace(corpus, named)
    out = str(tmp_path / f"run{weird}")
    r = run_cli(tiny_args(named, out, steps=2, eval_every=1))
    assert r.exit_code == 0, r.output
    for args in (["generate", "--length", "5", "--backend", "numpy"], ["eval", out, "--backend", "numpy"],
                 ["eval", out, "--corpus", named, "--json"], ["corpus", "info", named],
                 ["corpus", "info", named, "--json"],
                 ["train", "--resume", out, "--steps", "3"], ["plot", out, "-o", str(tmp_path / f"l{weird}.png")],
                 ["inspect", out, "--text", named, "--html", str(tmp_path / f"p{weird}.html")],
                 ["explain", "--checkpoint", out, "--text", "ax", "-o", str(tmp_path / f"x{weird}.txt")],
                 ["export", out, "-o", str(tmp_path / f"e{weird}.safetensors")]):
        r = run_cli(args)
        assert r.exit_code == 0, (args, r.output)
