"""The numba kernels of the LSTM variants (peephole, coupled, gru) against the NumPy reference.

Through the backend interface (cell_forward, cell_backward, embed_cell_forward,
embed_cell_backward, generate(..., cell=)): every output and gradient by name with
tests/parity.py, float32 and float64, on the one-thread time loop, on threads split by batch rows
and on threads split by hidden units (forced by the thresholds, and once by a layer big enough to
choose threads itself),
layer 0 on both paths (the V x G table and the gathered embeddings), a 2-layer model's
forward_backward, and generated text (greedy and sampled) from the same seed.

Dimension legend: T time, B batch, I input, E embedding, H hidden, V vocab, L layers.
"""
import numpy as np
import pytest

import lstm_engine as le
from lstm_engine.backends import get_backend, numba_cells
from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.generation import generate_text
from lstm_engine.core.model import CELL_PARAMS, Model, ModelConfig, cell_param_shapes, init_params
from lstm_engine.errors import UserError

from parity import DTYPES, Parity

nb = pytest.importorskip("lstm_engine.backends.numba_backend")
CELLS = ("peephole", "coupled", "gru")
SHAPES = [(5, 3, 7, 13), (1, 1, 5, 3), (4, 2, 6, 9)]   # (T, B, I, H)


@pytest.fixture(params=["one-thread", "batch-split", "unit-split"])
def path(request, monkeypatch):
    """Each time loop whatever the size: one thread; threads on slices of the batch; threads on
    slices of the hidden units.  Threaded: float64 only, to keep JIT compile time down (same code),
    but for the peephole and coupled cells' unit split, float32 too (cell_layers_columns.py)."""
    import numba
    if request.param != "one-thread":
        if numba.get_num_threads() < 2:
            pytest.skip("numba has one thread here (NUMBA_NUM_THREADS=1)")
        both = request.param == "unit-split" and request.node.callspec.params.get("cell") in ("peephole", "coupled")
        if request.node.callspec.params.get("dtype") == "float32" and not both:
            pytest.skip("threaded loops: float64 only, to keep JIT compile time down (same code)")
    monkeypatch.setattr(nb, "PARALLEL_MIN_MACS", 1 << 62 if request.param == "one-thread" else 0)
    monkeypatch.setattr(nb, "COLUMNS_MIN_MACS", 0 if request.param == "unit-split" else 1 << 62)
    return request.param


def assert_plan(path, cell, T, B, H):
    """The thread plan the fixture forces is the one the layer takes: (rows, units) by path."""
    import numba
    _, rows, units = numba_cells._threads(nb, T, B, H, cell)
    nt = numba.get_num_threads()
    by_rows = (min(nt, B), None)                        # B = 1: the row loop on one thread
    want = {"one-thread": (None, None), "batch-split": by_rows,
            "unit-split": (None, nt) if H >= nt else by_rows}[path]            # a unit per thread at least
    assert (rows, units) == want, (cell, path, rows, units)


def layer_inputs(rng, cell, T, B, I, H, dtype, scale=0.6):
    """x, the layer's parameters p by short name, h0, c0 and the gradients from above."""
    f = lambda *s, k=1.0: (rng.standard_normal(s) * k).astype(dtype)  # noqa: E731
    p = {n: f(*shape, k=scale) for n, shape in cell_param_shapes(cell, I, H).items()}
    return dict(x=f(T, B, I), p=p, h0=f(B, H), c0=f(B, H), dhs=f(T, B, H), dhT=f(B, H), dcT=f(B, H))


def compare_layer(title, cell, a, dtype, forward="forward"):
    """cell_forward / cell_backward of numba against the reference on the inputs a, by name."""
    r_hs, r_hT, r_cT, r_cache = ref.cell_forward(cell, a["x"], a["p"], a["h0"], a["c0"])
    hs, hT, cT, cache = nb.cell_forward(cell, a["x"], a["p"], a["h0"], a["c0"])
    got = nb.cell_backward(a["dhs"], a["dhT"], a["dcT"], cache)
    want = ref.cell_backward(a["dhs"], a["dhT"], a["dcT"], r_cache)
    with Parity(title, backend="numba") as p:
        for name, g, w in (("hs", hs, r_hs), ("hT", hT, r_hT), ("cT", cT, r_cT)):
            p.check(name, g, w, dtype, forward)
        compare_grads(p, ("dx", "dp", "dh0", "dc0"), got, want, dtype)
        p.equal("dp names", sorted(got[1]), sorted(CELL_PARAMS[cell]))
        if cell == "gru":                          # no cell state: c and its gradient pass through
            p.equal("cT = c0", cT, a["c0"])
            p.equal("dc0 = dcT", got[3], a["dcT"])


def compare_grads(p, names, got, want, dtype):
    """Every gradient by name; dp (a dict) by its parameters' short names."""
    for name, g, w in zip(names, got, want):
        if isinstance(w, dict):
            for k in w:
                p.check(f"d{k}", g[k], w[k], dtype, "grad")
                p.equal(f"d{k}.dtype", g[k].dtype.name, dtype)
        else:
            p.check(name, g, w, dtype, "grad")
            p.equal(f"{name}.dtype", g.dtype.name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_layer_forward_and_gradients(cell, T, B, I, H, dtype, rng, path):
    assert_plan(path, cell, T, B, H)
    compare_layer(f"{cell} layer T{T} B{B} I{I} H{H}", cell, layer_inputs(rng, cell, T, B, I, H, dtype), dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_big_enough_to_choose_threads(cell, rng):
    """T*B*H*4H = PARALLEL_MIN_MACS: the backend's own choice is threads split by batch rows
    (with two or more threads), and the weight-gradient products read dz from a padded copy
    (H = I = 256).  W scaled so the 512-term sums stay O(1)."""
    import numba
    T, B, H = 4, 4, 256
    assert T * B * H * 4 * H >= nb.PARALLEL_MIN_MACS
    if numba.get_num_threads() >= 2:
        assert numba_cells._threads(nb, T, B, H, cell)[1] == min(numba.get_num_threads(), B)
    compare_layer(f"{cell} layer T{T} B{B} I{H} H{H}", cell,
                  layer_inputs(rng, cell, T, B, H, H, "float64", scale=0.6 / 8), "float64", forward="wide")


@pytest.mark.parametrize("cell", CELLS)
def test_layer_big_enough_to_split_by_units(cell, rng):
    """B*H*4H = COLUMNS_MIN_MACS: every cell's own choice is the split by hidden units, as the lstm's
    (with two or more threads), and its results are the reference's.  H = I = 256, W scaled as above."""
    import numba
    T, B, H = 2, 64, 256
    assert B * H * 4 * H >= nb.COLUMNS_MIN_MACS
    if numba.get_num_threads() >= 2:
        assert numba_cells._threads(nb, T, B, H, cell)[1:] == nb._threads(T, B, H)[1:] == (None, numba.get_num_threads())
    compare_layer(f"{cell} layer T{T} B{B} I{H} H{H}", cell,
                  layer_inputs(rng, cell, T, B, H, H, "float64", scale=0.6 / 8), "float64", forward="wide")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [4, 40])          # V <= T*B: table path; V > T*B: gather path
@pytest.mark.parametrize("T,B,I,H", SHAPES[::2])
@pytest.mark.parametrize("cell", CELLS)
def test_embedding_layer_both_paths(cell, T, B, I, H, V, dtype, rng, path):
    assert_plan(path, cell, T, B, H)
    a = layer_inputs(rng, cell, T, B, I, H, dtype)
    Emb = rng.standard_normal((V, I)).astype(dtype)
    tokens = rng.integers(0, V, (T, B)).astype(np.int32)
    r = ref.embed_cell_forward(cell, tokens, Emb, a["p"], a["h0"], a["c0"])
    n = nb.embed_cell_forward(cell, tokens, Emb, a["p"], a["h0"], a["c0"])
    assert (n[3].x is None) == (V <= T * B)     # which path ran
    got = nb.embed_cell_backward(a["dhs"], a["dhT"], a["dcT"], n[3])
    want = ref.embed_cell_backward(a["dhs"], a["dhT"], a["dcT"], r[3])
    with Parity(f"{cell} embed layer T{T} B{B} E{I} H{H} V{V}", backend="numba") as p:
        for name, k in (("hs", 0), ("hT", 1), ("cT", 2)):
            p.check(name, n[k], r[k], dtype)
        compare_grads(p, ("dEmb", "dp", "dh0", "dc0"), got, want, dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_forced_gemm_candidate_runs_the_time_loop_and_products_apart(cell, rng, monkeypatch):
    """A GEMM of the per-machine choice forced for every product (LSTM_ENGINE_TUNE=<name>): the
    time loop, then the chosen products, for a layer and layer 0 on both paths, float32."""
    from lstm_engine.backends import numba_tune as nt
    candidate = "blas" if "blas" in nt.candidates("lstm") else "gemm6x16"
    monkeypatch.setenv("LSTM_ENGINE_TUNE", candidate)
    nt.forget()
    called = []
    product_fn = nt.product_fn
    monkeypatch.setattr(nt, "product_fn", lambda kind, name: called.append(name) or product_fn(kind, name))
    dtype = "float32"
    compare_layer(f"{candidate} {cell} layer", cell, layer_inputs(rng, cell, 5, 3, 7, 13, dtype), dtype)
    a = layer_inputs(rng, cell, 4, 3, 6, 9, dtype)
    for V in (5, 40):                                               # table path, gathered path
        Emb = rng.standard_normal((V, 6)).astype(dtype)
        tokens = rng.integers(0, V, (4, 3))
        r = ref.embed_cell_forward(cell, tokens, Emb, a["p"], a["h0"], a["c0"])
        n = nb.embed_cell_forward(cell, tokens, Emb, a["p"], a["h0"], a["c0"])
        got = nb.embed_cell_backward(a["dhs"], a["dhT"], a["dcT"], n[3])
        want = ref.embed_cell_backward(a["dhs"], a["dhT"], a["dcT"], r[3])
        with Parity(f"{candidate} {cell} embed layer V{V}", backend="numba") as p:
            p.check("hs", n[0], r[0], dtype)
            compare_grads(p, ("dEmb", "dp", "dh0", "dc0"), got, want, dtype)
    assert called and set(called) == {candidate}                    # the forced one ran


def test_empty_window_returns_the_state_and_zero_gradients(rng):
    a = layer_inputs(rng, "gru", 0, 2, 3, 4, "float64")
    hs, hT, cT, cache = nb.cell_forward("gru", a["x"], a["p"], a["h0"], a["c0"])
    assert hs.shape == (0, 2, 4) and np.array_equal(hT, a["h0"]) and np.array_equal(cT, a["c0"])
    dx, dp, dh0, dc0 = nb.cell_backward(a["dhs"], a["dhT"], a["dcT"], cache)
    assert dx.shape == (0, 2, 3) and all(not g.any() for g in dp.values())
    assert np.array_equal(dh0, a["dhT"]) and np.array_equal(dc0, a["dcT"])


@pytest.mark.parametrize("cell", CELLS)
def test_bad_input_is_a_user_error(cell, rng):
    a = layer_inputs(rng, cell, 2, 3, 4, 5, "float64")
    W = a["p"]["W"]
    for p, what in (({**a["p"], "W": W[:, :-1]}, "wrong shape"), ({"W": W}, "missing"),
                    ({k: v.astype(np.float32) for k, v in a["p"].items()}, "dtype")):
        with pytest.raises(UserError) as e:
            nb.cell_forward(cell, a["x"], p, a["h0"], a["c0"])
        assert "\n" not in str(e.value), what


# ----------------------------------------------------------------------------
# Whole models: training step and generation
# ----------------------------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 40


def model_pair(cell, dtype, vocab, E=6, H=13, L=2, scale=1.0, dropout=0.0):
    cfg = ModelConfig(len(vocab), E, H, L, dropout=dropout, dtype=dtype, cell=cell)
    params = init_params(cfg, seed=2)
    for name in params:
        if name.startswith("W"):
            params[name] *= scale
    return {"numpy": Model(cfg, ref, params), "numba": Model(cfg, get_backend("numba"), params)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_model_forward_backward(cell, dtype, rng):
    """A 2-layer model with dropout masks and a carried state: loss, new state and every
    gradient by the model's parameter names."""
    vocab = le.Vocab.build(TEXT)
    models = model_pair(cell, dtype, vocab, dropout=0.25)
    T, B = 7, 3
    ids = vocab.encode(TEXT[:T * B + 1])
    tokens, targets = ids[:-1].reshape(B, T).T.copy(), ids[1:].reshape(B, T).T.copy()
    state0 = [[rng.standard_normal((B, 13)).astype(dtype) for _ in range(2)] for _ in range(2)]
    masks = models["numpy"].dropout_masks(T, B, np.random.default_rng(3))
    assert masks is not None
    out = {be: m.forward_backward(tokens, targets, [list(s) for s in state0], masks) for be, m in models.items()}
    (loss, grads, state), (r_loss, r_grads, r_state) = out["numba"], out["numpy"]
    with Parity(f"{cell} model L2 T{T} B{B}", backend="numba") as p:
        p.check("loss", loss, r_loss, dtype)
        for l in range(2):
            p.check(f"h{l}", state[l][0], r_state[l][0], dtype)
            p.check(f"c{l}", state[l][1], r_state[l][1], dtype)
        p.equal("grad names", sorted(grads), sorted(r_grads))
        for name in r_grads:
            p.check(f"d{name}", grads[name], r_grads[name], dtype, "grad")


@pytest.mark.parametrize("cell", CELLS)
def test_training_gives_the_same_loss_curve(cell, tmp_path):
    """Same seed, numpy vs numba, float64: 25 steps with dropout, clipping and the state carried
    between windows (B=4, T=11, L=2): losses and every parameter after them."""
    curves = {}
    for be in ("numpy", "numba"):
        cfg = le.TrainConfig(backend=be, cell=cell, embed_size=5, hidden_size=11, layers=2, dropout=0.2,
                             batch_size=4, seq_len=11, steps=25, lr=1e-2, grad_clip=0.5, dtype="float64", seed=7,
                             eval_every=0, sample_every=0, save_every=0, log_every=0, out=str(tmp_path / be))
        trainer = le.Trainer(cfg, text=TEXT)
        assert trainer.model.cfg.cell == cell
        curves[be] = np.array([trainer.train_step()[0] for _ in range(cfg.steps)])
        curves[be + " params"] = trainer.model.host_params()
    assert curves["numpy"][-1] < curves["numpy"][0] - 0.2          # it learned something
    with Parity(f"{cell} training 25 steps", backend="numba") as p:
        p.check("losses", curves["numba"], curves["numpy"], "float64", "steps")
        for name, want in curves["numpy params"].items():
            p.check(name, curves["numba params"][name], want, "float64", "steps")


@pytest.fixture(scope="module")
def gen_models():
    vocab = le.Vocab.build(TEXT)
    return vocab, {(cell, dtype): model_pair(cell, dtype, vocab, H=13, L=3, scale=4.0)   # peaky predictions
                   for cell in CELLS for dtype in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", [dict(greedy=True), dict(temperature=0.8, top_k=9, top_p=0.9)],
                         ids=["greedy", "sampled"])
@pytest.mark.parametrize("table", [True, False], ids=["x0-table", "no-table"])
@pytest.mark.parametrize("cell", CELLS)
def test_generated_text_is_the_same(gen_models, cell, dtype, opts, table, monkeypatch):
    """generate_text (prime, 32-character chunks, seeded Generator) through both backends, with
    layer 0's input product read from the V x G table and computed per character."""
    monkeypatch.setattr(nb, "V_TABLE_MIN_CHARS_PER_ROW", 0 if table else np.inf)
    vocab, models = gen_models
    texts = {be: generate_text(m, vocab, prime="the lazy", length=100, seed=5, **opts)
             for be, m in models[cell, dtype].items()}
    print(f"\n{cell} {dtype} {opts}: {texts['numba'][:60]!r}")
    assert texts["numba"] == texts["numpy"]
    assert len(set(texts["numba"])) > (1 if opts.get("greedy") else 5)   # not a degenerate test


@pytest.mark.parametrize("opts", [dict(greedy=True), dict(temperature=0.8, top_p=0.9)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("cell", CELLS)
def test_threaded_generation_is_the_same(gen_models, cell, opts, monkeypatch):
    """Generation on a team of threads (each owning a block of every layer's hidden units), forced
    on a small model, in chunks of 41 characters so the state is carried between calls and the
    team between jobs: the same text as the reference, float64."""
    import numba

    from lstm_engine.backends import numba_team
    if numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(nb, "SAMPLE_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(nb, "SAMPLE_TEAM_MIN_MACS", 0)
    jobs, teams = [], set()
    monkeypatch.setattr(numba_team.Team, "run", lambda self, *a, _run=numba_team.Team.run:
                        jobs.append(self.nt) or teams.add(id(self)) or _run(self, *a))
    vocab, models = gen_models
    texts = {be: generate_text(m, vocab, prime="the", length=123, seed=3, chunk=41, **opts)
             for be, m in models[cell, "float64"].items()}
    assert texts["numba"] == texts["numpy"]
    assert len(jobs) == 3 and min(jobs) >= 2 and len(teams) == 1     # one team ran every chunk


@pytest.mark.parametrize("cell", CELLS)
def test_generate_updates_state_like_the_reference(gen_models, cell):
    vocab, models = gen_models
    states, ids = {}, {}
    for be, m in models[cell, "float64"].items():
        states[be] = m.zero_state(1)
        ids[be] = m.be.generate(m.params, states[be], 3, 20, 0.8, 0, 1.0, False, np.random.default_rng(1),
                                None, cell=cell)
    with Parity(f"{cell} generate state", backend="numba") as p:
        p.equal("ids", ids["numba"], ids["numpy"])
        for l in range(3):
            for k, name in enumerate(("h", "c")):
                p.check(f"{name}{l}", states["numba"][l][k], states["numpy"][l][k], "float64", "steps")
                p.equal(f"{name}{l} shape", states["numba"][l][k].shape, (1, 13))
