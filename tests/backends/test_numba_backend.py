"""The Numba backend against the NumPy reference, kernel by kernel and end to end.

Every output, cache entry and gradient is compared by name with tests/parity.py (scale-relative
max error against its tolerance table); `pytest -s` prints each one.  Shapes are odd on purpose:
H not a multiple of 8, B = 1, T = 1, and a vocabulary both smaller and larger than T*B (the two
paths of embed_lstm_forward).  Training from one seed must give the same loss curve, and
generation the same text, greedy and sampled.

Dimension legend: T time, B batch, I input, E embedding, H hidden, G = 4H, V vocab, L layers.
"""
import functools

import numpy as np
import pytest

import lstm_engine as le
from lstm_engine.backends import get_backend
from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.generation import generate_text
from lstm_engine.core.model import Model, ModelConfig, init_params

from parity import DTYPES, TOL, Parity
from parity import check as parity_check

nb = pytest.importorskip("lstm_engine.backends.numba_backend")
SHAPES = [(5, 3, 7, 13), (1, 1, 5, 3), (4, 2, 6, 9), (3, 1, 1, 17)]   # (T, B, I, H)


@pytest.fixture(params=["one-thread", "batch-split", "unit-split"])
def path(request, monkeypatch):
    """Run a layer test on each time-loop kernel whatever the size: one thread, threads on
    slices of the batch, threads on slices of the hidden units (numba_lstm_cols)."""
    import numba
    if request.param != "one-thread":
        if numba.get_num_threads() < 2:
            pytest.skip("numba has one thread here (NUMBA_NUM_THREADS=1)")
        if request.node.callspec.params.get("dtype") == "float32":
            pytest.skip("threaded loops: float64 only, to keep JIT compile time down (same code)")
    monkeypatch.setattr(nb, "PARALLEL_MIN_MACS", 1 << 62 if request.param == "one-thread" else 0)
    monkeypatch.setattr(nb, "COLUMNS_MIN_MACS", 0 if request.param == "unit-split" else 1 << 62)
    return request.param


def check(name, got, want, dtype, kind="forward"):
    return parity_check(name, got, want, dtype, kind, backend="numba")


def layer_inputs(rng, T, B, I, H, dtype):
    f = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(dtype)  # noqa: E731
    return dict(x=f(T, B, I), W=f(H + I, 4 * H, scale=0.6), b=f(4 * H), h0=f(B, H), c0=f(B, H),
                dhs=f(T, B, H), dhT=f(B, H), dcT=f(B, H))


# ----------------------------------------------------------------------------
# Kernels, one by one
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_functions_match_numpy(dtype):
    """fexp / fsigmoid / ftanh (the vectorisable ones) within a few ulp, NaN stays NaN; fexp_nonpos
    as fexp on x <= 0, 0 where e^x is below float32's normal range."""
    import numba
    from lstm_engine.kernels.numba.fastmath import fexp, fexp_nonpos, fsigmoid, ftanh

    @numba.njit(error_model="numpy")
    def apply(z, out):
        for i in range(z.size):
            out[0, i], out[1, i], out[2, i] = fexp(z[i]), fsigmoid(z[i]), ftanh(z[i])
            out[3, i] = fexp_nonpos(-abs(z[i]))

    lim = 85.0 if dtype == "float32" else 700.0
    z = np.concatenate([np.linspace(-lim, lim, 20001), np.random.default_rng(0).standard_normal(5000) * 4,
                        [0.0, -0.0, 1e-30, -1e-30, 0.625, -0.625]]).astype(dtype)
    out = np.empty((4, z.size), dtype)
    apply(z, out)
    z64 = z.astype(np.float64)
    want = np.stack([np.exp(z64), ref.sigmoid(z64), np.tanh(z64), np.exp(-np.abs(z64))])
    eps = np.finfo(dtype).eps
    for k, name in enumerate(("exp", "sigmoid", "tanh", "exp_nonpos")):
        normal = np.abs(want[k]) > np.finfo(dtype).tiny
        rel = np.abs(out[k][normal] - want[k][normal]) / np.abs(want[k][normal])
        print(f"  {name:8s} {dtype}: max rel {rel.max():.2e} = {rel.max() / eps:.2f} eps")
        assert rel.max() <= 4 * eps, name
        assert np.abs(out[k] - want[k]).max() <= 4 * eps * np.abs(want[k]).max()
    edge = np.array([np.nan, np.inf, -np.inf, 1000.0, -1000.0], dtype)
    out = np.empty((4, edge.size), dtype)
    apply(edge, out)
    assert np.isnan(out[:, 0]).all()
    np.testing.assert_array_equal(out[:, 1:], [[np.inf, 0, np.inf, 0], [1, 0, 1, 0], [1, -1, 1, -1], [0, 0, 0, 0]])
    if dtype == "float32":                 # e^x below the normal range (x < -87.3): 0, not a subnormal
        apply(np.array([-87.0, -87.5, -100.0], dtype), out[:, :3])
        assert out[3, 0] > 0 and out[3, 1] == 0 and out[3, 2] == 0


@functools.cache
def _dev_blas():
    """benchmarks/dev/numba/blas.py, loaded once (its gemm is not cached on disk: one compile per dtype)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "dev" / "numba" / "blas.py"
    spec = importlib.util.spec_from_file_location("dev_numba_blas", path)
    blas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blas)
    return blas


@pytest.mark.parametrize("impl", ["numba_gemm", "dev_blas"])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_on_strided_blocks_with_beta(trans_a, trans_b, impl):
    """Both GEMMs (the hand-written register-blocked one the kernels use, and the BLAS one of
    benchmarks/dev/numba/blas.py that benchmarks/gemm.py times it against) against NumPy:
    strided blocks of bigger arrays, alpha and beta (beta = 0 overwrites NaN), shapes that
    leave short row blocks (m % 8: the 4- and 2-row kernels, odd k for the 2-row kernel's split
    sums; the 9-row kernel for the last nine rows, also in a second pass of MC rows: m = 73),
    narrow column panels (n % 32) and several k blocks (k > 256); op(A) = A^T both read in place
    (few column panels) and packed (n >= TN_MIN_PANELS * NR: 264, 259 with a few last columns as
    dot products, 300; m <= TN_MAX_ROWS); nothing outside C is written.
    Each is called as Python calls it, so a dtype compiles once for all four transposes."""
    if impl == "numba_gemm":
        from lstm_engine.kernels.numba.gemm import gemm
    else:
        gemm = _dev_blas().gemm
    rng = np.random.default_rng(0)
    p = Parity(f"{impl} trans_a={trans_a} trans_b={trans_b}", backend="numba")
    for dtype in DTYPES:
        for m, k, n in ((3, 5, 7), (1, 1, 1), (1, 9, 4), (6, 1, 2), (4, 0, 3), (8, 32, 32), (9, 33, 65),
                        (25, 300, 100), (17, 520, 64), (10, 7, 33), (2, 257, 40), (73, 40, 70),
                        (25, 300, 264), (9, 40, 259), (73, 520, 300)):
            for alpha, beta in ((0.5, 1.0), (1.0, 0.0), (-2.0, 0.5)):
                big_a = rng.standard_normal((k + 2, m + 3) if trans_a else (m + 2, k + 3)).astype(dtype)
                A = big_a[1:1 + (k if trans_a else m), 2:2 + (m if trans_a else k)]      # strided block
                Bm = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
                big_c = rng.standard_normal((m, n + 4)).astype(dtype)
                C, C0, outside = big_c[:, 1:1 + n], big_c[:, 1:1 + n].copy(), big_c[:, [0, -3, -2, -1]].copy()
                if beta == 0.0:
                    C[...] = np.nan                                               # BLAS: beta 0 ignores C
                gemm(A, Bm, C, trans_a, trans_b, alpha, beta)
                want = alpha * (A.T if trans_a else A).astype(np.float64) @ (Bm.T if trans_b else Bm) \
                    + (beta * C0 if beta else 0.0)
                p.check(f"m{m} k{k} n{n} alpha{alpha} beta{beta}", C, want, dtype, "wide")
                np.testing.assert_array_equal(big_c[:, [0, -3, -2, -1]], outside)     # nothing else written
    p.done()


def _blocks(m, mr_max, last):
    """The register blocks (first row, rows) of m rows: mr_max rows each, or all of the last `last`."""
    out, i0 = [], 0
    while i0 < m:
        mr = m - i0 if m - i0 == last else min(mr_max, m - i0)
        out.append((i0, mr))
        i0 += mr
    return out


@pytest.mark.parametrize("mr_max, last", [(8, 9), (5, 0), (12, 0), (6, 0)])
def test_a_transposed_operand_is_packed_by_register_blocks(mr_max, last):
    """pack_a_t lays op(A) = A^T out block by block as _gemm_tn's register blocks read it, for the
    AVX-512 rule (8-row blocks, the last 9 rows as one) as well as the others, whatever this CPU
    runs: the block of rows i0..i0+mr at i0*kc, its mr values of each k side by side."""
    from lstm_engine.kernels.numba.gemm import pack_a_t
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 9, 16, 17, 25, 26, 73):
        for k0, k1 in ((0, 1), (3, 40), (0, 256)):
            big = rng.standard_normal((k1 + 2, m + 7)).astype(np.float32)    # A (k, m): rows m + 7 apart
            Ap = np.full(m * (k1 - k0) + 3, np.nan, np.float32)
            pack_a_t(big.reshape(-1), big.shape[1], k0, k1, m, Ap, mr_max, last)
            kc = k1 - k0
            want = np.concatenate([big[k0:k1, i0:i0 + mr].reshape(-1) for i0, mr in _blocks(m, mr_max, last)])
            np.testing.assert_array_equal(Ap[:m * kc], want, err_msg=f"m{m} k{k0}:{k1}")
            assert np.isnan(Ap[m * kc:]).all()                                  # nothing past the blocks


def test_the_packed_blocks_are_the_blocks_gemm_runs():
    """gemm._gemm_tn reads each block where pack_a_t put it only if both cut the rows alike."""
    from lstm_engine.kernels.numba import gemm as G
    for m in range(1, 80):
        runs, i0 = [], 0
        while i0 < m:
            mr = G._block_rows(m - i0)
            runs.append((i0, mr))
            i0 += mr
        assert runs == _blocks(m, G.MR, G.LAST), m


def test_packed_panels_start_on_a_cache_line():
    """The buffers the GEMM packs panels of op(B) into begin on a 64-byte line whatever numba's
    allocator returns (np.empty there starts on 32 bytes, half the time mid-line), for every size
    and dtype, each element of the (n,) view its own."""
    import numba
    from lstm_engine.kernels.numba import gemm as G

    @numba.njit
    def starts(n, like):
        a = G.line_buffer(n, like)
        p = G.panel_buffer(np.int64(2), np.int64(3), n, like)
        a[:] = 1
        return a.ctypes.data % G.LINE, p.ctypes.data % G.LINE, a.shape[0], p.shape, a.sum()

    for like in (np.zeros(1, np.float32), np.zeros(1, np.float64)):
        for n in (1, 7, 16, 33, 256 * G.NR, 1000, 4099):
            a_off, p_off, size, shape, total = starts(np.int64(n), like)
            assert (a_off, p_off, size, shape, total) == (0, 0, n, (2, 3, n, G.NR), n)


_PADDED_GEMM = """
import numpy as np
from lstm_engine.kernels.numba import gemm as G
rng = np.random.default_rng(0)
m, k, n = 2 * G.PAD_MIN_ROWS, 3000, 2 * G.SET_STRIDE   # float32 rows of op(B): 8 KB apart
worst = 0.0
for ta in (False, True):
    for tb in (False, True):
        A = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        B = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)     # 25 MB: its copy is mmapped
        C = np.full((m, n), np.nan, np.float32)
        G.gemm(A, B, C, ta, tb, 1.0, 0.0)
        want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B)
        worst = max(worst, float(np.abs(C - want).max() / np.abs(want).max()))
print(worst)
"""


def test_gemm_from_a_padded_copy_of_b():
    """With m >= PAD_MIN_ROWS and op(B) rows a multiple of SET_STRIDE bytes apart, gemm reads op(B)
    from a copy with padded rows, for all four transpose cases.  Run in a fresh process, without
    the backend's malloc tuning, so that a 25 MB copy freed too early goes back to the OS: the
    first version freed it before the product and crashed on such sizes."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _PADDED_GEMM], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    err = float(r.stdout.split()[-1])
    print(f"\npadded-B gemm, 4 transpose cases: worst scale-relative error {err:.1e}")
    assert err <= TOL["float32"]["wide"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_padded_t_copies_the_transpose_exactly(dtype):
    """padded_t(W) (the time loops' W_h^T, gemm's op(B) = B^T) equals W.T bit for bit, its rows PAD
    further apart, for shapes that leave ragged tiles (k % TILE_ROWS, n % TILE_COLS), one row or
    column, none, and W a block of a bigger array (rows further apart than n, as W_h = W[:H])."""
    from lstm_engine.kernels.numba.gemm import PAD, TILE_COLS, TILE_ROWS, padded_t
    rng = np.random.default_rng(0)
    for k, n in ((1, 1), (3, 5), (1, 70), (70, 1), (TILE_ROWS, TILE_COLS), (TILE_ROWS + 1, TILE_COLS + 3),
                 (37, 200), (128, 512), (0, 4), (4, 0)):
        big = rng.standard_normal((k + 2, n + 5)).astype(dtype)
        W = big[1:1 + k, 2:2 + n]                                   # (k,n), rows n + 5 apart
        out = padded_t(W)                                           # (n,k)
        assert out.shape == (n, k)
        np.testing.assert_array_equal(out, W.T)
        if n > 1:
            assert out.strides == ((k + PAD) * out.itemsize, out.itemsize)


def test_gemm_on_panels_packed_once():
    """gemm_panels (the time loops' products) against NumPy, from panels(B) and panels_t(W) of
    strided blocks: n not a multiple of NR (a zero-padded last panel), C narrower than the
    panels (a thread's units), short and 9-row blocks, a second pass of MC rows, k over KC,
    alpha and beta (beta = 0 over NaN); nothing outside C is written."""
    from lstm_engine.kernels.numba.gemm import NR, gemm_panels, panels, panels_t

    rng = np.random.default_rng(0)
    p = Parity("gemm_panels", backend="numba")
    for dtype in DTYPES:
        for m, k, n, n_c in ((1, 1, 1, 1), (3, 5, 7, 7), (9, 33, 65, 65), (25, 300, 100, 100),
                             (17, 520, 64, 50), (73, 40, 70, 70), (2, 257, 2 * NR, 2 * NR)):
            for alpha, beta in ((1.0, 1.0), (1.0, 0.0), (-2.0, 0.5)):
                for transposed in (False, True):
                    big_a = rng.standard_normal((m + 2, k + 3)).astype(dtype)
                    A = big_a[1:1 + m, 2:2 + k]                                  # (m,k), rows k + 3 apart
                    big_b = rng.standard_normal((n + 1, k + 1) if transposed else (k + 1, n + 2)).astype(dtype)
                    Bm = big_b[1:, 1:] if transposed else big_b[1:, 1:1 + n]     # W (n,k) or B (k,n)
                    P = panels_t(Bm) if transposed else panels(Bm)
                    assert P.shape == (-(-n // NR), k, NR)
                    big_c = rng.standard_normal((m, n_c + 4)).astype(dtype)
                    C, C0 = big_c[:, 1:1 + n_c], big_c[:, 1:1 + n_c].copy()
                    outside = big_c[:, [0, -3, -2, -1]].copy()
                    if beta == 0.0:
                        C[...] = np.nan
                    gemm_panels(A, P, C, alpha, beta)
                    op_b = (Bm.T if transposed else Bm)[:, :n_c].astype(np.float64)
                    want = alpha * A.astype(np.float64) @ op_b + (beta * C0 if beta else 0.0)
                    p.check(f"m{m} k{k} n{n}->{n_c} alpha{alpha} beta{beta} t{int(transposed)}", C, want,
                            dtype, "wide")
                    np.testing.assert_array_equal(big_c[:, [0, -3, -2, -1]], outside)
    p.done()


@pytest.mark.parametrize("threads", ["one-thread", "row-split"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_layer_forward_and_gradients(dtype, threads, monkeypatch):
    """linear_forward / linear_backward (the output layer) against the reference, by name."""
    import numba
    if threads == "row-split" and numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(nb, "PARALLEL_MIN_MACS", 0 if threads == "row-split" else 1 << 62)
    rng = np.random.default_rng(3)
    for N, H, V in ((1, 3, 5), (37, 13, 65), (203, 40, 33)):
        x, W, b, dy = (rng.standard_normal(s).astype(dtype) for s in ((N, H), (H, V), (V,), (N, V)))
        check("logits", nb.linear_forward(x, W, b), ref.linear_forward(x, W, b), dtype)
        for name, got, want in zip(("dx", "dWy", "dby"), nb.linear_backward(x, dy, W), ref.linear_backward(x, dy, W)):
            check(name, got, want, dtype, "grad")


def test_output_layer_rejects_mismatched_shapes_in_one_line():
    from lstm_engine.errors import UserError
    x, W, b = np.zeros((4, 3), "float32"), np.zeros((5, 7), "float32"), np.zeros(7, "float32")
    for call in (lambda: nb.linear_forward(x, W, b),
                 lambda: nb.linear_backward(x, np.zeros((4, 7), "float32"), W),
                 lambda: nb.linear_backward(np.zeros((4, 5), "float32"), np.zeros((4, 6), "float32"), W)):
        with pytest.raises(UserError) as e:
            call()
        assert "\n" not in str(e.value) and "got" in str(e.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_lstm_layer_forward_caches_and_gradients(T, B, I, H, dtype, rng, path):
    compare_layer(f"lstm layer T{T} B{B} I{I} H{H}", layer_inputs(rng, T, B, I, H, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_layer_whose_weight_gradients_share_a_padded_dz(dtype, rng, path):
    """H = I = 256: both weight-gradient products have m >= PAD_MIN_ROWS and dz rows 4 KB (8 KB)
    apart, so the backend copies dz once into pooled rows padded apart for them.  W is scaled by
    1/8 so that the 512-term pre-activations stay O(1) (unscaled, they are O(10) and float32 hs
    leaves even the 'wide' tolerance before any of the backward runs)."""
    assert nb._kernels().gemm.pads_b(256, 4 * 256 * np.dtype(dtype).itemsize)      # the padded path runs
    a = layer_inputs(rng, 2, 3, 256, 256, dtype)
    a["W"] = (a["W"] / 8).astype(dtype)
    compare_layer("lstm layer T2 B3 I256 H256", a, dtype, forward="wide")
    compare_layer("lstm layer T2 B3 I256 H256, again (pooled rows reused)", a, dtype, forward="wide")


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_layer_whose_recurrent_gradient_reads_a_padded_dz(dtype, rng, path):
    """The table path at H = 256: dW_h's product has m = H >= PAD_MIN_ROWS and dz rows 4 KB
    (8 KB) apart, so it reads dz from the backend's pooled padded rows."""
    a = layer_inputs(rng, 2, 3, 16, 256, dtype)
    a["W"] = (a["W"] / 8).astype(dtype)
    Emb = rng.standard_normal((4, 16)).astype(dtype)
    compare_embed_layer(a, rng.integers(0, 4, (2, 3)).astype(np.int32), Emb, dtype, wide=True)


def compare_layer(title, a, dtype, forward="forward"):
    """lstm_forward / lstm_backward of numba against the reference on the inputs a, by name."""
    r_hs, r_hT, r_cT, r_cache = ref.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    hs, hT, cT, cache = nb.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    got = nb.lstm_backward(a["dhs"], a["dhT"], a["dcT"], cache)
    want = ref.lstm_backward(a["dhs"], a["dhT"], a["dcT"], r_cache)
    with Parity(title, backend="numba") as p:
        for name, g, w in (("hs", hs, r_hs), ("hT", hT, r_hT), ("cT", cT, r_cT), ("cache.hs", cache.hs, r_cache[4]),
                           ("cache.cs", cache.cs, r_cache[5]), ("cache.acts", cache.acts, r_cache[6])):
            p.check(name, g, w, dtype, forward)
        for name, g, w in zip(("dx", "dW", "db", "dh0", "dc0"), got, want):
            p.check(name, g, w, dtype, "grad")
            p.equal(f"{name}.dtype", g.dtype.name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [4, 40])          # V <= T*B: table path; V > T*B: gather path
@pytest.mark.parametrize("T,B,I,H", SHAPES[:3])
def test_embedding_layer_both_paths(T, B, I, H, V, dtype, rng, path):
    a = layer_inputs(rng, T, B, I, H, dtype)
    Emb = rng.standard_normal((V, I)).astype(dtype)
    compare_embed_layer(a, rng.integers(0, V, (T, B)).astype(np.int32), Emb, dtype)


def compare_embed_layer(a, tokens, Emb, dtype, wide=False):
    """embed_lstm_forward / embed_lstm_backward of numba against the reference, by name; the
    table path when V <= T*B, else the gathered one (checked)."""
    (T, B), (V, E), H = tokens.shape, Emb.shape, a["h0"].shape[1]
    r = ref.embed_lstm_forward(tokens, Emb, a["W"], a["b"], a["h0"], a["c0"])
    n = nb.embed_lstm_forward(tokens, Emb, a["W"], a["b"], a["h0"], a["c0"])
    assert (n[3].x is None) == (V <= T * B)     # which path ran
    got = nb.embed_lstm_backward(a["dhs"], a["dhT"], a["dcT"], n[3])
    want = ref.embed_lstm_backward(a["dhs"], a["dhT"], a["dcT"], r[3])
    with Parity(f"embed layer T{T} B{B} E{E} H{H} V{V}", backend="numba") as p:
        for name, k in (("hs", 0), ("hT", 1), ("cT", 2)):
            p.check(name, n[k], r[k], dtype, "wide" if wide else "forward")
        p.check("cache.acts", n[3].acts, r[3][2][6], dtype, "wide" if wide else "forward")
        for name, g, w in zip(("dEmb", "dW", "db", "dh0", "dc0"), got, want):
            p.check(name, g, w, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", ["one-thread", "row-split"])
def test_softmax_xent_with_extreme_logits(dtype, threads, rng, monkeypatch):
    """On the calling thread and with the rows split over the threads (each thread's loss sum
    in its own slot; without need_grad each thread its own scratch row)."""
    import numba
    if threads == "row-split" and numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here (NUMBA_NUM_THREADS=1)")
    monkeypatch.setattr(nb, "SOFTMAX_PARALLEL_MIN", 0 if threads == "row-split" else 1 << 62)
    logits = (rng.standard_normal((37, 11)) * 5).astype(dtype)
    logits[0, 3], logits[1, :] = 80.0, -70.0                    # one huge, one flat row
    targets = rng.integers(0, 11, 37)
    loss, d = nb.softmax_xent(logits, targets)
    r_loss, r_d = ref.softmax_xent(logits, targets)
    check("loss", loss, r_loss, dtype)
    check("dlogits", d, r_d, dtype, "grad")
    assert nb.softmax_xent(logits, targets, need_grad=False) == (loss, None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_norm_and_adam_match_the_reference(dtype, rng):
    """Adam mirrors the reference operation by operation: bit-identical over 5 steps."""
    params = init_params(ModelConfig(13, 4, 7, 2, dtype=dtype), seed=0)
    grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
    check("norm", nb.global_norm(grads), ref.global_norm(grads), dtype)
    state = {be: ({k: v.copy() for k, v in params.items()}, {k: np.zeros_like(v) for k, v in params.items()},
                  {k: np.zeros_like(v) for k, v in params.items()}) for be in ("ref", "nb")}
    for step in range(1, 6):
        g = {k: rng.standard_normal(v.shape).astype(dtype) * 10.0 ** (step - 3) for k, v in params.items()}
        ref.adam_update(*state["ref"][:1], g, *state["ref"][1:], step, 2e-3, 0.9, 0.999, 1e-8, 0.7)
        nb.adam_update(*state["nb"][:1], g, *state["nb"][1:], step, 2e-3, 0.9, 0.999, 1e-8, 0.7)
    for k in params:
        for what, i in (("param", 0), ("m", 1), ("v", 2)):
            np.testing.assert_array_equal(state["nb"][i][k], state["ref"][i][k], err_msg=f"{what} {k}")


def test_bad_input_is_a_user_error():
    f32 = np.zeros((2, 3), np.float32)
    W, b = np.zeros((3 + 2, 12), np.float32), np.zeros(12, np.float32)
    with pytest.raises(le.UserError, match="token ids"):
        nb.embed_lstm_forward(np.array([[0, 7]]), np.zeros((5, 2), np.float32), W, b, f32, f32)
    with pytest.raises(le.UserError, match="one dtype"):
        nb.lstm_forward(np.zeros((1, 2, 2), np.float64), W, b, f32, f32)
    with pytest.raises(le.UserError, match="W must be"):
        nb.lstm_forward(np.zeros((1, 2, 4), np.float32), W, b, f32, f32)
    with pytest.raises(le.UserError, match="float32 or float64"):
        nb.softmax_xent(np.zeros((2, 3), np.int64), np.zeros(2, np.int64))


# ----------------------------------------------------------------------------
# End to end: training curve and generated text
# ----------------------------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 40


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_gives_the_same_loss_curve(dtype, tmp_path):
    """Same seed, numpy vs numba: 25 steps with dropout, clipping, carried state (B=4, T=11, L=2)."""
    curves = {}
    for be in ("numpy", "numba"):
        cfg = le.TrainConfig(backend=be, embed_size=5, hidden_size=11, layers=2, dropout=0.2, batch_size=4,
                             seq_len=11, steps=25, lr=1e-2, grad_clip=0.5, dtype=dtype, seed=7, eval_every=0,
                             sample_every=0, save_every=0, log_every=0, out=str(tmp_path / be))
        trainer = le.Trainer(cfg, text=TEXT)
        curves[be] = np.array([trainer.train_step()[0] for _ in range(cfg.steps)])
        params = trainer.model.host_params()
        curves[be + " params"] = np.concatenate([p.ravel() for p in params.values()])
    print(f"\nloss curve {dtype}: {curves['numpy'][0]:.4f} -> {curves['numpy'][-1]:.4f}")
    assert curves["numpy"][-1] < curves["numpy"][0] - 0.3          # it learned something
    check("losses", curves["numba"], curves["numpy"], dtype, "steps")
    check("params", curves["numba params"], curves["numpy params"], dtype, "steps")


@pytest.fixture(scope="module")
def models():
    vocab = le.Vocab.build(TEXT)
    out = {}
    for dtype in DTYPES:
        params = init_params(ModelConfig(len(vocab), 6, 13, 3, dtype=dtype), seed=2)
        for name in ("W0", "W1", "W2", "Wy"):
            params[name] *= 4                                   # peaky predictions, varied text
        cfg = ModelConfig(len(vocab), 6, 13, 3, dtype=dtype)
        out[dtype] = {"numpy": Model(cfg, ref, params), "numba": Model(cfg, get_backend("numba"), params)}
    return vocab, out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", [dict(greedy=True), dict(), dict(temperature=0.6, top_k=4),
                                  dict(top_p=0.7), dict(temperature=1.5, top_k=9, top_p=0.9)],
                         ids=["greedy", "plain", "top-k", "top-p", "both"])
@pytest.mark.parametrize("table", [True, False], ids=["x0-table", "no-table"])
def test_generated_text_is_the_same(models, dtype, opts, table, monkeypatch):
    """generate_text (prime, 32-character chunks, seeded Generator) through both backends, with
    layer 0's input product read from the V x 4H table and computed per character."""
    monkeypatch.setattr(nb, "V_TABLE_MIN_CHARS_PER_ROW", 0 if table else np.inf)
    vocab, by_backend = models
    texts = {be: generate_text(m, vocab, prime="the lazy", length=150, seed=5, **opts)
             for be, m in by_backend[dtype].items()}
    print(f"\n{dtype} {opts}: {texts['numba'][:60]!r}")
    assert texts["numba"] == texts["numpy"]
    assert len(set(texts["numba"])) > (1 if opts.get("greedy") else 5)   # not a degenerate test


@pytest.mark.parametrize("table", [True, False], ids=["x0-table", "no-table"])
@pytest.mark.parametrize("opts", [dict(greedy=True), dict(temperature=0.8, top_p=0.9)], ids=["greedy", "sampled"])
def test_threaded_generation_is_the_same(models, opts, table, monkeypatch):
    """Generation on a team of threads, each owning a block of every layer's hidden units
    (used for big layers), forced on a small model, in chunks of 41 characters so the state is
    carried between calls and the team between jobs: the same text as the reference."""
    import numba

    from lstm_engine.backends import numba_team
    if numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(nb, "SAMPLE_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(nb, "SAMPLE_TEAM_MIN_MACS", 0)
    monkeypatch.setattr(nb, "V_TABLE_MIN_CHARS_PER_ROW", 0 if table else np.inf)
    jobs = []
    monkeypatch.setattr(numba_team.Team, "run", lambda self, *a, _run=numba_team.Team.run:
                        jobs.append(self.nt) or _run(self, *a))
    vocab, by_backend = models
    texts = {be: generate_text(m, vocab, prime="the", length=123, seed=3, chunk=41, **opts)
             for be, m in by_backend["float64"].items()}
    assert texts["numba"] == texts["numpy"]
    assert len(jobs) == 3 and min(jobs) >= 2                # a team ran every chunk


def test_pool_never_hands_out_an_array_in_use():
    pool = nb._Pool()
    a = pool.empty((300, 300), np.float32)
    b = pool.empty((300, 300), np.float32)
    assert a is not b
    view = a[0]                     # a view keeps its base in use
    base_id = id(a)
    del a
    assert id(pool.empty((300, 300), np.float32)) != base_id
    del view
    assert id(pool.empty((300, 300), np.float32)) == base_id     # recycled once free
    assert pool.empty((3, 3), np.float32) is not pool.empty((3, 3), np.float32)   # small: plain np.empty


@pytest.mark.parametrize("table", [True, False], ids=["x0-table", "no-table"])
def test_generate_updates_state_like_the_reference(models, table, monkeypatch):
    monkeypatch.setattr(nb, "V_TABLE_MIN_CHARS_PER_ROW", 0 if table else np.inf)
    vocab, by_backend = models
    states = {}
    for be, m in by_backend["float64"].items():
        states[be] = m.zero_state(1)
        m.be.generate(m.params, states[be], 3, 20, 0.8, 0, 1.0, False, np.random.default_rng(1))
    for l in range(3):
        for k, name in enumerate(("h", "c")):
            check(f"{name}{l}", states["numba"][l][k], states["numpy"][l][k], "float64")
            assert states["numba"][l][k].shape == (1, 13)


def test_layer0_table_is_built_once_per_cache_and_per_model(models, monkeypatch):
    """The V x 4H table lives in the caller's cache: built on the first call, read (the same
    object) by later ones, replaced when another model's weights come with the same cache.  The
    cache also keeps the sampler's checked arrays ("inputs"), the model's own ones, and their
    panels ("panels"), replaced too."""
    vocab, by_backend = models
    m32, m64 = by_backend["float32"]["numba"], by_backend["float64"]["numba"]
    V = len(vocab)
    tables = lambda cache: [(k, v) for k, v in cache.items() if k not in ("chars", "inputs", "panels")]  # noqa: E731
    few = {"chars": V // 2 - 1}
    m64.be.generate(m64.params, m64.zero_state(1), 3, 5, 1.0, 0, 1.0, True, None, few)
    assert tables(few) == []                                            # too few characters to pay for it
    cache = {"chars": V}
    m64.be.generate(m64.params, m64.zero_state(1), 3, 5, 1.0, 0, 1.0, True, None, cache)
    (key, table), = tables(cache)
    W0 = m64.params["W0"]
    H = W0.shape[1] // 4
    check("X0", table, m64.params["Emb"] @ W0[H:] + m64.params["b0"], "float64")
    assert cache["inputs"][1][0][0] is W0                               # Ws[0]: the model's array, no copy
    panels = cache["panels"][1]
    for _ in range(2):
        m64.be.generate(m64.params, m64.zero_state(1), 3, 5, 1.0, 0, 1.0, True, None, cache)
        assert cache[key] is table and cache["panels"][1] is panels
    m32.be.generate(m32.params, m32.zero_state(1), 3, 5, 1.0, 0, 1.0, True, None, cache)
    assert len(tables(cache)) == 1 and key not in cache and tables(cache)[0][1].dtype == np.float32   # the other's
    assert cache["inputs"][1][0][0] is m32.params["W0"]
    assert cache["panels"][2][0][0] is m32.params["W0"] and cache["panels"][1][1].dtype == np.float32


def test_cache_exposes_the_reference_layout(rng):
    a = layer_inputs(rng, 2, 3, 4, 5, "float64")
    hs, _, _, cache = nb.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    assert cache.hs is hs and cache.cs.shape == (2, 3, 5) and cache.acts.shape == (2, 3, 20)
    assert cache.x is a["x"] or np.shares_memory(cache.x, a["x"])
