"""The click CLI end to end (in-process with CliRunner): train -> eval -> generate."""
import json
import os

import pytest
from click.testing import CliRunner

from lstm_engine.cli import main

TEXT = ("In the beginning was the word, and the word was with the code.\n" * 40
        + "\u5e8a\u524d\u660e\u6708\u5149\uff0c\u7591\u662f\u5730\u4e0a\u971c\u3002\n" * 20)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return str(p)


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def train_args(corpus, out, steps=6):
    return ["train", "--corpus", corpus, "--backend", "numpy", "--embed-size", "8", "--hidden-size", "12",
            "--batch-size", "4", "--seq-len", "16", "--steps", str(steps), "--eval-every", "3",
            "--sample-every", "3", "--save-every", "3", "--log-every", "2", "--out", out]


def test_train_eval_generate(corpus, tmp_path):
    out = str(tmp_path / "run")
    r = run(train_args(corpus, out))
    assert r.exit_code == 0, r.output
    assert "unigram entropy" in r.stderr and "val loss" in r.stderr and "chars/s" in r.stderr
    assert (tmp_path / "run" / "latest.safetensors").exists() and (tmp_path / "run" / "best.safetensors").exists()

    r = run(["eval", out + "/latest.safetensors", "--corpus", corpus, "--json", "--backend", "numpy"])
    assert r.exit_code == 0
    row = json.loads(r.stdout)
    assert row["chars"] == len(TEXT) - 1 and row["loss_nats"] > 0
    assert abs(row["bits_per_char"] * 0.6931471805599453 - row["loss_nats"]) < 1e-9

    # no checkpoint argument: the latest checkpoint of the last run; stdout holds only the text
    r = run(["generate", "--prime", "\u5e8a\u524d", "--length", "30", "--seed", "3", "--backend", "numpy"])
    assert r.exit_code == 0
    assert r.stdout.startswith("\u5e8a\u524d") and len(r.stdout.rstrip("\n")) >= 32 - 1
    assert "latest.safetensors" in r.stderr and "latest.safetensors" not in r.stdout
    r2 = run(["generate", "--prime", "\u5e8a\u524d", "--length", "30", "--seed", "3", "--backend", "numpy",
              "--no-echo"])
    assert r.stdout == "\u5e8a\u524d" + r2.stdout


def test_generate_without_any_run_is_a_one_line_error():
    r = run(["generate"])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "train first" in r.stderr


def test_prime_outside_vocab_and_bad_options(corpus, tmp_path):
    out = str(tmp_path / "run")
    assert run(train_args(corpus, out, steps=2)).exit_code == 0
    ckpt = out + "/latest.safetensors"
    for args, needle in ((["--prime", "QQ"], "vocabulary"), (["--temperature", "0"], "temperature"),
                         (["--top-k", "0"], "top-k"), (["--top-p", "1.5"], "top-p"),
                         (["--backend", "nope"], "unknown backend")):
        r = run(["generate", ckpt, "--length", "5"] + args)
        assert r.exit_code == 2, args
        assert needle in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.output


def test_bad_train_options_are_one_line_errors(corpus, tmp_path):
    for args, needle in ((["--hidden-size", "0"], "hidden-size"), (["--dropout", "1.0"], "dropout"),
                         (["--corpus", str(tmp_path / "missing.txt")], "does not exist")):
        r = run(train_args(corpus, str(tmp_path / "r"), steps=1) + args)
        assert r.exit_code == 2, args
        assert needle in r.stderr and r.stderr.count("\n") == 1


def test_train_cell_gru_then_every_command_follows_the_checkpoint(corpus, tmp_path):
    out = str(tmp_path / "run")
    r = run(train_args(corpus, out) + ["--cell", "gru"])
    assert r.exit_code == 0, r.output
    assert "model gru E8" in r.stderr
    ckpt = out + "/latest.safetensors"
    r = run(["eval", ckpt, "--corpus", corpus, "--json", "--backend", "numpy"])
    assert r.exit_code == 0 and json.loads(r.stdout)["loss_nats"] > 0
    gen = ["generate", ckpt, "--prime", "In the", "--length", "30", "--seed", "3", "--backend", "numpy"]
    r = run(gen)
    assert r.exit_code == 0 and r.stdout.startswith("In the") and len(r.stdout.rstrip("\n")) >= 35
    r = run(["train", "--resume", out, "--steps", "8", "--sample-every", "0"])     # the cell comes with it
    assert r.exit_code == 0, r.output
    from lstm_engine.storage import checkpoint
    meta = checkpoint.load(ckpt)[1]
    assert meta["model"]["cell"] == meta["train"]["cell"] == "gru" and meta["trainer"]["step"] == 8
    for args, needle in ((["--cell", "lstm"], "--cell lstm conflicts"), (["--cell", "rnn"], "--cell")):
        r = run(["train", "--resume", out, "--steps", "10"] + args)
        assert r.exit_code == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.output


@pytest.mark.parametrize("command, args, api_fn, names", [
    ("train", ["--steps", "1"], "train_config", "--hidden-size, --batch-size, --seq-len"),
    ("tune", ["--configs", "tiny"], "tune", "--configs"),
    ("eval", ["missing.safetensors"], "evaluate_checkpoint", "--corpus"),
])
def test_out_of_memory_is_one_line_naming_the_commands_options(monkeypatch, command, args, api_fn, names):
    """A MemoryError anywhere in a command ends it with one line that names what to make smaller in that
    command's own options (tune and eval take no --hidden-size), and exit status 2."""
    import lstm_engine.api as api

    def out_of_memory(*a, **kw):
        raise MemoryError

    monkeypatch.setattr(api, api_fn, out_of_memory)
    r = run([command, *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: out of memory; ")
    assert names in r.stderr
    if command != "train":
        assert "--hidden-size" not in r.stderr


def test_generate_follows_the_last_run_that_saved_a_checkpoint(corpus, tmp_path):
    """A run that has started but saved nothing yet (another terminal's, or one that failed before its
    first save) does not hide the last run's checkpoint from `generate`; once it saves, it is the last run."""
    import lstm_engine.api as api
    first = str(tmp_path / "first")
    assert run(train_args(corpus, first, steps=2)).exit_code == 0
    cfg = api.train_config({"corpus": corpus, "backend": "numpy", "embed_size": 8, "hidden_size": 12,
                            "batch_size": 4, "seq_len": 16, "steps": 2, "eval_every": 0, "sample_every": 0,
                            "save_every": 0, "out": str(tmp_path / "second")})
    second = api.prepare_training(cfg)                       # started, nothing saved yet
    assert api.last_checkpoint() == os.path.join(first, "latest.safetensors")
    gen = ["generate", "--prime", "In", "--length", "5", "--seed", "3", "--backend", "numpy"]
    r = run(gen)
    assert r.exit_code == 0 and os.path.join(first, "latest.safetensors") in r.stderr
    second.run()
    assert api.last_checkpoint() == os.path.join(second.out, "latest.safetensors")
    r = run(gen)
    assert r.exit_code == 0 and os.path.join(second.out, "latest.safetensors") in r.stderr


def test_ctrl_c_inside_llvmlites_ctypes_callback_is_not_lost(capfd):
    """While numba compiles, LLVM calls back into llvmlite's Python code through ctypes, which prints
    and drops an exception raised there: Python's own handler's KeyboardInterrupt would be lost
    (a traceback, and the command goes on).  The CLI's comes back once the callback returned."""
    import ctypes
    import os
    import signal
    import time

    from lstm_engine import cli
    space = {"__name__": "llvmlite.binding.executionengine", "os": os, "signal": signal}
    exec("def notify():\n    os.kill(os.getpid(), signal.SIGINT)\n    for _ in range(100000):\n        pass\n", space)
    callback = ctypes.CFUNCTYPE(None)(space["notify"])
    with cli._interrupts(), pytest.raises(KeyboardInterrupt):
        callback()                     # C calls Python, as LLVM calls llvmlite's object cache
        time.sleep(5)                  # the signal again, outside the callback
    assert "Exception ignored" not in capfd.readouterr().err
