"""Numbers, environment variables and resources: negative seeds, integers too large for the kernels,
inf and NaN in every float option, misspelt LSTM_ENGINE_* variables, sizes beyond memory, lengths
that must stream, a quadratic pass over user data, and .pt files under a torch too old to load safely."""
import json
import os
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from lstm_engine.core import resources
from lstm_engine.core.data import Vocab
from lstm_engine.core.generation import generate_text

from helpers import assert_one_line_error, run_cli, tiny_args
from hostile_helpers import deadline, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("numbers"))


def latest(run):
    return os.path.join(run[1], "latest.safetensors")


def refused_fresh(tmp_path, run, extra, needle):
    out = tmp_path / "out"
    with deadline(60):                       # an accepted --steps 2**70 would train for ever
        r = run_cli(tiny_args(run[0], out, steps=2) + extra)
    assert_one_line_error(r, needle)
    assert not out.exists()


# -- numbers ----------------------------------------------------------------------------------------
BIG = str(2 ** 70)
TRAIN_NUMBERS = [(["--seed", "-1"], "--seed"), (["--seed", BIG], "--seed"), (["--steps", BIG], "--steps"),
                 (["--hidden-size", BIG], "--hidden-size"), (["--batch-size", str(2 ** 40)], "--batch-size"),
                 (["--keep", BIG], "--keep"), (["--max-vocab", BIG], "--max-vocab"),
                 (["--log-every", BIG], "--log-every")] + [
    ([opt, v], opt) for opt in ("--dropout", "--lr", "--grad-clip", "--val-fraction")
    for v in ("nan", "inf", "-inf")] + [(["--time-budget", v], "--time-budget") for v in ("inf", "nan", "-inf")]


@pytest.mark.parametrize("extra, needle", TRAIN_NUMBERS, ids=[" ".join(e) for e, _ in TRAIN_NUMBERS])
def test_bad_numbers_for_train(tmp_path, run, extra, needle):
    refused_fresh(tmp_path, run, extra, needle)


GENERATE_NUMBERS = [(["--seed", "-1"], "--seed"), (["--seed", BIG], "--seed"), (["--top-k", BIG], "--top-k"),
                    (["--length", BIG], "--length"), (["--temperature", "inf"], "--temperature"),
                    (["--temperature", "nan"], "--temperature"), (["--top-p", "nan"], "--top-p"),
                    (["--top-p", "inf"], "--top-p")]


@pytest.mark.parametrize("extra, needle", GENERATE_NUMBERS, ids=[" ".join(e) for e, _ in GENERATE_NUMBERS])
def test_bad_numbers_for_generate(run, extra, needle):
    with deadline(60):                       # an accepted --length 2**70 would stream for ever
        r = run_cli(["generate", latest(run), "--length", "3", "--prime", "a", "--backend", "numpy"] + extra)
    assert_one_line_error(r, needle)
    assert r.stdout == ""                              # refused before the prime was echoed


@pytest.mark.parametrize("extra, needle", [(["--seconds", "inf"], "--seconds"), (["--seconds", "nan"], "--seconds"),
                                           (["--repeats", BIG], "--repeats"), (["--threads", BIG], "--threads")])
def test_bad_numbers_for_bench(extra, needle):
    with deadline(60):
        r = run_cli(["bench", "--backends", "numpy", "--configs", "tiny", "--what", "forward"] + extra)
    assert_one_line_error(r, needle)


def test_bad_numbers_for_explain(tmp_path):
    assert_one_line_error(run_cli(["explain", "--seed", "-1"]), "--seed")
    assert_one_line_error(run_cli(["explain", "--hidden-size", str(10 ** 7)]), "memory")


# -- environment variables ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, value, needle", [
    ("LSTM_ENGINE_CUPY_STEP", "fusde", "LSTM_ENGINE_CUPY_STEP"),
    ("LSTM_ENGINE_CUPY_BLAS", "fast", "LSTM_ENGINE_CUPY_BLAS"),
    ("LSTM_ENGINE_CUPY_GRAPHS", "yes", "LSTM_ENGINE_CUPY_GRAPHS"),
    ("LSTM_ENGINE_BASE_URL", "ftp://mirror", "LSTM_ENGINE_BASE_URL"),
    ("LSTM_ENGINE_CUPY_SETP", "fused", "did you mean LSTM_ENGINE_CUPY_STEP"),
    ("LSTM_ENGINE_STATEDIR", "/tmp", "did you mean LSTM_ENGINE_STATE_DIR"),
])
def test_bad_environment_variables_are_named(run, monkeypatch, name, value, needle):
    """Under --backend auto too: a misspelt value must not make auto skip a backend silently."""
    monkeypatch.setenv(name, value)
    r = run_cli(["generate", latest(run), "--length", "3", "--backend", "auto"])
    assert_one_line_error(r, needle)
    import lstm_engine as le
    with pytest.raises(le.UserError, match=needle):
        le.get_backend("auto")


def test_unrelated_environment_variables_are_left_alone(run, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_SOMETHING_ELSE_ENTIRELY", "1")
    assert run_cli(["generate", latest(run), "--length", "3", "--backend", "numpy"]).exit_code == 0


# -- resources ----------------------------------------------------------------------------------------
def test_sizes_beyond_memory_name_the_option(tmp_path, run, monkeypatch):
    refused_fresh(tmp_path, run, ["--hidden-size", "200000"], "memory")
    refused_fresh(tmp_path, run, ["--batch-size", "100000", "--seq-len", "100000"], "--batch-size x --seq-len")
    monkeypatch.setattr(resources, "available_memory", lambda: 10 ** 6)
    refused_fresh(tmp_path, run, ["--hidden-size", "256"], "the model")
    r = run_cli(["inspect", latest(run), "--prime", "ax.ay." * 400, "--html", tmp_path / "p.html"])
    assert_one_line_error(r, "--max-chars")


def test_a_corpus_larger_than_memory_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.txt"
    try:
        with open(big, "wb") as f:
            f.truncate(2 ** 43)                              # sparse: 8 TiB that take no disk
    except OSError:
        pytest.skip("this file system holds no sparse file of 8 TiB")
    with deadline(20):
        r = run_cli(tiny_args(str(big), tmp_path / "out", steps=1))
    assert_one_line_error(r, "corpus file")
    assert "memory" in r.stderr


class StubBackend:
    """Returns token 0 for every character: isolates generate_text's own memory use."""
    NAME = "stub"

    def generate(self, params, state, token, n, *a, **kw):
        return np.zeros(n, np.int32)

    def to_numpy(self, a):
        return a


def test_generation_streams_in_constant_memory():
    model = SimpleNamespace(be=StubBackend(), params={}, zero_state=lambda b: [], cfg=SimpleNamespace(cell="lstm"))
    vocab = Vocab(["a", "b"])
    seen = [0]                                           # a count, not a list: the callback holds nothing

    def count(text):
        seen[0] += len(text)
    generate_text(model, vocab, "", 100, on_text=count, keep=False)          # first-call set-up, not measured
    seen[0] = 0
    peaks = []
    for length in (10_000, 400_000):
        tracemalloc.start()
        out = generate_text(model, vocab, "", length, on_text=count, keep=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert out == ""
    assert seen[0] == 410_000
    assert peaks[1] < peaks[0] + 64 * 1024, peaks        # 40x the characters, not 40x the memory


def test_the_cli_streams_generation(run, monkeypatch):
    """`generate` asks for the text not to be kept (the constant-memory path above)."""
    import lstm_engine.api as api
    got = {}
    real = api.generate_text

    def spy(*a, **k):
        got.update(k)
        return real(*a, **k)
    monkeypatch.setattr(api, "generate_text", spy)
    r = run_cli(["generate", latest(run), "--length", "50", "--backend", "numpy", "--no-echo"])
    assert r.exit_code == 0 and len(r.stdout) == 51
    assert got.get("keep") is False


def test_a_duplicate_in_a_huge_vocabulary_is_found_in_linear_time(tmp_path, run):
    """The duplicate search is one pass with a set (a quadratic one takes minutes here)."""
    sd = tmp_path / "sd.safetensors"
    assert run_cli(["export", latest(run), "-o", sd]).exit_code == 0
    symbols = [chr(c) for c in range(0x4E00, 0x4E00 + 300_000) if not 0xD800 <= c <= 0xDFFF] + ["a"]
    symbols[-2] = "a"
    (tmp_path / "v.json").write_text(json.dumps(symbols), encoding="utf-8")
    with deadline(10):
        r = run_cli(["import", sd, "--vocab", tmp_path / "v.json", "-o", tmp_path / "i.safetensors"])
    assert_one_line_error(r, "appears twice")


# -- PyTorch .pt files -----------------------------------------------------------------------------------
def test_pt_files_need_a_torch_that_loads_safely(tmp_path, run, monkeypatch):
    torch = pytest.importorskip("torch")
    pt = tmp_path / "sd.pt"
    assert run_cli(["export", latest(run), "-o", pt]).exit_code == 0
    assert run_cli(["import", pt, "-o", tmp_path / "ok.safetensors"]).exit_code == 0
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    r = run_cli(["import", pt, "-o", tmp_path / "old.safetensors"])
    assert_one_line_error(r, "2.6")
    assert not (tmp_path / "old.safetensors").exists()
