"""The numba backend's per-machine GEMM choice (lstm_engine/backends/numba_tune.py): the cache file's
keys, invalidation and corruption, validation before choosing, the chosen kernels' parity, `lstm-engine
tune`, and the AVX2 target switch.  No speed is asserted: the tests fix which candidate is fastest
by stubs where a choice depends on it."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from lstm_engine.errors import UserError

nb = pytest.importorskip("lstm_engine.backends.numba_backend")
from lstm_engine.backends import numba_tune as nt  # noqa: E402

from test_numba_backend import compare_layer, layer_inputs  # noqa: E402
from parity import Parity  # noqa: E402
from lstm_engine.backends import numpy_backend as ref  # noqa: E402

PRODUCT = nt.Product("x W_x", "lstm", 24, 16, 40)


def _matmul(A, B, C, trans_a, trans_b, alpha, beta, prod):
    """A correct product in NumPy (the stubs' reference behaviour)."""
    C[...] = alpha * ((A.T if trans_a else A) @ (B.T if trans_b else B)) + (beta * C if beta else 0)


class Stubs:
    """Candidates by name -> kind: fast, slow (sleeps), wrong (fast, off by 1e-3), crash; each counts its calls."""

    def __init__(self, **speeds):
        self.calls = {name: 0 for name in speeds}
        self.fns = {name: self._make(name, kind) for name, kind in speeds.items()}

    def _make(self, name, kind):
        def fn(A, B, C, trans_a, trans_b, alpha, beta, prod):
            self.calls[name] += 1
            if kind == "crash":
                raise RuntimeError("a candidate that crashes")
            if kind == "slow":
                time.sleep(0.002)
            _matmul(A, B, C, trans_a, trans_b, alpha, beta, prod)
            if kind == "wrong":
                C *= 1.001                                  # within no tolerance of the reference
        return fn


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """Tuning on, a fresh cache file, every product big enough; forgets the process's choices."""
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "auto")
    monkeypatch.setenv("LSTM_ENGINE_TUNE_FILE", str(tmp_path / "tune.json"))
    monkeypatch.setattr(nt, "TUNE_MIN_MACS", 0)
    monkeypatch.setattr(nt, "SECONDS_PER_PRODUCT", 0.0)
    monkeypatch.setattr(nt, "busy", lambda: "")
    nt.forget()
    yield tmp_path / "tune.json"
    nt.forget()


def use(monkeypatch, stubs):
    from lstm_engine.backends import numba_backend
    monkeypatch.setattr(nt, "candidates", lambda kind: dict(stubs.fns))
    monkeypatch.setattr(numba_backend, "bf16_products", lambda: (False, "not under test"))


def test_choice_is_measured_once_then_read_from_the_file(auto, monkeypatch, capsys):
    stubs = Stubs(own="slow", fast="fast")
    use(monkeypatch, stubs)
    assert nt.choose(PRODUCT, np.float32, None) == "fast"
    assert stubs.calls["fast"] > 0 and "numba tune: x W_x 24x16x40" in capsys.readouterr().err
    data = json.loads(auto.read_text())
    assert data["format"] == nt.FORMAT and len(data["entries"]) == 1
    (record,) = data["entries"].values()
    assert record["choice"] == "fast" and {r["name"] for r in record["rows"]} == {"own", "fast"}
    nt.forget()                                             # a later process: reads, measures nothing
    before = dict(stubs.calls)
    assert nt.choose(PRODUCT, np.float32, None) == "fast"
    assert stubs.calls == before and capsys.readouterr().err == ""


@pytest.mark.parametrize("change", ["cpu", "threads", "numba", "numpy", "dtype", "shape", "kernels", "blas"])
def test_a_change_of_any_key_part_measures_again(auto, monkeypatch, change):
    stubs = Stubs(own="slow", fast="fast")
    use(monkeypatch, stubs)
    nt.choose(PRODUCT, np.float32, None)
    nt.forget()
    product, dtype, prod = PRODUCT, np.float32, None
    if change == "cpu":
        monkeypatch.setattr(nt, "cpu_model", lambda: "another CPU")
    elif change == "threads":
        prod = 3
    elif change == "numba":
        import numba
        monkeypatch.setattr(numba, "__version__", "0.0.1")
    elif change == "numpy":
        monkeypatch.setattr(np, "__version__", "0.0.1")
    elif change == "kernels":
        from lstm_engine.kernels.numba import cache
        monkeypatch.setattr(cache, "_STAMP", "0" * 64)
    elif change == "blas":                                   # e.g. OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU
        real = nt.blas_kernel()
        monkeypatch.setattr(nt, "blas_kernel", lambda: f"{real},Zen")
    elif change == "dtype":
        dtype = np.float64
    else:
        product = nt.Product("x W_x", "lstm", 24, 16, 41)
    before = stubs.calls["fast"]
    assert nt.choose(product, dtype, prod) == "fast"
    assert stubs.calls["fast"] > before                     # measured again
    assert len(json.loads(auto.read_text())["entries"]) == 2   # beside the first, not over it


@pytest.mark.parametrize("content", [b"", b"\x00garbage{", b"[1, 2]", b'{"format": 1, "entries": [3]}',
                                     b'{"format": 1, "entries": {"k": {"choice": 5}}}', b'{"format": 99}',
                                     "\u00e9t\u00e9".encode("latin-1")])
def test_a_corrupt_file_is_ignored_and_rewritten(auto, monkeypatch, content):
    stubs = Stubs(own="slow", fast="fast")
    use(monkeypatch, stubs)
    auto.write_bytes(content)
    assert nt.choose(PRODUCT, np.float32, None) == "fast"
    data = json.loads(auto.read_text())
    assert data["format"] == nt.FORMAT and [r["choice"] for r in data["entries"].values()] == ["fast"]


def test_a_cached_choice_that_is_gone_is_measured_again(auto, monkeypatch):
    """A file naming a candidate this installation lacks (BLAS gone) is not trusted."""
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    nt.choose(PRODUCT, np.float32, None)
    nt.forget()
    stubs = Stubs(own="fast", other="slow")
    use(monkeypatch, stubs)
    assert nt.choose(PRODUCT, np.float32, None) == "own" and stubs.calls["own"] > 0


def test_an_unwritable_file_keeps_the_choice_for_the_run(auto, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LSTM_ENGINE_TUNE_FILE", str(blocker / "tune.json"))   # a folder that is a file
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    assert nt.choose(PRODUCT, np.float32, None) == "fast"
    assert "could not write" in capsys.readouterr().err


def test_a_candidate_that_fails_validation_is_never_chosen(auto, monkeypatch):
    """The wrong and the crashing candidates are the fastest; the valid, slower one is chosen."""
    stubs = Stubs(own="slow", wrong="wrong", crash="crash", right="slow")
    use(monkeypatch, stubs)
    record = nt.measure(nt.Product("x^T dz", "lstm", 16, 24, 40, True, False, (0.0, 1.0)), np.float32, None)
    rows = {r["name"]: r for r in record["rows"]}
    assert not rows["wrong"]["valid"] and rows["wrong"]["error"] > nt.TOLERANCE[np.dtype(np.float32)]
    assert not rows["crash"]["valid"] and rows["crash"]["error"] is None
    assert rows["own"]["valid"] and rows["right"]["valid"] and record["choice"] in ("own", "right")
    assert stubs.calls["wrong"] == 2                    # validated at beta 0 and 1, never timed
    use(monkeypatch, Stubs(own="crash", wrong="wrong"))  # nothing valid: the shipped kernel, said so
    record = nt.measure(PRODUCT, np.float32, None)
    assert record["choice"] == "own" and "no candidate" in record["why"]


def test_a_wrong_real_candidate_is_not_chosen_over_the_real_ones(auto, monkeypatch):
    """The real candidates and an injected wrong one (instant, zeros) on a real product."""
    monkeypatch.setitem(nt._EXTRA, "zeros", lambda A, B, C, ta, tb, alpha, beta, prod: C.fill(0))
    record = nt.measure(nt.Product("x Wy", "output", 40, 16, 24), np.float64, None)
    rows = {r["name"]: r for r in record["rows"]}
    assert not rows["zeros"]["valid"] and record["choice"] != "zeros"
    assert rows["own"]["valid"] and all(r["valid"] for n, r in rows.items() if n != "zeros")


def test_a_busy_machine_runs_the_shipped_gemm_and_caches_nothing(auto, monkeypatch, capsys):
    stubs = Stubs(own="slow", fast="fast")
    use(monkeypatch, stubs)
    monkeypatch.setattr(nt, "busy", lambda: "load 9.0 on 2 cores")
    assert nt.choose(PRODUCT, np.float32, None) == "own"
    assert nt.choose(nt.Product("x Wy", "output", 40, 16, 24), np.float32, None) == "own"
    assert sum(stubs.calls.values()) == 0 and not auto.exists()
    assert capsys.readouterr().err.count("busy (load 9.0 on 2 cores)") == 1    # said once
    nt.forget()
    monkeypatch.setattr(nt, "busy", lambda: "")                                  # idle later: measured
    assert nt.choose(PRODUCT, np.float32, None) == "fast" and auto.exists()


# ----------------------------------------------------------------------------
# First use: only what is compiled, within a budget
# ----------------------------------------------------------------------------

def cold(monkeypatch, *fns):
    """These candidates count as not compiled (what a cold numba cache gives)."""
    monkeypatch.setattr(nt, "compiled", lambda fn, args: all(fn is not f for f in fns))


def test_first_use_times_only_compiled_candidates_and_redoes_when_more_are(auto, monkeypatch, capsys):
    stubs = Stubs(own="slow", warm="slow", late="fast")
    use(monkeypatch, stubs)
    cold(monkeypatch, stubs.fns["late"])
    assert nt.choose(PRODUCT, np.float32, None) == "own"
    assert stubs.calls["late"] == 0 and stubs.calls["warm"] > 0
    (record,) = json.loads(auto.read_text())["entries"].values()
    assert {r["name"] for r in record["rows"]} == {"own", "warm"} and record["untimed"] == ["late"]
    err = capsys.readouterr().err
    assert "late not compiled yet: `lstm-engine tune` times them" in err and "s; late" in err   # its seconds
    nt.forget()                                             # a later process, late still cold: read only
    before = dict(stubs.calls)
    assert nt.choose(PRODUCT, np.float32, None) == "own" and stubs.calls == before
    nt.forget()                                             # late compiled since (`tune`): measured again
    cold(monkeypatch)
    assert nt.choose(PRODUCT, np.float32, None) == "late" and stubs.calls["late"] > 0
    (record,) = json.loads(auto.read_text())["entries"].values()
    assert record["untimed"] == [] and {r["name"] for r in record["rows"]} == {"own", "warm", "late"}


@pytest.mark.parametrize("uncompiled", [["fast"], ["own"]])
def test_nothing_to_compare_without_compiling_measures_and_caches_nothing(auto, monkeypatch, capsys, uncompiled):
    """Only own compiled, or own's entry not compiled (a cold cache compiles it for tens of seconds too)."""
    stubs = Stubs(own="slow", fast="fast", other="fast")
    use(monkeypatch, stubs)
    cold(monkeypatch, *(stubs.fns[n] for n in uncompiled + ["other"]))
    assert nt.choose(PRODUCT, np.float32, None) == "own"
    assert nt.choose(nt.Product("x Wy", "output", 40, 16, 24), np.float32, None) == "own"
    assert sum(stubs.calls.values()) == 0 and not auto.exists()
    err = capsys.readouterr().err
    assert err.count("numba tune: not measured: ") == 1 and "not compiled yet" in err and "lstm-engine tune" in err
    assert all(n in err.split("not compiled")[0] for n in uncompiled + ["other"])


def test_the_first_use_budget_is_kept(auto, monkeypatch, capsys):
    """A fake clock: each first use costs 1 s; with 2 s of budget the third product runs `own`,
    unrecorded, and a later process measures it."""
    ticks = iter(range(1000))
    monkeypatch.setattr(nt, "_clock", lambda: float(next(ticks)))
    monkeypatch.setattr(nt, "FIRST_USE_SECONDS", 2.0)
    stubs = Stubs(own="slow", fast="fast")
    use(monkeypatch, stubs)
    products = [nt.Product("x W_x", "lstm", 24, 16, n) for n in (40, 41, 42)]
    assert [nt.choose(p, np.float32, None) for p in products] == ["fast", "fast", "own"]
    assert len(json.loads(auto.read_text())["entries"]) == 2
    assert capsys.readouterr().err.count("first-use budget of 2s spent") == 1
    nt.forget()
    assert nt.choose(products[2], np.float32, None) == "fast"
    assert len(json.loads(auto.read_text())["entries"]) == 3


def _trainer(tmp_path, on_event=None):
    """A numba Trainer of one step at V 300 > T*B (no layer-0 table)."""
    import lstm_engine as le
    kw = dict(backend="numba", embed_size=8, hidden_size=16, layers=2, batch_size=4, seq_len=8, steps=1,
              eval_every=0, sample_every=0, save_every=0, log_every=0, out=str(tmp_path / "run"))
    text = "".join(chr(0x4e00 + (i * 7) % 300) for i in range(3000))
    return le.Trainer(le.TrainConfig(**kw), text=text, on_event=on_event)


def _first_measured(monkeypatch, tmp_path, first_use=True, spent=0.0):
    """The products a one-step numba training run measures when the first-use budget buys one
    measurement (a fake clock: 1 s each, 1 s of budget); first_use False: without tune_first_use,
    as the step's own calls ask; spent: seconds of the budget gone before the run (a calibration)."""
    ticks = iter(range(10_000))
    monkeypatch.setattr(nt, "_clock", lambda: float(next(ticks)))
    monkeypatch.setattr(nt, "FIRST_USE_SECONDS", 1.0)
    monkeypatch.setattr(nt, "_spent", [spent])
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    if not first_use:
        monkeypatch.setattr(nb, "tune_first_use", lambda *args: None)
    measured, measure = [], nt.measure
    monkeypatch.setattr(nt, "measure", lambda product, *a, **k: measured.append(product) or measure(product, *a, **k))
    _trainer(tmp_path).run()
    return measured


def test_a_training_run_spends_the_first_use_budget_on_its_biggest_products_first(auto, monkeypatch, tmp_path):
    """At V 300 the output layer's products (32 x 16 x 300) outweigh the layers' (32 x 16 x 64):
    the run measures one of them before its first step, where the step's own order would measure
    layer 0's input projection first and leave the output layer on `own`."""
    macs = [p.macs for p, _ in nb.tune_products(8, 16, 2, 4, 8, 300)]
    biggest = [p.macs for p in _first_measured(monkeypatch, tmp_path)]
    assert biggest == [max(macs)]
    nt.forget()
    lazy = [p.macs for p in _first_measured(monkeypatch, tmp_path / "lazy", first_use=False)]
    assert len(lazy) == 1 and lazy[0] < max(macs)                   # what the order changes


def test_the_model_a_run_trains_gets_the_first_use_budget_a_calibration_spent(auto, monkeypatch, tmp_path):
    """A time-budget run's calibration times candidate models, and their first uses may spend the
    whole budget: the model the run then trains still has its biggest product measured."""
    macs = [p.macs for p, _ in nb.tune_products(8, 16, 2, 4, 8, 300)]
    assert [p.macs for p in _first_measured(monkeypatch, tmp_path, spent=1.0)] == [max(macs)]


def test_a_run_reports_its_start_before_the_tuner_reports_its_choices(monkeypatch, tmp_path):
    """The tuner's lines follow the run's header, and it is asked once: by compile_ahead, not again
    by the first step."""
    events = []
    monkeypatch.setattr(nb, "tune_first_use", lambda *args: events.append("tune"))
    _trainer(tmp_path, on_event=lambda kind, info: events.append(kind)).run()
    assert events.count("tune") == 1
    assert events.index("start") < events.index("tune")


def test_a_first_train_step_outside_run_asks_the_tuner_first(monkeypatch, tmp_path):
    """From a notebook, Trainer.train_step() without run(): the first step asks about the model's
    products as run() would, once, with this run's windows; the later steps do not ask."""
    asked, steps = [], []
    monkeypatch.setattr(nb, "tune_first_use", lambda *args: asked.append((args, len(steps))))
    trainer = _trainer(tmp_path)
    for _ in range(2):
        trainer.train_step()
        steps.append(1)
    assert asked == [((trainer.model_cfg, 4, 8), 0)]


_COLD_KERNEL = """
import numba


@numba.njit(cache=True)
def mm_cold(A, B, C, trans_a, trans_b, alpha, beta, prod):
    # C = alpha A B + beta C, no transposes (a candidate for the untransposed products only)
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            s = 0.0
            for k in range(A.shape[1]):
                s += A[i, k] * B[k, j]
            C[i, j] = alpha * s + (beta * C[i, j] if beta != 0.0 else 0.0)
"""


def _load(path, name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compiled_reads_the_process_and_numba_disk_cache(tmp_path):
    """A jitted function of a fresh file: not compiled; compiled in this process; in a second copy
    of the module (as a later process sees it) ready from numba's disk cache, without loading it;
    another signature not."""
    path = tmp_path / "cold_kernel.py"
    path.write_text(_COLD_KERNEL)
    first = _load(path, "cold_kernel_a").mm_cold
    a = np.ones((3, 3))
    args = (a, a, a, False, False, 1.0, 0.0, None)
    assert not nt.compiled(first, args)
    first(a, a, a.copy(), False, False, 1.0, 0.0, None)
    assert nt.compiled(first, args)
    second = _load(path, "cold_kernel_b").mm_cold
    assert nt.compiled(second, args) and not second.overloads          # read from the index, nothing loaded
    assert not nt.compiled(second, (a.astype(np.float32),) * 3 + args[3:])
    assert not nt.compiled(second, args[:-1] + (2,))                     # prod: another type
    assert nt.compiled(lambda *args: None, args)                          # plain Python compiles nothing


def test_a_cold_jitted_candidate_is_not_compiled_at_first_use(auto, monkeypatch, tmp_path):
    """The real readiness check on a jitted candidate of a fresh file: the first use leaves it
    uncompiled (no machine code, nothing in its disk cache) and says so in the record; once it is
    compiled, a later process measures the product again with it."""
    path = tmp_path / "cold_kernel.py"
    path.write_text(_COLD_KERNEL)
    kernel = _load(path, "cold_kernel_c").mm_cold
    use(monkeypatch, Stubs(own="slow", warm="slow"))
    monkeypatch.setitem(nt._EXTRA, "cold", kernel)
    product = nt.Product("x W_x", "lstm", 24, 16, 40)
    nt.choose(product, np.float64, None)
    assert not kernel.overloads and not list((tmp_path / "__pycache__").glob("*.nbi"))
    (record,) = json.loads(auto.read_text())["entries"].values()
    assert record["untimed"] == ["cold"]
    a = np.ones((2, 2))
    kernel(a, a, a.copy(), False, False, 1.0, 0.0, None)                # compiled (what `tune` does)
    nt.forget()
    nt.choose(product, np.float64, None)
    (record,) = json.loads(auto.read_text())["entries"].values()
    assert record["untimed"] == [] and {r["name"]: r["valid"] for r in record["rows"]}["cold"]


def test_tune_times_every_candidate_compiled_or_not(auto, monkeypatch):
    from lstm_engine import api
    stubs = Stubs(own="slow", fast="fast", late="fast")
    use(monkeypatch, stubs)
    cold(monkeypatch, stubs.fns["fast"], stubs.fns["late"])
    key, records = api.tune("E8,H32,L1,B4,T5,V50")
    assert records and all(r["untimed"] == [] and len(r["rows"]) == 3 for r in records)
    assert stubs.calls["late"] >= len(records) * (1 + nt.REPEATS)


@pytest.mark.parametrize("offered,dtype,want", [(True, "float32", True), (False, "float32", False),
                                                 (True, "float64", False)])
def test_tune_measures_bf16_against_float32_where_offered(auto, monkeypatch, offered, dtype, want):
    from lstm_engine import api
    from lstm_engine.backends import numba_backend
    stubs = Stubs(own="slow", fast="fast")
    use(monkeypatch, stubs)
    monkeypatch.setattr(numba_backend, "bf16_products", lambda: (offered, ""))
    asked = []
    record = {"product": "layer products", "choice": "float32", "rows": []}
    monkeypatch.setattr(numba_backend, "tune_bf16", lambda: asked.append(1) or record)
    _, records = api.tune("E8,H32,L1,B4,T5,V50", dtype)
    assert (record in records) is want and len(asked) == int(want)


def test_decide_prefers_own_within_the_margin():
    rows = [dict(name="own", valid=True, seconds=1.0), dict(name="b", valid=True, seconds=1.0 / 1.05),
            dict(name="c", valid=False, seconds=None)]
    assert nt.decide(rows, 1e-5)[0] == "own"
    rows[1]["seconds"] = 0.5
    assert nt.decide(rows, 1e-5) == ("b", "2.00x faster than own")


def test_tuning_off_and_small_products_ask_nothing(monkeypatch, auto):
    stubs = Stubs(own="slow", fast="fast")
    use(monkeypatch, stubs)
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "off")
    assert nt.choose(PRODUCT, np.float32, None) == "own" and not nb._tuned([PRODUCT], np.float32, None)
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "auto")
    monkeypatch.setattr(nt, "TUNE_MIN_MACS", 1 << 40)
    assert nt.choose(PRODUCT, np.float32, None) == "own" and nb._tuned([PRODUCT], np.float32, None) is None
    assert sum(stubs.calls.values()) == 0 and not auto.exists()


@pytest.mark.parametrize("name,value", [("LSTM_ENGINE_TUNE", "fastest"), ("LSTM_ENGINE_NUMBA_ISA", "avx512"),
                                        ("LSTM_ENGINE_TUNE", "Auto")])
def test_bad_switch_values_are_one_line_errors(monkeypatch, name, value):
    from lstm_engine.core import environment
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as e:
        environment.check_all()
    assert name in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------
# The chosen kernels through the backend
# ----------------------------------------------------------------------------

@pytest.fixture(params=["one-thread", "threads"])
def threads(request, monkeypatch):
    import numba
    if request.param == "threads" and numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(nb, "PARALLEL_MIN_MACS", 0 if request.param == "threads" else 1 << 62)
    return request.param


@pytest.mark.parametrize("candidate", ["blas", "gemm12x32", "gemm6x16"])
def test_forced_candidates_pass_the_backend_parity_tests(candidate, threads, monkeypatch, rng):
    """Each candidate forced for every product (LSTM_ENGINE_TUNE=<name>): a layer, layer 0 on both
    paths and the output layer against the reference, float32 (the training dtype)."""
    monkeypatch.setenv("LSTM_ENGINE_TUNE", candidate)
    nt.forget()
    called = []
    product_fn = nt.product_fn
    monkeypatch.setattr(nt, "product_fn", lambda kind, name: called.append(name) or product_fn(kind, name))
    dtype = "float32"
    for T, B, I, H in ((5, 3, 7, 13), (3, 4, 40, 33), (3, 5, 24, 70)):     # 4H = 280: dW packs op(A)
        compare_layer(f"{candidate} lstm layer T{T} B{B} I{I} H{H}", layer_inputs(rng, T, B, I, H, dtype), dtype)
    a = layer_inputs(rng, 4, 3, 6, 9, dtype)
    for V in (5, 40):                                               # table path, gathered path
        Emb = rng.standard_normal((V, 6)).astype(dtype)
        tokens = rng.integers(0, V, (4, 3))
        r = ref.embed_lstm_forward(tokens, Emb, a["W"], a["b"], a["h0"], a["c0"])
        n = nb.embed_lstm_forward(tokens, Emb, a["W"], a["b"], a["h0"], a["c0"])
        got = nb.embed_lstm_backward(a["dhs"], a["dhT"], a["dcT"], n[3])
        want = ref.embed_lstm_backward(a["dhs"], a["dhT"], a["dcT"], r[3])
        with Parity(f"{candidate} embed layer V{V}", backend="numba") as p:
            p.check("hs", n[0], r[0], dtype)
            for name, g, w in zip(("dEmb", "dW", "db", "dh0", "dc0"), got, want):
                p.check(name, g, w, dtype, "grad")
    for N, H, V in ((37, 13, 65), (203, 40, 33)):
        x, W, b, dy = (rng.standard_normal(s).astype(dtype) for s in ((N, H), (H, V), (V,), (N, V)))
        with Parity(f"{candidate} output layer N{N} H{H} V{V}", backend="numba") as p:
            p.check("logits", nb.linear_forward(x, W, b), ref.linear_forward(x, W, b), dtype)
            for name, g, w in zip(("dx", "dWy", "dby"), nb.linear_backward(x, dy, W), ref.linear_backward(x, dy, W)):
                p.check(name, g, w, dtype, "grad")
    assert set(called) == {candidate}                               # the forced one ran


# ----------------------------------------------------------------------------
# lstm-engine tune
# ----------------------------------------------------------------------------

def test_tune_command_prints_every_candidate_and_the_choice(auto, monkeypatch):
    from click.testing import CliRunner

    import cli
    stubs = Stubs(own="slow", fast="fast", wrong="wrong")
    use(monkeypatch, stubs)
    r = CliRunner().invoke(cli.main, ["tune", "--configs", "E8,H32,L2,B4,T5,V50"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    lines = out.splitlines()
    assert lines[0].startswith("numba tune: ") and str(auto) in lines[0]
    assert lines[1].split() == ["product", "shape", "m", "x", "k", "x", "n", "dtype", "thr", "candidate",
                                "us", "a", "call", "error", "chosen"]
    body = [ln.split() for ln in lines[3:]]
    labels = {"x W_x", "h^T dz", "x^T dz", "dz W_x^T", "x Wy", "dy Wy^T", "x^T dy"}
    assert {" ".join(b[:2]) for b in body} == labels                   # V > T*B: layer 0 gathers
    assert {b[b.index("float32") + 2] for b in body} == {"own", "fast", "wrong"}
    for b in body:
        name = b[b.index("float32") + 2]
        assert ("<-" in b) == (name == "fast")                          # fast chosen for every product
        assert ("invalid" in b) == (name == "wrong")
    assert "20x8x128" in out and "20x32x128" in out                     # x W_x of layer 0 and of layer 1
    entries = json.loads(auto.read_text())["entries"]
    assert {e["choice"] for e in entries.values()} == {"fast"}


def test_tune_command_rejects_a_bad_config_in_one_line(auto):
    from click.testing import CliRunner

    import cli
    r = CliRunner().invoke(cli.main, ["tune", "--configs", "huge"])
    assert r.exit_code == 2 and r.stderr.startswith("error: unknown config") and r.stderr.count("\n") == 1
    assert not auto.exists()


def test_tune_command_refuses_a_config_too_big_for_memory_before_timing(auto):
    from click.testing import CliRunner

    import cli
    r = CliRunner().invoke(cli.main, ["tune", "--configs", "E64,H9999999,L2,B64,T50"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: training a lstm E64 H9999999 L2") and "more than the" in r.stderr
    assert not auto.exists()


# ----------------------------------------------------------------------------
# The AVX2 target
# ----------------------------------------------------------------------------

_AVX2_SCRIPT = r"""
import numpy as np
from lstm_engine.backends import numba_backend as nb, numpy_backend as ref
from lstm_engine.kernels.numba import gemm, lstm_layer     # sets numba's target before importing numba
import numba
rng = np.random.default_rng(1)
f = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float64)
T, B, I, H, V = 4, 3, 5, 8, 11
x, W, b, h0, c0, dhs, dhT, dcT = f(T, B, I), f(H + I, 4 * H), f(4 * H), f(B, H), f(B, H), f(T, B, H), f(B, H), f(B, H)
r, n = ref.lstm_forward(x, W, b, h0, c0), nb.lstm_forward(x, W, b, h0, c0)
errs = [np.abs(n[0] - r[0]).max()]
errs += [np.abs(g - w).max() for g, w in zip(nb.lstm_backward(dhs, dhT, dcT, n[3]), ref.lstm_backward(dhs, dhT, dcT, r[3]))]
weights = dict(Emb=f(V, I), W0=W, b0=b, W1=f(2 * H, 4 * H), b1=f(4 * H), Wy=f(H, V) * 4, by=f(V))
ids = {}
for name, be in (("numpy", ref), ("numba", nb)):
    state = [[np.zeros((1, H)), np.zeros((1, H))] for _ in range(2)]
    ids[name] = be.generate(weights, state, 1, 40, 0.9, 0, 1.0, False, np.random.default_rng(7))
asm = "".join(gemm._block_mr.inspect_asm().values()) + "".join(lstm_layer.forward_steps.inspect_asm().values())
print("cpu", numba.config.CPU_NAME)
print("block", gemm.MR, gemm.NR, gemm.LAST)
gemm_errs = []
for m, n in [(m, n) for m in range(1, 2 * gemm.MR + 4) for n in (2 * gemm.NR + 3, 2 * gemm.NR + 7)]:
    A, Bm = f(m, 37).astype(np.float32), f(37, n).astype(np.float32)   # every split into register blocks,
    C = np.zeros((m, n), np.float32)                                     # last columns as dots or a panel
    gemm.gemm(A, Bm, C)
    want = A.astype(np.float64) @ Bm
    gemm_errs.append(float(np.abs(C - want).max() / np.abs(want).max()))
print("gemm_err", max(gemm_errs))
print("cache", numba.config.CACHE_DIR)
print("ymm", asm.count("ymm"), "zmm", asm.count("zmm"))
print("sample", int((ids["numpy"] == ids["numba"]).all()), len(set(ids["numpy"].tolist())))
print("err", max(errs))
"""


def _run_under_isa(script, isa, tmp_path):
    """Run script in a fresh process under LSTM_ENGINE_NUMBA_ISA=isa, numba's target its own to
    choose and a cache of its own -> its "name value" output lines as a dict."""
    env = dict(os.environ, LSTM_ENGINE_NUMBA_ISA=isa, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               NUMBA_NUM_THREADS="1")
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


_WIDENING_SCRIPT = r"""
import numpy as np
from lstm_engine.kernels.numba import gemm     # sets numba's target before importing numba
import numba
from lstm_engine.kernels.numba.gates import gates_backward
from lstm_engine.kernels.numba.jit import JIT


@numba.njit(**dict(JIT, cache=False))                # code from -c has no file to cache beside
def gates_step(dh_out, dh, dc, a, c, c_prev, dz):
    gates_backward(dh_out, dh, dc, a, c, c_prev, dz, 0, dh.shape[0])


def conversions(fn):
    lines = "".join(fn.inspect_asm().values()).splitlines()
    return sum(1 for ln in lines if ln.split() and ln.split()[0] in ("vcvtss2sd", "vcvtps2pd", "vcvtsd2ss", "vcvtpd2ps"))


rng = np.random.default_rng(0)
x = lambda *shape: rng.random(shape, dtype=np.float32)
A, B, C = x(25, 128), x(128, 96), x(25, 96)
want = C + 0.5 * (A.astype(np.float64) @ B)
gemm.gemm(A, B, C, False, False, 0.5, 1.0)
gates_step(x(4, 64), x(4, 64), x(4, 64), x(4, 256), x(4, 64), x(4, 64), np.zeros((4, 256), np.float32))
print("block", conversions(gemm._block_mr))
print("gates", conversions(gates_step))
print("err", float(np.abs(C - want).max() / np.abs(want).max()))
"""


@pytest.mark.parametrize("isa", ["native", "avx2"])
def test_float32_kernels_do_not_widen_to_float64(tmp_path, isa):
    """A float32 register block converts at most alpha to float32 (a float64 alpha times float32
    sums, or an int literal in `1 - x`, makes numba compute in float64: every element converted
    to double and back, at half the vector width); so does the LSTM's gate backward."""
    if isa == "avx2" and not _has_avx2():
        pytest.skip("needs a CPU with AVX2")
    out = _run_under_isa(_WIDENING_SCRIPT, isa, tmp_path)
    assert int(out["block"]) <= 2, out["block"]                        # alpha, once
    assert int(out["gates"]) == 0, out["gates"]
    assert float(out["err"]) < 1e-5


def _has_avx2():
    from lstm_engine.core.environment import host_features
    features = host_features()
    return bool(features is not None and features.get("avx2") and features.get("fma"))


def test_the_avx2_switch_compiles_for_haswell_and_matches_the_reference(tmp_path):
    """LSTM_ENGINE_NUMBA_ISA=avx2 in a fresh process: numba targets Haswell (no zmm register in the
    GEMM's register block or the layer's time loop), caches in its own folder, and a small layer
    (forward and BPTT) and the sampler match the reference."""
    out = _run_under_isa(_AVX2_SCRIPT, "avx2", tmp_path)
    assert out["cpu"] == "haswell"
    assert out["block"] == "5 16 0"                                     # sized for 16 ymm registers
    assert float(out["gemm_err"]) < 1e-5
    assert out["cache"] == str(tmp_path / "numba" / "isa-avx2")
    regs = out["ymm"].split()
    assert int(regs[0]) > 0 and regs[1:] == ["zmm", "0"], out["ymm"]
    same, distinct = map(int, out["sample"].split())
    assert same == 1 and distinct > 3
    assert float(out["err"]) < 1e-12
    assert os.listdir(tmp_path / "numba" / "isa-avx2")                   # cached there, not beside the native code


_BENCH_FIRST_SCRIPT = r"""
from lstm_engine.bench import machine          # bench imports numba for --threads before any kernel
with machine.thread_settings(1):
    machine.machine_info()
import lstm_engine.kernels.numba               # refused if numba had been imported for another target
import numba
print("cpu", numba.config.CPU_NAME)
"""


def test_bench_threads_import_numba_for_the_avx2_target(tmp_path):
    """`bench --threads N` sets numba's threads before the backend is loaded: under avx2 that import
    must already target Haswell, or the kernels refuse to load (one line, exit 2)."""
    out = _run_under_isa(_BENCH_FIRST_SCRIPT, "avx2", tmp_path)
    assert out["cpu"] == "haswell"


def test_the_avx2_switch_refuses_once_numba_is_imported_for_another_target(monkeypatch):
    import numba  # noqa: F401  (imported by the backend already)

    from lstm_engine.core import environment
    monkeypatch.setenv("LSTM_ENGINE_NUMBA_ISA", "avx2")
    if (numba.config.CPU_NAME or "") == "haswell":
        pytest.skip("this process already targets haswell")
    with pytest.raises(UserError) as e:
        environment.apply_numba_isa()
    assert "before numba is imported" in str(e.value)


_WIDTH_SCRIPT = r"""
import numpy as np
from lstm_engine.kernels.numba import gemm     # sets numba's target before importing numba
from lstm_engine.core.environment import vector_width
rng = np.random.default_rng(2)
A, B = rng.standard_normal((40, 70)).astype(np.float32), rng.standard_normal((70, 96)).astype(np.float32)
C = np.zeros((40, 96), np.float32)
gemm.gemm(A, B, C)
fmas = [ln for ln in "".join(gemm._block_mr.inspect_asm().values()).splitlines() if "vfmadd" in ln]
print("vectors", vector_width())
print("block", gemm.MR, gemm.NR, gemm.LAST)
print("fma", sum("zmm" in ln for ln in fmas), sum("ymm" in ln for ln in fmas))
print("err", float(np.abs(C - A.astype(np.float64) @ B).max()))
"""


def _has_avx512():
    from lstm_engine.core.environment import host_features
    features = host_features()
    return bool(features is not None and features.get("avx512f"))


@pytest.mark.parametrize("isa,width,numba_first", [("native", "512-bit", False), ("native-256", "256-bit", False),
                                                   ("native", "512-bit", True)])
def test_the_native_target_runs_512_bit_fmas_on_avx512_and_native_256_does_not(tmp_path, isa, width, numba_first):
    """On an AVX-512 CPU the GEMM's register block does its FMAs on zmm registers alone (LLVM's
    tuning for Intel's server cores would split them into ymm halves), also when the user imported
    numba first; LSTM_ENGINE_NUMBA_ISA=native-256 gives LLVM that choice back.  Both compute the
    product."""
    if not _has_avx512():
        pytest.skip("needs a CPU with AVX-512")
    out = _run_under_isa(("import numba\n" if numba_first else "") + _WIDTH_SCRIPT, isa, tmp_path)
    assert out["vectors"] == width
    assert out["block"] == "8 32 9"                                     # AVX-512 registers either way
    zmm, ymm = map(int, out["fma"].split())
    if width == "512-bit":
        assert zmm > 0 and ymm == 0, out["fma"]
    else:
        assert ymm > 0, out["fma"]
    assert float(out["err"]) < 1e-4


@pytest.mark.parametrize("name,features,host,want", [
    (None, None, True, True), (None, None, False, False),                  # the host's features
    ("haswell", None, True, True),                                         # numba: a name alone keeps them
    (None, "+avx2,+fma,-avx512f", True, False), (None, "+avx2,+avx512f,+avx512bw", False, True),
    ("haswell", "", True, False), ("skylake-avx512", "", False, True),    # the named CPU's own
])
def test_the_gemm_blocking_follows_the_registers_of_numbas_target(monkeypatch, name, features, host, want):
    """gemm.py sizes its register block by target_has_avx512: what numba hands LLVM, not the host."""
    from numba.core import config

    from lstm_engine.core import environment
    monkeypatch.setattr(config, "CPU_NAME", name)
    monkeypatch.setattr(config, "CPU_FEATURES", features)
    monkeypatch.setattr(environment, "host_features", lambda: {"avx512f": host, "avx2": True})
    assert environment.target_has_avx512() is want


def test_a_numba_target_the_user_set_is_left_alone(monkeypatch):
    from lstm_engine.core import environment
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,+fma")
    monkeypatch.delitem(sys.modules, "numba", raising=False)  # as if numba were not imported yet
    environment._vector_width(environment.WIDE)
    assert os.environ["NUMBA_CPU_FEATURES"] == "+avx2,+fma"
    assert environment.vector_width() == "default"


def test_the_vector_width_is_not_set_once_numba_has_built_its_target(monkeypatch):
    """In this process numba has compiled already: its target's features are fixed, so the
    environment is left as it is rather than claiming a width the code does not have."""
    from lstm_engine.core import environment
    if not _has_avx512():
        pytest.skip("needs a CPU with AVX-512")
    import numba
    numba.njit(lambda x: x + 1)(1)                    # builds numba's CPU target, if nothing had yet
    assert environment._numba_target_built()
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    environment._vector_width(environment.WIDE)
    assert "NUMBA_CPU_FEATURES" not in os.environ


# ----------------------------------------------------------------------------
# The sampler: one thread or a team (numba_tune_sample.py)
# ----------------------------------------------------------------------------

from lstm_engine.backends import numba_team, numba_tune_sample as nts  # noqa: E402


@pytest.fixture
def sampler(auto, monkeypatch):
    """Tuning on with two or more numba threads, the sampler's memory forgotten; the team's
    jobs counted in the list yielded."""
    import numba
    if numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    nts.forget()
    jobs = []
    monkeypatch.setattr(numba_team.Team, "run", lambda self, *a, _run=numba_team.Team.run:
                        jobs.append(self.nt) or _run(self, *a))
    yield jobs
    nts.forget()


def sample_model(H=64, L=2, V=23, E=6, dtype="float64", cell="lstm"):
    from lstm_engine.core.model import ModelConfig, init_params
    params = init_params(ModelConfig(V, E, H, L, dtype=dtype, cell=cell), seed=3)
    for name in [f"W{l}" for l in range(L)] + ["Wy"]:
        params[name] *= 4                                       # peaky predictions, varied text
    return params


def sample_both(params, n=150, seed=5, cache=None, cell="lstm", **opts):
    """(numba ids, numpy ids, numba rng after, numpy rng after, numba state, numpy state)."""
    L, H = len([k for k in params if k.startswith("W") and k[1:].isdigit()]), params["Wy"].shape[0]
    out = []
    for be in (nb, ref):
        state = [[np.zeros((1, H)), np.zeros((1, H))] for _ in range(L)]
        rng = np.random.default_rng(seed)
        args = (opts.get("temperature", 0.9), 0, 1.0, opts.get("greedy", False))
        ids = be.generate(params, state, 1, n, *args, rng, cache if be is nb else None, cell)
        out.append((ids, rng, state))
    return out


def shape_of(params, table=True, cell="lstm"):
    import numba
    L = len([k for k in params if k.startswith("W") and k[1:].isdigit()])
    V, E = params["Emb"].shape
    desc = nts.describe(cell, L, params["Wy"].shape[0], E, V, params["Wy"].dtype, table)
    return nts.key_of(desc, numba.get_num_threads())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("way", ["team", "one"])
def test_the_sampler_choice_is_read_from_the_record(sampler, monkeypatch, way, cell):
    """A record says team or one: generation follows it, measures nothing, and the text is the
    reference's either way (the LSTM's sampler and the variants')."""
    params = sample_model(cell=cell)
    record = {"choice": way, "rows": []}
    nt.store(shape_of(params, cell=cell), record)
    monkeypatch.setattr(nts, "measure", lambda *a: pytest.fail("measured although a record holds the choice"))
    (got, _, _), (want, _, _) = sample_both(params, cache={"chars": 10 ** 6}, cell=cell)
    np.testing.assert_array_equal(got, want)
    assert bool(sampler) == (way == "team")


@pytest.mark.parametrize("way", ["team", "one"])
def test_sampler_tuning_leaves_the_callers_text_rng_and_state_alone(sampler, monkeypatch, capsys, way):
    """The first generate of a shape measures both ways (the outcome forced): the caller's ids, its
    generator's position and its state are those of the reference, and the record is written."""
    monkeypatch.setattr(nts, "decide", lambda one, team, same: (way, "forced by the test"))
    measured = []
    monkeypatch.setattr(nts, "measure", lambda *a, _m=nts.measure: measured.append(1) or _m(*a))
    params = sample_model()
    (got, rng_nb, st_nb), (want, rng_ref, st_ref) = sample_both(params, cache={"chars": 10 ** 6})
    np.testing.assert_array_equal(got, want)
    assert rng_nb.bit_generator.state == rng_ref.bit_generator.state          # no draw of the tuner's
    for (h, c), (h1, c1) in zip(st_nb, st_ref):
        np.testing.assert_allclose(h, h1, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, c1, rtol=0, atol=1e-12)
    assert measured == [1] and nt.cached(shape_of(params))["choice"] == way
    assert "numba tune: sample lstm L2 H64" in capsys.readouterr().err
    jobs_after_tuning = len(sampler)
    sample_both(params, cache={"chars": 10 ** 6})                              # the memory: nothing measured
    assert measured == [1] and (len(sampler) > jobs_after_tuning) == (way == "team")


def test_the_team_is_measured_against_one_thread_and_a_wrong_one_loses(sampler, monkeypatch):
    """A team whose ids differ from one thread's is never chosen, however fast."""
    params = sample_model()
    run = numba_team.Team.run
    monkeypatch.setattr(numba_team.Team, "run", lambda self, h, c, token, n, *a: (run(self, h, c, token, n, *a) + 1)
                        % params["Emb"].shape[0])
    nb.generate(params, [[np.zeros((1, 64)), np.zeros((1, 64))] for _ in range(2)], 1, 5, 0.9, 0, 1.0, False,
                np.random.default_rng(0), {"chars": 10 ** 6})
    record = nt.cached(shape_of(params))
    assert record["choice"] == "one" and not record["rows"][1]["valid"] and "ids differ" in record["why"]


def test_a_team_that_loses_its_first_rounds_is_timed_again(sampler, monkeypatch):
    """The team slowed by 20 ms a call during the check and its first ROUNDS (a busy moment of
    the host), then left alone: it is timed for ROUNDS more, and its recorded time is its real one,
    below the slowed calls'.  Slowed throughout, it is timed twice as well and stays 'one'."""
    run = numba_team.Team.run
    for slowed_calls in ("first rounds", "always"):
        nts.forget()
        if os.path.exists(nt.tune_file()):
            os.remove(nt.tune_file())                                   # the first case's record
        nt._file_cache = None
        calls = []

        def slow_run(self, *a, _kind=slowed_calls):
            calls.append(1)
            if _kind == "always" or len(calls) <= 1 + nts.ROUNDS * -(-chars[0] // nts.CALL_CHARS):
                time.sleep(0.02)
            return run(self, *a)
        monkeypatch.setattr(numba_team.Team, "run", slow_run)
        params = sample_model()
        weights = 2 * 4 * 64 * 2 * 64 + 64 * params["Emb"].shape[0]                 # as measure() counts them
        chars = [int(np.clip(nts.ROUND_MACS // weights, *nts.ROUND_CHARS))]
        nb.generate(params, [[np.zeros((1, 64)), np.zeros((1, 64))] for _ in range(2)], 1, 5, 0.9, 0, 1.0, False,
                    np.random.default_rng(0), {"chars": 10 ** 6})
        record = nt.cached(shape_of(params))
        assert record["rounds"] == 2 * nts.ROUNDS, slowed_calls
        team_seconds = record["rows"][1]["seconds"]                     # per call of CALL_CHARS
        if slowed_calls == "always":
            assert team_seconds >= 0.02 and record["choice"] == "one"
        else:
            assert team_seconds < 0.02


def test_the_samplers_check_call_is_not_charged_to_the_first_use_budget(sampler, monkeypatch):
    """The check call compiles the kernels a first generate compiles anyway: on a fake clock the
    check takes 100 s and the timed rounds 1 s, and only that 1 s counts against FIRST_USE_SECONDS."""
    ticks = iter([0.0, 0.0, 100.0] + [101.0] * 100)       # choose's start, the check's start and end, then after
    monkeypatch.setattr(nt, "_clock", lambda: next(ticks))
    monkeypatch.setattr(nt, "_spent", [0.0])
    params = sample_model()
    nb.generate(params, [[np.zeros((1, 64)), np.zeros((1, 64))] for _ in range(2)], 1, 5, 0.9, 0, 1.0, False,
                np.random.default_rng(0), {"chars": 10 ** 6})
    assert nt.cached(shape_of(params))["check_seconds"] == 100.0
    assert nt._spent[0] == 1.0


def test_tuning_off_keeps_the_fixed_sampler_rule(sampler, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "off")
    monkeypatch.setattr(nts, "measure", lambda *a: pytest.fail("measured with tuning off"))
    params = sample_model(H=64)                       # below 2 * SAMPLE_ROWS_PER_THREAD: one thread by the rule
    nt.store(shape_of(params), {"choice": "team", "rows": []})                 # not read when off
    (got, _, _), (want, _, _) = sample_both(params, cache={"chars": 10 ** 6})
    np.testing.assert_array_equal(got, want)
    assert sampler == []


def test_tune_command_measures_the_sampler(auto, sampler, monkeypatch):
    from click.testing import CliRunner

    import cli
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    r = CliRunner().invoke(cli.main, ["tune", "--configs", "E8,H64,L2,B4,T5,V50"])
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("sample lstm")]
    assert {row[row.index("float32") + 2] for row in rows} == {"one", "team"}
    assert sum("<-" in row for row in rows) == 1
    desc = nts.describe("lstm", 2, 64, 8, 50, np.float32, True)       # 256 characters pay for the table
    import numba
    assert nt.cached(nts.key_of(desc, numba.get_num_threads()))["choice"] in ("one", "team")


def test_tune_command_measures_the_sampler_with_and_without_the_table(auto, sampler, monkeypatch):
    """At V = 600 a 256-character text reads layer 0 as a product and a long one from the table:
    both samplers get a record, as a long generation (or `bench`) asks for the table's."""
    from click.testing import CliRunner

    import cli
    import numba
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    r = CliRunner().invoke(cli.main, ["tune", "--configs", "E8,H64,L2,B4,T5,V600"])
    assert r.exit_code == 0, r.output
    for table in (False, True):
        desc = nts.describe("lstm", 2, 64, 8, 600, np.float32, table)
        assert nt.cached(nts.key_of(desc, numba.get_num_threads()))["choice"] in ("one", "team"), table


def test_tune_command_measures_each_cells_sampler(auto, sampler, monkeypatch):
    """--cell lstm,gru: a sample row and a cached record for each cell's sampler; a cell it does not
    know is one line on stderr and exit 2."""
    from click.testing import CliRunner

    import cli
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    r = CliRunner().invoke(cli.main, ["tune", "--configs", "E8,H64,L2,B4,T5,V50", "--cell", "lstm,gru"])
    assert r.exit_code == 0, r.output
    import numba
    for cell in ("lstm", "gru"):
        assert any(ln.startswith(f"sample {cell}") for ln in r.stdout.splitlines()), r.stdout
        desc = nts.describe(cell, 2, 64, 8, 50, np.float32, True)
        assert nt.cached(nts.key_of(desc, numba.get_num_threads()))["choice"] in ("one", "team")
    bad = CliRunner().invoke(cli.main, ["tune", "--configs", "E8,H64,L2,B4,T5,V50", "--cell", "lstm,grue"])
    assert bad.exit_code == 2 and "unknown cell 'grue'" in bad.stderr and "Traceback" not in bad.output


def _products_a_model_asks(monkeypatch, cell):
    """The products a numba model of E8 H32 L2 B4 T5 V50 measures at its first training step."""
    from lstm_engine.core.model import Model, ModelConfig, init_params
    nt.forget()
    asked = []

    def first_use(product, dtype, prod, fns, kept):
        asked.append(product.shape)
        return kept
    monkeypatch.setattr(nt, "_first_use", first_use)
    cfg = ModelConfig(50, 8, 32, 2, cell=cell)
    model = Model(cfg, nb, init_params(cfg, seed=0))
    ids = np.random.default_rng(0).integers(0, 50, (6, 4))             # (T+1,B)
    model.forward_backward(ids[:-1], ids[1:], model.zero_state(4))
    return asked


@pytest.mark.parametrize("cells", ["gru", "lstm,coupled"])
def test_tune_command_covers_the_products_of_each_cell(auto, monkeypatch, cells):
    """--cell gru tunes the GRU's layers (3H gate columns), so a GRU model of that config finds every
    product in the file; `tune` of the lstm alone leaves the GRU's products to its first use."""
    from click.testing import CliRunner

    import cli
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    config = ["tune", "--configs", "E8,H32,L2,B4,T5,V50"]
    assert CliRunner().invoke(cli.main, config).exit_code == 0
    assert "20x32x96" in _products_a_model_asks(monkeypatch, "gru")             # x W_x of a 3H layer
    r = CliRunner().invoke(cli.main, config + ["--cell", cells])
    assert r.exit_code == 0, r.output
    assert ("20x32x96" in r.stdout) and ("20x32x128" in r.stdout) == ("lstm" in cells)
    for cell in cells.split(","):
        assert _products_a_model_asks(monkeypatch, cell) == []


def test_tune_command_measures_the_thread_plan(auto, monkeypatch):
    from click.testing import CliRunner

    import cli
    import numba
    if numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    ntp.forget()
    monkeypatch.setattr(nb, "PARALLEL_MIN_MACS", 0)
    use(monkeypatch, Stubs(own="slow", fast="fast"))
    r = CliRunner().invoke(cli.main, ["tune", "--configs", "E8,H16,L1,B4,T5,V50"])
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.split()[:5] == ["layer", "plan", "T5", "B4", "H16"]]
    assert {row[row.index("float32") + 2] for row in rows} == {"one", "rows", "units"}
    assert sum("<-" in row for row in rows) == 1
    key = ntp.key_of(5, 4, 16, "float32", numba.get_num_threads())
    assert nt.cached(key)["choice"] in ("one", "rows", "units")


# ----------------------------------------------------------------------------
# The training thread plan (numba_tune_plan.py)
# ----------------------------------------------------------------------------

from lstm_engine.backends import numba_tune_plan as ntp  # noqa: E402

RULE = (2, 2, None)                                         # the rule's batch split on two threads


@pytest.fixture
def plan_auto(auto):
    ntp.forget()
    yield auto
    ntp.forget()


def stub_probe(seconds, wrong=(), cold=()):
    """probe() of fixed outputs; each plan's run sleeps its seconds; `wrong` plans are off by 1e-3,
    `cold` ones not compiled.  -> (probe, runs: plan names in call order)."""
    names = {plan: name for name, plan in ntp.plans(4, 8, 2).items()}
    out = (np.ones((3, 4, 8)), np.ones((16, 32)))
    runs = []

    def run(plan):
        runs.append(names[plan])
        time.sleep(seconds[names[plan]])
        return tuple(a * 1.001 for a in out) if names[plan] in wrong else out
    return (lambda: (lambda plan: names[plan] not in cold, run)), runs


def test_the_plan_is_measured_once_and_the_fastest_kept_beyond_the_margin(plan_auto, capsys):
    probe, runs = stub_probe({"one": 0.004, "rows": 0.003, "units": 0.0})
    assert ntp.choose(3, 4, 8, np.float32, 2, RULE, probe) == (2, None, 2)
    assert set(runs) == {"one", "rows", "units"} and "layer plan T3 B4 H8" in capsys.readouterr().err
    ntp.forget()
    runs.clear()
    assert ntp.choose(3, 4, 8, np.float32, 2, RULE, probe) == (2, None, 2) and runs == []   # from the file
    probe, _ = stub_probe({"one": 0.03, "rows": 0.03, "units": 0.03})     # equal (a sleep's overshoot, ~1 ms
    assert ntp.choose(3, 4, 9, np.float32, 2, RULE, probe) == RULE          # here, inside the margin): the rule's


def test_a_plan_whose_layer_differs_is_never_chosen(plan_auto):
    probe, _ = stub_probe({"one": 0.004, "rows": 0.004, "units": 0.0}, wrong=("units",))
    assert ntp.choose(3, 4, 8, np.float32, 2, RULE, probe) == RULE
    (record,) = json.loads(plan_auto.read_text())["entries"].values()
    assert {r["name"]: r["valid"] for r in record["rows"]} == {"one": True, "rows": True, "units": False}


def test_uncompiled_plans_are_not_run_and_nothing_is_recorded_without_two(plan_auto, capsys):
    probe, runs = stub_probe({"one": 0.0, "rows": 0.004, "units": 0.0}, cold=("units",))
    assert ntp.choose(3, 4, 8, np.float32, 2, RULE, probe) == (None, None, None) and "units" not in runs
    probe, runs = stub_probe({"one": 0.0, "rows": 0.0, "units": 0.0}, cold=("one", "units"))
    assert ntp.choose(3, 4, 9, np.float32, 2, RULE, probe) == RULE and runs == []
    assert "thread plans not measured: one, units not compiled" in capsys.readouterr().err
    assert len(json.loads(plan_auto.read_text())["entries"]) == 1


def test_tuning_off_keeps_the_rules_plan(plan_auto, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "off")
    assert ntp.choose(3, 4, 8, np.float32, 2, RULE, lambda: pytest.fail("probed with tuning off")) == RULE


@pytest.mark.parametrize("plan", ["one", "rows", "units"])
def test_a_layer_on_the_recorded_plan_matches_the_reference(plan_auto, monkeypatch, rng, plan):
    """A record names the plan for the layer's shape: the fused kernels run on it (their thread
    arguments spied) and the layer forward and backward match the reference."""
    import numba
    if numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(nb, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(nt, "TUNE_MIN_MACS", 1 << 40)                 # the GEMMs own: the fused kernels run
    T, B, I, H, dtype = 4, 3, 13, 13, "float64"
    nthreads = numba.get_num_threads()
    nt.store(ntp.key_of(T, B, H, dtype, nthreads), {"choice": plan, "rows": []})
    K = nb._kernels().lstm
    seen = []
    for name in ("lstm_forward_kernel", "lstm_backward_kernel"):
        monkeypatch.setattr(K, name, lambda *a, _k=getattr(K, name): seen.append(a[-3:]) or _k(*a))
    compare_layer(f"layer on the {plan} plan", layer_inputs(rng, T, B, I, H, dtype), dtype)
    assert seen == [ntp.plans(B, H, nthreads)[plan]] * 2


def test_the_real_probe_keeps_every_plan_within_the_check():
    """The layer the plans are checked on is not chaotic: at B = 50 the batch split changes which
    register blocks compute the last rows on AVX-512 (8 x 6 + 2 on one thread, 8 + 8 + 9 a half),
    and on weights drawn 0.5 N(0, 1) that last-bit difference grew to 1.9e-5 in 50 steps, failing
    the rows plan.  On weights drawn as the model's init, every plan stays 10x inside the tolerance.
    AVX2's 5-row blocks cut 50 rows and each half's 25 alike: there the split is bit for bit."""
    from lstm_engine.kernels.numba import gemm
    _, run = nb._plan_probe(50, 50, 128, np.float32)
    every = ntp.plans(50, 128, 2)                                  # compiles the plans' kernels when cold
    outs = {name: run(plan) for name, plan in every.items()}
    ref = outs["one"]
    for name, out in outs.items():
        err = max(float(np.abs(a - r).max() / np.abs(r).max()) for a, r in zip(out, ref))
        assert err <= ntp.TOLERANCE[np.dtype(np.float32)] / 10, (name, err)
    same_blocks = 50 % gemm.MR == 0 and 25 % gemm.MR == 0 and not gemm.LAST
    assert np.array_equal(outs["rows"][0], ref[0]) == same_blocks  # the split rounds otherwise where its blocks differ


def test_an_unmeasured_sampler_shape_follows_the_fixed_rule(sampler, monkeypatch):
    """Busy (or the budget spent): nothing measured or recorded, and the rule's team runs where
    the rule says so (H = 128 on two threads)."""
    monkeypatch.setattr(nt, "busy", lambda: "load 9.0 on 2 cores")
    monkeypatch.setattr(nts, "measure", lambda *a: pytest.fail("measured on a busy machine"))
    params = sample_model(H=128)
    (got, _, _), (want, _, _) = sample_both(params, cache={"chars": 10 ** 6})
    np.testing.assert_array_equal(got, want)
    assert sampler and nt.cached(shape_of(params)) is None


_PIN_SCRIPT = """
import lstm_engine.backends.numba_backend as nb
nb._kernels()
from numba.np.linalg import ensure_blas
ensure_blas()                                   # what the blas candidate's first np.dot loads
from threadpoolctl import threadpool_info
for lib in threadpool_info():
    if lib["user_api"] == "blas":
        print(lib["filepath"], lib["num_threads"])
"""


def test_every_blas_is_pinned_to_one_thread_when_the_kernels_load():
    """SciPy's BLAS (the blas candidate's) is pinned with NumPy's, in a process that had not
    imported SciPy: an unpinned pool called from numba's threads runs several times slower and
    slows the kernels after it."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", _PIN_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    libs = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
    if not any("scipy.libs" in path for path in libs):
        pytest.skip(f"SciPy has no BLAS of its own here: {sorted(libs)}")
    assert set(libs.values()) == {"1"}, libs


def test_the_blas_kernel_in_the_key_follows_openblas_coretype():
    """OPENBLAS_CORETYPE picks OpenBLAS's kernels at load: the key names them, so a choice timed on
    one kernel is not reused on another (blas against own flips with it on an AVX-512 CPU)."""
    script = "from lstm_engine.backends import numba_backend as nb, numba_tune as nt; nb._kernels(); print(nt.blas_kernel())"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.strip() == "None":
        pytest.skip("no BLAS here reports its kernel (not OpenBLAS)")
    assert r.stdout.strip() == "Haswell", r.stdout
