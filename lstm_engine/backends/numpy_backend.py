"""The NumPy reference backend: the LSTM equations and their backward pass, by hand.

Every fast backend is tested against the functions in this module, and
`lstm-engine explain` prints the numbers these very functions compute.

Dimension legend (used in every shape comment below):
    T  time steps in a window        B  batch (parallel streams)
    I  input size of a layer         H  hidden size
    G  = 4H, the four gates stacked  V  vocabulary size
    N  = T*B rows when time and batch are flattened
    E  embedding size (the input size I of layer 0)

Gate order is PyTorch's: i (input), f (forget), g (cell candidate), o (output).
One fused weight per layer, W (H+I, G), multiplies the concatenation
[h_{t-1}, x_t]:  rows 0..H-1 are W_h, rows H..H+I-1 are W_x.  Column block k*H..(k+1)*H
belongs to gate k, so W_f = W[:, H:2H].

    i_t = sigmoid(W_i . [h_{t-1}, x_t] + b_i)
    f_t = sigmoid(W_f . [h_{t-1}, x_t] + b_f)
    g_t = tanh   (W_g . [h_{t-1}, x_t] + b_g)
    o_t = sigmoid(W_o . [h_{t-1}, x_t] + b_o)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

The variants (peephole, coupled, gru) live in numpy_cells.py; cell_forward / cell_backward below
choose by cell name, the plain LSTM going to lstm_forward / lstm_backward.
"""
from __future__ import annotations

import numpy as np

from ..core.model import layer_params
from . import numpy_cells

NAME = "numpy"
xp = np


def is_available():
    """(True, '') : the reference runs wherever NumPy does."""
    return True, ""


def asarray(a, dtype=None):
    """Host array -> this backend's array (a contiguous copy when dtype changes)."""
    return np.ascontiguousarray(a, dtype=dtype)


def to_numpy(a):
    """This backend's array -> host NumPy array."""
    return np.asarray(a)


def synchronize():
    """Wait for queued work (nothing to wait for on the CPU)."""


# ----------------------------------------------------------------------------
# The gate equations, one function per equation group
# ----------------------------------------------------------------------------

def sigmoid(z):
    # split by sign so that exp never overflows
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def input_projection(x, Wx, b):
    """x (T,B,I) @ W_x (I,G) + b (G,) for all T steps in one matrix product -> (T,B,G)."""
    T, B, I = x.shape
    return (x.reshape(T * B, I) @ Wx + b).reshape(T, B, -1)


def gate_activations(z):
    """Pre-activations z (B,G) -> activated gates (B,G): sigmoid on i,f,o; tanh on g."""
    H = z.shape[-1] // 4
    a = np.empty_like(z)
    a[:, 0:H] = sigmoid(z[:, 0:H])              # i_t
    a[:, H:2 * H] = sigmoid(z[:, H:2 * H])      # f_t
    a[:, 2 * H:3 * H] = np.tanh(z[:, 2 * H:3 * H])  # g_t
    a[:, 3 * H:] = sigmoid(z[:, 3 * H:])        # o_t
    return a


def cell_update(a, c_prev):
    """c_t = f_t * c_{t-1} + i_t * g_t ;  h_t = o_t * tanh(c_t).  a (B,G), c_prev (B,H)."""
    H = c_prev.shape[-1]
    i, f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    c = f * c_prev + i * g     # (B,H)
    h = o * np.tanh(c)         # (B,H)
    return h, c


def lstm_forward(x, W, b, h0, c0):
    """One layer over a window.

    x (T,B,I), W (H+I,G), b (G,), h0 (B,H), c0 (B,H)
    -> hs (T,B,H), hT (B,H), cT (B,H), cache for lstm_backward
    """
    T, B, _ = x.shape
    H = h0.shape[1]
    Wh, Wx = W[:H], W[H:]                 # (H,G), (I,G)
    xproj = input_projection(x, Wx, b)    # (T,B,G): the only big product of the forward
    hs = np.empty((T, B, H), x.dtype)     # h_t for every step
    cs = np.empty((T, B, H), x.dtype)     # c_t for every step
    acts = np.empty((T, B, 4 * H), x.dtype)  # activated gates i,f,g,o per step
    h, c = h0, c0
    for t in range(T):
        z = xproj[t] + h @ Wh             # (B,G) gate pre-activations
        acts[t] = gate_activations(z)
        h, c = cell_update(acts[t], c)
        hs[t], cs[t] = h, c
    cache = (x, W, h0, c0, hs, cs, acts)
    return hs, h, c, cache


def cell_update_backward(dh, dc_next, a, c, c_prev):
    """Backprop one step through h_t = o*tanh(c_t) and c_t = f*c_{t-1} + i*g (the reverse of cell_update).

    dh (B,H): dL/dh_t from above and from step t+1;  dc_next (B,H): dL/dc_t from step t+1
    a (B,G) activated gates, c (B,H) = c_t, c_prev (B,H) = c_{t-1}
    -> do, dc, di, df, dg, dc_prev, each (B,H): dL/d of o_t, c_t (all paths), i_t, f_t, g_t, c_{t-1}
    """
    H = c.shape[-1]
    i, f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    tc = np.tanh(c)
    do = dh * tc                               # h = o * tanh(c)
    dc = dc_next + dh * o * (1.0 - tc * tc)    # backprop through tanh: 1 - tanh(c)^2
    di = dc * g                                # c = f*c_prev + i*g
    dg = dc * i
    df = dc * c_prev
    dc_prev = dc * f
    return do, dc, di, df, dg, dc_prev


def gate_activations_backward(di, df, dg, do, a):
    """Backprop through the gate nonlinearities (the reverse of gate_activations).

    di, df, dg, do (B,H) gradients of the activated gates; a (B,G) activated gates
    -> dz (B,G) gradient of the gate pre-activations
    """
    H = di.shape[-1]
    i, f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    dz = np.empty_like(a)                      # (B,G)
    dz[:, 0:H] = di * i * (1.0 - i)            # backprop through sigmoid: s(1-s)
    dz[:, H:2 * H] = df * f * (1.0 - f)
    dz[:, 2 * H:3 * H] = dg * (1.0 - g * g)    # backprop through tanh: 1 - g^2
    dz[:, 3 * H:] = do * o * (1.0 - o)
    return dz


def lstm_step_backward(dh, dc_next, a, c, c_prev):
    """Backprop one step through h_t = o*tanh(c_t), c_t = f*c_{t-1} + i*g, and the gates.

    dh (B,H): dL/dh_t from above and from step t+1;  dc_next (B,H): dL/dc_t from step t+1
    a (B,G) activated gates, c (B,H) = c_t, c_prev (B,H) = c_{t-1}
    -> dz (B,G) gradient of the gate pre-activations, dc_prev (B,H) = dL/dc_{t-1}
    """
    do, _, di, df, dg, dc_prev = cell_update_backward(dh, dc_next, a, c, c_prev)
    return gate_activations_backward(di, df, dg, do, a), dc_prev


def lstm_backward(dhs, dhT, dcT, cache):
    """BPTT through one layer, mirroring lstm_forward in reverse.

    dhs (T,B,H) dL/dh_t from the layer above; dhT, dcT (B,H) from the next window (or zeros)
    -> dx (T,B,I), dW (H+I,G), db (G,), dh0 (B,H), dc0 (B,H)
    """
    x, W, h0, c0, hs, cs, acts = cache
    T, B, I = x.shape
    H = h0.shape[1]
    Wh, Wx = W[:H], W[H:]
    dzs = np.empty_like(acts)                # (T,B,G) gate gradients, kept for the weight products
    dh_next, dc_next = dhT, dcT
    for t in reversed(range(T)):
        c_prev = cs[t - 1] if t > 0 else c0
        dz, dc_next = lstm_step_backward(dhs[t] + dh_next, dc_next, acts[t], cs[t], c_prev)
        dzs[t] = dz
        dh_next = dz @ Wh.T                  # z = h_{t-1} @ W_h + ...  -> dL/dh_{t-1}
    # weight gradients: one product each, over all T*B rows (the cuDNN layout)
    N = T * B
    h_prev = np.concatenate([h0[None], hs[:-1]], axis=0).reshape(N, H)  # (N,H) h_{t-1}
    dz2 = dzs.reshape(N, 4 * H)                                           # (N,G)
    dW = np.empty_like(W)
    dW[:H] = h_prev.T @ dz2                  # dW_h (H,G)
    dW[H:] = x.reshape(N, I).T @ dz2         # dW_x (I,G)
    db = dz2.sum(axis=0)                     # (G,)
    dx = (dz2 @ Wx.T).reshape(T, B, I)       # (T,B,I)
    return dx, dW, db, dh_next, dc_next


def embed_lstm_forward(tokens, Emb, W, b, h0, c0):
    """Layer 0: embedding gather then lstm_forward.  tokens (T,B) int, Emb (V,E)."""
    x = Emb[tokens]                          # (T,B,E)
    hs, hT, cT, cache = lstm_forward(x, W, b, h0, c0)
    return hs, hT, cT, (tokens, Emb.shape, cache)


def embed_lstm_backward(dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dW, db, dh0, dc0.  The embedding gradient is a scatter-add over tokens."""
    tokens, emb_shape, lcache = cache
    dx, dW, db, dh0, dc0 = lstm_backward(dhs, dhT, dcT, lcache)
    dEmb = np.zeros(emb_shape, dx.dtype)     # (V,E)
    np.add.at(dEmb, tokens.reshape(-1), dx.reshape(-1, emb_shape[1]))
    return dEmb, dW, db, dh0, dc0


# ----------------------------------------------------------------------------
# Any cell: p holds the layer's parameters by short name (lstm: W, b; peephole: W, b, wc;
# coupled: W, b; gru: W, bx, bh); the cache carries the cell so the backward knows which to run
# ----------------------------------------------------------------------------

def cell_forward(cell, x, p, h0, c0):
    """One layer of `cell` over a window.  x (T,B,I), h0, c0 (B,H) -> hs (T,B,H), hT, cT (B,H), cache"""
    if cell == "lstm":
        hs, hT, cT, cache = lstm_forward(x, p["W"], p["b"], h0, c0)
        return hs, hT, cT, ("lstm", cache)
    return numpy_cells.forward(cell, x, p, h0, c0)


def cell_backward(dhs, dhT, dcT, cache):
    """BPTT through cell_forward's layer -> dx (T,B,I), dp (dict by short name), dh0, dc0 (B,H)"""
    if cache[0] == "lstm":
        dx, dW, db, dh0, dc0 = lstm_backward(dhs, dhT, dcT, cache[1])
        return dx, {"W": dW, "b": db}, dh0, dc0
    return numpy_cells.backward(dhs, dhT, dcT, cache)


def embed_cell_forward(cell, tokens, Emb, p, h0, c0):
    """Layer 0: embedding gather then cell_forward.  tokens (T,B) int, Emb (V,E)."""
    if cell == "lstm":
        hs, hT, cT, cache = embed_lstm_forward(tokens, Emb, p["W"], p["b"], h0, c0)
        return hs, hT, cT, ("lstm", cache)
    hs, hT, cT, cache = cell_forward(cell, Emb[tokens], p, h0, c0)   # Emb[tokens] (T,B,E)
    return hs, hT, cT, ("embed", (tokens, Emb.shape, cache))


def embed_cell_backward(dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dp, dh0, dc0.  The embedding gradient is a scatter-add over tokens."""
    if cache[0] == "lstm":
        dEmb, dW, db, dh0, dc0 = embed_lstm_backward(dhs, dhT, dcT, cache[1])
        return dEmb, {"W": dW, "b": db}, dh0, dc0
    tokens, emb_shape, lcache = cache[1]
    dx, dp, dh0, dc0 = cell_backward(dhs, dhT, dcT, lcache)
    dEmb = np.zeros(emb_shape, dx.dtype)     # (V,E)
    np.add.at(dEmb, tokens.reshape(-1), dx.reshape(-1, emb_shape[1]))
    return dEmb, dp, dh0, dc0


# ----------------------------------------------------------------------------
# Output layer: linear map to the logits
# ----------------------------------------------------------------------------

def linear_forward(x, W, b):
    """x (N,H) @ W (H,V) + b (V,) -> logits (N,V)."""
    return x @ W + b


def linear_backward(x, dy, W):
    """Gradients of linear_forward for dL/dy (N,V) -> dx (N,H) = dy W^T, dW (H,V) = x^T dy, db (V,)."""
    return dy @ W.T, x.T @ dy, dy.sum(axis=0)


# ----------------------------------------------------------------------------
# Output: softmax cross-entropy
# ----------------------------------------------------------------------------

def log_softmax(logits):
    """Numerically stable log-softmax over the last axis (log-sum-exp)."""
    m = logits.max(axis=-1, keepdims=True)
    shifted = logits - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_xent(logits, targets, need_grad=True):
    """Mean cross-entropy of logits (N,V) against targets (N,) int.

    -> loss (Python float, nats per row), dlogits (N,V) = (softmax - onehot) / N, or None
    """
    N = logits.shape[0]
    logp = log_softmax(logits)                       # (N,V)
    loss = -float(logp[np.arange(N), targets].sum()) / N
    if not need_grad:
        return loss, None
    dlogits = np.exp(logp)                           # softmax (N,V)
    dlogits[np.arange(N), targets] -= 1.0            # d(-log p_y)/dz = p - onehot
    dlogits /= N
    return loss, dlogits


# ----------------------------------------------------------------------------
# Optimiser: global-norm clipping and Adam
# ----------------------------------------------------------------------------

def global_norm(grads):
    """sqrt(sum of squares) over every gradient array in the dict -> float."""
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))


def adam_update(params, grads, m, v, step, lr, beta1, beta2, eps, grad_scale=1.0):
    """Adam with bias correction, in place, over every array in the dicts.

    grad_scale multiplies each gradient first (global-norm clipping passes its factor here).
    step is the 1-based step count after this update.
    """
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    for name, p in params.items():
        g = grads[name] * grad_scale
        m[name] *= beta1
        m[name] += (1.0 - beta1) * g                  # first moment
        v[name] *= beta2
        v[name] += (1.0 - beta2) * g * g              # second moment
        mhat = m[name] / bc1
        vhat = v[name] / bc2
        p -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(p.dtype, copy=False)


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------

def filter_probs(logits, temperature, top_k, top_p):
    """logits (V,) -> probabilities (V,) float64 after temperature, top-k, then top-p.

    top_k = 0 and top_p = 1.0 switch those filters off.  Ties at the cut are broken
    by index (a stable sort), so the same logits always give the same set.
    """
    z = logits.astype(np.float64) / temperature      # (V,)
    order = np.argsort(-z, kind="stable")             # indices, most likely first
    keep = min(top_k, len(z)) if top_k else len(z)    # top-k: the k largest logits
    kept = order[:keep]
    p = np.exp(z[kept] - z[kept[0]])
    p /= p.sum()                                      # softmax over the kept set
    if top_p < 1.0:                                   # top-p: smallest prefix with mass >= p
        keep = min(keep, int(np.searchsorted(np.cumsum(p), top_p)) + 1)
    out = np.zeros(len(z), np.float64)
    out[kept[:keep]] = p[:keep] / p[:keep].sum()
    return out


def sample_index(probs, u):
    """Inverse-CDF draw: the first index whose cumulative probability exceeds u in [0,1)."""
    csum = np.cumsum(probs)
    return int(min(np.searchsorted(csum, u * csum[-1], side="right"), len(probs) - 1))


def step_logits(weights, state, token, cell="lstm"):
    """Run one token through every layer; updates state in place -> logits (V,).

    weights: dict with Emb, the layers' parameters (W{l}, b{l}, ...), Wy, by;
    state: list of [h (1,H), c (1,H)] per layer.
    """
    tok = np.array([[token]])                        # (T=1,B=1)
    L = len(state)
    hs, state[0][0], state[0][1], _ = embed_cell_forward(
        cell, tok, weights["Emb"], layer_params(weights, cell, 0), state[0][0], state[0][1])
    for l in range(1, L):
        hs, state[l][0], state[l][1], _ = cell_forward(
            cell, hs, layer_params(weights, cell, l), state[l][0], state[l][1])
    return hs[0, 0] @ weights["Wy"] + weights["by"]  # (V,)


def generate(weights, state, token, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None, cache=None,
             cell="lstm"):
    """Sample n tokens after `token`, one at a time; state is carried and updated.

    rng: a numpy.random.Generator (one uniform draw per sampled token).
    cache: a dict the caller keeps while the weights stay unchanged, for derived tables; the
    reference keeps none (it computes every product as the equations write it).
    -> ids (n,) int64
    """
    out = np.empty(n, np.int64)
    for k in range(n):
        logits = step_logits(weights, state, token, cell)
        if greedy:
            token = int(np.argmax(logits))
        else:
            token = sample_index(filter_probs(logits, temperature, top_k, top_p), rng.random())
        out[k] = token
    return out
