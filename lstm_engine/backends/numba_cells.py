"""The numba backend's LSTM variants (peephole, coupled, gru): validate, allocate, call one kernel.

numba_backend's cell_forward / cell_backward / embed_cell_forward / embed_cell_backward /
generate call these for every cell but "lstm"; shapes, return values and meaning are those of
the reference (numpy_cells.py), which the tests compare them against.  The kernels are in
kernels/numba/cell_layers.py (peephole, coupled), gru_layer.py and sample_cells.py.

Dimension legend:
    T time steps   B batch   I input size   H hidden   E embedding   V vocabulary   L layers
    G gates: 4H (peephole: i, f, g, o), 3H (coupled: f, g, o; gru: r, z, n)

Parameters p of a layer by short name: peephole {"W" (H+I,G), "b" (G,), "wc" (3,H)};
coupled {"W", "b"}; gru {"W", "bx" (G,), "bh" (G,)}.  Every cell's state is the pair h, c
(B,H); the GRU carries c unchanged and passes dcT through as dc0.

Threads: as the LSTM's layers (numba_backend._threads), the split by hidden units included
(kernels/numba/cell_layers_columns.py, gru_layer_columns.py).

Every function takes the numba backend module first (nb: its array pool, thread plan, checks
and knobs), passed in by numba_backend so that this module does not import it back.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from . import numba_generate as gen

CELLS = ("peephole", "coupled", "gru")
GATES = {"peephole": 4, "coupled": 3, "gru": 3}            # G / H
BIASES = {"peephole": ("b", "wc"), "coupled": ("b",), "gru": ("bx", "bh")}

_K = None   # the kernel modules, imported on first use (after numba_backend's own)


def _kernels(nb):
    global _K
    if _K is None:
        from types import SimpleNamespace

        from ..kernels.numba import cell_layers, gemm, gru_layer, sample_cells
        lstm = nb._kernels().lstm                       # also pins BLAS and tunes malloc, once
        _K = SimpleNamespace(cells=cell_layers, gru=gru_layer, sample=sample_cells, lstm=lstm, gemm=gemm,
                             code={"peephole": cell_layers.PEEPHOLE, "coupled": cell_layers.COUPLED,
                                   "gru": sample_cells.GRU})
    return _K


def _threads(nb, T, B, H, cell):
    """-> (prod, rows, units) of numba_backend._threads: every cell by the LSTM's rule."""
    return nb._threads(T, B, H)


_NO_TOKENS = np.empty((0, 0), np.int64)     # the tokens of a layer without the table


def _tuned(nb, T, B, I, H, G, table, dt, prod, part):
    """The GEMMs numba_tune chose for the layer's big products (numba_backend._tuned), or None
    for the fused kernels.  The products are numba_tune.layer_products' with G gate columns;
    part "forward": x W_x; "backward": dW_h, and without the table dW_x and dx."""
    from . import numba_tune
    if not T:
        return None
    products = numba_tune.layer_products(T, B, I, H, table, G)      # [x W_x,] dW_h[, dW_x, dx]
    if part == "forward":
        products = [] if table else products[:1]
    elif not table:
        products = products[1:]
    return nb._tuned(products, dt, prod) if products else None


def _products_after(K, fns, cache, dzr2, dzx2, dW, dx, dtable, dEmb, prod):
    """The weight gradients after the time loop by the chosen GEMMs fns: dW_h = sum_t h_{t-1}^T dzr_t
    (dzr2 (N,G): the recurrent side's dz rows); with x, dW_x = x^T dzx and dx = dzx W_x^T (dzx2
    (N,G)); layer 0 with the table, dW_x = Emb^T dtable and dEmb = dtable W_x^T (lstm_layer.mm)."""
    B, H = cache.h0.shape
    N = dzr2.shape[0]
    W = cache.p["W"]
    fns[0](cache.h0, dzr2[:B], dW[:H], True, False, 1.0, 0.0, prod)                          # h_0^T dz_1
    fns[0](cache.hs.reshape(N, H)[:N - B], dzr2[B:], dW[:H], True, False, 1.0, 1.0, prod)    # + the rest
    if cache.x is not None:
        fns[1](cache.x.reshape(N, -1), dzx2, dW[H:], True, False, 1.0, 0.0, prod)           # dW_x (I,G)
        fns[2](dzx2, W[H:], dx.reshape(N, -1), False, True, 1.0, 0.0, prod)                 # dx (N,I)
    else:
        K.lstm.mm(cache.Emb, dtable, dW[H:], True, False, 1.0, 0.0, prod)                   # dW_x (E,G)
        K.lstm.mm(dtable, W[H:], dEmb, False, True, 1.0, 0.0, prod)                         # dEmb (V,E)


class CellCache:
    """What BPTT needs from one layer's forward: .cell, .x (T,B,I) (None for layer 0 with the
    table), .tokens (T,B), .Emb (V,E) for layer 0, .p the parameters, .h0, .c0 (B,H),
    .hs (T,B,H), .acts (T,B,G) activated gates; .cs (T,B,H) c_t (peephole, coupled), .hn (T,B,H)
    h_{t-1} W_hn + b_hn (gru)."""

    __slots__ = ("cell", "x", "tokens", "Emb", "p", "h0", "c0", "hs", "cs", "acts", "hn")

    def __init__(self, cell, x, p, h0, c0, hs, cs, acts, hn):
        self.cell, self.x, self.tokens, self.Emb, self.p = cell, x, None, None, p
        self.h0, self.c0, self.hs, self.cs, self.acts, self.hn = h0, c0, hs, cs, acts, hn


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------

def _params(nb, cell, p, h0, c0, I):
    """Contiguous parameters of a layer of `cell` after checking names and shapes -> (dict, dtype)."""
    if cell not in CELLS:
        raise UserError(f"the numba cell kernels know {', '.join(CELLS)}, not {cell!r}")
    names = ("W",) + BIASES[cell]
    missing = [n for n in names if n not in p]
    if missing:
        raise UserError(f"the {cell} layer needs parameters {', '.join(names)}; missing {', '.join(missing)}")
    if h0.ndim != 2 or c0.shape != h0.shape:
        raise UserError(f"h0 and c0 must both be (B,H); got {h0.shape} and {c0.shape}")
    H = h0.shape[1]
    G = GATES[cell] * H
    want = {"W": (H + I, G), "b": (G,), "bx": (G,), "bh": (G,), "wc": (3, H)}
    bad = [f"{n} {p[n].shape} (want {want[n]})" for n in names if p[n].shape != want[n]]
    if bad:
        raise UserError(f"the {cell} layer's parameters have the wrong shape: {', '.join(bad)}")
    dt = nb._dtype_of(*(p[n] for n in names), h0, c0)
    return {n: nb._c(p[n]) for n in names}, dt


def _wc(p, dt):
    """The peepholes flat (3H,) = [w_ci; w_cf; w_co], or (0,) for the coupled cell."""
    return p["wc"].reshape(-1) if "wc" in p else np.empty(0, dt)


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------

def cell_forward(nb, cell, x, p, h0, c0):
    """One layer of `cell` over a window: x (T,B,I), p (see module docstring), h0, c0 (B,H)
    -> hs (T,B,H), hT (B,H), cT (B,H), cache for cell_backward."""
    if x.ndim != 3 or h0.ndim != 2 or x.shape[1] != h0.shape[0]:
        raise UserError(f"x must be (T,B,I) with B = {h0.shape[0]}; got {x.shape}")
    p, dt = _params(nb, cell, p, h0, c0, x.shape[2])
    nb._dtype_of(x, h0)
    x, h0, c0 = nb._c(x), nb._c(h0), nb._c(c0)
    T, B, I = x.shape
    H, G = h0.shape[1], GATES[cell] * h0.shape[1]
    K, W = _kernels(nb), p["W"]
    hs, acts = nb._pool.empty((T, B, H), dt), nb._pool.empty((T, B, G), dt)
    prod, rows, units = _threads(nb, T, B, H, cell)
    fns = _tuned(nb, T, B, I, H, G, False, dt, prod, "forward")
    if fns is not None:                            # the chosen product, then the time loop alone
        fns[0](x.reshape(T * B, I), W[H:], acts.reshape(T * B, G), False, False, 1.0, 0.0, prod)
    if cell == "gru":
        hn = nb._pool.empty((T, B, H), dt)
        if T and fns is None:
            K.gru.gru_forward_kernel(x, W, p["bx"], p["bh"], h0, hs, acts, hn, prod, rows, units)
        elif T:
            K.gru.run_forward_steps(W[:H], p["bx"], p["bh"], h0, hs, acts, hn, rows, units, _NO_TOKENS,
                                    np.empty((0, G), dt))
        cache = CellCache(cell, x, p, h0, c0, hs, None, acts, hn)
        return hs, (hs[-1] if T else h0), c0, cache          # the GRU carries c unchanged
    cs = nb._pool.empty((T, B, H), dt)
    if T and fns is None:
        K.cells.cell_forward_kernel(K.code[cell], x, W, p["b"], _wc(p, dt), h0, c0, hs, cs, acts, prod, rows,
                                    units)
    elif T:
        K.cells.run_forward_steps(K.code[cell], W[:H], p["b"], _wc(p, dt), h0, c0, hs, cs, acts, rows, units,
                                  _NO_TOKENS, np.empty((0, G), dt))
    hT, cT = (hs[-1], cs[-1]) if T else (h0, c0)
    return hs, hT, cT, CellCache(cell, x, p, h0, c0, hs, cs, acts, None)


def _state_grads(nb, dhs, dhT, dcT, cache):
    """Checked gradients -> dhs (T,B,H) contiguous, dh, dc (B,H) fresh copies of dhT, dcT."""
    T, B, H = cache.hs.shape
    dt = nb._dtype_of(dhs, dhT, dcT, cache.p["W"])
    if dhs.shape != (T, B, H) or dhT.shape != (B, H) or dcT.shape != (B, H):
        raise UserError(f"gradients must be dhs {(T, B, H)}, dhT and dcT {(B, H)}; "
                        f"got {dhs.shape}, {dhT.shape}, {dcT.shape}")
    return nb._c(dhs), np.array(dhT, dtype=dt, order="C"), np.array(dcT, dtype=dt, order="C")


def _grad_buffers(nb, cache):
    """dW (H+I,G) and the bias gradients by name, allocated (zeros where the window is empty)."""
    W = cache.p["W"]
    T = cache.hs.shape[0]
    dp = {"W": nb._pool.empty(W.shape, W.dtype)}
    for n in BIASES[cache.cell]:
        dp[n] = np.empty(cache.p[n].shape, W.dtype)
    if not T:
        for a in dp.values():
            a[...] = 0
    return dp


def _backward(nb, dhs, dh, dc, cache, tokens, Emb, dEmb):
    """The BPTT of cache.cell into fresh gradient buffers: one fused kernel, or (products tuned
    here) its time loop then the chosen products -> dx (T,B,I) or None (layer 0 with the table:
    dEmb (V,E) filled instead), dp; dh, dc become dh0, dc0 in place."""
    T, B, H = cache.hs.shape
    K, c, dt = _kernels(nb), cache, cache.p["W"].dtype
    dp, x, W = _grad_buffers(nb, cache), cache.x, cache.p["W"]
    dx = nb._pool.empty(x.shape, dt) if x is not None else None
    if not T:
        if dEmb is not None:
            dEmb[...] = 0
        return dx, dp
    N, G = T * B, W.shape[1]
    prod, rows, units = _threads(nb, T, B, H, cache.cell)
    fns = _tuned(nb, T, B, W.shape[0] - H, H, G, x is None, dt, prod, "backward")
    dtable = nb._pool.empty((Emb.shape[0], G), dt) if x is None else np.empty((0, G), dt)   # (V,G) or none
    tok = tokens if x is None else _NO_TOKENS
    if cache.cell == "gru":
        dzx, dzh = nb._pool.empty((T, B, G), dt), nb._pool.empty((T, B, G), dt)
        if fns is not None:
            K.gru.run_backward_steps(dhs, W[:H], c.h0, c.hs, c.acts, c.hn, dzx, dzh, dh, rows, units, tok,
                                     dp["bx"], dp["bh"], dtable)
            _products_after(K, fns, c, dzh.reshape(N, G), dzx.reshape(N, G), dp["W"], dx, dtable, dEmb, prod)
        elif x is not None:
            K.gru.gru_backward_kernel(dhs, x, W, c.h0, c.hs, c.acts, c.hn, dzx, dzh, dh, dx, dp["W"], dp["bx"],
                                      dp["bh"], prod, rows, units)
        else:
            K.gru.embed_gru_backward_kernel(dhs, tokens, Emb, W, c.h0, c.hs, c.acts, c.hn, dzx, dzh, dh, dEmb,
                                            dp["W"], dp["bx"], dp["bh"], dtable, prod, rows, units)
        return dx, dp
    dzs = nb._pool.empty((T, B, G), dt)
    dwc = np.empty(3 * H if "wc" in dp else 0, dt)                 # (3H,) peepholes, flat
    code, wc = K.code[cache.cell], _wc(c.p, dt)
    if fns is not None:
        K.cells.run_backward_steps(code, dhs, W[:H], wc, c.c0, c.cs, c.acts, dzs, dh, dc, rows, units, tok, dp["b"],
                                   dwc, dtable)
        _products_after(K, fns, c, dzs.reshape(N, G), dzs.reshape(N, G), dp["W"], dx, dtable, dEmb, prod)
    elif x is not None:
        K.cells.cell_backward_kernel(code, dhs, x, W, wc, c.h0, c.c0, c.hs, c.cs, c.acts, dzs, dh, dc, dx, dp["W"],
                                     dp["b"], dwc, prod, rows, units)
    else:
        K.cells.embed_cell_backward_kernel(code, dhs, tokens, Emb, W, wc, c.h0, c.c0, c.hs, c.cs, c.acts, dzs, dh,
                                           dc, dEmb, dp["W"], dp["b"], dwc, dtable, prod, rows, units)
    if "wc" in dp:
        dp["wc"] = dwc.reshape(3, H)
    return dx, dp


def cell_backward(nb, dhs, dhT, dcT, cache):
    """BPTT through one layer: dhs (T,B,H) from above; dhT, dcT (B,H) from the next window
    -> dx (T,B,I), dp (by short name), dh0 (B,H), dc0 (B,H)."""
    dhs, dh, dc = _state_grads(nb, dhs, dhT, dcT, cache)
    dx, dp = _backward(nb, dhs, dh, dc, cache, None, None, None)
    return dx, dp, dh, dc


def embed_cell_forward(nb, cell, tokens, Emb, p, h0, c0):
    """Layer 0: embedding then cell_forward.  tokens (T,B) int, Emb (V,E).  With V <= T*B the
    input projections are rows of the table Emb @ W_x (V,G), built once per call and gathered
    (as numba_backend.embed_lstm_forward); otherwise the embeddings are gathered and projected."""
    if Emb.ndim != 2:
        raise UserError(f"Emb must be (V,E); got {Emb.shape}")
    V, E = Emb.shape
    tokens = nb._check_tokens(tokens, V)
    T, B = tokens.shape
    if h0.ndim != 2 or B != h0.shape[0]:
        raise UserError(f"tokens must be (T,B) with B = {h0.shape[0]}; got {tokens.shape}")
    p, dt = _params(nb, cell, p, h0, c0, E)
    nb._dtype_of(Emb, h0)
    Emb = nb._c(Emb)
    if V > T * B:                                  # the table would cost more than it saves
        x = nb._pool.empty((T, B, E), dt)
        _kernels(nb).lstm.gather_rows(tokens.reshape(-1), Emb, x.reshape(T * B, E))
        hs, hT, cT, cache = cell_forward(nb, cell, x, p, h0, c0)
        cache.tokens, cache.Emb = tokens, Emb
        return hs, hT, cT, cache
    K, h0, c0 = _kernels(nb), nb._c(h0), nb._c(c0)
    H = h0.shape[1]
    G = GATES[cell] * H
    hs, acts = nb._pool.empty((T, B, H), dt), nb._pool.empty((T, B, G), dt)
    table = nb._pool.empty((V, G), dt)             # Emb @ W_x
    if cell == "gru":
        hn = nb._pool.empty((T, B, H), dt)
        if T:
            K.gru.embed_gru_forward_kernel(tokens, Emb, p["W"], p["bx"], p["bh"], h0, hs, acts, hn, table,
                                           *_threads(nb, T, B, H, cell))
        cs, hT, cT = None, (hs[-1] if T else h0), c0
    else:
        hn, cs = None, nb._pool.empty((T, B, H), dt)
        if T:
            K.cells.embed_cell_forward_kernel(K.code[cell], tokens, Emb, p["W"], p["b"], _wc(p, dt), h0, c0, hs,
                                              cs, acts, table, *_threads(nb, T, B, H, cell))
        hT, cT = (hs[-1], cs[-1]) if T else (h0, c0)
    cache = CellCache(cell, None, p, h0, c0, hs, cs, acts, hn)
    cache.tokens, cache.Emb = tokens, Emb
    return hs, hT, cT, cache


def embed_cell_backward(nb, dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dp, dh0, dc0 (the embedding gradient is a scatter-add over tokens)."""
    Emb, tokens = cache.Emb, cache.tokens
    dhs, dh, dc = _state_grads(nb, dhs, dhT, dcT, cache)
    dEmb = nb._pool.empty(Emb.shape, Emb.dtype)
    dx, dp = _backward(nb, dhs, dh, dc, cache, tokens, Emb, dEmb)
    if dx is not None:                             # gathered path: scatter dx into dEmb
        _kernels(nb).lstm.scatter_add_rows(tokens.reshape(-1), dx.reshape(-1, Emb.shape[1]), dEmb)
    return dEmb, dp, dh, dc


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------

def generate(nb, weights, state, token, n, temperature, top_k, top_p, greedy, rng, cache, cell):
    """numba_backend.generate for `cell` (sample_cells.py): n token ids after `token`, state
    [h (1,H), c (1,H)] per layer carried and updated; the layer-0 table Emb @ W_x + b0 (V,G)
    (GRU: + bx0) is kept in `cache` as the LSTM's, and so is the team of threads the LSTM's
    sizes would use (numba_generate.sample_team) -> ids (n,) int64."""
    if cell not in CELLS:
        raise UserError(f"the numba cell kernels know {', '.join(CELLS)}, not {cell!r}")
    L = len(state)
    Ws, bs, extras, Emb, Wy, by = gen.sample_inputs(weights, L, cell, cache,
                                                    lambda w, L: _sample_arrays(nb, w, L, cell))
    dt = Wy.dtype
    V = Emb.shape[0]
    if not 0 <= int(token) < V:
        raise UserError(f"token must lie in [0, {V}); got {token}")
    h = np.concatenate([s[0].reshape(1, -1) for s in state]).astype(dt)       # (L,H)
    c = np.concatenate([s[1].reshape(1, -1) for s in state]).astype(dt)       # (L,H)
    out = np.empty(n, np.int64)
    us = np.zeros(0) if greedy else rng.random(n)                             # one uniform per token
    if n:
        K = _kernels(nb)
        X0 = gen.layer0_table(nb, Emb, Ws[0], bs[0], h.shape[1], n, cache)       # (V,G) or (0,G)
        arrays = (Emb, X0, Ws, bs, Wy, by, extras, K.code[cell])
        Wps, Wyp = gen.sample_panels(nb, Ws, Wy, h.shape[1], cache)            # the one-thread kernel's W, Wy
        run = _sample_run(K, arrays, (Wps, Wyp), (temperature, top_k, top_p, greedy))
        team = gen.sample_team(nb, arrays, h.shape, n, cache, run, (h, c, token), cell)
        if team is None:
            K.sample.generate_cells_kernel(K.code[cell], Emb, X0, Wps, bs, extras, Wyp, by, h, c, int(token),
                                           float(temperature), int(top_k), float(top_p), bool(greedy), us, out)
        else:
            team.generate(h, c, token, out, temperature, top_k, top_p, greedy, us, close=cache is None)
    for l in range(L):
        state[l][0], state[l][1] = h[l:l + 1], c[l:l + 1]
    return out


def _sample_arrays(nb, weights, L, cell):
    """-> (Ws, bs, extras, Emb, Wy, by) of `cell` for the sampler, C-contiguous, one float dtype."""
    b = "bx" if cell == "gru" else "b"
    Ws = tuple(nb._c(weights[f"W{l}"]) for l in range(L))
    bs = tuple(nb._c(weights[f"{b}{l}"]) for l in range(L))
    Emb, Wy, by = nb._c(weights["Emb"]), nb._c(weights["Wy"]), nb._c(weights["by"])
    dt = nb._dtype_of(Emb, Wy, by, *Ws, *bs)
    if cell == "peephole":
        extras = tuple(nb._c(weights[f"wc{l}"]).reshape(-1) for l in range(L))      # (3H,) each
    elif cell == "gru":
        extras = tuple(nb._c(weights[f"bh{l}"]) for l in range(L))                  # (G,) each
    else:
        extras = tuple(np.empty(0, dt) for _ in range(L))
    nb._dtype_of(Wy, *extras)
    return Ws, bs, extras, Emb, Wy, by


def _sample_run(K, arrays, panels, opts):
    """run(team or None, h, c, token, us) -> ids for numba_tune_sample: this model (panels: its
    W and Wy as the one-thread kernel's, numba_generate.sample_panels) and the settings
    opts = (temperature, top_k, top_p, greedy) from another state and uniforms."""
    Wps, Wyp = panels
    Emb, X0, Ws, bs, Wy, by, extras, code = arrays
    temperature, top_k, top_p, greedy = float(opts[0]), int(opts[1]), float(opts[2]), bool(opts[3])

    def run(team, h, c, token, us):
        if team is not None:
            return team.run(h, c, token, len(us), temperature, top_k, top_p, greedy, us)
        ids = np.empty(len(us), np.int64)                                          # (n,)
        K.sample.generate_cells_kernel(code, Emb, X0, Wps, bs, extras, Wyp, by, h, c, int(token), temperature,
                                       top_k, top_p, greedy, us, ids)
        return ids
    return run
