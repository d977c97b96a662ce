"""--products: which GEMM operands a run trains with (core/train.resolve_products), and a run that
trains with bfloat16 products where the CPU has them."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import lstm_engine as le
from lstm_engine.cli import main
from lstm_engine.core.train import resolve_products
from lstm_engine.storage import checkpoint


class FakeNumba:
    """A backend offering bfloat16 products (or not, with why), recording what it was told."""
    NAME = "numba"

    def __init__(self, ok=True):
        self.ok, self.told = ok, []

    def bf16_products(self):
        return (True, "") if self.ok else (False, "this CPU has no AVX512_BF16 (vdpbf16ps)")

    def use_products(self, name):
        self.told.append(name)


class FakeNumpy:
    NAME = "numpy"


@pytest.mark.parametrize("ok,budgeted,dtype,tune,want", [
    (True, True, "float32", "auto", "bf16"),          # a time budget on a CPU that has them
    (True, False, "float32", "auto", "float32"),      # no budget: exact products
    (False, True, "float32", "auto", "float32"),      # the CPU lacks them
    (True, True, "float64", "auto", "float32"),       # a float64 model
    (True, True, "float32", "off", "float32"),        # the user's LSTM_ENGINE_TUNE choice
    (True, True, "float32", "blas", "float32"),
    (True, False, "float32", "bf16", "bf16"),         # LSTM_ENGINE_TUNE=bf16 says so already
])
def test_auto_takes_bf16_under_a_budget_where_offered(ok, budgeted, dtype, tune, want, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", tune)
    be = FakeNumba(ok)
    assert resolve_products("auto", be, dtype, budgeted) == want
    assert be.told == [want]


def test_explicit_choices_are_kept_and_handed_on(monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "auto")
    be = FakeNumba()
    assert resolve_products("float32", be, "float32", True) == "float32"
    assert resolve_products("bf16", be, "float32", False) == "bf16"
    assert be.told == ["float32", "bf16"]
    assert resolve_products("auto", FakeNumpy(), "float32", True) == "float32"     # nothing to tell numpy


@pytest.mark.parametrize("be,dtype,tune,words", [
    (FakeNumba(False), "float32", "auto", ["AVX512_BF16", "--products float32"]),
    (FakeNumpy(), "float32", "auto", ["numba backend", "numpy"]),
    (FakeNumba(), "float64", "auto", ["float64", "--products float32"]),
])
def test_bf16_where_it_cannot_run_is_a_one_line_error(be, dtype, tune, words, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", tune)
    with pytest.raises(le.UserError) as e:
        resolve_products("bf16", be, dtype, True)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_float32_against_the_environment_forcing_bf16_is_an_error(monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "bf16")
    with pytest.raises(le.UserError, match="disagree"):
        resolve_products("float32", FakeNumba(), "float32", False)


def test_bf16_on_the_numpy_backend_is_a_one_line_error_and_writes_nothing(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(markov_text(200))
    r = CliRunner().invoke(main, ["train", "--corpus", str(corpus), "--backend", "numpy", "--products", "bf16",
                                  "--steps", "2", "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert r.stderr.strip().count("\n") == 0 and "--products bf16 needs the numba backend" in r.stderr
    assert not (tmp_path / "run").exists()


def test_numba_held_to_avx2_offers_no_bf16(monkeypatch):
    from lstm_engine.kernels.numba import gemm_bf16
    monkeypatch.setenv("LSTM_ENGINE_NUMBA_ISA", "avx2")
    ok, why = gemm_bf16.available()
    assert not ok and "LSTM_ENGINE_NUMBA_ISA=avx2" in why


def test_a_bad_products_value_is_refused(tmp_path):
    with pytest.raises(le.UserError, match="--products must be one of auto, float32, bf16"):
        le.TrainConfig(products="fp8").check()
    r = CliRunner().invoke(main, ["train", "--products", "fp8", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "fp8" in r.stderr
    assert not (tmp_path / "run").exists()


def _bf16_here():
    from lstm_engine.backends import get_backend
    try:
        return get_backend("numba").bf16_products()
    except Exception as e:  # noqa: BLE001 - no numba backend here
        return False, str(e)


def markov_text(n, seed=0):
    rng = np.random.default_rng(seed)
    return "".join("ab" + ("x" if c else "y") + "." for c in rng.integers(0, 2, n))


@pytest.mark.skipif(not _bf16_here()[0], reason=f"bfloat16 products: {_bf16_here()[1]}")
def test_a_budgeted_numba_run_trains_with_bf16_products_and_records_them(tmp_path, monkeypatch):
    """On a CPU with AVX512_BF16 a time-budget run picks bf16 (said in its recipe, stored in its
    checkpoint), its products ran in bfloat16, and it learns the text."""
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "auto")
    from lstm_engine.kernels.numba import gemm_bf16
    calls = []
    real = gemm_bf16.mm_bf16
    monkeypatch.setattr(gemm_bf16, "mm_bf16", lambda *a: calls.append(a[2].shape) or real(*a))
    from lstm_engine.backends import numba_tune
    numba_tune.forget()
    cfg = le.TrainConfig(backend="numba", time_budget=20.0, out=str(tmp_path / "run"), log_every=0,
                         hidden_size=64, embed_size=16, layers=2, batch_size=16, seq_len=32)
    explicit = {"hidden_size", "embed_size", "layers", "batch_size", "seq_len"}
    st = le.Trainer(cfg, text=markov_text(3000), explicit=explicit).run()
    _, meta = checkpoint.load(str(tmp_path / "run" / "best.safetensors"))
    assert meta["train"]["products"] == "bf16" and "with bfloat16 products" in meta["train"]["recipe"]
    assert calls                                                    # the bfloat16 GEMM ran
    assert st.step > 20 and meta["trainer"]["best_val"] < 0.75 * np.log(5)   # well under uniform over 5 symbols
    numba_tune.forget()
