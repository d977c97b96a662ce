"""Parity tests of the cell variants (peephole, coupled, gru) on the cupy backend against the NumPy reference.

Shared, as cupy_cases.py, by tests/backends/test_cupy_backend.py (a real GPU; skipped without one) and
tests/backends/test_cupy_emulated.py (kernels/cuda/cells.cu on the CPU emulator): each defines the fixture
`env` and imports these tests.  Not collected on its own.  Every output and gradient is compared by
name through tests/parity.py.

Dimension legend: T time, B batch, I input, E embedding, H hidden, V vocab, L layers.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from cupy_cases import host, report
from parity import DTYPES

from lstm_engine.backends import numpy_backend as nb
from lstm_engine.core.model import Model, ModelConfig, cell_param_shapes, init_params
from lstm_engine.core.optim import Adam, AdamConfig

CELL_VARIANTS = ("peephole", "coupled", "gru")
CELL_SHAPES = [(5, 3, 7, 37), (1, 1, 4, 5), (4, 6, 3, 20)]       # T, B, I, H
CELL_MODES = [("direct", False), ("direct", True), ("matmul", False)]   # cuBLAS calls, CUDA graphs


def _cell_inputs(rng, cell, T, B, I, H, dtype):
    """x, p (by short name), h0, c0 and the incoming gradients dhs, dhT, dcT of one layer."""
    p = {k: (rng.uniform(-1, 1, s) / (np.sqrt(H) if k == "W" else 2)).astype(dtype)
         for k, s in cell_param_shapes(cell, I, H).items()}
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    dhT, dcT = rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    return x, p, h0, c0, dhs, dhT, dcT


def _check_grads(env, rep, tag, first, got, want, dtype):
    """dx (or dEmb: `first`), dp by short name, dh0, dc0 against the reference's."""
    (g0, gp, gh, gc), (w0, wp, wh, wc) = got, want
    rep.equal(f"{tag}dp names", sorted(gp), sorted(wp))
    pairs = [(first, g0, w0)] + [(f"d{k}", gp[k], wp[k]) for k in sorted(wp)] + [("dh0", gh, wh), ("dc0", gc, wc)]
    for name, a, b in pairs:
        rep.check(f"{tag}{name}", host(env, a), b, dtype, "grad")


def _check_cell_layer(env, rep, tag, cell, inputs, dtype):
    x, p, h0, c0, dhs, dhT, dcT = inputs
    want_f = nb.cell_forward(cell, x, p, h0, c0)
    want_b = nb.cell_backward(dhs, dhT, dcT, want_f[3])
    d = env.cb.asarray
    hs, hT, cT, cache = env.cb.cell_forward(cell, d(x), {k: d(v) for k, v in p.items()}, d(h0), d(c0))
    got_b = env.cb.cell_backward(d(dhs), d(dhT), d(dcT), cache)
    for name, got, want in zip(("hs", "hT", "cT"), (hs, hT, cT), want_f[:3]):
        rep.check(f"{tag}{name}", host(env, got), want, dtype)
    _check_grads(env, rep, tag, "dx", got_b, want_b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blas,graphs", CELL_MODES, ids=["direct", "direct-graph", "matmul"])
@pytest.mark.parametrize("shape", CELL_SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELL_VARIANTS)
def test_cell_layer(env, options, cell, shape, blas, graphs, dtype):
    """Forward and BPTT of one layer; with graphs three calls (eager, capture, replay on new values)."""
    options(graphs=graphs, blas=blas)
    rng = np.random.default_rng(31)
    rep = report(env, f"{cell} layer {dtype} {blas}{'+graph' if graphs else ''} "
                      f"T{shape[0]}B{shape[1]}I{shape[2]}H{shape[3]}")
    for k in range(3 if graphs else 1):
        _check_cell_layer(env, rep, f"call{k} ", cell, _cell_inputs(rng, cell, *shape, dtype), dtype)
    rep.done()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELL_VARIANTS)
def test_embed_cell_layer(env, cell, dtype):
    """Layer 0: the embedding gather in front of the cell, dEmb a scatter-add over repeated ids."""
    rng = np.random.default_rng(32)
    T, B, V, E, H = 4, 3, 5, 6, 7
    tokens = rng.integers(0, V, (T, B))
    tokens[0, :] = 2                                     # repeated ids: the scatter-add must sum them
    Emb = rng.standard_normal((V, E)).astype(dtype)
    _, p, h0, c0, dhs, dhT, dcT = _cell_inputs(rng, cell, T, B, E, H, dtype)
    want = nb.embed_cell_forward(cell, tokens, Emb, p, h0, c0)
    want_g = nb.embed_cell_backward(dhs, dhT, dcT, want[3])
    d = env.cb.asarray
    got = env.cb.embed_cell_forward(cell, d(tokens), d(Emb), {k: d(v) for k, v in p.items()}, d(h0), d(c0))
    got_g = env.cb.embed_cell_backward(d(dhs), d(dhT), d(dcT), got[3])
    rep = report(env, f"{cell} embed layer {dtype}")
    for name, a, b in zip(("hs", "hT", "cT"), got[:3], want[:3]):
        rep.check(name, host(env, a), b, dtype)
    _check_grads(env, rep, "", "dEmb", got_g, want_g, dtype)
    rep.done()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELL_VARIANTS)
def test_cell_training_steps(env, options, cell, dtype):
    """Model.forward_backward of a 2-layer model with dropout, clipping and Adam: every gradient,
    parameter and the carried state by name."""
    options(graphs=True)
    cfg = ModelConfig(vocab_size=13, embed_size=5, hidden_size=11, layers=2, dropout=0.25, dtype=dtype, cell=cell)
    T, B = 6, 3
    params = init_params(cfg, seed=17)
    ref, gpu = Model(cfg, nb, params), Model(cfg, env.cb, params)
    # eps well above float32's rounding of the smallest gradient entries: Adam divides each entry by
    # its own scale, which would turn their rounding into a large relative change of the update
    adam = AdamConfig(lr=1e-2, grad_clip=0.5, eps=1e-4)
    opt_ref, opt_gpu = Adam(ref.params, nb, adam), Adam(gpu.params, env.cb, adam)
    rng_data = np.random.default_rng(18)
    rng_ref, rng_gpu = np.random.default_rng(19), np.random.default_rng(19)    # the same dropout masks
    st_ref, st_gpu = ref.zero_state(B), gpu.zero_state(B)
    rep = report(env, f"{cell} training step {dtype}")
    for step in range(2):
        x = rng_data.integers(0, cfg.vocab_size, (T, B))
        y = rng_data.integers(0, cfg.vocab_size, (T, B))
        loss_r, g_r, st_ref = ref.forward_backward(x, y, st_ref, ref.dropout_masks(T, B, rng_ref))
        loss_g, g_g, st_gpu = gpu.forward_backward(env.cb.asarray(x), env.cb.asarray(y), st_gpu,
                                                   gpu.dropout_masks(T, B, rng_gpu))
        rep.check(f"s{step} loss", loss_g, loss_r, dtype, "steps")
        rep.equal(f"s{step} gradient names", sorted(g_g), sorted(g_r))
        for n in sorted(g_r):
            rep.check(f"s{step} d{n}", host(env, g_g[n]), g_r[n], dtype, "steps")
        norm_r, scale_r = opt_ref.clip_scale(g_r)
        norm_g, scale_g = opt_gpu.clip_scale(g_g)
        rep.check(f"s{step} |g|", norm_g, norm_r, dtype, "steps")
        opt_ref.update(ref.params, g_r, 1e-2, scale_r)
        opt_gpu.update(gpu.params, g_g, 1e-2, scale_g)
    for n in sorted(ref.params):
        rep.check(f"param {n}", host(env, gpu.params[n]), ref.params[n], dtype, "steps")
    for l, ((h_r, c_r), (h_g, c_g)) in enumerate(zip(st_ref, st_gpu)):
        rep.check(f"state h{l}", host(env, h_g), h_r, dtype, "steps")
        rep.check(f"state c{l}", host(env, c_g), c_r, dtype, "steps")
    rep.done()


# ----------------------------------------------------------------------------
# Generation: the batch-1 sampling step of each cell on the device
# ----------------------------------------------------------------------------

def _cell_weights(cell, dtype, V=17, H=37, L=2, seed=20, scale=3.0):
    """Weights of an L-layer model of `cell` (H = 37: two blocks of units in the generation step,
    the second partial); the output layer scaled up so the distributions are peaked, as after training."""
    cfg = ModelConfig(vocab_size=V, embed_size=6, hidden_size=H, layers=L, dtype=dtype, cell=cell)
    params = init_params(cfg, seed=seed)
    params["Wy"] = (params["Wy"] * scale).astype(dtype)
    return params


def _margins(params, state, token, ids, cell, greedy, u):
    """Per generated step of the reference: the top-2 logit gap (greedy) or the distance of the
    draw u * total from the nearest CDF boundary, relative to the total (sampling)."""
    out = []
    for k, nxt in enumerate(ids):
        logits = nb.step_logits(params, state, token, cell).astype(np.float64)
        if greedy:
            top2 = np.sort(logits)[-2:]
            out.append(float(top2[1] - top2[0]))
        else:
            csum = np.cumsum(nb.filter_probs(logits, 1.0, 0, 1.0))
            out.append(float(np.min(np.abs(csum - u[k] * csum[-1])) / csum[-1]))
        token = int(nxt)
    return out


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELL_VARIANTS)
def test_cell_generation_matches_reference(env, options, cell, dtype, greedy):
    """Three calls of 8 tokens (eager, graph capture, replay) from a random state: the ids equal the
    reference's, and the state after each call.  float32 may flip only a genuine near-tie."""
    options(graphs=True)
    params = _cell_weights(cell, dtype)
    H, L = params["Wy"].shape[0], 2
    rng = np.random.default_rng(21)
    st_ref = [[(0.3 * rng.standard_normal((1, H))).astype(dtype), (0.3 * rng.standard_normal((1, H))).astype(dtype)]
              for _ in range(L)]
    st_gpu = [[env.cb.asarray(h), env.cb.asarray(c)] for h, c in st_ref]
    dparams = {k: env.cb.asarray(v) for k, v in params.items()}
    rng_ref, rng_gpu = np.random.default_rng(22), np.random.default_rng(22)
    rep = report(env, f"{cell} generation {dtype} {'greedy' if greedy else 'sampled'}")
    token = 4
    for call in range(3):
        before = [[h.copy(), c.copy()] for h, c in st_ref]
        u = np.random.default_rng(22).random(8 * (call + 1))[-8:]          # the draws this call makes
        want = nb.generate(params, st_ref, token, 8, greedy=greedy, rng=rng_ref, cell=cell)
        got = np.asarray(env.cb.generate(dparams, st_gpu, token, 8, greedy=greedy, rng=rng_gpu, cell=cell))
        if dtype == "float32" and not np.array_equal(got, want):
            k = int(np.argmax(got != want))
            margin = _margins(params, before, token, want, cell, greedy, u)[k]
            rep.line(f"call{call} first difference at token {k}: reference margin {margin:.3e}", margin > 1e-4)
            break
        rep.equal(f"call{call} ids", got, want)
        for l in range(L):
            rep.check(f"call{call} state h{l}", host(env, st_gpu[l][0]), st_ref[l][0], dtype, "steps")
            rep.check(f"call{call} state c{l}", host(env, st_gpu[l][1]), st_ref[l][1], dtype, "steps")
        token = int(want[-1])
    rep.done()


@pytest.mark.parametrize("cell", CELL_VARIANTS)
def test_cell_generate_batch_rows_match_single_sequences(env, options, cell):
    """S sequences at once give each sequence's own ids (the rows of the step kernel are independent)."""
    options(graphs=False)
    params = {k: env.cb.asarray(v) for k, v in _cell_weights(cell, "float64").items()}
    starts, H = [3, 0, 16], params["Wy"].shape[0]
    rng = np.random.default_rng(23)
    h = [[rng.standard_normal((3, H)) * 0.3, rng.standard_normal((3, H)) * 0.3] for _ in range(2)]
    ids = env.cb.generate_batch(params, [[env.cb.asarray(a), env.cb.asarray(b)] for a, b in h], starts, 5,
                                greedy=True, cell=cell)
    rep = report(env, f"{cell} generate_batch greedy")
    for s, tok in enumerate(starts):
        st = [[env.cb.asarray(a[s:s + 1]), env.cb.asarray(b[s:s + 1])] for a, b in h]
        rep.equal(f"row{s}", ids[s], env.cb.generate(params, st, tok, 5, greedy=True, cell=cell))
    rep.done()


def test_cell_bad_input_is_rejected(env):
    d = env.cb.asarray
    x, h = d(np.zeros((2, 3, 4))), d(np.zeros((3, 5)))
    p = {"W": d(np.zeros((9, 15))), "bx": d(np.zeros(15)), "bh": d(np.zeros(14))}
    with pytest.raises(ValueError, match="gru bh must be"):
        env.cb.cell_forward("gru", x, p, h, h)
    with pytest.raises(ValueError, match="a peephole layer takes parameters W, b, wc"):
        env.cb.cell_forward("peephole", x, {"W": d(np.zeros((9, 20))), "b": d(np.zeros(20))}, h, h)


@pytest.mark.parametrize("cell", ["gru", "peephole"])
def test_cell_checkpoint_moves_between_backends(env, tmp_path, monkeypatch, cell):
    """api.train on cupy with a cell variant saves a checkpoint of that cell; loaded on numpy and on
    cupy it gives the same greedy text, and the trained weights equal those of the same run on numpy."""
    from lstm_engine import api
    from lstm_engine.core.train import TrainConfig
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path / "state"))
    text = "abcab cabba acbab bcaca " * 8
    runs = {}
    for be in ("cupy", "numpy"):
        cfg = TrainConfig(backend=be, cell=cell, embed_size=4, hidden_size=9, layers=2, batch_size=2, seq_len=5,
                          steps=3, eval_every=0, sample_every=0, save_every=0, log_every=0, dtype="float64",
                          val_fraction=0.0, out=str(tmp_path / f"run-{be}"))
        api.train(cfg, text=text)
        runs[be] = os.path.join(cfg.out, "latest.safetensors")
    rep = report(env, f"{cell} checkpoint trained on cupy")
    texts = {}
    for be in ("numpy", "cupy"):
        model, vocab, _ = api.load_model(runs["cupy"], backend=be)
        rep.equal(f"backend {be} cell", model.cfg.cell, cell)
        texts[be] = api.generate(model, vocab, prime="ab", length=25, greedy=True)
    rep.equal("greedy text", np.array(list(texts["cupy"])), np.array(list(texts["numpy"])))
    ref, _, _ = api.load_model(runs["numpy"], backend="numpy")
    got, _, _ = api.load_model(runs["cupy"], backend="numpy")
    for n in sorted(ref.params):
        rep.check(f"param {n}", got.params[n], ref.params[n], "float64", "steps")
    rep.done()
