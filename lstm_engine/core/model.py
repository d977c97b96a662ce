"""The character language model: embedding -> L stacked recurrent layers -> linear -> softmax.

It owns the parameters and calls the chosen backend's kernels; it never asks which
backend it is running on.  The recurrent cell is one of CELLS (the equations: backends/numpy_cells.py).

Dimension legend: T time, B batch (b of its streams on this rank), E embedding, H hidden, V vocab, N = T*B,
G the gate blocks stacked: 4H (lstm, peephole), 3H (coupled, gru).
Parameters (names follow the math; the short name plus the layer index l):
    Emb (V,E)          embedding table
    W{l} (H+I_l, G)    fused weight of layer l over [h_{t-1}, x_t]; I_0 = E, I_l = H
    b{l} (G,)          bias of layer l (lstm, peephole, coupled; forget-gate slice initialised to 1)
    wc{l} (3,H)        peephole: the diagonal peepholes w_ci, w_cf, w_co
    bx{l}, bh{l} (G,)  gru: nn.GRU's bias_ih and bias_hh
    Wy (H,V), by (V,)  output projection
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError

CELLS = ("lstm", "peephole", "coupled", "gru")
# each cell's per-layer parameters by short name, in the order they are drawn at init
CELL_PARAMS = {"lstm": ("W", "b"), "peephole": ("W", "b", "wc"), "coupled": ("W", "b"), "gru": ("W", "bx", "bh")}
GATE_BLOCKS = {"lstm": 4, "peephole": 4, "coupled": 3, "gru": 3}
FORGET_BLOCK = {"lstm": 1, "peephole": 1, "coupled": 0}     # the bias block set to 1 at init (gru: none)


def check_cell(cell):
    """-> cell, or a UserError naming the choices."""
    if cell not in CELLS:
        raise UserError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}")
    return cell


def cell_param_shapes(cell, I, H):
    """Short name -> shape of one layer of `cell` with input size I and hidden size H."""
    G = GATE_BLOCKS[cell] * H
    shapes = {"W": (H + I, G), "b": (G,), "wc": (3, H), "bx": (G,), "bh": (G,)}
    return {k: shapes[k] for k in CELL_PARAMS[cell]}


def layer_params(weights, cell, l):
    """The parameters of layer l by short name ({"W": W{l}, "b": b{l}, ...}) from a model's dict."""
    return {k: weights[f"{k}{l}"] for k in CELL_PARAMS[cell]}


@dataclass
class ModelConfig:
    vocab_size: int
    embed_size: int = 64
    hidden_size: int = 128
    layers: int = 2
    dropout: float = 0.0
    dtype: str = "float32"
    cell: str = "lstm"

    def __post_init__(self):
        check_cell(self.cell)

    def to_dict(self):
        return asdict(self)

    def param_shapes(self):
        V, E, H, L = self.vocab_size, self.embed_size, self.hidden_size, self.layers
        shapes = {"Emb": (V, E)}
        for l in range(L):
            for k, shape in cell_param_shapes(self.cell, E if l == 0 else H, H).items():
                shapes[f"{k}{l}"] = shape
        shapes["Wy"] = (H, V)
        shapes["by"] = (V,)
        return shapes


def init_params(cfg: ModelConfig, seed=0):
    """Host (NumPy) parameters with PyTorch's default initialisation; forget bias = 1."""
    rng = np.random.default_rng(seed)
    H = cfg.hidden_size
    k = 1.0 / np.sqrt(H)
    params = {}
    for name, shape in cfg.param_shapes().items():
        if name == "Emb":
            params[name] = rng.standard_normal(shape)          # nn.Embedding: N(0, 1)
        else:
            params[name] = rng.uniform(-k, k, shape)           # nn.LSTM / nn.GRU / nn.Linear: U(-1/sqrt(H), 1/sqrt(H))
    f = FORGET_BLOCK.get(cfg.cell)
    for l in range(cfg.layers if f is not None else 0):
        params[f"b{l}"][f * H:(f + 1) * H] = 1.0               # forget gate starts open: remember by default
    return {n: np.ascontiguousarray(p, dtype=cfg.dtype) for n, p in params.items()}


class Model:
    """Parameters on a backend plus the forward / backward passes over a window."""

    def __init__(self, cfg: ModelConfig, backend, params=None, seed=0):
        self.cfg = cfg
        self.be = backend
        host = params if params is not None else init_params(cfg, seed)
        self.params = {n: backend.asarray(p, cfg.dtype) for n, p in host.items()}

    # -- state -------------------------------------------------------------
    def zero_state(self, B):
        """Hidden state: list over layers of [h (B,H), c (B,H)], zeros."""
        xp, H = self.be.xp, self.cfg.hidden_size
        return [[xp.zeros((B, H), self.cfg.dtype), xp.zeros((B, H), self.cfg.dtype)]
                for _ in range(self.cfg.layers)]

    def host_params(self):
        return {n: self.be.to_numpy(p) for n, p in self.params.items()}

    def layer_params(self, l):
        """Layer l's parameters by short name, as the backend's cell_* take them."""
        return layer_params(self.params, self.cfg.cell, l)

    # -- passes ------------------------------------------------------------
    def dropout_masks(self, T, B, rng, locked=False, streams=None):
        """Inverted-dropout masks (T,b,H), one after each LSTM layer, drawn on the host.

        The masks of all B streams are drawn, then those of `streams` (a slice; default all, b = B)
        kept: the ranks of a data-parallel run use the masks one process would, and the generator's
        state stays the same on every rank.

        locked: one mask per sequence of the batch, shared by all T steps of the window
        (variational dropout, Gal & Ghahramani 2016: a unit is dropped for the whole window);
        otherwise a new mask at every step.  A unit is dropped when a 16-bit uniform integer
        falls below p * 2^16 (rounded), and the kept ones are scaled by 2^16 / (2^16 - that
        threshold), so the mask's mean is exactly 1.  16-bit draws: about half the time of
        float64 uniforms (docs/time-budget.md, 'Dropout masks')."""
        p = self.cfg.dropout
        if p <= 0 or rng is None:
            return None
        L, H = self.cfg.layers, self.cfg.hidden_size
        drop = min(int(round(p * 65536)), 65535)                              # threshold of 2^16
        u = rng.integers(0, 65536, (L, 1 if locked else T, B, H), dtype=np.uint16)   # (L,T or 1,B,H)
        if streams is not None:
            u = u[:, :, streams]                                               # (L,T or 1,b,H)
        keep = (u >= drop).astype(self.cfg.dtype)                              # 0 / 1
        keep *= 65536.0 / (65536 - drop)
        if locked:
            keep = np.repeat(keep, T, axis=1)                                  # (L,T,b,H)
        return [self.be.asarray(keep[l]) for l in range(self.cfg.layers)]

    def forward(self, tokens, state, masks=None):
        """tokens (T,B) -> logits (N,V), new state, caches for backward."""
        P, be, L, cell = self.params, self.be, self.cfg.layers, self.cfg.cell
        caches, new_state = [], []
        hs, hT, cT, cache = be.embed_cell_forward(cell, tokens, P["Emb"], self.layer_params(0),
                                                  state[0][0], state[0][1])
        caches.append(cache)
        new_state.append([hT, cT])
        x = hs * masks[0] if masks else hs                       # (T,B,H) dropout between layers
        for l in range(1, L):
            hs, hT, cT, cache = be.cell_forward(cell, x, self.layer_params(l), state[l][0], state[l][1])
            caches.append(cache)
            new_state.append([hT, cT])
            x = hs * masks[l] if masks else hs                   # (T,B,H) dropout before the next layer / output
        T, B, H = x.shape
        x2 = x.reshape(T * B, H)                                 # (N,H)
        logits = be.linear_forward(x2, P["Wy"], P["by"])         # (N,V) = x2 Wy + by
        return logits, new_state, (caches, x2)

    def loss(self, tokens, targets, state):
        """Mean loss over a window without gradients -> (loss, new_state)."""
        logits, new_state, _ = self.forward(tokens, state)
        loss, _ = self.be.softmax_xent(logits, targets.reshape(-1), need_grad=False)
        return loss, new_state

    def forward_backward(self, tokens, targets, state, masks=None):
        """One truncated-BPTT window: mean loss, gradients by parameter name, new state.

        tokens, targets (T,B) on the backend; state from the previous window (not differentiated).
        """
        P, be, L = self.params, self.be, self.cfg.layers
        T, B = tokens.shape
        logits, new_state, (caches, x2) = self.forward(tokens, state, masks)
        loss, dlogits = be.softmax_xent(logits, targets.reshape(-1))   # (N,V)
        grads = {}
        dx, grads["Wy"], grads["by"] = be.linear_backward(x2, dlogits, P["Wy"])   # (N,H), (H,V), (V,)
        dx = dx.reshape(T, B, -1)                                       # (T,B,H)
        zeros = be.xp.zeros_like(state[0][0])                           # no gradient from the next window
        for l in reversed(range(L)):
            if masks:
                dx = dx * masks[l]                                      # backprop through dropout
            if l > 0:
                dx, dp, _, _ = be.cell_backward(dx, zeros, zeros, caches[l])
            else:
                grads["Emb"], dp, _, _ = be.embed_cell_backward(dx, zeros, zeros, caches[0])
            grads.update({f"{k}{l}": g for k, g in dp.items()})      # dW{l}, db{l}, ... by the model's names
        return loss, grads, new_state
