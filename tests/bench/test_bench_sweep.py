"""bench --what memory (peak resident memory in a fresh process) and bench --sweep (table, JSON, PNG).

Tiny sizes only; no speed and no memory figure is asserted beyond being the run's own numbers.
"""
import json
import os
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from lstm_engine.bench import memory as bench_memory
from lstm_engine.bench import sweep as bench_sweep
from lstm_engine.bench.harness import CONFIGS, run_bench
from lstm_engine.bench.report import format_memory
from lstm_engine.cli import main
from lstm_engine.errors import UserError

FAST = dict(seconds=0.05, repeats=2, threads=1)
PNG = b"\x89PNG\r\n\x1a\n"


# -- memory ---------------------------------------------------------------------------------------

def test_memory_rows_side_by_side_with_the_torch_peer():
    pytest.importorskip("torch")
    _, rows = run_bench("numpy,torch-cpu", "tiny", what="memory", **FAST)
    by = {r["backend"]: r for r in rows}
    assert set(by) == {"numpy", "torch-cpu"} and all(r["what"] == "memory" for r in rows)
    for r in rows:
        assert r["status"] == "ok" and r["valid"], r["reason"]
        assert r["peak_rss_bytes"] >= r["import_rss_bytes"] > 0 and r["memory_steps"] == bench_memory.MEMORY_STEPS
    assert by["torch-cpu"]["torch_imported"] and not by["numpy"]["torch_imported"]   # fresh processes
    assert by["numpy"]["memory_vs_torch"] == by["numpy"]["peak_rss_bytes"] / by["torch-cpu"]["peak_rss_bytes"]
    table = format_memory(rows)
    assert "peak MiB" in table and f"{by['numpy']['peak_rss_bytes'] / 2 ** 20:,.0f}" in table


def test_the_parents_memory_does_not_count():
    big = np.ones(400 * 2 ** 20 // 8)                   # 400 MiB touched in this process
    got = bench_memory.measure("numpy", CONFIGS["tiny"], steps=1)
    assert got["status"] == "ok", got["reason"]
    assert got["peak_rss_bytes"] < big.nbytes            # the child's own peak, not the parent's
    assert got["peak_rss_bytes"] >= got["import_rss_bytes"]


def test_a_child_that_fails_is_a_row_with_its_last_line(monkeypatch):
    monkeypatch.setattr(bench_memory, "_child_argv", lambda *a: [sys.executable, "-c", "raise SystemExit('boom')"])
    got = bench_memory.measure("numpy", CONFIGS["tiny"])
    assert got["status"] == "error" and got["reason"] == "boom" and got["peak_rss_bytes"] is None


# -- sweep ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, needle", [("width=8", "DIMENSION=N"), ("hidden=", "DIMENSION=N"),
                                          ("hidden=0,8", "between 1"), ("vocab=1", "between 2"),
                                          ("hidden=8;rm", "DIMENSION=N")])
def test_bad_sweeps_are_refused(spec, needle):
    with pytest.raises(UserError, match=needle):
        bench_sweep.parse_sweep([spec])


def test_sweep_rows_table_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    machine, rows = bench_sweep.run_sweep(["hidden=8,16", "batch=1,3"], backends="numpy", configs="tiny",
                                          what="train,sample", **FAST)
    points = [(r["sweep_dim"], r["sweep_value"], r["what"]) for r in rows]
    assert points == [(d, v, w) for d, vs in (("hidden", (8, 16)), ("batch", (1, 3))) for v in vs
                      for w in ("train", "sample")]
    assert [r["H"] for r in rows if r["sweep_dim"] == "hidden"] == [8, 8, 16, 16]
    assert [r["B"] for r in rows if r["sweep_dim"] == "batch"] == [1, 1, 3, 3]
    assert all(r["valid"] and r["E"] == 16 for r in rows)
    paths, note = bench_sweep.write_outputs(str(tmp_path / "s"), machine, rows, "lstm-engine bench --sweep ...")
    assert note == "" and paths == [str(tmp_path / f"s.{x}") for x in ("md", "json", "png")]
    md = (tmp_path / "s.md").read_text()
    for r in rows:                                       # every figure of the run is in the table
        assert f"| {r['sweep_value']} | {r['shape']} | {r['chars_per_s']:,.0f} |" in md
    assert machine["cpu"] in md and "lstm-engine bench --sweep" in md
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_sweep_against_torch_has_the_ratio_column(tmp_path):
    pytest.importorskip("torch")
    machine, rows = bench_sweep.run_sweep(["hidden=8,16"], backends="numpy,torch-cpu", configs="tiny",
                                          what="train", **FAST)
    md = bench_sweep.markdown(machine, rows)
    assert "| hidden | shape | numpy chars/s | torch-cpu chars/s | numpy / torch-cpu |" in md
    for r in rows:
        if r["backend"] == "numpy":
            assert f"{r['vs_torch']:.2f}x |" in md.split(f"| {r['sweep_value']} |")[1].splitlines()[0]


def test_sweep_without_matplotlib_writes_the_table_and_says_so(tmp_path, monkeypatch):
    machine, rows = bench_sweep.run_sweep(["hidden=8"], backends="numpy", configs="tiny", what="forward", **FAST)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths, note = bench_sweep.write_outputs(str(tmp_path / "s"), machine, rows)
    assert paths == [str(tmp_path / "s.md"), str(tmp_path / "s.json")] and "matplotlib" in note
    assert not (tmp_path / "s.png").exists()


def test_cli_sweep_and_memory(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    prefix = tmp_path / "sw"
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny", "--what", "forward,memory",
                                    "--sweep", "hidden=8,16", "--sweep-out", str(prefix), "--seconds", "0.05",
                                    "--repeats", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("machine: ") and "## forward, lstm: hidden swept from tiny" in res.stdout
    for h in (8, 16):                                     # a timed row and a memory row per size
        assert f"| {h} | E16,H{h},L1,B1,T25 | " in res.stdout and f"tiny:hidden={h} " in res.stdout
    assert "peak MiB" in res.stdout
    assert (tmp_path / "sw.png").read_bytes()[:8] == PNG and (tmp_path / "sw.md").exists()


def test_cli_sweep_refuses_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny", "--sweep", "hidden=8",
                                    "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "--sweep-out" in res.stderr


def test_cli_sweep_into_a_missing_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny", "--what", "forward",
                                    "--sweep", "hidden=8", "--sweep-out", str(tmp_path / "nowhere" / "s"),
                                    "--seconds", "0.05", "--repeats", "1", "--threads", "1"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1       # refused before running
    assert res.stderr.startswith("error: --sweep-out") and "does not exist" in res.stderr
    assert not (tmp_path / "nowhere").exists()


def test_an_interrupted_memory_run_leaves_no_process(monkeypatch, tmp_path):
    pidfile = tmp_path / "pid"
    script = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    monkeypatch.setattr(bench_memory, "_child_argv", lambda *a: [sys.executable, "-c", script])
    real_wait = bench_memory.subprocess.Popen.wait

    def interrupted(self, timeout=None):           # Ctrl-C once the child is up
        while not pidfile.exists() or not pidfile.read_text():
            time.sleep(0.02)
        if timeout is not None:
            raise KeyboardInterrupt
        return real_wait(self)
    monkeypatch.setattr(bench_memory.subprocess.Popen, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_memory.measure("numpy", CONFIGS["tiny"])
    pid = int(pidfile.read_text())
    for _ in range(100):                            # the grandchild is gone: killed (a zombie counts as gone)
        if not running(pid):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the memory child {pid} still runs")


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:                                 # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def test_a_jit_backend_fills_its_cache_before_the_measured_run(monkeypatch):
    calls = []

    def fake(name, cfg, steps=bench_memory.MEMORY_STEPS, threads=None):
        calls.append((name, steps))
        return {"status": "ok", "reason": "", "peak_rss_bytes": 100 * steps, "import_rss_bytes": 1}
    monkeypatch.setattr(bench_memory, "measure", fake)
    _, rows = run_bench("numba,numpy", "tiny", what="memory", **FAST)
    assert calls == [("numba", 1), ("numba", bench_memory.MEMORY_STEPS), ("numpy", bench_memory.MEMORY_STEPS)]
    assert [r["peak_rss_bytes"] for r in rows] == [100 * bench_memory.MEMORY_STEPS] * 2   # the warm-up is not reported
