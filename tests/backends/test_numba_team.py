"""Batch-1 generation on a team of threads (lstm_engine/backends/numba_team.py) against the
reference and the one-thread kernel: across parked, ended and restarted workers, replaced
weights, calls without a cache, and a stop raised in the middle of a job.

The team splits each layer's hidden units over its threads; the tests force it on small
models (SAMPLE_ROWS_PER_THREAD = 1), float64 so the text must equal the reference's.
Dimension legend: L layers, H hidden, V vocabulary.
"""
import threading
import time

import numpy as np
import pytest

import lstm_engine as le
from lstm_engine.backends import get_backend
from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.generation import generate_text
from lstm_engine.core.model import Model, ModelConfig, init_params

from parity import Parity

nb = pytest.importorskip("lstm_engine.backends.numba_backend")
numba = pytest.importorskip("numba")
from lstm_engine.backends import numba_team  # noqa: E402
from lstm_engine.kernels.numba import sample_team  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 20


@pytest.fixture(autouse=True)
def team_always(monkeypatch):
    if numba.get_num_threads() < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(nb, "SAMPLE_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(nb, "SAMPLE_TEAM_MIN_MACS", 0)


def make_models(seed, dtype="float64", H=13, L=2, cell="lstm"):
    vocab = le.Vocab.build(TEXT)
    cfg = ModelConfig(len(vocab), 6, H, L, dtype=dtype, cell=cell)
    params = init_params(cfg, seed=seed)
    for name in [f"W{l}" for l in range(L)] + ["Wy"]:
        params[name] *= 4                                       # peaky predictions, varied text
    return vocab, Model(cfg, ref, params), Model(cfg, get_backend("numba"), params)


def sampler_threads():
    return [t for t in threading.enumerate() if t.name.startswith("lstm-engine-sampler")]


def wait_until(cond, seconds=5.0):
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()


def test_parked_and_ended_workers_are_woken_and_restarted(monkeypatch):
    """Workers park at once after every job (no spinning) and end after 20 ms idle; pauses of
    0, 5 and 60 ms between chunks make the caller use a polling, a parked and an ended worker
    in turn.  The text is the reference's and the workers end after the last chunk."""
    monkeypatch.setattr(numba_team, "SPIN_SECONDS", 0.0)
    monkeypatch.setattr(numba_team, "IDLE_EXIT_SECONDS", 0.02)
    vocab, m_ref, m_nb = make_models(4)
    pauses = iter([0.0, 0.005, 0.06] * 10)
    want = generate_text(m_ref, vocab, prime="the", length=180, seed=11, chunk=7)
    got = generate_text(m_nb, vocab, prime="the", length=180, seed=11, chunk=7,
                        on_text=lambda _: time.sleep(next(pauses)))
    assert got == want
    assert wait_until(lambda: not sampler_threads()), "sampler threads still alive after idling"


def test_many_short_jobs_while_workers_poll():
    """200 calls of 3 characters with the workers polling between them (the fast path)."""
    vocab, m_ref, m_nb = make_models(5)
    want = generate_text(m_ref, vocab, prime="a", length=600, seed=2, chunk=3, top_k=5)
    assert generate_text(m_nb, vocab, prime="a", length=600, seed=2, chunk=3, top_k=5) == want


def test_other_weights_with_the_same_cache_get_a_new_team():
    """One cache, two models: the second model's call ends the first team and starts its own;
    each model's ids are the reference's."""
    cache = {"chars": 10 ** 6}
    teams = []
    for seed in (6, 7, 6):
        vocab, m_ref, m_nb = make_models(seed)
        ids = {}
        for name, m in (("numpy", m_ref), ("numba", m_nb)):
            ids[name] = m.be.generate(m.params, m.zero_state(1), 2, 40, 1.0, 0, 1.0, False,
                                      np.random.default_rng(3), cache if name == "numba" else None)
        np.testing.assert_array_equal(ids["numba"], ids["numpy"])
        teams.append(cache["team"][1])
    assert teams[0].closed and teams[1].closed and not teams[2].closed
    assert len({id(t) for t in teams}) == 3                     # the first model's arrays are new ones too


def test_call_without_a_cache_ends_its_team():
    vocab, m_ref, m_nb = make_models(8)
    got = m_nb.be.generate(m_nb.params, m_nb.zero_state(1), 1, 60, 1.0, 0, 1.0, False, np.random.default_rng(4))
    want = m_ref.be.generate(m_ref.params, m_ref.zero_state(1), 1, 60, 1.0, 0, 1.0, False, np.random.default_rng(4))
    np.testing.assert_array_equal(got, want)
    assert wait_until(lambda: not sampler_threads())


@pytest.mark.parametrize("opts", [dict(greedy=True), dict(temperature=0.8, top_p=0.9), dict(temperature=0.7),
                                  dict(top_k=5), dict(temperature=0.9, top_k=7, top_p=0.8)],
                         ids=["greedy", "top-p", "plain", "top-k", "top-k-top-p"])
@pytest.mark.parametrize("cell", ["lstm", "peephole", "coupled", "gru"])
def test_a_split_output_layer_gives_the_reference_text(monkeypatch, cell, opts):
    """The output layer split by its columns over the team too (forced: OUT_SPLIT_MIN_MACS = 0,
    so the vocabulary's columns are cut in blocks, one more barrier a character), in chunks of 17
    so the team carries over between jobs: the reference's text, float64, for every cell; greedy
    and top-p (each thread draws from all the logits), plain (split_token on the threads' sums)
    and top-k (merged_top of the threads' own largest)."""
    monkeypatch.setattr(numba_team, "OUT_SPLIT_MIN_MACS", 0)
    splits = []
    monkeypatch.setattr(numba_team.Team, "run", lambda self, *a, _run=numba_team.Team.run:
                        splits.append(self.split) or _run(self, *a))
    vocab, m_ref, m_nb = make_models(12, cell=cell)
    want = generate_text(m_ref, vocab, prime="the", length=120, seed=5, chunk=17, **opts)
    assert generate_text(m_nb, vocab, prime="the", length=120, seed=5, chunk=17, **opts) == want
    assert len(splits) >= 7 and all(splits)                       # every chunk ran on a splitting team


@numba.njit
def _split_draws(logits, V, nbV, nt, inv_t, us, rows, p):
    """Each of nt threads' column_exps in turn, then split_token for every uniform of us (n,)."""
    for t in range(nt):
        a, b = sample_team.column_range(t, nt, nbV, V)
        sample_team.column_exps(logits, a, b, inv_t, rows[t], p)
    out = np.empty(us.shape[0], np.int64)                                            # (n,)
    for k in range(us.shape[0]):
        out[k] = sample_team.split_token(logits, V, nbV, rows, inv_t, us[k], p)
    return out


@pytest.mark.parametrize("V", [1, 65, 300, 6746])
@pytest.mark.parametrize("nt", [2, 3, 5])
@pytest.mark.parametrize("temperature, scale", [(1.0, 3.0), (0.7, 3.0), (1.0, 400.0)])
def test_split_draw_is_the_references_inverse_cdf(V, nt, temperature, scale):
    """The draw split over nt threads' columns (column_exps, then split_token on their sums)
    gives the reference's index (filter_probs, then sample_index) for 2,000 uniforms: threads
    with no columns (V = 1), several blocks a thread, and logits so spread (scale 400) that
    whole threads' exps underflow beside the largest."""
    rng = np.random.default_rng(V * nt)
    nbV = -(-V // sample_team.PANEL)
    logits = np.zeros(nbV * sample_team.PANEL, np.float32)                          # (nbV P,) zeros past V
    logits[:V] = rng.standard_normal(V) * scale
    rows = np.zeros((nt, 2 + -(-nbV * sample_team.PANEL // sample_team.CDF_BLOCK)))  # (nt, 2 + nblk)
    us = rng.random(2000)                                                            # (n,)
    got = _split_draws(logits, V, nbV, nt, 1.0 / temperature, us, rows, np.empty(V)).tolist()
    probs = ref.filter_probs(logits[:V], temperature, 0, 1.0)                       # (V,)
    want = [ref.sample_index(probs, u) for u in us]
    assert got == want
    if V >= 300 and scale < 10:                                   # draws from many blocks and threads
        assert max(want) - min(want) > 4 * sample_team.CDF_BLOCK


@numba.njit
def _merged_top_k(logits, V, nbV, nt, k, rows, order):
    """Each of nt threads' column_top in turn, then merged_top -> order[:k]."""
    for t in range(nt):
        a, b = sample_team.column_range(t, nt, nbV, V)
        sample_team.column_top(logits, a, b, k, rows[t], order)
    sample_team.merged_top(logits, rows, k, order)


@pytest.mark.parametrize("V", [40, 300, 6746])
@pytest.mark.parametrize("nt", [2, 3, 5])
@pytest.mark.parametrize("k", [1, 7, 40, 256])
def test_merged_top_k_is_the_stable_sorts_first_k(V, nt, k):
    """The threads' own k largest merged: the first k of the reference's stable sort of -logits,
    logits with many ties (rounded to quarters) and threads with fewer columns than k."""
    if k >= V:
        pytest.skip("top-k keeps everything")
    rng = np.random.default_rng(V * nt + k)
    nbV = -(-V // sample_team.PANEL)
    logits = np.zeros(nbV * sample_team.PANEL, np.float32)                          # (nbV P,) zeros past V
    logits[:V] = np.round(rng.standard_normal(V) * 8) / 4
    rows = np.zeros((nt, 2 + sample_team.SELECT_MAX))                               # (nt, row)
    order = np.zeros(V, np.int64)                                                   # (V,)
    _merged_top_k(logits, V, nbV, nt, k, rows, order)
    np.testing.assert_array_equal(order[:k], np.argsort(-logits[:V], kind="stable")[:k])


def test_float32_team_matches_the_one_thread_kernel(monkeypatch):
    """float32, L = 3, H = 70 (rows not a multiple of the block of 4, units split unevenly
    over the team), the team against the one-thread kernel.  Each unit's sums are the kernel's,
    but the gate loops may be vectorised differently, so the two may differ by float32 rounding,
    and a recurrent net with peaky weights amplifies that over the characters: the state is
    compared after 20 sampled characters, to float32 tolerance, and the text over 100 greedy
    ones."""
    vocab, _, m_nb = make_models(9, "float32", H=70, L=3)
    out = {}
    for name, rows in (("team", 1), ("one thread", 10 ** 9)):
        monkeypatch.setattr(nb, "SAMPLE_ROWS_PER_THREAD", rows)
        state = m_nb.zero_state(1)
        m_nb.be.generate(m_nb.params, state, 1, 20, 0.9, 0, 1.0, False, np.random.default_rng(5), {"chars": 20})
        greedy = m_nb.be.generate(m_nb.params, m_nb.zero_state(1), 1, 100, 1.0, 0, 1.0, True, None, {"chars": 100})
        out[name] = greedy, state
    np.testing.assert_array_equal(out["team"][0], out["one thread"][0])
    assert len(set(out["team"][0].tolist())) > 5                  # not a degenerate text
    with Parity("team vs one thread, state after 20 sampled characters", backend="numba team", ref="numba") as p:
        for l, ((h, c), (h1, c1)) in enumerate(zip(out["team"][1], out["one thread"][1])):
            p.check(f"h{l}", h, h1, "float32", "steps")
            p.check(f"c{l}", c, c1, "float32", "steps")


def test_a_stop_in_the_middle_of_a_job_raises_and_the_next_call_gets_a_new_team():
    """The stop flag raised while a long job runs (what a failed worker does): the caller's
    thread leaves its barrier with an error instead of waiting forever, the team is closed,
    and the next call with the same cache builds a new one that gives the reference's ids."""
    vocab, m_ref, m_nb = make_models(10)
    cache = {"chars": 10 ** 6}
    args = (1.0, 0, 1.0, False)
    m_nb.be.generate(m_nb.params, m_nb.zero_state(1), 1, 5, *args, np.random.default_rng(0), cache)
    team = cache["team"][1]
    threading.Timer(0.02, lambda: team.flags.__setitem__(team.k.STOP, 1)).start()
    with pytest.raises(RuntimeError, match="sampling thread was stopped"):
        m_nb.be.generate(m_nb.params, m_nb.zero_state(1), 1, 200_000, *args, np.random.default_rng(0), cache)
    assert team.closed
    got = m_nb.be.generate(m_nb.params, m_nb.zero_state(1), 1, 50, *args, np.random.default_rng(1), cache)
    want = m_ref.be.generate(m_ref.params, m_ref.zero_state(1), 1, 50, *args, np.random.default_rng(1))
    np.testing.assert_array_equal(got, want)
    assert cache["team"][1] is not team


def test_a_forked_child_gets_its_own_team():
    """A child forked after the parent's team started has none of its threads: with the same
    cache it must build a new team (reusing the parent's would wait forever for a worker)."""
    import multiprocessing as mp
    import os
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    vocab, m_ref, m_nb = make_models(12)
    cache = {"chars": 10 ** 6}
    args = (1.0, 0, 1.0, False)
    m_nb.be.generate(m_nb.params, m_nb.zero_state(1), 1, 20, *args, np.random.default_rng(0), cache)
    want = m_ref.be.generate(m_ref.params, m_ref.zero_state(1), 1, 30, *args, np.random.default_rng(1))
    pid = os.fork()
    if pid == 0:                                     # the child: exit code 0 only if it matches
        ok = False
        try:
            got = m_nb.be.generate(m_nb.params, m_nb.zero_state(1), 1, 30, *args, np.random.default_rng(1), cache)
            ok = np.array_equal(got, want) and cache["team"][1].pid == os.getpid()
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung waiting for the parent's sampling threads")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
