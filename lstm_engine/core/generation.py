"""Sampling text from a model and scoring text as one stream.

Dimension legend: T time, B batch (1 here), H hidden, V vocab.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from ..errors import UserError
from ..storage.schema import INT_MAX, SIZE_MAX

REPLACEMENT = "\ufffd"   # printed for <unk>
FIRST_CHUNK = 32         # characters of the first backend call: the text starts at once
MAX_CHUNK = 1024         # later calls double up to this, so a long text pays a call's fixed cost rarely


def check_sampling_options(temperature, top_k, top_p, length, seed=None):
    if not (temperature > 0 and math.isfinite(temperature)):
        raise UserError(f"--temperature must be a finite number > 0 (got {temperature}); use --greedy for "
                        f"deterministic text")
    if top_k is not None and not 0 <= top_k <= SIZE_MAX:
        raise UserError(f"--top-k must be in [1, {SIZE_MAX}] (got {top_k}); leave it out to keep every symbol")
    if seed is not None and not 0 <= seed <= INT_MAX:
        raise UserError(f"--seed must be in [0, {INT_MAX}] (got {seed})")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1] (got {top_p}); 1 keeps every symbol")
    if not 0 <= length <= INT_MAX:
        raise UserError(f"--length must be in [0, {INT_MAX}] (got {length})")


def prime_state(model, vocab, prime):
    """Run all but the last prime character through the model.

    -> (state list of [h (1,H), c (1,H)], last token id).  An empty prime starts from a
    newline (or the most frequent symbol) with a zero state.
    """
    be = model.be
    state = model.zero_state(1)
    if not prime:
        return state, vocab.index.get("\n", 0)
    ids = vocab.encode(prime, strict=True)
    if len(ids) > 1:
        tokens = be.asarray(ids[:-1].reshape(-1, 1))          # (T,1)
        _, state, _ = model.forward(tokens, state)
    return state, int(ids[-1])


def generate_text(model, vocab, prime="", length=200, temperature=1.0, top_k=0, top_p=1.0,
                  greedy=False, seed=None, on_text=None, chunk=None, keep=True):
    """Sample `length` characters after `prime`.  on_text(str) receives them as they come, a
    chunk per backend call: `chunk` characters each, or (None) FIRST_CHUNK, then twice the last,
    up to MAX_CHUNK.  The uniforms do not depend on the chunks: one per character, drawn in
    order from the seeded Generator, and the state is carried from call to call.

    -> the generated text (without the prime); keep=False returns "" and holds no more than one
    chunk, so that a --length of any size streams in constant memory.
    """
    check_sampling_options(temperature, top_k, top_p, length, seed)
    from ..backends import sample_ahead
    with sample_ahead(model.be, model.cfg, length) if length else contextlib.nullcontext():
        return _generate(model, vocab, prime, length, temperature, top_k, top_p, greedy, seed, on_text, chunk, keep)


def _generate(model, vocab, prime, length, temperature, top_k, top_p, greedy, seed, on_text, chunk, keep):
    rng = np.random.default_rng(seed)
    state, token = prime_state(model, vocab, prime)
    pieces = []
    done = 0
    cache = {"chars": length}          # tables a backend derives from the weights, kept for this text
    size = chunk or FIRST_CHUNK
    while done < length:
        n = min(size, length - done)
        ids = model.be.generate(model.params, state, token, n, temperature, top_k or 0, top_p, greedy, rng,
                                cache, cell=model.cfg.cell)
        ids = np.asarray(model.be.to_numpy(ids))
        token = int(ids[-1])
        text = "".join(REPLACEMENT if i == vocab.unk else vocab.symbols[int(i)] for i in ids)
        if keep:
            pieces.append(text)
        if on_text:
            on_text(text)
        done += n
        size = size if chunk else min(2 * size, MAX_CHUNK)
    return "".join(pieces)


EVAL_CHUNK = 256        # characters per backend call of evaluate_ids


def eval_chunk_lengths(n_ids, chunk=EVAL_CHUNK):
    """The window lengths evaluate_ids calls the model with for n_ids ids -> sorted list."""
    n = n_ids - 1
    return sorted({k for k in (min(chunk, n), n % chunk) if k > 0}) if n > 0 else []


def evaluate_ids(model, ids, chunk=EVAL_CHUNK):
    """Score ids as one stream from a zero state: every id after the first is predicted
    from all before it.  -> (mean loss in nats/char, number of predicted chars)."""
    be = model.be
    n = len(ids) - 1
    if n < 1:
        raise UserError("the evaluation text needs at least 2 characters")
    state = model.zero_state(1)
    total = 0.0
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        tokens = be.asarray(ids[s:e].reshape(-1, 1))          # (T,1)
        targets = be.asarray(ids[s + 1:e + 1].reshape(-1, 1))  # (T,1)
        loss, state = model.loss(tokens, targets, state)
        total += loss * (e - s)
    return total / n, n


def bits(nats):
    return nats / math.log(2)
