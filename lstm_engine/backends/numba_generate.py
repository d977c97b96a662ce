"""Batch-1 generation on the numba backend: the arrays a sampler reads (checked, packed into
panels, the layer-0 table), kept in the caller's cache, and the choice between the one-thread
kernel and a team of threads (numba_team.py).

numba_backend.generate runs generate() here for the LSTM and numba_cells.generate for the other
cells; both hand over the backend module `nb` (its kernels, array checks and the rule's constants
SAMPLE_ROWS_PER_THREAD, SAMPLE_TEAM_MIN_MACS, V_TABLE_MIN_CHARS_PER_ROW, read at each call)
instead of this module importing it back.

Dimension legend: L layers, H hidden, I input size, G gates (4H for the LSTM), E embedding,
V vocabulary, n tokens a call.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def generate(nb, weights, state, token, n, temperature, top_k, top_p, greedy, rng, cache):
    """numba_backend.generate for the LSTM (see there) -> ids (n,) int64; state carried and updated."""
    L = len(state)
    Ws, bs, Emb, Wy, by = sample_inputs(weights, L, "lstm", cache, lambda w, L: _lstm_inputs(nb, w, L))
    V = Emb.shape[0]
    if not 0 <= int(token) < V:
        raise UserError(f"token must lie in [0, {V}); got {token}")
    h = np.concatenate([s[0].reshape(1, -1) for s in state]).astype(Wy.dtype)   # (L,H)
    c = np.concatenate([s[1].reshape(1, -1) for s in state]).astype(Wy.dtype)   # (L,H)
    out = np.empty(n, np.int64)
    us = np.zeros(0) if greedy else rng.random(n)                                # one uniform per token
    if n:
        H = h.shape[1]
        X0 = layer0_table(nb, Emb, Ws[0], bs[0], H, n, cache)                  # (V,G) or (0,G)
        Wps, Wyp = sample_panels(nb, Ws, Wy, H, cache)                          # the one-thread kernel's W, Wy
        args = (Emb, X0, Wps, bs, Wyp, by, h, c, int(token), float(temperature), int(top_k), float(top_p),
                bool(greedy), us, out)
        K = nb._kernels()
        arrays = (Emb, X0, Ws, bs, Wy, by, tuple(np.empty(0, Wy.dtype) for _ in Ws), K.team.LSTM)
        team = sample_team(nb, arrays, h.shape, n, cache, _sample_run(K, args), (h, c, token))
        if team is None:
            K.sample.generate_kernel(*args)
        else:
            team.generate(h, c, token, out, temperature, top_k, top_p, greedy, us, close=cache is None)
    for l in range(L):
        state[l][0], state[l][1] = h[l:l + 1], c[l:l + 1]
    return out


def _lstm_inputs(nb, weights, L):
    """-> (Ws, bs, Emb, Wy, by): the LSTM's arrays for the sampler, C-contiguous, one float dtype."""
    Ws = tuple(nb._c(weights[f"W{l}"]) for l in range(L))
    bs = tuple(nb._c(weights[f"b{l}"]) for l in range(L))
    Emb, Wy, by = nb._c(weights["Emb"]), nb._c(weights["Wy"]), nb._c(weights["by"])
    nb._dtype_of(Emb, Wy, by, *Ws, *bs)
    return Ws, bs, Emb, Wy, by


def sample_inputs(weights, L, cell, cache, build):
    """build(weights, L) -> the sampler's checked arrays, kept in the generation cache while the
    weights dict holds the same arrays (a 32-character call then skips the checks and copies)."""
    if cache is None:
        return build(weights, L)
    key = (cell, L, *map(id, weights.values()))
    got = cache.get("inputs")
    if got is not None and got[0] == key:
        return got[1]
    inputs = build(weights, L)
    cache["inputs"] = (key, inputs, tuple(weights.values()))   # held: their ids stay theirs
    return inputs


def sample_weights(dtype):
    """What the sampler streams of a float32 model: 'bf16' (LSTM_ENGINE_TUNE=bf16 or
    use_products('bf16')), its weights rounded to bfloat16, half the bytes a character; 'int8'
    (use_products('int8')), 8-bit codes and a float32 scale per column, a quarter of the bytes;
    else None, the weights as stored (always for float64).  The sums stay float32 on any CPU: each
    weight is widened as it is read (kernels/numba/sample.panel_acc)."""
    from . import numba_tune
    return numba_tune.sampler_weights() if np.dtype(dtype) == np.float32 else None


def sample_panels(nb, Ws, Wy, H, cache):
    """-> (each layer's W (H+I,G) as the one-thread sampler's panels (W_h (nb,H,PANEL), W_x
    (nb,I,PANEL)), Wy (H,V) as panels (nbV,H,PANEL)) (kernels/numba/sample.panel_acc), as
    sample_weights says (numba_team.sampler_weights), kept in `cache` while it holds these arrays."""
    from .numba_team import as_panels, pack_units, sampler_weights
    weights = sample_weights(Wy.dtype)
    key = (*map(id, Ws), id(Wy), weights)
    got = cache.get("panels") if cache is not None else None
    if got is not None and got[0] == key:
        return got[1]
    P = nb._kernels().sample.PANEL
    panels = (tuple(tuple(sampler_weights(p[0], weights) for p in pack_units(W, H, 1, P)) for W in Ws),
              sampler_weights(as_panels(Wy, P), weights))
    if cache is not None:
        cache["panels"] = (key, panels, (Ws, Wy))              # held: their ids stay theirs
    return panels


def sample_team(nb, arrays, shape, n, cache, run=None, state=None, cell="lstm"):
    """The team of threads for generating from arrays = (Emb, X0, Ws, bs, Wy, by, extras, cell
    code) (kernels/numba/sample_team.py's), or None for the one-thread kernel.  Kept in `cache` for
    the same arrays and cell (replaced, and the old one told to end, when others come with the same
    cache); without a cache, one for this call.  With a cache and LSTM_ENGINE_TUNE=auto the choice
    is measured once per shape on this machine (numba_tune_sample.py: run and state = (h, c, token)
    time both ways on copies); otherwise from nb.SAMPLE_ROWS_PER_THREAD hidden units a thread and
    nb.SAMPLE_TEAM_MIN_MACS a call."""
    import numba

    from . import numba_team, numba_tune_sample
    L, H = shape
    threads = numba.get_num_threads()
    nt = min(threads, H // nb.SAMPLE_ROWS_PER_THREAD)
    Emb, X0, Ws, bs, Wy, by, extras, code = arrays
    weights = sample_weights(Wy.dtype)
    rule = nt >= 2 and n * (sum(W.size for W in Ws) + Wy.size) >= nb.SAMPLE_TEAM_MIN_MACS
    tuned = run is not None and numba_tune_sample.active(cache, threads, H)
    if tuned:
        nt = max(nt, 2)                                         # the fixed rule's team size, at least two
    elif not rule:
        return None
    if cache is None:
        return numba_team.Team(nb._kernels().team, nt, arrays, L, H, n, weights)
    same = [0 if not e.size else id(e if e.base is None else e.base) for e in extras]   # wc: views made per call
    key = (nt, code, id(Emb), id(X0) if len(X0) else 0, *map(id, Ws), *map(id, bs), *same, id(Wy), id(by), weights)
    old = cache.get("team")
    if old is not None and old[0] == key and old[1].usable():
        return old[1]
    if old is not None:
        old[1].close()
    cap = int(max(n, min(cache.get("chars", n), 256), numba_tune_sample.CALL_CHARS if tuned else 0))
    new = lambda: numba_team.Team(nb._kernels().team, nt, arrays, L, H, cap, weights)   # noqa: E731
    if not tuned:
        team = new()
    else:
        desc = numba_tune_sample.describe(cell, L, H, Emb.shape[1], Emb.shape[0], Wy.dtype, len(X0))
        if weights:
            desc["weights"] = {"bf16": "bfloat16", "int8": "int8"}[weights]
        team = numba_tune_sample.choose(desc, threads, new, run, *state, rule=rule)
        if team is None:
            return None
    cache["team"] = (key, team)
    return team


def _sample_run(K, args):
    """run(team or None, h, c, token, us) -> ids: generate's model and settings (args as
    generate_kernel takes them) from another state and uniforms, for numba_tune_sample."""
    def run(team, h, c, token, us):
        if team is not None:
            return team.run(h, c, token, len(us), *args[9:13], us)
        ids = np.empty(len(us), np.int64)                                          # (n,)
        K.sample.generate_kernel(*args[:6], h, c, int(token), *args[9:13], us, ids)
        return ids
    return run


def layer0_table(nb, Emb, W0, b0, H, n, cache):
    """X0 = Emb (V,E) @ W0_x (E,G) + b0 (G,) -> (V,G) for a layer of any gate count (W0 (H+E,G)),
    from `cache` when it holds one for these very arrays; an empty (0,G) when the characters served
    (cache["chars"], else n) would not pay for building V rows (nb.V_TABLE_MIN_CHARS_PER_ROW)."""
    key = ("X0", id(Emb), id(W0), id(b0))
    if cache is not None and key in cache:
        return cache[key]
    chars = cache.get("chars", n) if cache is not None else n
    if chars < nb.V_TABLE_MIN_CHARS_PER_ROW * Emb.shape[0]:
        return np.empty((0, W0.shape[1]), W0.dtype)
    X0 = np.ascontiguousarray(Emb @ W0[H:] + b0)                               # (V,G)
    if cache is not None:
        for k in [k for k in cache if isinstance(k, tuple) and k[0] == "X0"]:
            del cache[k]                                # another model's table
        cache[key] = X0
    return X0
