"""Parity tests of the cupy backend against the NumPy reference.

Shared by tests/backends/test_cupy_backend.py (a real GPU; skipped without one) and
tests/backends/test_cupy_emulated.py (the same kernels on the CPU emulator of tests/backends/cuda_emu): each of those
modules defines the fixture `env` and imports these tests.  Not collected on its own.

Every comparison goes through tests/parity.py: one line "title | backend dtype tensor shape max abs
rel tol" to stdout and, when $LSTM_ENGINE_GPU_REPORT names a file, appended there, so a failure on
the GPU machine can be read from the log alone.

Dimension legend: T time, B batch, E embedding, H hidden, V vocab, S sampled sequences.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from lstm_engine.backends import numpy_backend as nb
from lstm_engine.core.generation import generate_text
from lstm_engine.core.model import Model, ModelConfig, init_params
from lstm_engine.core.optim import Adam, AdamConfig

from parity import DTYPES, Parity



def report(env, title):
    """The parity report of one test (tests/parity.py), its rows labelled by where cupy ran."""
    return Parity(title, backend="cupy-emu" if env.emulated else "cupy")


def host(env, a):
    return env.cb.to_numpy(a)


@pytest.fixture
def options(env):
    """Restores the backend's step / graph / tile options after a test."""
    old = env.cb.set_options()
    yield env.cb.set_options
    env.cb.set_options(**old)


# ----------------------------------------------------------------------------
# Single kernels
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_grad", [True, False])
def test_softmax_xent(env, dtype, need_grad):
    rng = np.random.default_rng(1)
    rep = report(env, f"softmax_xent {dtype} grad={need_grad}")
    for N, V in [(1, 1), (7, 37), (5, 300)]:
        logits = (3 * rng.standard_normal((N, V))).astype(dtype)
        targets = rng.integers(0, V, N)
        want_loss, want_d = nb.softmax_xent(logits, targets, need_grad)
        loss, d = env.cb.softmax_xent(env.cb.asarray(logits), env.cb.asarray(targets), need_grad)
        rep.check(f"loss N{N}V{V}", loss, want_loss, dtype)
        if need_grad:
            rep.check(f"dlogits N{N}V{V}", host(env, d), want_d, dtype, "grad")
        else:
            rep.equal(f"no grad N{N}V{V}", d is None, True)
    rep.done()


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_and_global_norm(env, dtype):
    rng = np.random.default_rng(2)
    shapes = {"Emb": (11, 3), "W0": (9, 20), "b0": (20,), "by": (1,)}
    p_ref = {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}
    m_ref = {n: np.zeros(s, dtype) for n, s in shapes.items()}
    v_ref = {n: np.zeros(s, dtype) for n, s in shapes.items()}
    p, m, v = ({n: env.cb.asarray(a) for n, a in d.items()} for d in (p_ref, m_ref, v_ref))
    rep = report(env, f"adam/global_norm {dtype}")
    for step in (1, 2, 3):
        g_ref = {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}
        g = {n: env.cb.asarray(a) for n, a in g_ref.items()}
        rep.check(f"norm step{step}", env.cb.global_norm(g), nb.global_norm(g_ref), dtype)
        scale = 0.5 if step == 2 else 1.0
        nb.adam_update(p_ref, g_ref, m_ref, v_ref, step, 1e-2, 0.9, 0.999, 1e-8, scale)
        env.cb.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, scale)
    for n in shapes:
        rep.check(f"p.{n}", host(env, p[n]), p_ref[n], dtype, "steps")
        rep.check(f"m.{n}", host(env, m[n]), m_ref[n], dtype, "steps")
        rep.check(f"v.{n}", host(env, v[n]), v_ref[n], dtype, "steps")
    rep.done()


# ----------------------------------------------------------------------------
# LSTM layers: forward and BPTT, every step path, graphs on and off, odd shapes
# ----------------------------------------------------------------------------

LAYER_SHAPES = [  # T, B, I, H
    (5, 3, 7, 37),     # H not a multiple of 32, narrow tile
    (1, 1, 4, 5),      # T = 1, B = 1
    (4, 6, 3, 20),     # B > 4: the small tile, partial tiles in both directions
]
MODES = [("fused", False, "direct"), ("fused", True, "direct"), ("cublas", False, "direct"),
         ("cublas", True, "direct"), ("cublas", False, "matmul"),
         ("persist", False, "direct")]   # step path, graphs, cuBLAS calls


def _persist_units(env, H):
    """Units per block of the persistent kernels: the emulator runs blocks one after another, so a
    grid barrier only works there with ONE block (all H units); the GPU uses the backend's plan."""
    return H if env.emulated else 0


def _check_no_barrier_timeouts(env, rep):
    for k, bar in enumerate(env.cb.PERSIST_BARS):
        rep.equal(f"persist launch {k}: barrier spin timeouts", int(host(env, bar)[1]), 0)


def _layer_inputs(rng, T, B, I, H, dtype):
    x = rng.standard_normal((T, B, I)).astype(dtype)
    W = (rng.uniform(-1, 1, (H + I, 4 * H)) / np.sqrt(H)).astype(dtype)
    b = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
    h0, c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    dhT, dcT = rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    return x, W, b, h0, c0, dhs, dhT, dcT


def _check_layer(env, rep, tag, inputs, dtype):
    x, W, b, h0, c0, dhs, dhT, dcT = inputs
    want_f = nb.lstm_forward(x, W, b, h0, c0)
    want_b = nb.lstm_backward(dhs, dhT, dcT, want_f[3])
    d = [env.cb.asarray(a) for a in inputs]
    hs, hT, cT, cache = env.cb.lstm_forward(*d[:5])
    grads = env.cb.lstm_backward(d[5], d[6], d[7], cache)
    for name, got, want in zip(("hs", "hT", "cT"), (hs, hT, cT), want_f[:3]):
        rep.check(f"{tag}{name}", host(env, got), want, dtype)
    for name, got, want in zip(("dx", "dW", "db", "dh0", "dc0"), grads, want_b):
        rep.check(f"{tag}{name}", host(env, got), want, dtype, "grad")
    return host(env, hs), [host(env, g) for g in grads]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,graphs,blas", MODES,
                         ids=["fused", "fused-graph", "cublas", "cublas-graph", "cublas-matmul", "persist"])
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_lstm_layer(env, options, dtype, mode, graphs, blas, shape):
    options(step=mode, graphs=graphs, blas=blas, persist_units=_persist_units(env, shape[3]))
    rng = np.random.default_rng(3)
    rep = report(env, f"lstm layer {dtype} {mode}{'+graph' if graphs else ''}{'+' + blas if mode == 'cublas' else ''} "
                      f"T{shape[0]}B{shape[1]}I{shape[2]}H{shape[3]}")
    if mode == "persist":
        rep.equal("persistent path taken", env.cb.step_mode(shape[1], shape[3], dtype), "persist")
    calls = 3 if graphs else 1          # eager, capture, replay on new buffers and new values
    for k in range(calls):
        _check_layer(env, rep, f"call{k} ", _layer_inputs(rng, *shape, dtype), dtype)
    if mode == "persist":
        _check_no_barrier_timeouts(env, rep)
    rep.done()


@pytest.mark.parametrize("units", [1, 3, 8])
@pytest.mark.parametrize("B", [2, 40])
def test_lstm_layer_persist_blocks(env, options, units, B):
    """The persistent kernels with several blocks (a grid barrier per step; the last block owning
    fewer units when 3 does not divide H) and each lane count KS (B*units pairs per block)."""
    if env.emulated:
        pytest.skip("the emulator runs blocks one after another: no grid barrier across blocks")
    options(step="persist", persist_units=units)
    H = 37
    rep = report(env, f"lstm layer float32 persist units={units} B={B} plan={env.cb.persist_plan(B, H, 'float32')}")
    rep.equal("persistent path taken", env.cb.step_mode(B, H, "float32"), "persist")
    for dt in ("float64", "float32"):
        _check_layer(env, rep, f"{dt} ", _layer_inputs(np.random.default_rng(11), 7, B, 6, H, dt), dt)
    _check_no_barrier_timeouts(env, rep)
    rep.done()


@pytest.mark.parametrize("tile", ["narrow", "small", "big"])
def test_lstm_layer_every_tile(env, options, tile):
    """Each tile config of the fused kernels on a shape that leaves partial tiles."""
    options(step="fused", graphs=False, tile=tile)
    rep = report(env, f"lstm layer float64 fused tile={tile}")
    _check_layer(env, rep, "", _layer_inputs(np.random.default_rng(4), 3, 35, 6, 33, "float64"), "float64")
    rep.done()


def test_graph_replay_is_bitwise_eager(env, options):
    """The fused path gives the same bits eagerly and from a replayed graph."""
    rng = np.random.default_rng(5)
    inputs = _layer_inputs(rng, 6, 3, 5, 9, "float32")
    options(step="fused", graphs=False)
    rep = report(env, "graph vs eager float32")
    hs_eager, g_eager = _check_layer(env, rep, "eager ", inputs, "float32")
    options(graphs=True)
    for k in range(3):
        hs_graph, g_graph = _check_layer(env, rep, f"graph{k} ", inputs, "float32")
        rep.equal(f"hs call{k}", hs_graph, hs_eager)
        for name, a, b in zip(("dx", "dW", "db", "dh0", "dc0"), g_graph, g_eager):
            rep.equal(f"{name} call{k}", a, b)
    rep.done()


@pytest.mark.parametrize("dtype", DTYPES)
def test_embed_layer(env, dtype):
    rng = np.random.default_rng(6)
    T, B, V, E, H = 4, 3, 5, 6, 7
    tokens = rng.integers(0, V, (T, B))
    tokens[0, :] = 2                                     # repeated ids: the scatter-add must sum them
    Emb = rng.standard_normal((V, E)).astype(dtype)
    W = (rng.uniform(-1, 1, (H + E, 4 * H)) / np.sqrt(H)).astype(dtype)
    b = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
    h0 = np.zeros((B, H), dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    want = nb.embed_lstm_forward(tokens, Emb, W, b, h0, h0)
    want_g = nb.embed_lstm_backward(dhs, h0, h0, want[3])
    d = env.cb.asarray
    got = env.cb.embed_lstm_forward(d(tokens), d(Emb), d(W), d(b), d(h0), d(h0))
    got_g = env.cb.embed_lstm_backward(d(dhs), d(h0), d(h0), got[3])
    rep = report(env, f"embed layer {dtype}")
    rep.check("hs", host(env, got[0]), want[0], dtype)
    for name, a, b_ in zip(("dEmb", "dW", "db", "dh0", "dc0"), got_g, want_g):
        rep.check(name, host(env, a), b_, dtype, "grad")
    rep.done()


def test_row_major_gemm(env):
    """RowMajorGemm (cuBLAS by raw pointer; on the emulator its column-major stand-in): every
    transpose pair, beta = 0 (C not read: garbage stays out) and beta = 1, against NumPy."""
    rng = np.random.default_rng(0)
    rep = report(env, "RowMajorGemm")
    for dt in ("float32", "float64"):
        g = env.ck.RowMajorGemm(dt)
        M, N, K = 3, 5, 4
        for ta in (0, 1):
            for tb in (0, 1):
                a = rng.standard_normal((K, M) if ta else (M, K)).astype(dt)
                bm = rng.standard_normal((N, K) if tb else (K, N)).astype(dt)
                want = (a.T if ta else a) @ (bm.T if tb else bm)
                da, db = env.cb.asarray(a), env.cb.asarray(bm)
                for acc in (False, True):
                    c0 = rng.standard_normal((M, N)).astype(dt)
                    dc = env.cp.empty((M, N), dt) if not acc else env.cb.asarray(c0)
                    g(M, N, K, da.data.ptr, a.shape[1], ta, db.data.ptr, bm.shape[1], tb, dc.data.ptr, N,
                      accumulate=acc)
                    rep.check(f"ta{ta} tb{tb} acc{int(acc)}", env.cb.to_numpy(dc), want + (c0 if acc else 0), dt)
    rep.done()


# ----------------------------------------------------------------------------
# A whole training step: Model.forward_backward + clipping + Adam
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["fused", "cublas", "persist"])
def test_training_steps(env, options, dtype, mode):
    options(step=mode, graphs=True, persist_units=_persist_units(env, 11))
    cfg = ModelConfig(vocab_size=13, embed_size=5, hidden_size=11, layers=2, dropout=0.25, dtype=dtype)
    T, B = 6, 3
    params = init_params(cfg, seed=7)
    ref = Model(cfg, nb, params)
    gpu = Model(cfg, env.cb, params)
    opt_ref = Adam(ref.params, nb, AdamConfig(lr=1e-2, grad_clip=0.5))
    opt_gpu = Adam(gpu.params, env.cb, AdamConfig(lr=1e-2, grad_clip=0.5))
    rng_data = np.random.default_rng(8)
    rng_ref, rng_gpu = np.random.default_rng(9), np.random.default_rng(9)    # the same dropout masks
    st_ref, st_gpu = ref.zero_state(B), gpu.zero_state(B)
    rep = report(env, f"training step {dtype} {mode}")
    for step in range(3):
        x = rng_data.integers(0, cfg.vocab_size, (T, B))
        y = rng_data.integers(0, cfg.vocab_size, (T, B))
        loss_r, g_r, st_ref = ref.forward_backward(x, y, st_ref, ref.dropout_masks(T, B, rng_ref))
        loss_g, g_g, st_gpu = gpu.forward_backward(env.cb.asarray(x), env.cb.asarray(y), st_gpu,
                                                   gpu.dropout_masks(T, B, rng_gpu))
        rep.check(f"s{step} loss", loss_g, loss_r, dtype, "steps")
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
# Generation on the device
# ----------------------------------------------------------------------------

class _Vocab:
    """The bits of data.Vocab that generate_text uses, over letters."""

    def __init__(self, V):
        self.symbols = [chr(ord("a") + i) for i in range(V)]
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.unk = None

    def encode(self, text, strict=False):
        return np.array([self.index[ch] for ch in text], np.int64)


def _models(env, dtype, V=17, H=19, L=2, seed=10, scale=3.0):
    """A reference and a GPU model with the same weights; the output layer is scaled up so the
    distributions are peaked, as after training."""
    cfg = ModelConfig(vocab_size=V, embed_size=6, hidden_size=H, layers=L, dtype=dtype)
    params = init_params(cfg, seed=seed)
    params["Wy"] = (params["Wy"] * scale).astype(dtype)
    return Model(cfg, nb, params), Model(cfg, env.cb, params), _Vocab(V)


def _greedy_ids_with_gaps(model, vocab, prime, n):
    """Reference greedy ids and, per step, the gap between the two largest logits."""
    from lstm_engine.core.generation import prime_state
    state, token = prime_state(model, vocab, prime)
    ids, gaps = [], []
    for _ in range(n):
        logits = nb.step_logits(model.params, state, token)
        top2 = np.sort(logits.astype(np.float64))[-2:]
        token = int(np.argmax(logits))
        ids.append(token)
        gaps.append(float(top2[1] - top2[0]))
    return ids, gaps


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_generation_matches_reference(env, options, dtype):
    options(graphs=True)
    ref, gpu, vocab = _models(env, dtype)
    n = 40
    want = generate_text(ref, vocab, prime="abca", length=n, greedy=True)
    got = generate_text(gpu, vocab, prime="abca", length=n, greedy=True, chunk=8)   # 5 calls: eager, graph, replays
    rep = report(env, f"greedy generation {dtype}")
    if dtype == "float32" and got != want:
        # float32 sums in another order can flip a genuine near-tie; that is the only excuse
        k = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        _, gaps = _greedy_ids_with_gaps(ref, vocab, "abca", n)
        rep.line(f"first difference at char {k}: reference top-2 logit gap {gaps[k]:.3e}", gaps[k] > 1e-4)
    else:
        rep.equal("text", np.array(list(got)), np.array(list(want)))
    rep.done()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 5, 1.0), (1.3, 0, 0.7), (0.9, 4, 0.8)])
def test_seeded_sampling_matches_reference(env, options, temperature, top_k, top_p):
    options(graphs=True)
    ref, gpu, vocab = _models(env, "float64")
    want = generate_text(ref, vocab, prime="ba", length=30, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    got = generate_text(gpu, vocab, prime="ba", length=30, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=11, chunk=10)
    rep = report(env, f"seeded sampling float64 T={temperature} k={top_k} p={top_p}")
    rep.equal("text", np.array(list(got)), np.array(list(want)))
    rep.done()


FILTER_CASES = [  # V, temperature, top_k, top_p
    (1, 1.0, 0, 1.0), (5, 0.7, 0, 1.0), (5, 1.0, 2, 1.0), (37, 1.5, 0, 0.6),
    (37, 0.5, 9, 0.9), (37, 1.0, 40, 1.0), (300, 1.0, 17, 0.95), (300, 2.0, 0, 0.3),
]


@pytest.mark.parametrize("V,temperature,top_k,top_p", FILTER_CASES)
def test_filter_kernel_matches_filter_probs(env, V, temperature, top_k, top_p):
    """The sampler's probabilities and draw equal filter_probs / sample_index, ties included."""
    rng = np.random.default_rng(V)
    S = 3
    logits = rng.integers(-3, 4, (S, V)).astype(np.float64)    # integers: many exact ties
    logits[1] = rng.standard_normal(V)
    u = rng.random(S)
    probs, tokens = env.cg.filtered_probs(env.cb.asarray(logits), temperature, top_k, top_p, u)
    rep = report(env, f"filter kernel V{V} T={temperature} k={top_k} p={top_p}")
    for s in range(S):
        want = nb.filter_probs(logits[s], temperature, top_k, top_p)
        rep.check(f"probs row{s}", probs[s], want, "float64")
        rep.equal(f"kept row{s}", probs[s] > 0, want > 0)
        rep.equal(f"token row{s}", tokens[s], nb.sample_index(want, u[s]))
    rep.done()


def test_generate_batch_rows_match_single_sequences(env, options):
    options(graphs=True)
    _, gpu, _ = _models(env, "float64")
    starts = [3, 0, 16]
    S, H = len(starts), gpu.cfg.hidden_size
    rng = np.random.default_rng(12)
    h = [[rng.standard_normal((S, H)) * 0.3, rng.standard_normal((S, H)) * 0.3] for _ in range(gpu.cfg.layers)]
    state = [[env.cb.asarray(a), env.cb.asarray(b)] for a, b in h]
    ids = env.cb.generate_batch(gpu.params, state, starts, 6, greedy=True)
    none = env.cb.generate_batch(gpu.params, state, starts, 0, greedy=True)
    rep = report(env, "generate_batch greedy")
    rep.equal("shape", np.array(ids.shape), np.array([S, 6]))
    rep.equal("n=0 shape", np.array(none.shape), np.array([S, 0]))
    for s, tok in enumerate(starts):
        st = [[env.cb.asarray(a[s:s + 1]), env.cb.asarray(b[s:s + 1])] for a, b in h]
        single = env.cb.generate(gpu.params, st, tok, 6, greedy=True)
        rep.equal(f"row{s}", ids[s], single)
    rep.done()


# ----------------------------------------------------------------------------
# Checkpoints cross the backends
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("train_on", ["cupy", "numpy"])
def test_checkpoint_moves_between_backends(env, tmp_path, monkeypatch, train_on):
    from lstm_engine import api
    from lstm_engine.core.train import TrainConfig
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path / "state"))
    text = "abcab cabba acbab bcaca " * 8
    cfg = TrainConfig(backend=train_on, embed_size=4, hidden_size=9, layers=2, batch_size=2, seq_len=5,
                      steps=3, eval_every=0, sample_every=0, save_every=0, log_every=0, dtype="float64",
                      val_fraction=0.0, out=str(tmp_path / "run"))
    trainer = api.train(cfg, text=text)
    path = os.path.join(cfg.out, "latest.safetensors")
    rep = report(env, f"checkpoint trained on {train_on}")
    texts = {}
    for be in ("numpy", "cupy"):
        model, vocab, _ = api.load_model(path, backend=be)
        rep.equal(f"backend {be}", model.be.NAME, be)
        texts[be] = api.generate(model, vocab, prime="ab", length=25, greedy=True)
    rep.equal("greedy text", np.array(list(texts["cupy"])), np.array(list(texts["numpy"])))
    for n, p in trainer.model.params.items():
        rep.equal(f"{n} is host", type(trainer.model.be.to_numpy(p)) is np.ndarray, True)
    rep.done()


def test_bad_input_is_rejected(env):
    d = env.cb.asarray
    x = d(np.zeros((2, 3, 4)))
    h = d(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="W must be"):
        env.cb.lstm_forward(x, d(np.zeros((8, 20))), d(np.zeros(20)), h, h)
    with pytest.raises(ValueError, match="float32 or float64"):
        env.cb.lstm_forward(d(np.zeros((2, 3, 4), np.float16)), d(np.zeros((9, 20), np.float16)),
                            d(np.zeros(20, np.float16)), d(np.zeros((3, 5), np.float16)), d(np.zeros((3, 5), np.float16)))
    with pytest.raises(ValueError, match="start tokens"):
        env.cb.generate_batch(_models(env, "float64")[1].params, [], [99], 3, greedy=True)


def make_env(cb, cg, ck, cp, emulated):
    return SimpleNamespace(cb=cb, cg=cg, ck=ck, cp=cp, emulated=emulated)
