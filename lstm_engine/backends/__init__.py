"""Backend registry: the one place where a backend is chosen.

Every backend module exposes the same names (Keras-3 style), so the model,
trainer and sampler call `backend.lstm_forward(...)` and never branch on which
backend runs:

    NAME, xp, is_available(), asarray(a, dtype), to_numpy(a), synchronize()
    embed_lstm_forward(tokens, Emb, W, b, h0, c0) -> hs, hT, cT, cache
    embed_lstm_backward(dhs, dhT, dcT, cache)     -> dEmb, dW, db, dh0, dc0
    lstm_forward(x, W, b, h0, c0)                  -> hs, hT, cT, cache
    lstm_backward(dhs, dhT, dcT, cache)            -> dx, dW, db, dh0, dc0
    cell_forward(cell, x, p, h0, c0)               -> hs, hT, cT, cache   (any cell of core.model.CELLS;
    cell_backward(dhs, dhT, dcT, cache)            -> dx, dp, dh0, dc0     p, dp: the layer's parameters
    embed_cell_forward(cell, tokens, Emb, p, h0, c0) -> hs, hT, cT, cache  by short name, e.g. gru
    embed_cell_backward(dhs, dhT, dcT, cache)      -> dEmb, dp, dh0, dc0   {"W", "bx", "bh"})
    linear_forward(x, W, b)                        -> y = x W + b   (the output layer)
    linear_backward(x, dy, W)                      -> dx, dW, db
    softmax_xent(logits, targets, need_grad)       -> loss, dlogits
    global_norm(grads)                             -> float
    adam_update(params, grads, m, v, step, lr, beta1, beta2, eps, grad_scale)
    generate(weights, state, token, n, temperature, top_k, top_p, greedy, rng, cache, cell) -> ids

See numpy_backend.py (the reference) for shapes and meaning.
"""
from __future__ import annotations

import contextlib
import importlib

from ..core.environment import check_all
from ..errors import UserError

# name -> module path; the order of AUTO_ORDER is the preference of --backend auto
BACKENDS = {
    "numpy": "lstm_engine.backends.numpy_backend",
    "numba": "lstm_engine.backends.numba_backend",
    "cupy": "lstm_engine.backends.cupy_backend",
}
AUTO_ORDER = ("cupy", "numba", "numpy")
INTERFACE = (
    "NAME", "xp", "is_available", "asarray", "to_numpy", "synchronize",
    "embed_lstm_forward", "embed_lstm_backward", "lstm_forward", "lstm_backward",
    "cell_forward", "cell_backward", "embed_cell_forward", "embed_cell_backward",
    "linear_forward", "linear_backward", "softmax_xent", "global_norm", "adam_update", "generate",
)


def compile_ahead(backend, model_cfg, batch, seq_len, eval_lengths=()):
    """A context in which a first training step of this model may compile its later kernels in
    another process (the numba backend's compile_ahead, on a cold cache); a no-op elsewhere."""
    ahead = getattr(backend, "compile_ahead", None)          # the numba backend only
    if ahead is None:
        return contextlib.nullcontext()
    return ahead(model_cfg, batch, seq_len, eval_lengths)


def tune_first_use(backend, model_cfg, batch, seq_len):
    """Let the backend's per-machine tuner choose for this model's products (windows (seq_len, batch))
    before a first training step, the biggest first (the numba backend's); a no-op elsewhere."""
    ask = getattr(backend, "tune_first_use", None)           # the numba backend only
    if ask is not None:
        ask(model_cfg, batch, seq_len)


def sample_ahead(backend, model_cfg, chars):
    """A context in which a first generation from this model may compile its other way of sampling
    in another process (the numba backend's sample_ahead, on a cold cache); a no-op elsewhere."""
    ahead = getattr(backend, "sample_ahead", None)           # the numba backend only
    if ahead is None:
        return contextlib.nullcontext()
    return ahead(model_cfg, chars)


def _import(name):
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError:
        return None


def available_backends():
    """Names of the backends that can run on this machine, in preference order."""
    out = []
    for name in AUTO_ORDER:
        mod = _import(name)
        if mod is not None and mod.is_available()[0]:
            out.append(name)
    return out


def get_backend(name="auto"):
    """Return the backend module for `name` ('auto' picks the fastest available)."""
    check_all()          # a bad LSTM_ENGINE_* value fails here, not as a silent skip of a backend
    if name == "auto":
        for cand in AUTO_ORDER:
            mod = _import(cand)
            if mod is not None and mod.is_available()[0]:
                return mod
        raise UserError("no backend is available; reinstall lstm-engine with `pip install lstm-engine`")
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}, auto")
    mod = _import(name)
    if mod is None:
        raise UserError(f"backend {name!r} could not be imported; "
                        f"install its dependencies (see README, e.g. `pip install lstm-engine[gpu]` for cupy)")
    ok, why = mod.is_available()
    if not ok:
        raise UserError(f"backend {name!r} is not usable here: {why}")
    return mod
