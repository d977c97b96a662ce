"""Hostile and mistaken input through the CLI: each gives exit status 2, one line on stderr saying what is
wrong and what to do, no traceback, and nothing written or overwritten."""
import os

import numpy as np
import pytest

from lstm_engine.storage import checkpoint

from helpers import assert_one_line_error, run_cli, snapshot, tiny_args, write_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run: (corpus path, run dir); checkpoints at steps 2 and 4."""
    d = tmp_path_factory.mktemp("base")
    corpus = write_corpus(d)
    out = d / "run"
    r = run_cli(tiny_args(corpus, out, steps=4, save_every=2, eval_every=2), env={"LSTM_ENGINE_STATE_DIR": str(d)})
    assert r.exit_code == 0, r.output
    return corpus, str(out)


def check_fresh_train_refused(tmp_path, corpus, extra, needle):
    out = tmp_path / "out"
    r = run_cli(tiny_args(corpus, out, steps=2) + extra)
    assert_one_line_error(r, needle)
    assert not out.exists()                       # nothing was created before the error


# -- corpus -------------------------------------------------------------------------------------------
def corpus_file(tmp_path, kind):
    p = tmp_path / f"corpus-{kind}.txt"
    if kind == "missing":
        return str(p)
    if kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "binary":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    elif kind == "latin1":
        p.write_bytes(("plain ascii line\n" * 3 + "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n").encode("latin-1"))
    elif kind == "utf16":
        p.write_bytes(("hello world\n" * 50).encode("utf-16"))
    elif kind == "short":
        p.write_text("abcab", encoding="utf-8")
    elif kind == "single":
        p.write_text("a" * 5000, encoding="utf-8")
    elif kind == "huge-vocab":
        p.write_text("".join(chr(0x10000 + i) for i in range(100_001)), encoding="utf-8")
    elif kind == "fifo":
        os.mkfifo(p)
    return str(p)


@pytest.mark.parametrize("kind, needle", [
    ("missing", "does not exist"), ("directory", "is a directory"), ("empty", "is empty"),
    ("binary", "looks binary"), ("latin1", "not valid utf-8 (byte 54, line 4); pass --encoding"),
    ("utf16", "--encoding utf-16"), ("short", "shorter than one batch window"),
    ("single", "single distinct character"), ("huge-vocab", "--max-vocab"), ("fifo", "not a regular file"),
])
def test_bad_corpus(tmp_path, kind, needle):
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    check_fresh_train_refused(tmp_path, corpus_file(tmp_path, kind), [], needle)


def test_the_suggested_fixes_work(tmp_path):
    """--encoding for the Latin-1 file and --max-vocab for the huge vocabulary make the same runs train."""
    out = tmp_path / "a"
    latin = corpus_file(tmp_path, "latin1")
    r = run_cli(tiny_args(latin, out, steps=1, batch_size=1, seq_len=4, encoding="latin-1"))
    assert r.exit_code == 0, r.output
    r = run_cli(tiny_args(corpus_file(tmp_path, "huge-vocab"), tmp_path / "b", steps=1, max_vocab=50))
    assert r.exit_code == 0, r.output
    assert checkpoint.read_meta(str(tmp_path / "b"))["model"]["vocab_size"] == 50


def test_unknown_encoding(tmp_path):
    check_fresh_train_refused(tmp_path, corpus_file(tmp_path, "latin1"), ["--encoding", "klingon"],
                              "unknown encoding")


# -- options ------------------------------------------------------------------------------------------
SIZES = ["--embed-size", "--hidden-size", "--layers", "--batch-size", "--seq-len", "--steps", "--keep"]


@pytest.mark.parametrize("extra, needle", [([opt, v], opt) for opt in SIZES for v in ("0", "-3")] + [
    (["--dropout", "-0.1"], "--dropout"), (["--dropout", "1.0"], "--dropout"), (["--dropout", "nan"], "--dropout"),
    (["--lr", "0"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--grad-clip", "-1"], "--grad-clip"), (["--grad-clip", "nan"], "--grad-clip"),
    (["--val-fraction", "1"], "--val-fraction"), (["--eval-every", "-1"], "--eval-every"),
    (["--backend", "nope"], "unknown backend"), (["--backend", "cupy"], "cupy"),
    (["--dtype", "float16"], "--dtype"), (["--hidden-size", "abc"], "--hidden-size"),
    (["--no-such-option", "1"], "no such option"),
])
def test_bad_train_options(tmp_path, run, extra, needle):
    if extra == ["--backend", "cupy"]:
        from lstm_engine.backends import available_backends
        if "cupy" in available_backends():
            pytest.skip("CuPy and a GPU are present here")
    check_fresh_train_refused(tmp_path, run[0], extra, needle)


@pytest.mark.parametrize("extra, needle", [
    (["--temperature", "0"], "--temperature"), (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"), (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"), (["--top-k", "-2"], "--top-k"), (["--length", "-1"], "--length"),
    (["--backend", "nope"], "unknown backend"), (["--prime", "a\u263aQ"], "not in the model's vocabulary"),
])
def test_bad_generate_options(run, extra, needle):
    r = run_cli(["generate", os.path.join(run[1], "latest.safetensors"), "--length", "5"] + extra)
    assert_one_line_error(r, needle)
    assert r.stdout == ""                            # not even the prime was echoed


def test_eval_text_outside_vocabulary(tmp_path, run):
    other = tmp_path / "other.txt"
    other.write_text("QQQ zzz\n" * 20, encoding="utf-8")
    assert_one_line_error(run_cli(["eval", os.path.join(run[1], "latest.safetensors"), "--corpus", str(other),
                                   "--backend", "numpy"]), "vocabulary")


# -- checkpoints ----------------------------------------------------------------------------------------
def bad_checkpoint(tmp_path, run, kind):
    good = open(os.path.join(run[1], "latest.safetensors"), "rb").read()
    p = tmp_path / f"{kind}.safetensors"
    if kind == "missing":
        return str(p)
    if kind == "truncated":
        p.write_bytes(good[:len(good) * 2 // 3])
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "npz":
        np.savez(p.with_suffix(".npz"), a=np.array([{"x": 1}], dtype=object))
        os.replace(p.with_suffix(".npz"), p)
    elif kind in ("newer", "shapes"):
        tensors, meta = checkpoint.parse(good)
        if kind == "newer":
            meta["version"] = checkpoint.VERSION + 1
            h = dict(tensors)
        else:
            h = dict(tensors, **{"param.Wy": tensors["param.Wy"][:, :3].copy()})
        import json
        from safetensors.numpy import save
        meta_json = json.dumps(meta)
        desc = {k: ("F32", v.shape, v.tobytes()) for k, v in h.items()}
        p.write_bytes(save(h, metadata={"lstm_engine": meta_json,
                                        "lstm_engine_sha256": checkpoint._digest(meta_json, desc)}))
    return str(p)


CKPT_CASES = [("missing", "does not exist"), ("truncated", "truncated"), ("random", "not a usable"),
              ("npz", "ZIP archive"), ("newer", "upgrade lstm-engine"), ("shapes", "param.Wy has shape")]


@pytest.mark.parametrize("kind, needle", CKPT_CASES)
def test_bad_checkpoint_for_generate_eval_and_resume(tmp_path, run, kind, needle):
    path = bad_checkpoint(tmp_path, run, kind)
    before = snapshot(run[1])
    assert_one_line_error(run_cli(["generate", path, "--length", "3"]), needle)
    assert_one_line_error(run_cli(["eval", path, "--corpus", run[0]]), needle)
    assert_one_line_error(run_cli(["train", "--resume", path, "--steps", "9"]), needle)
    assert snapshot(run[1]) == before


# -- resume with options that do not fit the checkpoint ------------------------------------------------
@pytest.mark.parametrize("extra", [["--hidden-size", "16"], ["--embed-size", "5"], ["--layers", "1"],
                                   ["--dtype", "float64"], ["--batch-size", "3"], ["--seq-len", "9"],
                                   ["--max-vocab", "3"], ["--val-fraction", "0.2"], ["--seed", "7"]])
def test_resume_with_conflicting_option(run, extra):
    before = snapshot(run[1])
    assert_one_line_error(run_cli(["train", "--resume", run[1], "--steps", "6"] + extra), "conflicts with")
    assert snapshot(run[1]) == before


def test_resume_on_another_text(tmp_path, run):
    other = write_corpus(tmp_path, n_units=500)
    before = snapshot(run[1])
    assert_one_line_error(run_cli(["train", "--resume", run[1], "--steps", "6", "--corpus", other]),
                          "not the text")
    assert snapshot(run[1]) == before


def test_resume_already_finished_and_into_another_run(tmp_path, run):
    before = snapshot(run[1])
    assert_one_line_error(run_cli(["train", "--resume", run[1]]), "larger --steps")
    other = tmp_path / "other"
    assert run_cli(tiny_args(run[0], other, steps=2)).exit_code == 0
    theirs = snapshot(other)
    assert_one_line_error(run_cli(["train", "--resume", run[1], "--steps", "6", "--out", other]),
                          "already holds a training run")
    assert_one_line_error(run_cli(tiny_args(run[0], other, steps=3)), "already holds a training run")
    assert snapshot(run[1]) == before and snapshot(other) == theirs


def test_resume_from_an_older_step_into_its_own_directory(run):
    before = snapshot(run[1])
    assert_one_line_error(run_cli(["train", "--resume", os.path.join(run[1], "step-000002.safetensors"),
                                   "--steps", "6"]), "past step 2")
    assert snapshot(run[1]) == before


def test_unwritable_output_directory(tmp_path, run):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    check_fresh_train_refused(tmp_path, run[0], ["--out", str(blocker / "run")], "cannot write")
    if os.geteuid() != 0:          # root ignores permissions: the file-as-parent case above covers it
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            check_fresh_train_refused(tmp_path, run[0], ["--out", str(ro / "run")], "cannot write")
        finally:
            ro.chmod(0o700)


def test_resume_an_imported_checkpoint_needs_a_corpus(tmp_path, run):
    sd, imported = str(tmp_path / "sd.safetensors"), str(tmp_path / "imp.safetensors")
    assert run_cli(["export", os.path.join(run[1], "latest.safetensors"), "-o", sd]).exit_code == 0
    assert run_cli(["import", sd, "-o", imported]).exit_code == 0
    assert_one_line_error(run_cli(["train", "--resume", imported, "--steps", "3"]), "pass --corpus")
    r = run_cli(["train", "--resume", imported, "--steps", "2", "--corpus", run[0], "--batch-size", "2",
                 "--out", tmp_path / "tuned"])
    assert r.exit_code == 0, r.output                   # any batch shape: the import fixed none


def test_resume_from_a_checkpoint_without_training_state(tmp_path, run):
    tensors, meta = checkpoint.load(run[1])
    p = tmp_path / "weights-only.safetensors"
    p.write_bytes(checkpoint.serialize({k: v for k, v in tensors.items() if k.startswith("param.")}, meta))
    assert run_cli(["generate", p, "--length", "3", "--seed", "1"]).exit_code == 0     # fine for sampling
    assert_one_line_error(run_cli(["train", "--resume", p, "--steps", "9"]), "adam.m.Emb is missing")
