"""Finite-difference gradient checks (float64) of the reference's cell variants: peephole, coupled, gru.

A layer's every input (x, its parameters, h0, c0) through cell_forward / cell_backward, and every parameter of
a 2-layer model of each cell, with and without fixed dropout masks.

Dimension legend: T time, B batch, I input, E embedding, H hidden, V vocab.
"""
import numpy as np
import pytest

from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.model import CELLS, Model, ModelConfig, cell_param_shapes

from parity import Parity, check
from test_reference_gradients import numeric_grad

VARIANTS = [c for c in CELLS if c != "lstm"]


@pytest.mark.parametrize("cell", CELLS)
def test_layer_gradients_including_state_paths(rng, cell):
    """cell_backward against central differences for x, each parameter, h0, c0; the loss reads hs, hT and cT."""
    T, B, I, H = 4, 3, 5, 6
    x = rng.standard_normal((T, B, I))                                   # (T,B,I)
    p = {k: rng.standard_normal(s) * 0.5 for k, s in cell_param_shapes(cell, I, H).items()}
    h0 = rng.standard_normal((B, H)) * 0.5                               # (B,H)
    c0 = rng.standard_normal((B, H)) * 0.5                               # (B,H)
    Rh = rng.standard_normal((T, B, H))                                  # fixed projections make a scalar loss
    RhT = rng.standard_normal((B, H))
    RcT = rng.standard_normal((B, H))

    def loss():
        hs, hT, cT, _ = ref.cell_forward(cell, x, p, h0, c0)
        return float((hs * Rh).sum() + (hT * RhT).sum() + (cT * RcT).sum())

    _, _, _, cache = ref.cell_forward(cell, x, p, h0, c0)
    dx, dp, dh0, dc0 = ref.cell_backward(Rh, RhT, RcT, cache)
    assert set(dp) == set(p)
    with Parity(f"{cell} layer vs central differences", "numpy", ref="central differences") as par:
        for name, analytic, arr in [("dx", dx, x), ("dh0", dh0, h0), ("dc0", dc0, c0)] + \
                                   [("d" + k, dp[k], p[k]) for k in p]:
            par.check(name, analytic, numeric_grad(loss, arr), "float64", "fd")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("cell", VARIANTS)
def test_model_gradients_every_parameter(rng, cell, dropout):
    """Every parameter of a 2-layer model of each cell, through the embedding and softmax-xent."""
    cfg = ModelConfig(vocab_size=7, embed_size=3, hidden_size=4, layers=2, dropout=dropout, dtype="float64",
                      cell=cell)
    model = Model(cfg, ref, seed=3)
    T, B = 5, 2
    tokens = rng.integers(0, 7, (T, B))                                  # (T,B)
    targets = rng.integers(0, 7, (T, B))                                 # (T,B)
    state = [[rng.standard_normal((B, 4)) * 0.3, rng.standard_normal((B, 4)) * 0.3] for _ in range(2)]
    masks = model.dropout_masks(T, B, np.random.default_rng(7))          # fixed masks, or None
    if dropout:
        assert masks is not None and any((m == 0).any() for m in masks)

    def loss():
        logits, _, _ = model.forward(tokens, state, masks)
        return ref.softmax_xent(logits, targets.reshape(-1), need_grad=False)[0]

    _, grads, _ = model.forward_backward(tokens, targets, state, masks)
    assert set(grads) == set(model.params) == set(cfg.param_shapes())
    with Parity(f"{cell} model dropout={dropout} vs central differences", "numpy", ref="central differences") as p:
        for name, w in model.params.items():
            p.check("d" + name, grads[name], numeric_grad(loss, w), "float64", "fd")


def test_gru_carries_c_unchanged_and_passes_its_gradient_through(rng):
    """The GRU has no cell state: cT is c0 and dc0 is dcT, exactly."""
    T, B, I, H = 3, 2, 4, 5
    p = {k: rng.standard_normal(s) for k, s in cell_param_shapes("gru", I, H).items()}
    c0 = rng.standard_normal((B, H))
    _, _, cT, cache = ref.cell_forward("gru", rng.standard_normal((T, B, I)), p, np.zeros((B, H)), c0)
    dcT = rng.standard_normal((B, H))
    _, _, _, dc0 = ref.cell_backward(np.zeros((T, B, H)), np.zeros((B, H)), dcT, cache)
    assert np.array_equal(cT, c0) and np.array_equal(dc0, dcT)


@pytest.mark.parametrize("cell", VARIANTS)
def test_float32_keeps_its_dtype_and_follows_float64(rng, cell):
    """The same layer in float32 returns float32 arrays within float32 round-off of the float64 result."""
    T, B, I, H = 5, 3, 4, 6
    x = rng.standard_normal((T, B, I))
    p = {k: rng.standard_normal(s) * 0.5 for k, s in cell_param_shapes(cell, I, H).items()}
    h0, c0 = rng.standard_normal((B, H)) * 0.5, rng.standard_normal((B, H)) * 0.5
    dhs = rng.standard_normal((T, B, H))
    f32 = [a.astype(np.float32) for a in (x, h0, c0, dhs)]
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    hs64, _, _, cache64 = ref.cell_forward(cell, x, p, h0, c0)
    hs32, hT32, cT32, cache32 = ref.cell_forward(cell, f32[0], p32, f32[1], f32[2])
    dx64, dp64, _, _ = ref.cell_backward(dhs, 0 * h0, 0 * c0, cache64)
    dx32, dp32, dh32, dc32 = ref.cell_backward(f32[3], 0 * f32[1], 0 * f32[2], cache32)
    assert all(a.dtype == np.float32 for a in (hs32, hT32, cT32, dx32, dh32, dc32, *dp32.values()))
    check(f"{cell} hs", hs32, hs64, "float32", backend="numpy", ref="numpy float64")
    check(f"{cell} dx", dx32, dx64, "float32", kind="grad", backend="numpy", ref="numpy float64")
    for k in p:
        check(f"{cell} d{k}", dp32[k], dp64[k], "float32", kind="grad", backend="numpy", ref="numpy float64")


@pytest.mark.parametrize("cell", VARIANTS)
def test_model_parameters_and_init_follow_the_cell(cell):
    """Shapes per cell; forget-gate bias 1 for peephole (block 1) and coupled (block 0); gru keeps nn.GRU's init."""
    cfg = ModelConfig(vocab_size=5, embed_size=3, hidden_size=4, layers=2, cell=cell, dtype="float64")
    P = Model(cfg, ref, seed=0).params
    G = {"peephole": 16, "coupled": 12, "gru": 12}[cell]
    assert P["W0"].shape == (4 + 3, G) and P["W1"].shape == (8, G)
    if cell == "gru":
        assert P["bx1"].shape == P["bh1"].shape == (G,) and "b1" not in P
        assert np.abs(np.concatenate([P["bx0"], P["bh0"]])).max() <= 0.5   # U(-1/sqrt(H), 1/sqrt(H))
    else:
        f = 0 if cell == "coupled" else 1
        assert np.all(P["b1"][f * 4:(f + 1) * 4] == 1.0)                    # the forget gate's block
        assert np.abs(np.delete(P["b1"], np.s_[f * 4:f * 4 + 4])).max() <= 0.5
    if cell == "peephole":
        assert P["wc0"].shape == (3, 4)
