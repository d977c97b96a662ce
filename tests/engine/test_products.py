"""--products: which GEMM operands a run trains with (core/train.resolve_products), and a run that
trains with bfloat16 products where the CPU has them."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import lstm_engine as le
from lstm_engine import parallel
from lstm_engine.backends import numba_ahead
from lstm_engine.cli import main
from lstm_engine.core.train import resolve_products
from lstm_engine.storage import checkpoint


class FakeNumba:
    """A backend offering bfloat16 products (or not, with why), recording what it was told."""
    NAME = "numba"

    def __init__(self, ok=True, pays=True):
        self.ok, self.pays, self.told, self.asked = ok, pays, [], 0

    def bf16_products(self):
        return (True, "") if self.ok else (False, "this CPU has no AVX512_BF16 (vdpbf16ps)")

    def bf16_pays(self):
        self.asked += 1
        return self.pays

    def use_products(self, name):
        self.told.append(name)


class FakeNumpy:
    NAME = "numpy"


@pytest.mark.parametrize("ok,pays,budgeted,dtype,tune,want", [
    (True, True, True, "float32", "auto", "bf16"),          # a time budget on a CPU where they pay
    (True, False, True, "float32", "auto", "float32"),      # offered, measured slower here
    (True, True, False, "float32", "auto", "float32"),      # no budget: exact products
    (False, True, True, "float32", "auto", "float32"),      # the CPU lacks them
    (True, True, True, "float64", "auto", "float32"),       # a float64 model
    (True, True, True, "float32", "off", "float32"),        # the user's LSTM_ENGINE_TUNE choice
    (True, True, True, "float32", "blas", "float32"),
    (True, False, False, "float32", "bf16", "bf16"),        # LSTM_ENGINE_TUNE=bf16 says so already
])
def test_auto_takes_bf16_under_a_budget_where_offered_and_faster(ok, pays, budgeted, dtype, tune, want,
                                                                 monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", tune)
    be = FakeNumba(ok, pays)
    assert resolve_products("auto", be, dtype, budgeted) == want
    assert be.told == [want]
    measured = ok and budgeted and dtype == "float32" and tune == "auto"
    assert be.asked == int(measured)                         # the timing only where it decides


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
    """On a CPU with AVX512_BF16 where they pay, a time-budget run picks bf16 (said in its recipe,
    stored in its checkpoint), its products ran in bfloat16, and it learns the text."""
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "auto")
    from lstm_engine.backends import numba_backend
    monkeypatch.setattr(numba_backend, "bf16_pays", lambda: True)   # measured faster (here or not)
    from lstm_engine.kernels.numba import gemm_amx, gemm_bf16
    calls = []
    module, name = (gemm_amx, "mm_amx") if gemm_amx.available()[0] else (gemm_bf16, "mm_bf16")
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: calls.append(a[2].shape) or real(*a))
    from lstm_engine.backends import numba_tune
    numba_tune.forget()                                             # opt_in now hands out the spy
    cfg = le.TrainConfig(backend="numba", time_budget=20.0, out=str(tmp_path / "run"), log_every=0,
                         hidden_size=64, embed_size=16, layers=2, batch_size=16, seq_len=32)
    explicit = {"hidden_size", "embed_size", "layers", "batch_size", "seq_len"}
    st = le.Trainer(cfg, text=markov_text(3000), explicit=explicit).run()
    _, meta = checkpoint.load(str(tmp_path / "run" / "best.safetensors"))
    assert meta["train"]["products"] == "bf16" and "with bfloat16 products" in meta["train"]["recipe"]
    assert calls                                                    # the bfloat16 GEMM ran (AMX where the CPU has it)
    assert st.step > 20 and meta["trainer"]["best_val"] < 0.75 * np.log(5)   # well under uniform over 5 symbols
    numba_tune.forget()


# ----------------------------------------------------------------------------
# Whether bfloat16 pays: measured once per machine (backends/numba_tune_bf16.py)
# ----------------------------------------------------------------------------

@pytest.fixture
def pays_state(monkeypatch):
    from lstm_engine.backends import numba_tune, numba_tune_bf16
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "auto")
    monkeypatch.setattr(numba_tune, "busy", lambda: "")
    numba_tune.forget()
    numba_tune_bf16.forget()
    yield numba_tune_bf16
    numba_tune.forget()
    numba_tune_bf16.forget()


def fake_run(seconds):
    """run(name) -> (seconds[name], hs): bfloat16's hs off by 1e-3, as its rounding would be."""
    calls = []

    def run(name):
        calls.append(name)
        hs = np.ones((2, 3, 4), np.float32) * (1.001 if name == "bf16" else 1.0)
        return seconds[name], hs
    return run, calls


@pytest.mark.parametrize("bf16_seconds,want", [(0.5, True), (0.95, False), (2.0, False)])
def test_bf16_pays_only_when_a_margin_faster(pays_state, bf16_seconds, want, capsys):
    run, calls = fake_run({"float32": 1.0, "bf16": bf16_seconds})
    assert pays_state.pays(2, run) is want
    assert set(calls) == {"float32", "bf16"} and len(calls) == 2 * (1 + pays_state.ROUNDS)
    line = capsys.readouterr().err
    assert "layer products" in line and ("bf16 (" in line if want else "float32 (" in line)


def test_bf16_pays_is_measured_once_then_read_from_the_file(pays_state):
    from lstm_engine.backends import numba_tune
    run, calls = fake_run({"float32": 1.0, "bf16": 0.5})
    assert pays_state.pays(2, run)
    n = len(calls)
    assert pays_state.pays(2, run) and len(calls) == n                     # this process: remembered
    pays_state.forget()
    numba_tune.forget()                                                     # a later process: the file
    assert pays_state.pays(2, run) and len(calls) == n
    record = numba_tune.read_entries(numba_tune.tune_file())[pays_state.key_of(2)]
    assert record["choice"] == "bf16" and abs(record["rows"][1]["error"] - 1e-3) < 1e-4
    assert pays_state.pays(1, run) and len(calls) > n                       # another thread count: measured


def test_bf16_pays_on_a_busy_machine_is_false_and_stores_nothing(pays_state, monkeypatch, capsys):
    from lstm_engine.backends import numba_tune
    monkeypatch.setattr(numba_tune, "busy", lambda: "load 9.0 on 2 cores")
    run, calls = fake_run({"float32": 1.0, "bf16": 0.5})
    assert pays_state.pays(2, run) is False and calls == []
    assert "busy" in capsys.readouterr().err
    assert numba_tune.read_entries(numba_tune.tune_file()) == {}


@pytest.mark.skipif(not _bf16_here()[0], reason=f"bfloat16 products: {_bf16_here()[1]}")
def test_the_bf16_probe_runs_each_product_and_restores_the_mode(pays_state):
    """The backend's probe: a layer in float32 and in bfloat16 (their hs differ by the operands'
    rounding, no more), the process's products as they were after each."""
    from lstm_engine.backends import numba_backend, numba_tune
    run = numba_backend._bf16_probe()
    (t32, hs32), (t16, hs16) = run("float32"), run("bf16")
    assert t32 > 0 and t16 > 0 and numba_tune.mode() == "auto"
    err = float(np.abs(hs16 - hs32).max())
    assert 1e-5 < err < 5e-2                                                # rounded, not broken
    assert np.array_equal(run("float32")[1], hs32)                         # float32 again: exact


# ----------------------------------------------------------------------------
# The helper process compiling bfloat16's kernels while float32's compile here
# ----------------------------------------------------------------------------

def sleeper(tmp_path, seconds):
    """A started process as start_helper returns it (its own directory in .tmp)."""
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    child.tmp = str(tmp_path / "helper")
    (tmp_path / "helper").mkdir()
    return child


def test_measure_runs_float32_beside_the_helper_and_bf16_after_it(pays_state, tmp_path):
    children, seen = [], []
    run, calls = fake_run({"float32": 1.0, "bf16": 0.5})

    def watched(name):
        seen.append((name, children[0].poll()))                 # None while the helper still runs
        return run(name)
    record = pays_state.measure(watched, 2, lambda: children.append(sleeper(tmp_path, 0.5)) or children[0])
    assert record["choice"] == "bf16"
    assert seen[0] == ("float32", None)                          # float32 ran while the helper compiled
    assert seen[1] == ("bf16", 0)                                # bf16's first run waited for it to end
    assert not (tmp_path / "helper").exists()                    # its directory removed


def test_an_error_beside_the_helper_stops_it(pays_state, tmp_path):
    children = []

    def broken(name):
        raise RuntimeError("float32 failed")
    with pytest.raises(RuntimeError, match="float32 failed"):
        pays_state.measure(broken, 2, lambda: children.append(sleeper(tmp_path, 60)) or children[0])
    assert children[0].returncode is not None and children[0].returncode != 0   # killed, not left running
    assert not (tmp_path / "helper").exists()


def test_no_helper_on_one_core_or_in_an_mpi_job(pays_state, monkeypatch):
    import os
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert pays_state.start_helper(2) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("PMI_SIZE", "2")                                 # a rank of mpiexec -n 2
    assert pays_state.start_helper(2) is None
    monkeypatch.delenv("PMI_SIZE")
    monkeypatch.setattr(parallel, "_GROUP", object())                   # joined an MPI group (connect(mpi=True))
    assert pays_state.start_helper(2) is None


def test_a_helper_where_mpi4py_is_merely_imported(pays_state, monkeypatch):
    """mpi4py imported (a notebook, this suite) is not an MPI job: the helper still starts."""
    import os
    import subprocess
    import sys
    for name in parallel.SIZE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(parallel, "_GROUP", None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setitem(sys.modules, "mpi4py", object())
    started = []

    class Child:
        def __init__(self, args, **kw):
            started.append(args)
            self.returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    child = pays_state.start_helper(2)
    try:
        assert child is not None and started and started[0][-1] == "2"
    finally:
        numba_ahead.stop(child)


@pytest.mark.skipif(not _bf16_here()[0], reason=f"bfloat16 products: {_bf16_here()[1]}")
def test_the_helper_compiles_the_bf16_layer_into_numbas_cache(pays_state, tmp_path, monkeypatch):
    """The real helper, on an empty numba cache: it exits cleanly, leaves the bfloat16 time loops'
    kernels in the cache (what the parent's first bfloat16 run then loads) and nothing else behind."""
    import os
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    child = pays_state.start_helper(2)
    assert child is not None
    try:
        assert child.wait(timeout=600) == 0
    finally:
        numba_ahead.stop(child)
    cached = [f for _, _, files in os.walk(tmp_path / "numba") for f in files if f.endswith(".nbi")]
    assert any(f.startswith(("lstm_layer_amx.", "lstm_layer_bf16.")) for f in cached), sorted(cached)[:20]
    assert not os.path.exists(child.tmp)


def test_a_step_run_says_which_products_it_multiplies_with(tmp_path, capsys):
    """The start event carries the run's products and the CLI's model line names bfloat16 ones, so a
    run of --steps says what a budget run's recipe line says."""
    from lstm_engine.cli import _print_event
    events = []
    cfg = le.TrainConfig(backend="numpy", steps=2, out=str(tmp_path / "run"), log_every=0, eval_every=0,
                         sample_every=0, hidden_size=8, embed_size=4, layers=1, batch_size=2, seq_len=8)
    le.Trainer(cfg, text=markov_text(300), on_event=lambda kind, info: events.append((kind, info))).run()
    start = dict(events)["start"]
    assert start["products"] == "float32"
    _print_event("start", start)
    assert "bfloat16" not in capsys.readouterr().err
    _print_event("start", dict(start, products="bf16"))
    model_line = capsys.readouterr().err.splitlines()[0]
    assert model_line.startswith("backend numpy  model E4 H8 L1") and "float32 with bfloat16 products" in model_line
