"""Batch-1 generation with 8-bit weights (`generate --products int8`): the sampler streams a
float32 model's weights as int8 codes with a float32 scale per column (numba_team.int8_panels)
and sums in float32.  What it computes is pinned to the float32 sampler run on the values the
codes stand for (code x scale): the codes and scales, the panel loop to float32 rounding, and the
one-thread kernel's and the team's text for every cell.

Dimension legend: K rows, C columns, nb panels, P = PANEL, L layers, H hidden.
"""
import numpy as np
import pytest
from helpers import assert_one_line_error, force_sampler_path, peaky_model, run_cli, tiny_numba_checkpoints

nb = pytest.importorskip("lstm_engine.backends.numba_backend")
numba = pytest.importorskip("numba")
from lstm_engine.backends import numba_generate, numba_team, numba_tune  # noqa: E402
from lstm_engine.kernels.numba import sample  # noqa: E402
from lstm_engine.kernels.numba.jit import JIT  # noqa: E402


@numba.njit(**dict(JIT, cache=False))
def _panel_acc(v, Mp, z):
    sample.panel_acc(v, Mp, z)


@numba.njit(**dict(JIT, cache=False))
def _scales(Mp, K):
    out = np.empty((Mp.shape[0], Mp.shape[2]), np.float32)
    for b in range(Mp.shape[0]):
        for j in range(Mp.shape[2]):
            out[b, j] = sample.int8_scale(Mp[b], K, j)
    return out


def test_int8_codes_round_each_column_by_its_largest_magnitude():
    """Each column's scale is its largest |value| / 127; the codes lie in [-127, 127], the largest
    magnitude codes to +-127 exactly, every value is within half a scale of code x scale, and a
    column of zeros has scale 0 and codes 0."""
    rng = np.random.default_rng(0)
    M = (rng.standard_normal((40, 7)) * 10.0 ** rng.integers(-3, 3, 7)).astype(np.float32)   # (K,C)
    M[:, 3] = 0
    s = numba_team.int8_scales(M)
    q = numba_team.int8_codes(M, s)
    np.testing.assert_array_equal(s, np.abs(M).max(axis=0) / np.float32(127))
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() == 127 and not q[:, 3].any() and s[3] == 0
    assert (np.abs(q.astype(int)).max(axis=0)[[0, 1, 2, 4, 5, 6]] == 127).all()
    assert (np.abs(q * s - M.astype(np.float64)) <= s / 2 * (1 + 1e-6)).all()
    np.testing.assert_array_equal(numba_team.int8_values(M), q.astype(np.float32) * s)


def test_int8_panels_hold_the_codes_then_the_scale_bytes_the_kernel_reads():
    P = sample.PANEL
    Mp = np.random.default_rng(1).standard_normal((3, 5, P)).astype(np.float32)      # (nb,K,P)
    packed = numba_team.int8_panels(Mp)                                              # (nb,K+4,P)
    assert packed.dtype == np.int8 and packed.shape == (3, 5 + sample.SCALE_ROWS, P)
    s = numba_team.int8_scales(Mp)                                                   # (nb,P)
    np.testing.assert_array_equal(packed[:, :5], numba_team.int8_codes(Mp, s))
    np.testing.assert_array_equal(_scales(packed, 5), s)


@pytest.mark.parametrize("K, C", [(128, 384), (13, 65), (3, 31), (64, 200)])
def test_panel_loop_over_int8_is_the_float_loop_over_the_values_the_codes_stand_for(K, C):
    """z += v @ M from int8 panels agrees with the float32 panel loop over code x scale to float32
    rounding (K not a multiple of four, C not one of P; the pad past C stays zero), and differs
    from the float32 loop over M itself by the quantization, which is there to see."""
    rng = np.random.default_rng(K * C)
    M = rng.standard_normal((K, C)).astype(np.float32)                              # (K,C)
    v = rng.standard_normal(K).astype(np.float32)                                   # (K,)
    z0 = rng.standard_normal(C).astype(np.float32)                                  # (C,)
    n = -(-C // sample.PANEL) * sample.PANEL
    want, got, plain = (np.zeros(n, np.float32) for _ in range(3))                  # (nb P,) each
    for z in (want, got, plain):
        z[:C] = z0
    _panel_acc(v, numba_team.as_panels(numba_team.int8_values(M), sample.PANEL), want)
    _panel_acc(v, numba_team.int8_panels(numba_team.as_panels(M, sample.PANEL)), got)
    _panel_acc(v, numba_team.as_panels(M, sample.PANEL), plain)
    scale = np.abs(z0) + np.abs(v) @ np.abs(M)                                       # (C,) the sums' size
    assert (np.abs(got[:C] - want[:C]) <= 4e-6 * scale).all()
    assert not got[C:].any()
    assert np.abs(got[:C] - plain[:C]).max() > 1e-3


def dequantized(params, L, H, table):
    """The weights the int8 sampler multiplies by: the h rows and the x rows of every W, and Wy,
    each coded column by column over its own rows; layer 0's x rows exact when the layer-0 table
    (computed once from the float32 weights) stands in for them."""
    out = dict(params)
    for l in range(L):
        W = params[f"W{l}"].copy()
        W[:H] = numba_team.int8_values(W[:H])
        if not (table and l == 0):
            W[H:] = numba_team.int8_values(W[H:])
        out[f"W{l}"] = W
    out["Wy"] = numba_team.int8_values(params["Wy"])
    return out


def sample_with(m, weights, products, n=200):
    numba_tune.set_products(products)
    try:
        state = m.zero_state(1)
        ids = m.be.generate(weights, state, 1, n, 0.9, 0, 1.0, False, np.random.default_rng(11), {"chars": n},
                            m.cfg.cell)
    finally:
        numba_tune.set_products(None)
    return ids, state


@pytest.mark.parametrize("table", [False, True], ids=["no table", "table"])
@pytest.mark.parametrize("team", [False, True], ids=["one thread", "team"])
@pytest.mark.parametrize("cell", ["lstm", "peephole", "coupled", "gru"])
def test_int8_sampler_is_the_float32_sampler_on_the_values_the_codes_stand_for(monkeypatch, cell, team, table):
    """The text equals what the float32 sampler makes from the dequantized weights, and the final
    state (every layer's h and c) agrees with its to float32 rounding, on the one-thread kernel and
    on a team of threads, with and without the layer-0 table; and text or state differ from the
    float32 model's own (the int8 weights are used)."""
    force_sampler_path(monkeypatch, team, table)
    m = peaky_model(cell)
    L, H = m.cfg.layers, m.cfg.hidden_size
    ids, state = sample_with(m, m.params, "int8")
    ids_d, state_d = sample_with(m, dequantized(m.params, L, H, table), None)
    ids_f, state_f = sample_with(m, m.params, None)
    np.testing.assert_array_equal(ids, ids_d)
    for (h, c), (hd, cd) in zip(state, state_d):
        np.testing.assert_allclose(h, hd, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c, cd, rtol=1e-4, atol=1e-5)
    assert len(set(ids.tolist())) > 5
    assert not np.array_equal(ids, ids_f) or any(
        np.abs(h - hf).max() > 1e-4 for (h, _), (hf, _) in zip(state, state_f))


def test_a_float64_model_samples_its_own_weights_under_int8():
    m = peaky_model("lstm", dtype="float64")
    want = sample_with(m, m.params, None, 80)[0]
    np.testing.assert_array_equal(sample_with(m, m.params, "int8", 80)[0], want)


def test_cli_generate_with_int8_weights(tmp_path):
    """`generate --products int8` streams text from a float32 checkpoint on the numba backend and
    leaves the process's training products alone; on the numpy backend, or with a float64
    checkpoint, it is a one-line error naming what to do, and the checkpoint is unchanged."""
    ckpts = tiny_numba_checkpoints(tmp_path)
    ckpt = ckpts["float32"]
    before = open(ckpt, "rb").read()
    try:
        r = run_cli(["generate", ckpt, "--products", "int8", "--backend", "numba", "--length", 40, "--seed", 2,
                     "--prime", "the"])
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("the") and len(r.stdout.rstrip("\n")) == 43
        assert numba_generate.sample_weights(np.float32) == "int8" and numba_tune.mode() != "bf16"
    finally:
        numba_tune.set_products(None)
    assert_one_line_error(run_cli(["generate", ckpt, "--length", 5, "--products", "int8", "--backend", "numpy"]),
                          "--backend numba")
    assert_one_line_error(run_cli(["generate", ckpts["float64"], "--products", "int8", "--backend", "numba",
                                   "--length", 5]), "float64")
    assert open(ckpt, "rb").read() == before
