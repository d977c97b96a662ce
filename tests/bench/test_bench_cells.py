"""bench --cell, vocabulary sizes in custom configs, and the machine fields every figure carries.

No speed is asserted: only that rows exist for what was asked, carry their cell, and are validated.
"""
import json
import os

import pytest
from click.testing import CliRunner

from lstm_engine.bench import harness as bench
from lstm_engine.bench import machine as bench_machine
from lstm_engine.bench import torch_peer
from lstm_engine.bench.harness import parse_configs, run_bench
from lstm_engine.bench.report import format_table
from lstm_engine.cli import main
from lstm_engine.errors import UserError

from test_bench import fake_backend

FAST = dict(seconds=0.05, repeats=2, threads=1)


# -- vocabulary size in a config -------------------------------------------------------------------

def test_custom_and_named_configs_take_a_vocabulary_size():
    tang, seed, plain = parse_configs("E128,H256,L2,B32,T50,V6746,seed,v300,8,16,1,2,3")
    assert (tang.E, tang.H, tang.L, tang.B, tang.T, tang.V) == (128, 256, 2, 32, 50, 6746)
    assert tang.name == "E128,H256,L2,B32,T50,V6746"
    assert (seed.E, seed.H, seed.V) == (128, 128, 300) and seed.name == "seed-V300"
    assert plain.V == bench.VOCAB and plain.name == "E8,H16,L1,B2,T3"


@pytest.mark.parametrize("spec", ["tiny,V1", "tiny,V0", f"tiny,V{bench.MAX_VOCAB + 1}", "V300"])
def test_bad_vocabulary_sizes_are_refused(spec):
    with pytest.raises(UserError):
        parse_configs(spec)


def test_a_vocabulary_size_reaches_the_model_and_the_flop_model():
    _, rows = run_bench("numpy", "E8,H16,L1,B2,T5,V300", what="train,sample", **FAST)
    assert {r["V"] for r in rows} == {300} and all(r["valid"] for r in rows)
    fwd = 2 * (8 + 16) * 64 + 2 * 16 * 300
    assert [r["flops_per_char"] for r in rows] == [3 * fwd, fwd]


def test_a_vocabulary_beyond_memory_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "E4096,H65536,L3,B512,T512,V1000000",
                                    "--what", "forward"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "memory" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# -- cells ----------------------------------------------------------------------------------------

def test_unknown_cell_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny", "--cell", "lstm,rnn"])
    assert res.exit_code == 2 and res.stderr.strip() == \
        "error: unknown cell 'rnn'; choose from lstm, peephole, coupled, gru"


def test_gru_against_nn_gru_rows_carry_the_cell():
    pytest.importorskip("torch")
    _, rows = run_bench("numpy,torch-cpu", "tiny", what="train,sample", cell="gru", **FAST)
    by = {(r["backend"], r["what"]): r for r in rows}
    assert set(by) == {(b, w) for b in ("numpy", "torch-cpu") for w in ("train", "sample")}
    for r in rows:
        assert r["cell"] == "gru" and r["status"] == "ok" and r["valid"], r["reason"]   # nn.GRU agrees
    assert by["numpy", "train"]["torch_peer"] == "torch-cpu" and by["numpy", "train"]["vs_torch"] > 0
    G = 3 * 32                                                           # tiny: E16 H32 L1, three gate blocks
    assert by["numpy", "sample"]["flops_per_char"] == 2 * (16 + 32) * G + 2 * 32 * 65


def test_a_wrong_gru_weight_mapping_is_caught(monkeypatch):
    pytest.importorskip("torch")
    real = torch_peer.TorchRunner._load

    def swapped(self, P):              # bias_ih and bias_hh exchanged: the n gate sees b_hn outside r * (...)
        real(self, {**P, "bx0": P["bh0"], "bh0": P["bx0"]})
    monkeypatch.setattr(torch_peer.TorchRunner, "_load", swapped)
    _, rows = run_bench("torch-cpu", "tiny", what="forward", cell="gru", **FAST)
    assert rows[0]["status"] == "invalid" and "reference" in rows[0]["reason"]


def test_peephole_and_coupled_run_beside_the_engines_own_lstm():
    pytest.importorskip("torch")
    _, rows = run_bench("numpy,torch-cpu", "tiny", what="train", cell="peephole,coupled", **FAST)
    by = {(r["backend"], r["cell"]): r for r in rows}
    assert set(by) == {(b, c) for b in ("numpy", "torch-cpu") for c in ("lstm", "peephole", "coupled")}
    for cell in ("peephole", "coupled"):
        mine, lstm = by["numpy", cell], by["numpy", "lstm"]
        assert mine["valid"] and mine["vs_torch"] is None
        pairs = sorted(a / b for a, b in zip(mine["chars_per_s_each"], lstm["chars_per_s_each"]))
        assert mine["vs_lstm"] == pytest.approx(sum(pairs) / 2)           # paired, median of two
        peer = by["torch-cpu", cell]
        assert peer["status"] == "skipped" and f"PyTorch has no {cell} cell" in peer["reason"]
    table = format_table(rows)
    assert "vs lstm" in table.splitlines()[0] and "torch-cpu on tiny peephole (all): skipped" in table


def test_a_backend_without_the_cell_is_skipped_not_a_crash(monkeypatch):
    from lstm_engine.backends import numpy_backend

    def only_lstm(cell, *args):
        if cell != "lstm":
            raise UserError(f"the nocells backend has no {cell} cell; use --backend numpy")
        return numpy_backend.embed_cell_forward(cell, *args)
    fake_backend(monkeypatch, "nocells", embed_cell_forward=only_lstm)
    _, rows = run_bench("nocells,numpy", "tiny", what="forward", cell="lstm,gru", **FAST)
    by = {(r["backend"], r["cell"]): r for r in rows}
    assert by["nocells", "lstm"]["valid"] and by["numpy", "gru"]["valid"]
    assert by["nocells", "gru"]["status"] == "skipped" and "no gru cell" in by["nocells", "gru"]["reason"]


def test_cli_json_records_carry_the_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    out = tmp_path / "b.jsonl"
    res = CliRunner().invoke(main, ["bench", "--backends", "numpy", "--configs", "tiny", "--cell", "coupled,gru",
                                    "--what", "forward", "--seconds", "0.05", "--repeats", "2", "--threads", "1",
                                    "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["cell"], r["valid"]) for r in rows] == [("lstm", True), ("coupled", True), ("gru", True)]
    assert rows[1]["vs_lstm"] > 0 and rows[2]["vs_lstm"] > 0


# -- the machine ----------------------------------------------------------------------------------

def test_machine_fields_name_the_cpu_blas_kernel_and_threads():
    m = bench_machine.machine_info(1)
    for key in ("cpu", "cpu_id", "cpu_isa", "blas", "blas_kernel", "blas_threads", "numba_threads", "torch_isa"):
        assert key in m
    m["sgemm_cpu_gflops"] = 1.0
    line = bench_machine.machine_line(m)
    assert m["cpu"] in line and f"threads: {m['blas_threads']}" in line
    if m["blas_kernel"]:
        assert f"kernel {m['blas_kernel']}" in line
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
        want = next((x for x in ("avx512f", "avx2", "avx", "sse4_2") if x in flags), None)
        assert (m["cpu_isa"] or "").split("+")[0] == (want or "")
        assert m["cpu_id"] and m["cpu_id"] in line



def test_machine_line_names_a_gemm_choice_other_than_auto(monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "auto")
    line = bench_machine.machine_line(bench_machine.machine_info(1))
    assert "GEMMs:" not in line and "sampler weights" not in line
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "bf16")
    m = bench_machine.machine_info(1)
    line = bench_machine.machine_line(m)
    assert m["numba_gemm"] == "bf16" and "GEMMs: bf16 (LSTM_ENGINE_TUNE), sampler weights: bf16" in line


# -- the PyTorch peer's filtered draw --------------------------------------------------------------

@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.6), (40, 0.9)])
def test_the_torch_peers_filtered_draw_keeps_the_references_set(top_k, top_p):
    """sample_weights.py --top-k/--top-p: the peer's draws fall in the reference's kept set
    (numpy_backend.filter_probs) and hit each kept id about as often as its probability says."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from lstm_engine.backends import numpy_backend as ref
    peer = torch_peer.TorchRunner("cpu", parse_configs("tiny")[0], bench.make_batch(parse_configs("tiny")[0]))
    logits = (np.random.default_rng(top_k).standard_normal(300) * 2).astype(np.float32)     # (V,)
    want = ref.filter_probs(logits, 1.0, top_k, top_p)                                        # (V,)
    ids = [int(peer._filtered_draw(torch.from_numpy(logits), top_k, top_p)) for _ in range(4000)]
    freq = np.bincount(ids, minlength=300) / len(ids)                                         # (V,)
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(want))
    assert np.abs(freq - want).max() < 0.03
