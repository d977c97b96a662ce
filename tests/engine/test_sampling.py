"""Sampling options: greedy is deterministic, a seed reproduces, top-k / top-p keep what they say."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import lstm_engine as le
from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.model import Model, ModelConfig

TEXT = "the quick brown fox jumps over the lazy dog. \u5e8a\u524d\u660e\u6708\u5149\n" * 20


@pytest.fixture(scope="module")
def model_vocab():
    vocab = le.Vocab.build(TEXT)
    model = Model(ModelConfig(len(vocab), 8, 12, 2, dtype="float64"), ref, seed=4)
    return model, vocab


def test_greedy_is_deterministic_and_equals_argmax(model_vocab):
    model, vocab = model_vocab
    a = le.generate(model, vocab, prime="the ", length=40, greedy=True, seed=1)
    b = le.generate(model, vocab, prime="the ", length=40, greedy=True, seed=2)
    assert a == b
    # top-k = 1 is greedy
    assert le.generate(model, vocab, prime="the ", length=40, top_k=1, seed=3) == a


def test_seed_reproduces_and_differs_across_seeds(model_vocab):
    model, vocab = model_vocab
    a = le.generate(model, vocab, prime="\u5e8a", length=60, seed=11)
    assert a == le.generate(model, vocab, prime="\u5e8a", length=60, seed=11)
    assert a != le.generate(model, vocab, prime="\u5e8a", length=60, seed=12)
    assert len(a) == 60 and set(a) <= set(vocab.symbols)


def test_streamed_chunks_equal_the_returned_text(model_vocab):
    model, vocab = model_vocab
    got = []
    text = le.generate(model, vocab, prime="fox", length=75, seed=5, on_text=got.append)
    assert "".join(got) == text and len(got) > 1


def test_a_long_text_comes_in_doubling_chunks_and_equals_fixed_chunks(model_vocab):
    """By default the backend calls grow 32, 64, ... up to MAX_CHUNK characters; the text is the
    one fixed 32-character calls give (the same uniforms in order, the state carried)."""
    from lstm_engine.core.generation import FIRST_CHUNK, MAX_CHUNK, generate_text
    model, vocab = model_vocab
    length = 2 * MAX_CHUNK + 5 * FIRST_CHUNK
    got = []
    text = generate_text(model, vocab, "the ", length, seed=7, on_text=got.append)
    sizes, want = [], FIRST_CHUNK
    while sum(sizes) < length:
        sizes.append(min(want, length - sum(sizes)))
        want = min(2 * want, MAX_CHUNK)
    assert [len(p) for p in got] == sizes and sizes[-2] == MAX_CHUNK
    assert text == generate_text(model, vocab, "the ", length, seed=7, chunk=FIRST_CHUNK)


def test_prime_outside_vocab_is_a_user_error(model_vocab):
    model, vocab = model_vocab
    with pytest.raises(le.UserError, match="not in the model's vocabulary"):
        le.generate(model, vocab, prime="ZZZ", length=5)


def test_top_k_never_emits_outside_the_top_k(model_vocab):
    """Replay the sampler's own logits: every emitted token is among the k largest."""
    model, vocab = model_vocab
    from lstm_engine.core.generation import prime_state
    ids = vocab.encode(le.generate(model, vocab, prime="the", length=50, top_k=3, temperature=2.0, seed=9))
    state, token = prime_state(model, vocab, "the")
    for nxt in ids:
        logits = ref.step_logits(model.params, state, token)
        assert nxt in np.argsort(-logits, kind="stable")[:3]
        token = int(nxt)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=30), st.integers(1, 40),
       st.floats(0.01, 1.0), st.floats(0.1, 5.0))
@example([0.0, 5e-324], 1, 1.0, 2.0)                     # a denormal that the temperature turns into a tie
def test_filter_probs_properties(logits, k, p, temp):
    z = np.array(logits)
    probs = ref.filter_probs(z, temp, k, p)
    kept = np.flatnonzero(probs > 0)
    assert abs(probs.sum() - 1) < 1e-9
    assert 1 <= len(kept) <= k
    order = np.argsort(-(z / temp), kind="stable")      # ties after the temperature, as the sampler sees
    assert set(kept) == set(order[:len(kept)])          # them (5e-324 / 2 == 0): the kept set is a top prefix
    full = ref.filter_probs(z, temp, k, 1.0)             # top-k alone
    mass = full[order[:len(kept)]].sum()
    assert mass >= p - 1e-9 or len(kept) == min(k, len(z))
    if len(kept) > 1:                                     # the smallest prefix reaching p
        assert full[order[:len(kept) - 1]].sum() < p + 1e-9


def test_bad_sampling_options_are_user_errors(model_vocab):
    model, vocab = model_vocab
    for kw in (dict(temperature=0), dict(top_p=0), dict(top_p=1.5), dict(length=-1)):
        with pytest.raises(le.UserError):
            le.generate(model, vocab, **kw)
