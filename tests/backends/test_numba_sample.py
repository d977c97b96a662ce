"""The sampler's filter and sums (kernels/numba/draw.py) against the reference's
(numpy_backend.filter_probs, numpy's sum), its panel products against its row products, and the
team's unit packing (numba_team.pack_units) against the columns it stands for.

Dimension legend: V vocabulary, K rows, H hidden, I input, G gate columns, C columns,
nt threads, nb panels of P = sample.PANEL columns.
"""
import numpy as np
import pytest

from lstm_engine.backends import numpy_backend as ref

numba = pytest.importorskip("numba")
from lstm_engine.backends import numba_team  # noqa: E402
from lstm_engine.kernels.numba import draw, sample  # noqa: E402


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 65, 128, 129, 200, 1000, 6746, 100_003])
def test_pairwise_sum_rounds_as_numpy_sums(n):
    """Values over 16 decades, so the order of the additions shows in the result's last bits:
    the same float64 as numpy's a.sum() (its pairwise order), and sequential summing differs
    for at least one of the larger sizes (the test could tell them apart)."""
    rng = np.random.default_rng(n)
    a = rng.random(n) * 10.0 ** rng.integers(-8, 8, n)                   # (n,)
    assert draw.pairwise_sum(a) == a.sum()


def test_sequential_sums_differ_from_numpys_somewhere():
    """The check above is not vacuous: a plain running sum differs from numpy's for these."""
    differs = 0
    for n in (200, 1000, 6746):
        a = np.random.default_rng(n).random(n) * 10.0 ** np.random.default_rng(n).integers(-8, 8, n)
        s = 0.0
        for v in a:
            s += v
        differs += s != a.sum()
    assert differs > 0


@pytest.mark.parametrize("V", [3, 65, 300, 6746])
@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0),                   # no filter: no sort
    (1.3, 5, 1.0), (0.9, 40, 0.95), (1.0, 1, 1.0),  # top-k up to SELECT_MAX: select_top
    (1.0, 0, 0.8), (1.0, 0, 0.3), (1.0, 0, 0.999),  # top-p alone: the candidates' sort
    (1.0, 0, 0.999999999999),                       # top-p past every candidate threshold: a sort of V
    (1.0, 1000, 1.0), (1.0, 1000, 0.9)])            # top-k over SELECT_MAX: a sort of V
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_filter_matches_filter_probs(V, temperature, top_k, top_p, ties):
    """float32 logits, every filter setting and each way the kernel keeps its set: the same kept
    set as the reference and probabilities within 1e-13 relative (the kernel's exp is about 1 ulp),
    with many equal logits too (rounded to halves: who is kept at a tie goes by index)."""
    logits = (np.random.default_rng(V).standard_normal(V) * 3).astype(np.float32)   # (V,)
    if ties:
        logits = np.round(logits * 2) / 2
    zd, probs, p, order = np.empty(V), np.empty(V), np.empty(V), np.empty(V, np.int64)
    draw.filter_probs_kernel(logits, temperature, top_k, top_p, zd, probs, order, p)
    want = ref.filter_probs(logits, temperature, top_k, top_p)                        # (V,)
    np.testing.assert_array_equal(probs > 0, want > 0)
    np.testing.assert_allclose(probs, want, rtol=1e-13, atol=0)
    assert abs(probs.sum() - 1) < 1e-12


@pytest.mark.parametrize("V", [300, 1000, 6746])
@pytest.mark.parametrize("top_p", [0.5, 0.25, 0.1, 0.75, 0.3])
@pytest.mark.parametrize("groups", [1, 2, 5])
def test_top_p_cut_at_an_exact_tie_is_the_references(V, top_p, groups):
    """Equal logits where top-p times the mass lands on a whole number of them: the reference's
    running sum of normalised probabilities decides by its rounding whether one more is kept; the
    kernel's kept set is the same (its quickselect sums unnormalised exps, which land exactly)."""
    logits = np.repeat(np.arange(groups, 0, -1), -(-V // groups))[:V].astype(np.float32)   # (V,) equal runs
    logits = np.random.default_rng(V).permutation(logits) * np.float32(0.25)
    zd, probs, p, order = np.empty(V), np.empty(V), np.empty(V), np.empty(V, np.int64)
    draw.filter_probs_kernel(logits, 1.0, 0, top_p, zd, probs, order, p)
    want = ref.filter_probs(logits, 1.0, 0, top_p)                                    # (V,)
    assert (probs > 0).sum() == (want > 0).sum()
    np.testing.assert_array_equal(probs > 0, want > 0)
    np.testing.assert_allclose(probs, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("V", [1, 3, 65, 256, 300, 6746])
@pytest.mark.parametrize("top_k", [0, 17])
def test_draw_is_the_references_inverse_cdf(V, top_k):
    """sample_index's block walk (from 4 blocks up) draws the reference's index for 3,000
    uniforms, probabilities with zeros (top-k) included; largest is np.max."""
    rng = np.random.default_rng(V + top_k)
    logits = (rng.standard_normal(V) * 3).astype(np.float32)                       # (V,)
    probs = ref.filter_probs(logits, 1.0, top_k, 1.0)                                # (V,)
    us = rng.random(3000)
    got = [draw.sample_index(probs, u) for u in us]
    want = [ref.sample_index(probs, u) for u in us]
    assert got == want
    if V >= 300:                                                    # draws from many blocks apart
        assert max(want) - min(want) > 4 * draw.CDF_BLOCK
    z = rng.standard_normal(V) * 10                                                  # (V,)
    assert draw.largest(z) == z.max()


@numba.njit
def _panel_acc(v, Mp, z):
    sample.panel_acc(v, Mp, z)


@numba.njit
def _matvec_acc(v, M, z):
    sample.matvec_acc(v, M, z)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K, C", [(128, 384), (13, 65), (3, 31), (64, 200)])
def test_panel_products_equal_row_products_bit_for_bit(K, C, dtype):
    """z += v @ M from the panels (as_panels) holds matvec_acc's sums exactly (the same rows in
    the same order), in float32 and float64, with K not a multiple of four and C not one of P;
    the pad past C stays zero."""
    rng = np.random.default_rng(K * C)
    M = rng.standard_normal((K, C)).astype(dtype)                                   # (K,C)
    v = rng.standard_normal(K).astype(dtype)                                        # (K,)
    z0 = rng.standard_normal(C).astype(dtype)                                       # (C,)
    Mp = numba_team.as_panels(M, sample.PANEL)                                      # (nb,K,P)
    nb = -(-C // sample.PANEL)
    assert Mp.shape == (nb, K, sample.PANEL)
    want = z0.copy()
    _matvec_acc(v, M, want)
    got = np.zeros(nb * sample.PANEL, dtype)                                        # (nb P,)
    got[:C] = z0
    _panel_acc(v, Mp, got)
    np.testing.assert_array_equal(got[:C], want)
    assert not got[C:].any()
    assert np.abs(want.astype(np.float64) - (z0.astype(np.float64) + v.astype(np.float64) @ M)).max() < 1e-3


def _unpanel(Mp):
    """(nt,nb,K,P) panels -> (nt,K,nb P) the columns side by side."""
    nt, nb, K, P = Mp.shape
    return Mp.transpose(0, 2, 1, 3).reshape(nt, K, nb * P)


@pytest.mark.parametrize("H, nt", [(13, 2), (70, 3), (128, 2), (5, 4)])
@pytest.mark.parametrize("ng", [3, 4])
def test_pack_units_holds_each_threads_gate_columns(H, nt, ng):
    """Thread t's block at column g Hu + j is W's column g H + t Hu + j, zero past H and past
    ng Hu; its h rows and x rows in panels apart; every column of W appears exactly once."""
    K, Hu = H + 6, -(-H // nt)
    W = np.random.default_rng(H).standard_normal((K, ng * H)).astype(np.float32)     # (K,G)
    Wh, Wx = numba_team.pack_units(W, H, nt, sample.PANEL)                            # (nt,nb,H,P) (nt,nb,I,P)
    nb = -(-ng * Hu // sample.PANEL)
    assert Wh.shape == (nt, nb, H, sample.PANEL) and Wx.shape == (nt, nb, K - H, sample.PANEL)
    P = np.concatenate([_unpanel(Wh), _unpanel(Wx)], axis=1)                         # (nt,K,nb P)
    assert not P[:, :, ng * Hu:].any()
    seen = np.zeros(ng * H, int)
    for t in range(nt):
        for g in range(ng):
            for j in range(Hu):
                u = t * Hu + j
                if u < H:
                    np.testing.assert_array_equal(P[t, :, g * Hu + j], W[:, g * H + u])
                    seen[g * H + u] += 1
                else:
                    assert not P[t, :, g * Hu + j].any()
    assert (seen == 1).all()
