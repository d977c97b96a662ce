"""The CLI decides nothing the API does not: `lstm-engine train` and le.train() resolve the same options on
the same corpus, the click defaults are the config dataclasses' defaults, and `eval` prints the API's number."""
import json
import os
from dataclasses import fields

import pytest
from helpers import run_cli

import lstm_engine as le
from lstm_engine.cli import main
from lstm_engine.core.model import ModelConfig
from lstm_engine.core.optim import AdamConfig
from lstm_engine.storage import checkpoint

# tiny, quick runs; embed_size and max_vocab are left to the corpus unless a case sets them
TINY = dict(backend="numpy", hidden_size=8, layers=1, batch_size=2, seq_len=8, steps=2, eval_every=2,
            sample_every=0, save_every=0, log_every=0)


def many_symbols(tmp_path):
    """1,700 ideographs and the newline seen 5 times, 100 seen once: --max-vocab 1702, --embed-size 96."""
    common = "".join(chr(0x4E00 + k) for k in range(1700))
    rare = "".join(chr(0x6000 + k) for k in range(100))
    p = tmp_path / "many.txt"
    p.write_text((common + "\n") * 5 + rare + "\n", encoding="utf-8")
    return str(p)


def few_symbols(tmp_path):
    p = tmp_path / "few.txt"
    p.write_text("the quick brown fox jumps over the lazy dog.\n" * 40, encoding="utf-8")
    return str(p)


def cli_args(opts):
    args = ["train"]
    for k, v in opts.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


def saved(out):
    _, meta = checkpoint.load(os.path.join(out, "latest.safetensors"))
    return meta


@pytest.mark.parametrize("corpus, chosen, suggested", [
    (few_symbols, {}, {}),
    (many_symbols, {}, {"embed_size": 96, "max_vocab": 1702}),
    (many_symbols, {"embed_size": 32}, {"max_vocab": 1702}),       # an option the user sets wins
])
def test_api_and_cli_train_with_the_same_options(tmp_path, corpus, chosen, suggested):
    opts = dict(TINY, corpus=corpus(tmp_path), **chosen)
    events = []
    le.train(le.TrainConfig(**opts, out=str(tmp_path / "api")), on_event=lambda k, i: events.append((k, i)))
    r = run_cli(cli_args(dict(opts, out=tmp_path / "cli")))
    assert r.exit_code == 0, r.output
    api_meta, cli_meta = saved(str(tmp_path / "api")), saved(str(tmp_path / "cli"))
    api_train = {k: v for k, v in api_meta["train"].items() if k != "out"}
    cli_train = {k: v for k, v in cli_meta["train"].items() if k != "out"}
    assert api_train == cli_train
    assert api_meta["model"] == cli_meta["model"] and api_meta["vocab"] == cli_meta["vocab"]
    expected = dict(le.TrainConfig(**opts).__dict__, **suggested)
    for name in ("embed_size", "max_vocab"):
        assert api_train[name] == expected[name], name
    # both report the suggestions that differ from the defaults, and only those
    assert [i["options"] for k, i in events if k == "suggested"] == ([suggested] if suggested else [])
    named = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in suggested.items())
    assert (f"using {named} (" in r.stderr) if suggested else ("many symbols" not in r.stderr)


def test_an_explicit_default_value_is_kept_by_both(tmp_path):
    """--embed-size 64 on the command line is a choice; the API says so with explicit=."""
    opts = dict(TINY, corpus=many_symbols(tmp_path), embed_size=64)
    trainer = le.train(le.TrainConfig(**opts, out=str(tmp_path / "api")), explicit={"embed_size"})
    assert run_cli(cli_args(dict(opts, out=tmp_path / "cli"))).exit_code == 0
    assert trainer.cfg.embed_size == 64 == saved(str(tmp_path / "cli"))["train"]["embed_size"]
    assert trainer.cfg.max_vocab == 1702 == saved(str(tmp_path / "cli"))["train"]["max_vocab"]


def test_train_option_defaults_are_the_dataclass_defaults():
    train = main.commands["train"]
    options = {p.name: p for p in train.params if p.name not in ("resume", "mpi")}     # how to start, not what to train
    cfg_fields = {f.name: f.default for f in fields(le.TrainConfig)}
    assert set(options) == set(cfg_fields) - {"recipe"}        # every option is a field and vice versa
    for name, p in options.items():
        assert p.default == cfg_fields[name] and type(p.default) is type(cfg_fields[name]), name
    model, adam = ModelConfig(vocab_size=0), AdamConfig()
    for name in ("embed_size", "hidden_size", "layers", "dropout", "dtype"):
        assert cfg_fields[name] == getattr(model, name), name
    for name in ("lr", "grad_clip"):
        assert cfg_fields[name] == getattr(adam, name), name
    help_text = " ".join(run_cli(["train", "--help"]).output.split())
    for flag, shown in (("--hidden-size", 128), ("--lr", 0.002), ("--steps", 1000), ("--dtype", "float32")):
        assert f"[default: {shown}]" in help_text and flag in help_text


def test_eval_prints_the_api_number_on_the_checkpoint_val_split(tmp_path):
    """The val split of a corpus with <unk>: eval (CLI and API) scores the ids training evaluated."""
    out = str(tmp_path / "run")
    opts = dict(TINY, corpus=many_symbols(tmp_path), out=out)
    assert run_cli(cli_args(opts)).exit_code == 0
    meta = saved(out)
    assert meta["vocab"][-1] == "<unk>" and meta["trainer"]["history"][-1]["step"] == meta["trainer"]["step"]
    ckpt = os.path.join(out, "latest.safetensors")
    got = le.evaluate_checkpoint(ckpt, backend="numpy")
    assert got["loss_nats"] == meta["trainer"]["history"][-1]["val_loss"]     # what training measured
    assert got["corpus"] == f"{opts['corpus']} (val split)"
    r = run_cli(["eval", ckpt, "--backend", "numpy", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == dict(got, checkpoint=ckpt)
    r = run_cli(["eval", ckpt, "--backend", "numpy"])
    assert r.stdout == (f"{got['corpus']}: {got['loss_nats']:.4f} nats/char, {got['bits_per_char']:.4f} "
                        f"bits/char over {got['chars']:,} chars\n")
