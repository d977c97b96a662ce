"""The opt-in bfloat16 products (kernels/numba/gemm_bf16.py by vdpbf16ps, gemm_amx.py on AMX
tiles; LSTM_ENGINE_TUNE=bf16).

Against the float64 product of the operands rounded to bfloat16 (what the kernels promise: float32
sums of exactly those products), and through the backend against the float32 reference at the
operands' rounding (BF16 below), once by each kernel the CPU has (the `kind` fixture: on an AMX
CPU the vdpbf16ps one runs with AMX held off).  Skipped on a CPU without AVX512_BF16, where the
product is refused with a one-line error (tested everywhere).
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_engine.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lstm_engine.backends import numba_backend as nb  # noqa: E402
from lstm_engine.backends import numba_tune as nt  # noqa: E402
from lstm_engine.backends import numpy_backend as ref  # noqa: E402
from lstm_engine.kernels.numba import gemm_amx, gemm_bf16  # noqa: E402
import numba  # noqa: E402  (after the kernels: they set numba's target)
from parity import Parity  # noqa: E402
from test_numba_backend import layer_inputs  # noqa: E402
from test_numba_tune import threads  # noqa: E402,F401  (the fixture: one thread, or split)

HAVE_BF16 = gemm_bf16.available()[0]
HAVE_AMX = HAVE_BF16 and gemm_amx.available()[0]
if HAVE_BF16:
    from lstm_engine.kernels.numba import lstm_layer_bf16
if HAVE_AMX:
    from lstm_engine.kernels.numba import lstm_layer_amx
needs_bf16 = pytest.mark.skipif(not HAVE_BF16, reason=f"bfloat16 products: {gemm_bf16.available()[1]}")
needs_amx = pytest.mark.skipif(not HAVE_AMX, reason=f"AMX: {gemm_amx.available()[1]}")
KINDS = [pytest.param("vdpbf16ps", marks=needs_bf16), pytest.param("amx", marks=needs_amx)]
BF16 = {"forward": 1e-2, "grad": 2e-2}   # scale-relative: operands rounded to 8 bits of mantissa (2^-9)


def bf16_round(x):
    """float32 x rounded to bfloat16 (nearest, ties to even), as float32."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


@needs_bf16
def test_rounding_is_to_nearest_with_ties_to_even():
    eps = 2.0 ** -7                                     # bfloat16's spacing at 1
    x = np.array([1.0, 1 + eps / 2, 1 + 3 * eps / 2, 1 + eps / 2 + 2 ** -20, -(1 + eps / 4), 3.0e38], np.float32)
    want = np.array([1.0, 1.0, 1 + 2 * eps, 1 + eps, -1.0, bf16_round(np.float32(3.0e38))], np.float32)
    got = np.array([np.uint32(gemm_bf16._bf16(v)) << np.uint32(16) for v in x], np.uint32).view(np.float32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(bf16_round(x), want)


SHAPES = [(1, 1, 1), (7, 5, 3), (9, 33, 65), (8, 64, 32), (17, 130, 33), (50, 64, 512), (33, 70, 47), (64, 500, 96)]


def product_of(kind):
    return gemm_amx.mm_amx if kind == "amx" else gemm_bf16.mm_bf16


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prod", [None, 2])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_product_is_the_rounded_operands_product_in_float32(kind, m, k, n, prod, alpha, rng):
    """Every layout and beta, blocks cut at the edges (m, n not multiples of the block, k odd), C a
    column slice of a wider array: within float32 rounding of the float64 product of the bfloat16
    operands; beta 0 writes over NaN; the columns beside C untouched.  alpha 1 with k of one chunk
    is AMX's path that sums whole blocks in C's own tiles."""
    for ta, tb, beta in itertools.product((False, True), (False, True), (0.0, 1.0)):
        A = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)    # op(A) (m,k)
        B = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)    # op(B) (k,n)
        C0 = rng.standard_normal((m, n)).astype(np.float32)                     # (m,n)
        wide = np.full((m, n + 3), 7.0, np.float32)                             # (m, n+3): C is wide[:, 1:n+1]
        C = wide[:, 1:n + 1]
        C[...] = C0 if beta else np.nan
        product_of(kind)(A, B, C, ta, tb, alpha, beta, prod)
        oa, ob = (A.T if ta else A), (B.T if tb else B)
        want = alpha * (bf16_round(oa).astype(np.float64) @ bf16_round(ob).astype(np.float64)) + beta * C0
        with Parity(f"{kind} product {m}x{k}x{n} ta={ta} tb={tb} beta={beta}", backend="numba") as p:
            p.check("C", C, want, "float32", "wide")
        assert (wide[:, 0] == 7).all() and (wide[:, n + 1:] == 7).all()


@pytest.mark.parametrize("kind", KINDS)
def test_product_rounds_the_operands(kind, rng):
    """The product is not a float32 one in disguise: operands with bits below bfloat16's mantissa
    give the rounded product, away from the exact one."""
    A = np.full((8, 4), 1 + 2.0 ** -10, np.float32)        # rounds to 1 in bfloat16
    B = np.ones((4, 32), np.float32)
    C = np.zeros((8, 32), np.float32)
    product_of(kind)(A, B, C, False, False, 1.0, 0.0, None)
    np.testing.assert_array_equal(C, np.full((8, 32), 4.0, np.float32))


@needs_amx
@pytest.mark.parametrize("trans_a", [False, True])
def test_amx_with_weights_packed_once_equals_the_whole_product(trans_a, rng):
    """pack_b + mm_amx_packed (Python) and mm_amx_packed_jit (numba code, the time loops' call) give
    mm_amx's bits, with B packed once and used for several A."""
    import numba as nbm
    k, n = 70, 100
    B = rng.standard_normal((k, n)).astype(np.float32)                          # (k,n)
    Bp = gemm_amx.pack_b(B, False)

    @nbm.njit
    def in_numba(A, Bp, C, trans_a, Ap, cfg):
        gemm_amx.mm_amx_packed_jit(A, Bp, C, trans_a, np.float32(1.0), np.float32(0.0), Ap, cfg)
    for m in (1, 33):
        A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        want = np.empty((m, n), np.float32)
        gemm_amx.mm_amx(A, B, want, trans_a, False, 1.0, 0.0, None)
        got = np.full((m, n), np.nan, np.float32)
        gemm_amx.mm_amx_packed(A, Bp, got, trans_a, 1.0, 0.0, None)
        np.testing.assert_array_equal(got, want)
        got[...] = np.nan
        Ap = np.empty(((m + gemm_amx.BM - 1) // gemm_amx.BM,) + Bp.shape[1:], np.uint32)
        in_numba(A, Bp, got, trans_a, Ap, gemm_amx.tile_config())
        np.testing.assert_array_equal(got, want)


def test_amx_held_to_avx2_is_refused_with_why(monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_NUMBA_ISA", "avx2")
    ok, why = gemm_amx._check()
    assert not ok and "LSTM_ENGINE_NUMBA_ISA=avx2" in why


@pytest.fixture(params=KINDS)
def kind(request, monkeypatch):
    """The bfloat16 kernels the backend runs: 'amx', or 'vdpbf16ps' (AMX held off where the CPU has it)."""
    if request.param == "vdpbf16ps":
        monkeypatch.setattr(gemm_amx, "available", lambda: (False, "held off by the test"))
    nt.forget()
    yield request.param
    nt.forget()


@pytest.fixture
def forced_bf16(kind, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "bf16")
    nt.forget()
    called = []
    product_fn = nt.product_fn
    monkeypatch.setattr(nt, "product_fn", lambda k, name: called.append(name) or product_fn(k, name))
    yield called
    assert nt.opt_in("bf16")[0] is product_of(kind)
    nt.forget()


@pytest.fixture
def loops(kind, monkeypatch):
    """(loop, its threads) each time the backend runs a bfloat16 time loop of the kind's module."""
    calls = []
    module = lstm_layer_amx if kind == "amx" else lstm_layer_bf16
    for fn, rows_at in (("run_forward_steps", 7), ("run_backward_steps", 8)):
        def spy(*args, _fn=fn, _real=getattr(module, fn), _at=rows_at):
            calls.append((_fn, args[_at]))
            return _real(*args)
        monkeypatch.setattr(module, fn, spy)
    return calls


def layer_both_ways(a):
    """One layer of inputs a forward and backward by the backend and by the reference ->
    (numba forward, numba gradients, reference forward, reference gradients)."""
    n = nb.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    r = ref.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    return (n, nb.lstm_backward(a["dhs"], a["dhT"], a["dcT"], n[3]),
            r, ref.lstm_backward(a["dhs"], a["dhT"], a["dcT"], r[3]))


def test_forced_through_the_backend_matches_the_reference_at_bfloat16_rounding(forced_bf16, loops, threads, rng):
    """A layer, layer 0 on both paths (table, gathered) and the output layer with every big product
    and the time loops' recurrent products in bfloat16, against the float32 reference by name; the
    bfloat16 product and loops ran, split by rows where the layer is threaded."""
    dtype = "float32"
    T, B, I, H = 6, 4, 40, 33
    a = layer_inputs(rng, T, B, I, H, dtype)
    a["W"] = (a["W"] / (0.6 * np.sqrt(I + H))).astype(dtype)              # an initialised model's scale, unsaturated
    (hs, hT, cT, cache), got, (r_hs, r_hT, r_cT, r_cache), want = layer_both_ways(a)
    with Parity(f"bf16 lstm layer T{T} B{B} I{I} H{H} {threads}", backend="numba") as p:
        for name, g, w in (("hs", hs, r_hs), ("hT", hT, r_hT), ("cT", cT, r_cT), ("cache.acts", cache.acts, r_cache[6])):
            p.check(name, g, w, dtype, tol=BF16["forward"])
        for name, g, w in zip(("dx", "dW", "db", "dh0", "dc0"), got, want):
            p.check(name, g, w, dtype, tol=BF16["grad"])
            p.equal(f"{name}.dtype", g.dtype.name, dtype)
    for V in (4, 40):                                                       # V <= T*B: table; else gathered
        Emb = rng.standard_normal((V, I)).astype(dtype)
        tokens = rng.integers(0, V, (T, B))
        r = ref.embed_lstm_forward(tokens, Emb, a["W"], a["b"], a["h0"], a["c0"])
        n = nb.embed_lstm_forward(tokens, Emb, a["W"], a["b"], a["h0"], a["c0"])
        assert (n[3].x is None) == (V <= T * B)
        got = nb.embed_lstm_backward(a["dhs"], a["dhT"], a["dcT"], n[3])
        want = ref.embed_lstm_backward(a["dhs"], a["dhT"], a["dcT"], r[3])
        with Parity(f"bf16 embed layer V{V} {threads}", backend="numba") as p:
            p.check("hs", n[0], r[0], dtype, tol=BF16["forward"])
            for name, g, w in zip(("dEmb", "dW", "db", "dh0", "dc0"), got, want):
                p.check(name, g, w, dtype, tol=BF16["grad"])
    x, W, b, dy = (rng.standard_normal(s).astype(dtype) for s in ((203, 40), (40, 33), (33,), (203, 33)))
    with Parity("bf16 output layer N203 H40 V33", backend="numba") as p:
        p.check("logits", nb.linear_forward(x, W, b), ref.linear_forward(x, W, b), dtype, tol=BF16["forward"])
        for name, g, w in zip(("dx", "dWy", "dby"), nb.linear_backward(x, dy, W), ref.linear_backward(x, dy, W)):
            p.check(name, g, w, dtype, tol=BF16["grad"])
    assert set(forced_bf16) == {"bf16"}
    want_rows = None if threads == "one-thread" else min(numba.get_num_threads(), B)
    assert loops == [("run_forward_steps", want_rows), ("run_backward_steps", want_rows)] * 3


def test_layer_of_whole_tile_blocks_matches_the_reference(forced_bf16, loops, monkeypatch, rng):
    """B 64 split by rows over numba's threads and H 64: every time step's product is whole 32 x 32 blocks of C (AMX
    sums them in C's tiles); the layer against the float32 reference at bfloat16 rounding, dz
    read unpadded."""
    monkeypatch.setattr(nb, "PARALLEL_MIN_MACS", 0)                        # threaded, whatever the size
    dtype, T, B, I, H = "float32", 3, 64, 40, 64
    a = layer_inputs(rng, T, B, I, H, dtype)
    a["W"] = (a["W"] / (0.6 * np.sqrt(I + H))).astype(dtype)              # an initialised model's scale
    n, got, r, want = layer_both_ways(a)
    with Parity(f"bf16 lstm layer T{T} B{B} I{I} H{H}", backend="numba") as p:
        p.check("hs", n[0], r[0], dtype, tol=BF16["forward"])
        for name, g, w in zip(("dx", "dW", "db", "dh0", "dc0"), got, want):
            p.check(name, g, w, dtype, tol=BF16["grad"])
    assert [c[0] for c in loops] == ["run_forward_steps", "run_backward_steps"]
    assert not nb._pads_dz(256, 256, np.float32) and nb._kernels().gemm.pads_b(256, 4 * 256 * 4)


@pytest.mark.parametrize("cell", ["peephole", "coupled", "gru"])
def test_forced_for_the_other_cells_matches_the_reference_at_bfloat16_rounding(cell, forced_bf16, rng):
    """The variants' big products in bfloat16 (their time loops stay float32), a layer by name."""
    from test_numba_cells import layer_inputs as cell_inputs
    dtype, I, H = "float32", 40, 33
    a = cell_inputs(rng, cell, 6, 4, I, H, dtype, scale=1 / np.sqrt(I + H))     # an initialised model's scale
    r_hs, r_hT, r_cT, r_cache = ref.cell_forward(cell, a["x"], a["p"], a["h0"], a["c0"])
    hs, hT, cT, cache = nb.cell_forward(cell, a["x"], a["p"], a["h0"], a["c0"])
    got = nb.cell_backward(a["dhs"], a["dhT"], a["dcT"], cache)
    want = ref.cell_backward(a["dhs"], a["dhT"], a["dcT"], r_cache)
    with Parity(f"bf16 {cell} layer T6 B4 I{I} H{H}", backend="numba") as p:
        for name, g, w in (("hs", hs, r_hs), ("hT", hT, r_hT), ("cT", cT, r_cT)):
            p.check(name, g, w, dtype, tol=BF16["forward"])
        for name, g, w in zip(("dx", "dp", "dh0", "dc0"), got, want):
            for k, gk, wk in ((f"d{k}", g[k], w[k]) for k in w) if isinstance(w, dict) else ((name, g, w),):
                p.check(k, gk, wk, dtype, tol=BF16["grad"])
    assert set(forced_bf16) == {"bf16"}


def test_forced_leaves_float64_exact(forced_bf16, rng):
    """A float64 model keeps float64 products under LSTM_ENGINE_TUNE=bf16 (float64 tolerance)."""
    a = layer_inputs(rng, 5, 3, 7, 13, "float64")
    r = ref.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    n = nb.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    got = nb.lstm_backward(a["dhs"], a["dhT"], a["dcT"], n[3])
    want = ref.lstm_backward(a["dhs"], a["dhT"], a["dcT"], r[3])
    with Parity("bf16 forced, float64 layer", backend="numba") as p:
        p.check("hs", n[0], r[0], "float64")
        for name, g, w in zip(("dx", "dW", "db", "dh0", "dc0"), got, want):
            p.check(name, g, w, "float64", "grad")
    assert "bf16" not in forced_bf16


def test_forced_where_the_cpu_lacks_it_is_a_one_line_error(monkeypatch, rng):
    monkeypatch.setattr(gemm_bf16, "available", lambda: (False, "this CPU has no AVX512_BF16 (vdpbf16ps)"))
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "bf16")
    nt.forget()
    a = layer_inputs(rng, 5, 3, 7, 13, "float32")
    with pytest.raises(UserError) as e:
        nb.lstm_forward(a["x"], a["W"], a["b"], a["h0"], a["c0"])
    msg = str(e.value)
    assert "LSTM_ENGINE_TUNE=bf16" in msg and "AVX512_BF16" in msg and "\n" not in msg
    nt.forget()
