"""Chinese end to end: a corpus fetched by name over HTTP, trained, evaluated, and sampled from a Chinese prime."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from corpus_helpers import FixtureServer, entry, poems_json, registry, source
from lstm_engine.corpora import registry as corpora
from lstm_engine.storage.checkpoint import load
from lstm_engine.cli import main

POEMS = ["白日依山盡，黃河入海流。欲窮千里目，更上一層樓。",
         "朝辭白帝彩雲間，千里江陵一日還。兩岸猿聲啼不住，輕舟已過萬重山。",
         "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
         "春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。"] * 6
TINY = ["--hidden-size", "16", "--layers", "1", "--batch-size", "2", "--seq-len", "8", "--log-every", "0",
        "--eval-every", "0", "--sample-every", "0", "--save-every", "0", "--backend", "numpy"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    server = FixtureServer()
    data = poems_json(POEMS)
    server.files["/全唐诗/poet.tang.0.json"] = data
    conv = {"kind": "chinese-poetry-json", "select": "all", "rule": "every poem"}
    reg = tmp_path / "registry.json"
    mini = entry("mini-tang", server.url, [source("全唐诗/poet.tang.0.json", data)], conv)
    reg.write_text(json.dumps(registry(mini), ensure_ascii=False), encoding="utf-8")
    monkeypatch.setenv("LSTM_ENGINE_REGISTRY", str(reg))
    monkeypatch.setenv("LSTM_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LSTM_ENGINE_BASE_URL", raising=False)
    yield server
    server.close()


def test_train_eval_generate_on_a_fetched_chinese_corpus(env, tmp_path):
    out = str(tmp_path / "run")
    r = CliRunner().invoke(main, ["train", "--corpus", "mini-tang", "--steps", "3", "--embed-size", "8",
                                  "--out", out, *TINY])
    assert r.exit_code == 0, r.output
    assert env.hits == ["/全唐诗/poet.tang.0.json"]
    ckpt = os.path.join(out, "latest.safetensors")
    _, meta = load(ckpt)
    assert set(meta["vocab"]) == set("".join(POEMS) + "\n")

    r = CliRunner().invoke(main, ["eval", ckpt, "--backend", "numpy", "--json"])   # val split, from the cache
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["corpus"] == "mini-tang (val split)" and env.hits == ["/全唐诗/poet.tang.0.json"]

    prime = "床前明月光，"
    r = CliRunner().invoke(main, ["generate", ckpt, "--prime", prime, "--length", "30", "--seed", "3",
                                  "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    text = r.output_bytes.decode("utf-8")                  # whole UTF-8 characters, nothing split
    assert text.startswith(prime) and text.endswith("\n")
    generated = text[len(prime):-1]
    assert len(generated) == 30 and set(generated) <= set(meta["vocab"])


def test_a_prime_outside_the_vocabulary_fails_before_printing(env, tmp_path):
    out = str(tmp_path / "run")
    assert CliRunner().invoke(main, ["train", "--corpus", "mini-tang", "--steps", "1", "--embed-size", "8",
                                     "--out", out, *TINY]).exit_code == 0
    r = CliRunner().invoke(main, ["generate", os.path.join(out, "latest.safetensors"), "--prime", "龘", "--backend",
                                  "numpy"])
    assert r.exit_code == 2 and r.output.startswith("error: 1 character(s) are not in the model's vocabulary")


def test_train_defaults_follow_corpus_info_for_thousands_of_symbols(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path / "state"))
    # 400 ideographs + newline: 330 common and the newline kept, 70 rare folded -> --max-vocab 332 (with <unk>)
    common = [chr(0x4E00 + k) for k in range(330)]
    rare = [chr(0x5000 + k) for k in range(70)]
    text = ("".join(common) + "\n") * 6 + "".join(rare) + "\n"
    path = tmp_path / "many.txt"
    path.write_text(text, encoding="utf-8")
    s = corpora.text_stats(text)
    assert s["max_vocab"] == 332
    out = str(tmp_path / "run")
    r = CliRunner().invoke(main, ["train", "--corpus", str(path), "--steps", "1", "--out", out, *TINY])
    assert r.exit_code == 0, r.output
    assert s["embed_size"] == 64 and "using --max-vocab 332 (" in r.output      # only what differs is named
    _, meta = load(os.path.join(out, "latest.safetensors"))
    assert meta["model"]["embed_size"] == s["embed_size"] and len(meta["vocab"]) == 332 and meta["vocab"][-1] == "<unk>"
    # resuming takes the checkpoint's sizes, whatever the corpus would suggest
    r = CliRunner().invoke(main, ["train", "--corpus", str(path), "--steps", "2", "--out", out,
                                  "--resume", os.path.join(out, "latest.safetensors"), *TINY])
    assert r.exit_code == 0, r.output
    # a small alphabet keeps the engine defaults
    assert corpora.suggest_train_options("abc\n" * 10) == {"embed_size": 64, "max_vocab": 0}
