"""The character language model: embedding -> L stacked LSTM layers -> linear -> softmax.

It owns the parameters and calls the chosen backend's kernels; it never asks which
backend it is running on.

Dimension legend: T time, B batch (b of its streams on this rank), E embedding, H hidden, V vocab, G = 4H, N = T*B.
Parameters (names follow the math):
    Emb (V,E)          embedding table
    W{l} (H+I_l, G)    fused LSTM weight of layer l over [h_{t-1}, x_t]; I_0 = E, I_l = H
    b{l} (G,)          LSTM bias of layer l (forget-gate slice initialised to 1)
    Wy (H,V), by (V,)  output projection
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class ModelConfig:
    vocab_size: int
    embed_size: int = 64
    hidden_size: int = 128
    layers: int = 2
    dropout: float = 0.0
    dtype: str = "float32"

    def to_dict(self):
        return asdict(self)

    def param_shapes(self):
        V, E, H, L = self.vocab_size, self.embed_size, self.hidden_size, self.layers
        shapes = {"Emb": (V, E)}
        for l in range(L):
            shapes[f"W{l}"] = (H + (E if l == 0 else H), 4 * H)
            shapes[f"b{l}"] = (4 * H,)
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
            params[name] = rng.uniform(-k, k, shape)           # nn.LSTM / nn.Linear: U(-1/sqrt(H), 1/sqrt(H))
    for l in range(cfg.layers):
        params[f"b{l}"][H:2 * H] = 1.0                         # forget gate starts open: remember by default
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
        P, be, L = self.params, self.be, self.cfg.layers
        caches, new_state = [], []
        hs, hT, cT, cache = be.embed_lstm_forward(tokens, P["Emb"], P["W0"], P["b0"], state[0][0], state[0][1])
        caches.append(cache)
        new_state.append([hT, cT])
        x = hs * masks[0] if masks else hs                       # (T,B,H) dropout between layers
        for l in range(1, L):
            hs, hT, cT, cache = be.lstm_forward(x, P[f"W{l}"], P[f"b{l}"], state[l][0], state[l][1])
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
                dx, grads[f"W{l}"], grads[f"b{l}"], _, _ = be.lstm_backward(dx, zeros, zeros, caches[l])
            else:
                grads["Emb"], grads["W0"], grads["b0"], _, _ = be.embed_lstm_backward(dx, zeros, zeros, caches[0])
        return loss, grads, new_state
