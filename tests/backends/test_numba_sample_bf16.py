"""Batch-1 generation with bfloat16 weights (LSTM_ENGINE_TUNE=bf16, `generate --products bf16`):
the sampler streams a float32 model's weights rounded to bfloat16, two to a uint32
(numba_team.bf16_pairs), and sums in float32.  What it computes is pinned bit for bit to the
float32 sampler run on the rounded weights: the rounding (to nearest, ties to even), the pairs'
layout and the panel loop bit for bit, the one-thread kernel's and the team's text for every cell.

Dimension legend: K rows, C columns, nb panels, P = PANEL, L layers, H hidden.
"""
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import SAMPLER_TEXT as TEXT
from helpers import peaky_model as make_model
from helpers import force_sampler_path, tiny_numba_checkpoints

nb = pytest.importorskip("lstm_engine.backends.numba_backend")
numba = pytest.importorskip("numba")
from lstm_engine.backends import numba_generate, numba_team, numba_tune  # noqa: E402
from lstm_engine.kernels.numba import sample  # noqa: E402



def test_bf16_bits_round_to_nearest_ties_to_even():
    """Halfway cases go to the even neighbour, others to the nearest; the sign, zero, inf and a
    NaN survive; the values kept have zeros in their low 16 bits."""
    e = 2.0 ** -7                                                  # bfloat16's spacing at 1
    x = np.array([1.0, 1 + e / 2, 1 + 3 * e / 2, 1 + e / 2 + 2 ** -20, -(1 + 3 * e / 2), 0.0, -0.0,
                  np.inf, -np.inf, np.nan, 3.0e38], np.float32)
    got = numba_team.bf16_values(x)
    want = [1.0, 1.0, 1 + 2 * e, 1 + e, -(1 + 2 * e), 0.0, -0.0, np.inf, -np.inf]
    np.testing.assert_array_equal(got[:9], np.array(want, np.float32))
    assert np.signbit(got[6]) and np.isnan(got[9]) and np.isfinite(got[10])
    rng = np.random.default_rng(0)
    r = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-8, 8, 10_000)).astype(np.float32)
    v = numba_team.bf16_values(r)
    assert not (v.view(np.uint32) & 0xFFFF).any()
    ulp = np.spacing(np.abs(r)).astype(np.float64) * 2 ** 16       # bfloat16's spacing at each value
    assert (np.abs(v.astype(np.float64) - r) <= ulp / 2).all()


def test_bf16_pairs_hold_column_j_low_and_column_half_plus_j_high():
    P = sample.PANEL
    Mp = np.random.default_rng(1).standard_normal((2, 5, P)).astype(np.float32)    # (nb,K,P)
    pairs = numba_team.bf16_pairs(Mp)                                               # (nb,K,P/2)
    assert pairs.dtype == np.uint32 and pairs.shape == (2, 5, P // 2)
    bits = numba_team.bf16_bits(Mp)
    np.testing.assert_array_equal(pairs & 0xFFFF, bits[..., :P // 2])
    np.testing.assert_array_equal(pairs >> 16, bits[..., P // 2:])


@numba.njit
def _panel_acc(v, Mp, z):
    sample.panel_acc(v, Mp, z)


@pytest.mark.parametrize("K, C", [(128, 384), (13, 65), (3, 31), (64, 200)])
def test_panel_loop_over_pairs_is_the_float_loop_over_rounded_weights(K, C):
    """z += v @ M from bfloat16 pairs holds, bit for bit, the float32 panel loop's sums over M
    rounded to bfloat16 (K not a multiple of four, C not one of P; the pad past C stays zero),
    and lies within bfloat16's rounding of the float64 product of the unrounded M."""
    rng = np.random.default_rng(K * C)
    M = rng.standard_normal((K, C)).astype(np.float32)                              # (K,C)
    v = rng.standard_normal(K).astype(np.float32)                                   # (K,)
    z0 = rng.standard_normal(C).astype(np.float32)                                  # (C,)
    n = -(-C // sample.PANEL) * sample.PANEL
    want, got = np.zeros(n, np.float32), np.zeros(n, np.float32)                    # (nb P,)
    want[:C], got[:C] = z0, z0
    _panel_acc(v, numba_team.as_panels(numba_team.bf16_values(M), sample.PANEL), want)
    _panel_acc(v, numba_team.bf16_pairs(numba_team.as_panels(M, sample.PANEL)), got)
    np.testing.assert_array_equal(got, want)
    assert not got[C:].any()
    exact = z0.astype(np.float64) + v.astype(np.float64) @ M
    bound = 2.0 ** -8 * (np.abs(v).astype(np.float64) @ np.abs(M)) + 1e-4           # (C,) the weights' rounding
    assert (np.abs(got[:C] - exact) <= bound).all()
    assert np.abs(got[:C] - exact).max() > 1e-6                     # the rounding is there to see


def rounded(params, L, H, table):
    """The weights the bfloat16 sampler multiplies by: every W and Wy rounded, except layer 0's
    x rows when the layer-0 table (computed once from the float32 weights) stands in for them."""
    out = dict(params)
    for name in [f"W{l}" for l in range(L)] + ["Wy"]:
        out[name] = numba_team.bf16_values(params[name])
    if table:
        out["W0"] = out["W0"].copy()
        out["W0"][H:] = params["W0"][H:]
    return out


def sample_both(m, weights, n, cache, greedy):
    state = m.zero_state(1)
    rng = None if greedy else np.random.default_rng(11)
    ids = m.be.generate(weights, state, 1, n, 0.9, 0, 1.0, greedy, rng, cache, m.cfg.cell)
    return ids, state


@pytest.mark.parametrize("table", [False, True], ids=["no table", "table"])
@pytest.mark.parametrize("team", [False, True], ids=["one thread", "team"])
@pytest.mark.parametrize("cell", ["lstm", "peephole", "coupled", "gru"])
def test_bf16_sampler_is_the_float32_sampler_on_rounded_weights(monkeypatch, cell, team, table):
    """The text equals what the float32 sampler makes from the rounded weights, and the final
    state (every layer's h and c) equals its to float32 rounding (the panel sums are equal bit for
    bit, above), on the one-thread kernel and on a team of threads, with and without the layer-0
    table; and text or state differ from the unrounded model's (the bfloat16 weights are used)."""
    force_sampler_path(monkeypatch, team, table)
    m = make_model(cell)
    L, H = m.cfg.layers, m.cfg.hidden_size
    runs = {}
    for name, weights, mode in (("bf16", m.params, "bf16"), ("rounded", rounded(m.params, L, H, table), None),
                                ("float32", m.params, None)):
        numba_tune.set_products(mode)
        try:
            runs[name] = sample_both(m, weights, 200, {"chars": 200}, greedy=False)
        finally:
            numba_tune.set_products(None)
    (ids, state), (ids_r, state_r) = runs["bf16"], runs["rounded"]
    np.testing.assert_array_equal(ids, ids_r)
    for (h, c), (hr, cr) in zip(state, state_r):      # the gate code compiles once per weight type: LLVM
        np.testing.assert_allclose(h, hr, rtol=1e-5, atol=1e-6)    # may fuse its multiply-adds otherwise
        np.testing.assert_allclose(c, cr, rtol=1e-5, atol=1e-6)
    assert len(set(ids.tolist())) > 5
    assert not np.array_equal(ids, runs["float32"][0]) or any(
        not np.array_equal(h, h32) for (h, _), (h32, _) in zip(state, runs["float32"][1]))


def test_a_float64_model_samples_in_float64_whatever_the_products():
    """bfloat16 weights are for float32 models: a float64 model's text under bf16 is its own."""
    m = make_model("lstm", dtype="float64")
    want = sample_both(m, m.params, 80, None, greedy=False)[0]
    numba_tune.set_products("bf16")
    try:
        got = sample_both(m, m.params, 80, None, greedy=False)[0]
    finally:
        numba_tune.set_products(None)
    np.testing.assert_array_equal(got, want)


def test_cli_generate_with_bf16_weights(tmp_path):
    """`generate --products bf16` streams text from a float32 checkpoint on the numba backend (the
    text of the float32 sampler on the rounded weights, above); on the numpy backend, or with a
    float64 checkpoint, it is a one-line error naming what to do, and the checkpoint is unchanged."""
    from lstm_engine.cli import main
    run = lambda args: CliRunner().invoke(main, args, catch_exceptions=False)      # noqa: E731
    ckpts = tiny_numba_checkpoints(tmp_path)
    ckpt = ckpts["float32"]
    before = open(ckpt, "rb").read()
    r = run(["generate", ckpt, "--products", "bf16", "--backend", "numba", "--length", "40", "--seed", "2",
             "--prime", "the"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("the") and len(r.stdout.rstrip("\n")) == 43
    numba_tune.set_products(None)
    for args, needle in ((["--products", "bf16", "--backend", "numpy"], "--backend numba"),
                         (["--products", "fp8", "--backend", "numba"], "fp8")):
        r = run(["generate", ckpt, "--length", "5"] + args)
        assert r.exit_code == 2, r.output
        assert needle in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    r = run(["generate", ckpts["float64"], "--products", "bf16", "--backend",
             "numba", "--length", "5"])
    assert r.exit_code == 2 and "float64" in r.stderr and r.stderr.count("\n") == 1
    assert open(ckpt, "rb").read() == before


def test_generate_auto_follows_the_products_the_model_trained_with(tmp_path, monkeypatch):
    """`generate` (--products auto) streams bfloat16 weights for a checkpoint that trained with
    bfloat16 products and float32 weights otherwise, on the numba backend only; its text is that
    of --products bf16; a later float32 call in the same process takes the float32 weights again."""
    from lstm_engine import api
    from lstm_engine.cli import main
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = lambda args: CliRunner().invoke(main, args, catch_exceptions=False)      # noqa: E731
    r = run(["train", "--corpus", str(corpus), "--backend", "numba", "--embed-size", "8", "--hidden-size", "16",
             "--batch-size", "4", "--seq-len", "16", "--steps", "3", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    ckpt = str(tmp_path / "run" / "latest.safetensors")
    before = open(ckpt, "rb").read()
    try:
        api.load_for_generation(ckpt, "numba")
        assert numba_generate.sample_weights(np.float32) is None                 # trained float32
        real_load = api.load_model

        def trained_bf16(path, backend="auto"):
            model, vocab, meta = real_load(path, backend)
            return model, vocab, dict(meta, train=dict(meta["train"], products="bf16"))

        monkeypatch.setattr(api, "load_model", trained_bf16)
        api.load_for_generation(ckpt, "numba")
        assert numba_generate.sample_weights(np.float32) == "bf16"
        api.load_for_generation(ckpt, "numba", products="float32")
        assert numba_generate.sample_weights(np.float32) is None
        model, _, _ = api.load_for_generation(ckpt, "numpy")                       # no error: float32 there
        assert model.be.NAME == "numpy" and numba_generate.sample_weights(np.float32) is None
        texts = {}
        for products in ("auto", "bf16", "float32"):
            r = run(["generate", ckpt, "--products", products, "--backend", "numba", "--length", "60", "--seed", "4",
                     "--prime", "the"])
            assert r.exit_code == 0, r.output
            texts[products] = r.stdout
        assert texts["auto"] == texts["bf16"] and len(texts["auto"].rstrip("\n")) == 63
    finally:
        numba_tune.set_products(None)
    assert open(ckpt, "rb").read() == before



def test_generate_bf16_on_a_cpu_without_bf16_products(tmp_path, monkeypatch):
    """Where the CPU has no bfloat16 products (emulated: bf16_products says no), `generate --products
    bf16`, and auto for a checkpoint that trained with them, stream bfloat16 weights through the
    sampler and run the prime's products as LSTM_ENGINE_TUNE says, not a one-line refusal; the
    text is the float32 sampler's on the rounded weights, so it differs from --products float32."""
    from lstm_engine import api
    from lstm_engine.cli import main
    run = lambda args: CliRunner().invoke(main, args, catch_exceptions=False)      # noqa: E731
    monkeypatch.setattr(nb, "bf16_products", lambda: (False, "this CPU has no AVX512_BF16 (emulated)"))
    ckpt = tiny_numba_checkpoints(tmp_path)["float32"]
    before = open(ckpt, "rb").read()
    try:
        api.load_for_generation(ckpt, "numba", products="bf16")
        assert numba_generate.sample_weights(np.float32) == "bf16" and numba_tune.mode() != "bf16"
        texts = {}
        for products in ("bf16", "float32"):
            r = run(["generate", ckpt, "--products", products, "--backend", "numba", "--length", "200", "--seed", "5",
                     "--prime", "the"])
            assert r.exit_code == 0, r.output
            texts[products] = r.stdout
        assert texts["bf16"].startswith("the") and len(texts["bf16"].rstrip("\n")) == 203
        assert texts["bf16"] != texts["float32"]
        real_load = api.load_model

        def trained_bf16(path, backend="auto"):
            model, vocab, meta = real_load(path, backend)
            return model, vocab, dict(meta, train=dict(meta["train"], products="bf16"))

        monkeypatch.setattr(api, "load_model", trained_bf16)
        r = run(["generate", ckpt, "--backend", "numba", "--length", "200", "--seed", "5", "--prime", "the"])
        assert r.exit_code == 0, r.output
        assert r.stdout == texts["bf16"]
    finally:
        numba_tune.set_products(None)
    assert open(ckpt, "rb").read() == before

_AVX2_SCRIPT = r"""
import numpy as np
from lstm_engine.kernels.numba import gemm     # sets numba's target before importing numba
import numba
from lstm_engine.backends import numba_team
from lstm_engine.kernels.numba import sample
from lstm_engine.kernels.numba.jit import JIT


@numba.njit(**dict(JIT, cache=False))                # code from -c has no file to cache beside
def acc(v, Mp, z):
    sample.panel_acc(v, Mp, z)


rng = np.random.default_rng(3)
M, v = rng.standard_normal((37, 70)).astype(np.float32), rng.standard_normal(37).astype(np.float32)
want, got = np.zeros(96, np.float32), np.zeros(96, np.float32)
acc(v, numba_team.as_panels(numba_team.bf16_values(M), sample.PANEL), want)
acc(v, numba_team.bf16_pairs(numba_team.as_panels(M, sample.PANEL)), got)
asm = "".join(acc.inspect_asm().values())
print("equal", bool(np.array_equal(got, want)))
print("zmm", "zmm" in asm)
print("ymm", "ymm" in asm)
"""


def test_bf16_panel_loop_on_an_avx2_cpu(tmp_path):
    """Under LSTM_ENGINE_NUMBA_ISA=avx2 (a CPU without AVX-512, emulated in a fresh process) the
    bfloat16 panel loop compiles to 256-bit code and still equals the float loop over the rounded
    weights bit for bit: the widening needs no bfloat16 instructions."""
    from test_numba_tune import _run_under_isa
    out = _run_under_isa(_AVX2_SCRIPT, "avx2", tmp_path)
    assert out == {"equal": "True", "zmm": "False", "ymm": "True"}
