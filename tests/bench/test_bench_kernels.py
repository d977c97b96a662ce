"""Per-kernel micro-benchmarks: versions are validated against the reference before they are timed;
the experiments under benchmarks/dev are loaded by benchmarks/dev/micro.py, not by the package."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_engine.backends import numpy_backend as nb
from lstm_engine.bench.kernels import format_micro, max_error, run_micro
from lstm_engine.errors import UserError

FAST = dict(configs="tiny", backends="numpy", seconds=0.02, repeats=2)
DEV = Path(__file__).resolve().parents[2] / "benchmarks" / "dev"


@pytest.fixture(scope="module")
def micro():
    """benchmarks/dev/micro.py as a module."""
    spec = importlib.util.spec_from_file_location("bench_micro_script", DEV / "micro.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def off_by_a_little(x, W, b, h0, c0):
    hs, hT, cT, cache = nb.lstm_forward(x, W, b, h0, c0)
    return hs * 1.001, hT, cT, cache


def adam_without_first_moment(params, grads, m, v, step, lr, beta1, beta2, eps, grad_scale=1.0):
    saved = {n: a.copy() for n, a in m.items()}
    nb.adam_update(params, grads, m, v, step, lr, beta1, beta2, eps, grad_scale)
    for n in m:
        m[n][...] = saved[n]                 # the bug: m is not updated


def crashes(*args):
    raise RuntimeError("bad launch")


VERSIONS = {
    "lstm_forward": {"same": nb.lstm_forward, "off": off_by_a_little},
    "lstm_backward": {"same": nb.lstm_backward, "boom": crashes},
    "adam_update": {"no_m": adam_without_first_moment},
    "generate": {"same": nb.generate},
}


def test_versions_are_validated_then_timed():
    rows, notes = run_micro(kernels="", modules=[("fake", "numpy", VERSIONS)], **FAST)
    by = {(r["kernel"], r["candidate"]): r for r in rows}
    assert set(k for k, _ in by) == {"lstm_forward", "lstm_backward", "softmax_xent", "adam_update", "generate"}
    for kernel in ("lstm_forward", "lstm_backward", "softmax_xent", "adam_update", "generate"):
        ref = by[(kernel, "numpy")]
        assert ref["valid"] and ref["max_abs_err"] == 0 and ref["vs_numpy"] == pytest.approx(1.0)
        assert ref["median_us"] > 0
    for kernel in ("lstm_forward", "lstm_backward", "generate"):
        assert by[(kernel, "fake:same")]["valid"] and by[(kernel, "fake:same")]["max_abs_err"] == 0
    off = by[("lstm_forward", "fake:off")]
    assert off["status"] == "invalid" and 1e-4 < off["max_rel_err"] < 2e-3 and off["median_us"] > 0
    assert by[("adam_update", "fake:no_m")]["status"] == "invalid"
    boom = by[("lstm_backward", "fake:boom")]
    assert boom["status"] == "error" and "bad launch" in boom["reason"] and boom["median_us"] is None
    text = format_micro(rows)
    assert "fake:off" in text and "INVALID" in text and "bad launch" in text


def test_max_error_is_per_output_relative():
    ref = [np.array([100.0, 1.0]), np.array([1e-5, 2e-5])]
    got = [np.array([100.0, 1.0]), np.array([1e-5, 3e-5])]     # the small output is 50% off
    err, rel = max_error(got, ref)
    assert err == pytest.approx(1e-5) and rel == pytest.approx(0.5)
    assert max_error([np.array([np.nan])], [np.array([1.0])])[1] == float("inf")


def test_experiments_are_loaded_by_path_and_broken_ones_skipped(tmp_path, micro, monkeypatch):
    """load_versions reads KERNEL_VERSIONS from <root>/<backend>/*.py: the folder names the backend
    unless the module sets BACKEND; a module that fails to import is skipped with its error."""
    (tmp_path / "numba").mkdir()
    (tmp_path / "cupy").mkdir()
    (tmp_path / "numba" / "fake.py").write_text(
        "from lstm_engine.backends import numpy_backend as nb\n"
        "KERNEL_VERSIONS = {'softmax_xent': {'v1': nb.softmax_xent}}\n")
    (tmp_path / "numba" / "other.py").write_text("BACKEND = 'numpy'\nKERNEL_VERSIONS = {'generate': {}}\n")
    (tmp_path / "cupy" / "needs_missing.py").write_text("import a_module_that_is_not_there\n")
    (tmp_path / "numba" / "plain.py").write_text("X = 1\n")
    for name in ("numba_fake", "numba_other", "cupy_needs_missing", "numba_plain"):
        monkeypatch.delitem(sys.modules, f"dev_{name}", raising=False)
    found, skipped = micro.load_versions(tmp_path)
    assert [(m, be, list(v)) for m, be, v in found] == [("numba_fake", "numba", ["softmax_xent"]),
                                                        ("numba_other", "numpy", ["generate"])]
    assert [m for m, _ in skipped] == ["cupy_needs_missing"] and "a_module_that_is_not_there" in skipped[0][1]
    assert "dev_cupy_needs_missing" not in sys.modules


def test_the_package_does_not_import_the_experiments():
    """lstm_engine has no way to reach benchmarks/dev: no discovery, no hooks in the backend."""
    import inspect

    import lstm_engine.bench.kernels as harness
    from lstm_engine.backends import numba_backend
    assert not hasattr(harness, "discover_modules")
    assert "kernel" not in inspect.signature(numba_backend.softmax_xent).parameters
    assert not hasattr(numba_backend, "_lstm_forward") and not hasattr(numba_backend, "_lstm_backward")


def test_numba_experiments_validate(micro):
    """The softmax versions of benchmarks/dev/numba/versions.py agree with the reference (tiny shape)."""
    pytest.importorskip("numba")
    modules, skipped = micro.load_versions()
    assert "numba_versions" in [m for m, _, _ in modules], skipped
    rows, _ = run_micro(kernels="softmax_xent", configs="tiny", backends="numba", seconds=0.02, repeats=1,
                        modules=modules)
    by = {r["candidate"]: r for r in rows}
    assert {"numba_versions:v1", "numba_versions:v2"} <= set(by)
    for name in ("numba", "numba_versions:v1", "numba_versions:v2"):
        assert by[name]["valid"] and by[name]["median_us"] > 0, by[name]


def test_unknown_kernel_or_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown kernel 'gates'"):
        run_micro(kernels="gates", modules=[], **FAST)
    with pytest.raises(UserError, match="unknown backend 'tpu'"):
        run_micro(kernels="adam", modules=[], configs="tiny", backends="tpu")


def test_micro_script_prints_the_table_and_writes_json(tmp_path, micro):
    import json

    from click.testing import CliRunner
    out = tmp_path / "micro.jsonl"
    res = CliRunner().invoke(micro.main, ["--kernels", "softmax-xent,adam", "--configs", "tiny", "--backends",
                                           "numpy", "--seconds", "0.02", "--repeats", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("machine: ") and "softmax_xent  (E16,H32,L1,B1,T25)" in res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["kernel"], r["candidate"]) for r in rows] == [("softmax_xent", "numpy"), ("adam_update", "numpy")]
    assert all(r["valid"] and r["median_us"] > 0 and r["cpu"] for r in rows)
    bad = CliRunner().invoke(micro.main, ["--kernels", "nope"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: unknown kernel 'nope'")
