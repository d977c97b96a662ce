"""The benchmark harness: well-formed rows and JSON, validation that can fail, one-line errors.

No speed is asserted anywhere: only that the numbers are there, finite and consistent.
"""
import json
import math
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from lstm_engine import backends
from lstm_engine.bench import harness as bench
from lstm_engine.bench import report as bench_report
from lstm_engine.backends import numpy_backend
from lstm_engine.bench.harness import BenchConfig, parse_configs, run_bench, time_calls
from lstm_engine.cli import main
from lstm_engine.errors import UserError

from parity import backend_params

FAST = dict(seconds=0.05, repeats=2, threads=1)
REQUIRED = ("backend", "config", "what", "chars_per_s", "gflops", "valid", "status", "reason", "device",
            "frac_peak", "frac_bound", "vs_torch", "compile_s", "spread_pct", "flops_per_char",
            "cpu", "cores", "blas", "blas_threads", "numpy_version", "numba_version", "cupy_version",
            "torch_version", "gpu", "date", "sgemm_cpu_gflops")


def check_timed_row(r):
    for key in REQUIRED:
        assert key in r, key
    assert r["status"] == "ok" and r["valid"] is True, r["reason"]
    assert math.isfinite(r["chars_per_s"]) and r["chars_per_s"] > 0
    assert r["chars_per_s_min"] <= r["chars_per_s"] <= r["chars_per_s_max"]
    assert r["gflops"] == pytest.approx(r["flops_per_char"] * r["chars_per_s"] / 1e9)
    assert 0 < r["frac_peak"] == pytest.approx(r["gflops"] / r["sgemm_cpu_gflops"])
    assert r["compile_s"] >= 0 and r["repeats"] == FAST["repeats"] and r["calls_per_repeat"] >= 1
    if r["what"] == "sample" and r["device"] == "cpu":      # the memory-bandwidth bound of the row's weights
        cfg = BenchConfig(r["config"], r["E"], r["H"], r["L"], r["B"], r["T"], r["V"], r["cell"])
        assert r["weight_bytes_per_char"] == cfg.weight_bytes_per_char(*bench.sampler_itemsize(r["backend"]))
        assert r["read_gbps"] > 0
        assert r["bound_chars_per_s"] == pytest.approx(r["read_gbps"] * 1e9 / r["weight_bytes_per_char"])
        assert 0 < r["frac_bound"] == pytest.approx(r["chars_per_s"] / r["bound_chars_per_s"])
    else:
        assert r["frac_bound"] is None and r["bound_chars_per_s"] is None


@pytest.mark.parametrize("name", backend_params())
def test_tiny_runs_for_each_available_backend(name):
    machine, rows = run_bench(name, "tiny", **FAST)
    assert [r["what"] for r in rows] == ["train", "forward", "sample"]
    assert all(r["backend"] == name and r["config"] == "tiny" for r in rows)
    for r in rows:
        check_timed_row(r)
        assert r["cores"] == machine["cores"] and r["threads"] == 1
    assert machine["blas_threads"] in (1, None) and machine["sgemm_cpu_gflops"] > 0


def test_torch_peer_rows_and_ratio():
    pytest.importorskip("torch")
    _, rows = run_bench("numpy,torch-cpu", "tiny", what="train,sample", **FAST)
    by = {(r["backend"], r["what"]): r for r in rows}
    assert set(by) == {("numpy", "train"), ("numpy", "sample"), ("torch-cpu", "train"), ("torch-cpu", "sample")}
    for what in ("train", "sample"):
        peer, mine = by[("torch-cpu", what)], by[("numpy", what)]
        check_timed_row(peer)        # the torch peer starts from the same weights: its loss must agree
        assert mine["torch_peer"] == "torch-cpu"
        # the ratio is paired repeat by repeat (the backends take turns), not a ratio of medians
        pairs = [a / b for a, b in zip(mine["chars_per_s_each"], peer["chars_per_s_each"])]
        assert len(pairs) == FAST["repeats"]
        assert mine["vs_torch"] == pytest.approx(sum(pairs) / len(pairs))    # the median of two
        a, b = mine["chars_per_s_each"]                                      # chars/s at the median time
        assert mine["chars_per_s"] == pytest.approx(2 / (1 / a + 1 / b))


def test_without_torch_the_peer_row_says_so(monkeypatch):
    real = bench.bench_torch.importlib.util.find_spec
    monkeypatch.setattr(bench.bench_torch.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    _, rows = run_bench("numpy,torch", "tiny", what="forward", **FAST)
    peer = [r for r in rows if r["backend"] == "torch"]
    assert len(peer) == 1 and peer[0]["status"] == "unavailable" and "not installed" in peer[0]["reason"]
    assert [r["vs_torch"] for r in rows if r["backend"] == "numpy"] == [None]


def fake_backend(monkeypatch, name, **overrides):
    """Register a copy of the NumPy backend under `name`, with some functions replaced."""
    mod = types.ModuleType(f"fake_{name}_backend")
    for attr in backends.INTERFACE:
        setattr(mod, attr, getattr(numpy_backend, attr))
    mod.NAME = name
    for attr, fn in overrides.items():
        setattr(mod, attr, fn)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(backends.BACKENDS, name, mod.__name__)
    return mod


def test_a_backend_whose_loss_disagrees_is_invalid(monkeypatch):
    def wrong_loss(logits, targets, need_grad=True):
        loss, d = numpy_backend.softmax_xent(logits, targets, need_grad)
        return loss * 1.01, d
    fake_backend(monkeypatch, "broken", softmax_xent=wrong_loss)
    _, rows = run_bench("numpy,broken", "tiny", **FAST)
    broken = {r["what"]: r for r in rows if r["backend"] == "broken"}
    for what in ("train", "forward"):
        assert broken[what]["status"] == "invalid" and broken[what]["valid"] is False
        assert "reference" in broken[what]["reason"] and broken[what]["chars_per_s"] > 0   # still timed
    assert broken["sample"]["valid"] is True                 # sampling never calls softmax_xent
    table = bench_report.format_table(rows)
    assert "INVALID" in table and "broken on tiny (train): invalid" in table


def test_a_wrong_gradient_makes_train_invalid_but_not_forward(monkeypatch):
    def wrong_backward(dhs, dhT, dcT, cache):             # tiny has one layer: the embedding layer's
        dEmb, dW, db, dh0, dc0 = numpy_backend.embed_lstm_backward(dhs, dhT, dcT, cache)
        return dEmb, dW * 1.5, db, dh0, dc0

    def wrong_cell_backward(dhs, dhT, dcT, cache):        # the model's path since it runs any cell
        dEmb, dp, dh0, dc0 = numpy_backend.embed_cell_backward(dhs, dhT, dcT, cache)
        return dEmb, dict(dp, W=dp["W"] * 1.5), dh0, dc0
    cell_path = {"embed_cell_backward": wrong_cell_backward} if hasattr(numpy_backend, "embed_cell_backward") else {}
    fake_backend(monkeypatch, "badgrad", embed_lstm_backward=wrong_backward, **cell_path)
    _, rows = run_bench("badgrad", "tiny", what="train,forward", **FAST)
    by = {r["what"]: r for r in rows}
    assert by["forward"]["valid"] is True
    assert by["train"]["valid"] is False and "grad_norm" in by["train"]["reason"]


def test_each_config_starts_the_numba_tuner_with_a_fresh_first_use_budget(monkeypatch):
    """A config whose first-use tuning spends the whole budget leaves the next config's products to
    be measured: each config gets what a training run of it would have in a process of its own."""
    from lstm_engine.backends import numba_tune
    seen = []

    def spend_it_all(entries, cfg, *args, **kw):
        seen.append((cfg.shape, numba_tune._spent[0]))
        numba_tune._spent[0] += 2 * numba_tune.FIRST_USE_SECONDS
        return []
    monkeypatch.setattr(bench, "bench_config", spend_it_all)
    monkeypatch.setattr(bench, "references", lambda *a, **k: None)
    monkeypatch.setattr(numba_tune, "_spent", [2 * numba_tune.FIRST_USE_SECONDS])   # spent before the bench
    run_bench("numba", "E8,H16,L1,B2,T5,E8,H16,L1,B2,T6", what="train", **FAST)
    assert [spent for _, spent in seen] == [0.0, 0.0] and len({shape for shape, _ in seen}) == 2
    assert numba_tune._spent[0] == 2 * numba_tune.FIRST_USE_SECONDS     # the last config's spending stands


def test_the_numba_runner_asks_about_its_models_products_before_its_first_step(monkeypatch):
    """As a training run does (numba_backend.compile_ahead): the bench's numba rows run with the choices
    a run of the config would make, its first-use budget spent on the biggest products first."""
    from lstm_engine.backends import numba_backend
    from lstm_engine.bench.harness import EngineRunner, make_batch
    asked = []
    monkeypatch.setattr(numba_backend, "tune_first_use", lambda cfg, B, T: asked.append((cfg, B, T)))
    cfg = parse_configs("E8,H16,L2,B3,T5,V40")[0]
    EngineRunner(numba_backend, cfg, make_batch(cfg))
    assert asked == [(cfg.model_config(), 3, 5)]


def test_unusable_and_crashing_backends_give_rows_not_crashes(monkeypatch):
    fake_backend(monkeypatch, "nogpu", is_available=lambda: (False, "no CUDA device found"))

    def crash(*a, **k):
        raise RuntimeError("kernel launch failed")
    fake_backend(monkeypatch, "crashy", generate=crash)
    _, rows = run_bench("nogpu,crashy,numpy", "tiny", what="forward", **FAST)
    by = {r["backend"]: r for r in rows}
    assert by["nogpu"]["status"] == "unavailable" and "no CUDA device found" in by["nogpu"]["reason"]
    assert by["crashy"]["status"] == "error" and "kernel launch failed" in by["crashy"]["reason"]
    assert by["numpy"]["valid"] is True
    assert all(by[n]["chars_per_s"] is None and by[n]["valid"] is False for n in ("nogpu", "crashy"))


def test_cli_writes_json_lines_and_prints_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    out = tmp_path / "bench.jsonl"
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny", "--seconds", "0.05",
                                    "--repeats", "2", "--threads", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("machine: ") and "chars/s" in res.stdout and "GFLOP/s" in res.stdout
    assert "% bound" in res.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["what"] for r in rows] == ["train", "forward", "sample"]
    for r in rows:
        check_timed_row(r)


@pytest.mark.parametrize("args, msg", [
    (["--backends", "numpy,tpu"], "unknown backend 'tpu'"),
    (["--configs", "tiny,huge"], "unknown config 'huge'"),
    (["--configs", "64,128,2"], "config '64,128,2' is not a whole shape"),
    (["--configs", "E64,H128,L2,tiny"], "config 'E64,H128,L2,tiny' is not a whole shape"),
    (["--configs", "E64,H0,L2,B64,T50"], "H must be a positive whole number (got 'H0')"),
    (["--what", "train,backward"], "unknown measurement 'backward'"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--seconds", "0"], "--seconds must be > 0"),
])
def test_cli_bad_names_give_one_line_errors(args, msg, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny", *args])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], res.stderr


def test_parse_configs_names_and_custom_shapes():
    tiny, custom, lettered = parse_configs("tiny,64,128,2,32,50,E8,H16,L1,B2,T3")
    assert (tiny.E, tiny.H, tiny.L, tiny.B, tiny.T, tiny.V) == (16, 32, 1, 1, 25, 65)
    assert (custom.E, custom.H, custom.L, custom.B, custom.T) == (64, 128, 2, 32, 50)
    assert custom.name == "E64,H128,L2,B32,T50" and lettered.name == "E8,H16,L1,B2,T3"
    with pytest.raises(UserError):
        parse_configs("8,16,0,2,3")         # zero layers


def test_flop_model():
    c = BenchConfig("x", E=16, H=32, L=2, B=1, T=1, V=65)
    fwd = 2 * (16 + 32) * 128 + 2 * (32 + 32) * 128 + 2 * 32 * 65
    assert c.flops_per_char("forward") == c.flops_per_char("sample") == fwd
    assert c.flops_per_char("train") == 3 * fwd


def test_bench_help_says_what_a_sample_call_is_and_what_the_columns_mean():
    res = CliRunner().invoke(main, ["bench", "--help"])
    assert res.exit_code == 0
    assert f"{bench.SAMPLE_CHUNK:,} chars a call" in res.output and "% bound" in res.output


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_bytes_per_char_counts_the_models_matrices(cell):
    """Every W_h, every W_x above layer 0, one row of layer 0's table and Wy, from the model's own
    parameter shapes; int8's scales one per column of each of those matrices."""
    c = BenchConfig("x", E=16, H=32, L=3, B=1, T=1, V=70, cell=cell)
    shapes = c.model_config().param_shapes()
    H, G = 32, shapes["W0"][1]
    mats = [(H, G)] + [(H, G)] * 2 + [(shapes[f"W{l}"][0] - H, G) for l in (1, 2)] + [shapes["Wy"]]
    weights = sum(a * b for a, b in mats) + G                       # + the table row of layer 0
    columns = sum(b for _, b in mats)
    assert c.weight_bytes_per_char() == 4 * weights
    assert c.weight_bytes_per_char(2) == 2 * weights
    assert c.weight_bytes_per_char(1, 4) == weights + 4 * columns


def test_read_rate_reads_every_slice():
    """The bound's read: each thread sums its own contiguous slice (checked by value), at a positive rate."""
    from lstm_engine.bench import stream
    a = np.arange(10, dtype=np.float32)
    out = np.zeros(3, np.float32)
    stream.read_slices(a, 3, 2, out)
    assert out.tolist() == [2 * sum(range(0, 3)), 2 * sum(range(3, 6)), 2 * sum(range(6, 10))]
    for nbytes in (4, 12, 4096, 1 << 20):                          # fewer values than threads too
        assert stream.read_rate(nbytes, seconds=0.01) > 0
    assert stream.values_read(12) == 3 and stream.values_read(2) == 1
    assert stream.values_read(1 << 40) * 4 == stream.MAX_READ     # a vocabulary of a million: memory's rate


def test_time_calls_keeps_the_warm_up_apart():
    calls = []

    def fn():
        if not calls:
            import time
            time.sleep(0.05)                 # the "JIT compile" of the first call
        calls.append(1)
    first, per_call, k = time_calls(fn, lambda: None, seconds=0.02, repeats=3)
    assert first >= 0.05 and len(per_call) == 3 and k >= 1
    assert max(per_call) < first
    assert len(calls) >= 1 + 2 + 3 * k      # warm-up, calibration, repeats


class _Recorder:
    """A fake runner that logs each call as its name, for bench_config's turn order."""

    def __init__(self, name, log, ref):
        self.name, self.log, self.ref, self.device = name, log, ref, "cpu"

    def check(self, n):
        return dict(self.ref)

    def sync(self):
        pass

    def train_step(self):
        self.log.append(self.name)

    forward = sample = train_step


def test_backends_take_turns_and_the_ratio_is_paired():
    ref = {"loss": 1.0, "greedy": [1, 2], "train_loss": 1.0, "grad_norm": 1.0, "loss_after_step": 0.9}
    log = []
    entries = [(n, lambda cfg, batch, n=n: _Recorder(n, log, ref), "", "cpu") for n in ("numba", "torch-cpu")]
    cfg = parse_configs("tiny")[0]
    rows = bench.bench_config(entries, cfg, None, ref, ["train"], seconds=0.01, repeats=3)
    assert [r["backend"] for r in rows] == ["numba", "torch-cpu"] and all(r["valid"] for r in rows)
    ks = [r["calls_per_repeat"] for r in rows]
    timed = log[len(log) - 3 * sum(ks):]                     # after both warm-ups: the repeats
    want = (["numba"] * ks[0] + ["torch-cpu"] * ks[1]) * 3   # numba, torch, numba, torch, ...
    assert timed == want
    mine, peer = rows
    mine["chars_per_s_each"], peer["chars_per_s_each"] = [10.0, 90.0, 20.0], [10.0, 30.0, 5.0]
    mine["chars_per_s"], peer["chars_per_s"] = 20.0, 10.0   # the medians
    bench.add_peer_ratios(rows, {"cpu": 1.0})
    assert mine["vs_torch"] == 3.0 and mine["torch_peer"] == "torch-cpu"   # median of 1, 3, 4; not 20 / 10


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _, rows = run_bench("numpy", "tiny", what="forward,sample", **FAST)
    path = tmp_path / "bench.png"
    bench_report.plot(rows, str(path), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib -> ImportError
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny",
                                    "--plot", str(tmp_path / "x.png")])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: --plot needs matplotlib: pip install 'lstm-engine[plot]'"


def test_engine_and_reference_checks_agree_exactly_on_numpy():
    cfg = bench.CONFIGS["tiny"]
    batch = bench.make_batch(cfg)
    a = bench.EngineRunner(numpy_backend, cfg, batch).check()
    b = bench.EngineRunner(numpy_backend, cfg, batch).check()
    assert a == b and all(ok for ok, _ in bench.compare(a, b).values())
    assert np.isclose(a["loss"], np.log(65), rtol=0.05)      # near-uniform predictions at initialisation


def test_bfloat16_products_widen_the_check_tenfold_and_say_so():
    ref = {"loss": 4.0, "greedy": [1, 2], "train_loss": 4.0, "grad_norm": 1.0, "loss_after_step": 3.9}
    got = dict(ref, grad_norm=1.004)                            # 4e-3: over NORM_RTOL, within 10x
    assert not bench.compare(got, ref)["train"][0]
    ok, why = bench.compare(got, ref, bench.BF16_SCALE)["train"]
    assert ok and "bfloat16" in why
    assert not bench.compare(dict(ref, grad_norm=1.02), ref, bench.BF16_SCALE)["train"][0]


_THREADS_ORDER_SCRIPT = r"""
import sys
import numba.np.ufunc.parallel as par
launch = par._launch_threads
seen = []
def spy():
    seen.append("torch" in sys.modules)
    return launch()
par._launch_threads = spy
from lstm_engine.bench import machine
with machine.thread_settings(1, torch_too=True):
    pass
print(seen[0] if seen else "not launched")
"""


def test_bench_threads_imports_torch_before_numba_starts_its_threads():
    """`bench --threads N` (thread_settings) imports torch before numba starts its OpenMP threads:
    a torch imported after them runs its steps slower, and every ratio against it comes out too
    high (benchmarks/README.md, "How to read the numbers")."""
    pytest.importorskip("torch")
    pytest.importorskip("numba")
    import subprocess
    r = subprocess.run([sys.executable, "-c", _THREADS_ORDER_SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "True", r.stdout
