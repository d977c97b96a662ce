"""What the teaching tools know of each cell: its gates, its states, and where the reference keeps them.

explain, inspect and the explorer read the caches the NumPy reference's forward returns
(Model.forward with backends/numpy_backend.py and numpy_cells.py); this module is the one place
that knows their layout.  The pre-activations are rebuilt with the reference's own functions and
the loop's one glue line (z_t = x_t·W_x + b + h_{t-1}·W_h), and checked against the gates the
forward kept.

Dimension legend: T steps, B batch, I input size, H hidden, G the gate blocks stacked (4H for lstm
and peephole, 3H for coupled and gru).
"""
from __future__ import annotations

import numpy as np

from ..backends import numpy_backend as nb
from ..backends import numpy_cells as nc
from ..errors import UserError

GATES = {"lstm": ("i", "f", "g", "o"), "peephole": ("i", "f", "g", "o"), "coupled": ("f", "g", "o"),
         "gru": ("r", "z", "n")}
ALL_KINDS = ("h", "c", "i", "f", "g", "o", "r", "z", "n")   # every state some cell has
SIGNED = ("h", "c", "g", "n")       # tanh-valued (c unbounded); the other gates are sigmoids in [0, 1]
NAMES = {"i": "input gate", "f": "forget gate", "g": "cell candidate", "o": "output gate", "r": "reset gate",
         "z": "update gate", "n": "candidate"}


def kinds(cell):
    """The states a unit of `cell` has: h, c (not the GRU, which has no cell state) and its gates."""
    return ("h",) + GATES[cell] if cell == "gru" else ("h", "c") + GATES[cell]


def check_kind(cell, kind, option="--state"):
    """UserError unless `kind` is a state of `cell`."""
    if kind not in kinds(cell):
        raise UserError(f"{option} must be one of {', '.join(kinds(cell))} for this {cell} model (got {kind!r})")
    return kind


def layer_cache(caches, l):
    """Model.forward's caches -> (cell, the reference forward's cache of layer l), the pair cell_backward takes."""
    tag, inner = caches[l]
    if tag == "embed":                  # layer 0 of a variant: (tokens, Emb shape, (cell, cache))
        return inner[2]
    if l == 0:                          # layer 0 of the lstm: (tokens, Emb shape, lstm_forward's cache)
        return tag, inner[2]
    return tag, inner


def layer_states(cell, lc):
    """kind -> (T,B,H) of one layer's cache: h, c (lstm, peephole, coupled) and the activated gates."""
    if cell == "gru":
        hs, acts = lc[3], lc[4]         # gru_forward's cache: x, W, h0, hs, acts (T,B,3H), hn
        out = {"h": hs}
    else:
        hs, cs, acts = lc[-3:]          # the others end with hs, cs (T,B,H), acts (T,B,G)
        out = {"h": hs, "c": cs}
    H = hs.shape[2]
    for k, g in enumerate(GATES[cell]):
        out[g] = acts[:, :, k * H:(k + 1) * H]
    return out


def preactivations(cell, lc, p):
    """The gates' pre-activations of every step -> pre (T,B,G), extra: for the gru {"x_n": W_in x_t + b_in,
    "h_n": W_hn h_{t-1} + b_hn} (T,B,H) each, the two terms of n's pre-activation; {} for the others.

    p: the layer's parameters by short name (Model.layer_params).  Each step repeats the loop's glue
    line and calls the reference's gate function; the gates it gives must be the ones the forward kept."""
    x, W = lc[0], lc[1]
    T, H = x.shape[0], W.shape[1] // len(GATES[cell])
    states = layer_states(cell, lc)
    acts = np.concatenate([states[g] for g in GATES[cell]], axis=2)       # (T,B,G)
    h0 = lc[2] if cell in ("lstm", "coupled", "gru") else lc[3]           # peephole's cache: x, W, wc, h0, c0, ...
    bias = p["bx"] if cell == "gru" else p["b"]
    xproj = nb.input_projection(x, W[H:], bias)                           # (T,B,G)
    pre, got = np.empty_like(acts), np.empty_like(acts)                   # (T,B,G) each
    hn = np.empty_like(states["h"])                                       # (T,B,H) gru: W_hn h_{t-1} + b_hn
    h = h0
    c = None if cell == "gru" else (lc[3] if cell in ("lstm", "coupled") else lc[4])   # c0 (B,H)
    for t in range(T):
        if cell == "gru":
            hp = h @ W[:H] + p["bh"]                                      # (B,3H) the recurrent half
            got[t] = nc.gru_gates(xproj[t], hp)
            hn[t] = hp[:, 2 * H:]
            pre[t] = xproj[t] + np.concatenate([hp[:, :2 * H], got[t][:, :H] * hp[:, 2 * H:]], axis=1)
        else:
            z = xproj[t] + h @ W[:H]                                      # (B,G)
            pre[t] = z
            if cell == "peephole":
                wc = p["wc"]
                got[t, :, :3 * H] = np.concatenate(nc.peephole_gates(z, wc, c), axis=1)
                pre[t, :, :H] += wc[0] * c
                pre[t, :, H:2 * H] += wc[1] * c
                pre[t, :, 3 * H:] += wc[2] * states["c"][t]
                got[t, :, 3 * H:] = nc.peephole_output(z[:, 3 * H:], wc, states["c"][t])[0]
            else:
                got[t] = nb.gate_activations(z) if cell == "lstm" else nc.coupled_gates(z)
            c = states["c"][t]
        h = states["h"][t]
    if not np.array_equal(got, acts):
        raise AssertionError(f"the rebuilt pre-activations disagree with the {cell} forward's gates")
    return pre, ({"x_n": xproj[:, :, 2 * H:], "h_n": hn} if cell == "gru" else {})
