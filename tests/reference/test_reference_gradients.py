"""Correctness ladder, rung 1: finite-difference gradient checks of the NumPy reference in float64.

Dimension legend: T time, B batch, E embedding, H hidden, V vocab, G = 4H.
"""
import numpy as np
import pytest

from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.model import Model, ModelConfig

from parity import Parity, check

EPS = 1e-5     # near the cube root of float64 eps: the step balancing truncation against round-off


def numeric_grad(f, x, eps=EPS):
    """Central differences of scalar f() with respect to every entry of x (modified in place)."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def test_layer_gradients_including_state_paths(rng):
    """lstm_backward against central differences for x, W, b, h0, c0 with loss using hs, hT and cT."""
    T, B, I, H = 4, 3, 5, 7
    x = rng.standard_normal((T, B, I))                 # (T,B,I)
    W = rng.standard_normal((H + I, 4 * H)) * 0.5      # (H+I,G)
    b = rng.standard_normal(4 * H) * 0.5               # (G,)
    h0 = rng.standard_normal((B, H)) * 0.5             # (B,H)
    c0 = rng.standard_normal((B, H)) * 0.5             # (B,H)
    Rh = rng.standard_normal((T, B, H))                # fixed projections make a scalar loss
    RhT = rng.standard_normal((B, H))
    RcT = rng.standard_normal((B, H))

    def loss():
        hs, hT, cT, _ = ref.lstm_forward(x, W, b, h0, c0)
        return float((hs * Rh).sum() + (hT * RhT).sum() + (cT * RcT).sum())

    _, _, _, cache = ref.lstm_forward(x, W, b, h0, c0)
    dx, dW, db, dh0, dc0 = ref.lstm_backward(Rh, RhT, RcT, cache)
    with Parity("lstm layer vs central differences", "numpy", ref="central differences") as p:
        for name, analytic, arr in (("dx", dx, x), ("dW", dW, W), ("db", db, b), ("dh0", dh0, h0), ("dc0", dc0, c0)):
            p.check(name, analytic, numeric_grad(loss, arr), "float64", "fd")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_model_gradients_every_parameter(rng, dropout):
    """Every parameter of a 2-layer model, with and without (fixed) dropout masks, through softmax-xent."""
    cfg = ModelConfig(vocab_size=7, embed_size=3, hidden_size=4, layers=2, dropout=dropout, dtype="float64")
    model = Model(cfg, ref, seed=3)
    T, B = 5, 2
    tokens = rng.integers(0, 7, (T, B))               # (T,B)
    targets = rng.integers(0, 7, (T, B))              # (T,B)
    state = [[rng.standard_normal((B, 4)) * 0.3, rng.standard_normal((B, 4)) * 0.3] for _ in range(2)]
    masks = model.dropout_masks(T, B, np.random.default_rng(7))   # fixed masks, or None
    if dropout:
        assert masks is not None and any((m == 0).any() for m in masks)

    def loss():
        logits, _, _ = model.forward(tokens, state, masks)
        return ref.softmax_xent(logits, targets.reshape(-1), need_grad=False)[0]

    _, grads, _ = model.forward_backward(tokens, targets, state, masks)
    assert set(grads) == set(model.params)
    with Parity(f"model dropout={dropout} vs central differences", "numpy", ref="central differences") as p:
        for name, w in model.params.items():
            p.check("d" + name, grads[name], numeric_grad(loss, w), "float64", "fd")


def test_softmax_xent_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    loss, d = ref.softmax_xent(logits, np.array([0, 2]))
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss == pytest.approx(np.log(3) / 2)
    # rows of dlogits sum to zero (softmax - onehot)
    assert np.allclose(d.sum(axis=1), 0)


def test_adam_matches_textbook_formula(rng):
    p = {"w": rng.standard_normal(5)}
    g = {"w": rng.standard_normal(5)}
    m = {"w": np.zeros(5)}
    v = {"w": np.zeros(5)}
    w0 = p["w"].copy()
    ref.adam_update(p, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8, grad_scale=0.5)
    gs = 0.5 * g["w"]
    mhat = (0.1 * gs) / 0.1
    vhat = (0.001 * gs * gs) / 0.001
    check("w", p["w"], w0 - 0.1 * mhat / (np.sqrt(vhat) + 1e-8), "float64", backend="numpy", ref="textbook Adam")


@pytest.mark.parametrize("locked", [False, True], ids=["per-step", "locked"])
@pytest.mark.parametrize("p", [0.25, 0.2, 0.5])
def test_dropout_masks_drop_p_and_keep_the_mean(p, locked):
    """Each mask entry is 0 (dropped) or one common scale; the dropped fraction is p (within
    sampling error) and the scale makes the expected mask exactly 1 (inverted dropout).  A
    locked mask is the same at every step of the window, a per-step one is not."""
    T, B, H = 50, 64, 96
    model = Model(ModelConfig(11, 4, H, 2, p, "float32"), ref, seed=0)
    masks = model.dropout_masks(T, B, np.random.default_rng(3), locked=locked)
    assert len(masks) == 2 and all(m.shape == (T, B, H) and m.dtype == np.float32 for m in masks)
    m = np.stack(masks)                                                   # (L,T,B,H)
    assert np.array_equal(m[:, 1:], np.broadcast_to(m[:, :1], m[:, 1:].shape)) == locked
    draws = m[:, :1] if locked else m                                     # the independent entries
    kept = m[m != 0]
    assert np.all(kept == kept[0])
    dropped = np.mean(draws == 0)
    sigma = np.sqrt(p * (1 - p) / draws.size)
    print(f"p={p} locked={locked}: dropped {dropped:.5f} (sigma {sigma:.5f}), scale {kept[0]:.6f}")
    assert abs(dropped - p) < 5 * sigma
    drop_exact = round(p * 65536) / 65536                                 # the threshold's probability
    assert kept[0] * (1 - drop_exact) == pytest.approx(1.0, rel=1e-6)
    assert model.dropout_masks(T, B, None) is None
