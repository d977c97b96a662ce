"""The NumPy reference of the LSTM's variants: peephole, coupled (CIFG) and GRU, forward and BPTT by hand.

numpy_backend.py holds the plain LSTM and dispatches here for the other cells (cell_forward / cell_backward);
every fast backend is tested against these functions.  Each forward is split into its equation groups, and
each backward runs the same groups in reverse, one derivative per line.

Dimension legend (used in every shape comment below):
    T  time steps in a window        B  batch (parallel streams)
    I  input size of a layer         H  hidden size
    G  the gate blocks stacked: 4H for peephole, 3H for coupled and gru
    N  = T*B rows when time and batch are flattened

One fused weight per layer, W (H+I, G), multiplies [h_{t-1}, x_t]: rows 0..H-1 are W_h, rows H.. are W_x;
column block k*H..(k+1)*H belongs to gate k.  s = sigmoid, * = elementwise product.

peephole (Gers & Schmidhuber 2000), blocks i, f, g, o; wc (3,H) rows w_ci, w_cf, w_co (diagonal peepholes):
    i_t = s(W_i . [h_{t-1}, x_t] + w_ci * c_{t-1} + b_i)
    f_t = s(W_f . [h_{t-1}, x_t] + w_cf * c_{t-1} + b_f)
    g_t = tanh(W_g . [h_{t-1}, x_t] + b_g)
    c_t = f_t * c_{t-1} + i_t * g_t
    o_t = s(W_o . [h_{t-1}, x_t] + w_co * c_t + b_o)
    h_t = o_t * tanh(c_t)

coupled (CIFG: the input gate is 1 - f_t), blocks f, g, o:
    f_t = s(W_f . [h_{t-1}, x_t] + b_f)
    g_t = tanh(W_g . [h_{t-1}, x_t] + b_g)
    o_t = s(W_o . [h_{t-1}, x_t] + b_o)
    c_t = f_t * c_{t-1} + (1 - f_t) * g_t
    h_t = o_t * tanh(c_t)

gru (torch.nn.GRU exactly), blocks r, z, n; bx (G,) = nn.GRU's bias_ih, bh (G,) = bias_hh:
    r_t = s(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = s(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}
  The GRU has no cell state: c is carried through unchanged (cT = c0) and its gradient passes
  through as well (dc0 = dcT), so every state path stays the LSTM's pair [h, c].
"""
from __future__ import annotations

import numpy as np


# sigmoid and input_projection repeat numpy_backend's: that module imports this one, not the reverse
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


def weight_gradients(x, h0, hs, dz_h, dz_x, W):
    """The products over all N = T*B rows shared by every cell's backward.

    x (T,B,I), h0 (B,H), hs (T,B,H); dz_h (T,B,G) gradient of the h_{t-1} @ W_h term, dz_x (T,B,G) of x_t @ W_x
    -> dW (H+I,G), dx (T,B,I)
    """
    T, B, I = x.shape
    H = h0.shape[1]
    N, G = T * B, W.shape[1]
    h_prev = np.concatenate([h0[None], hs[:-1]], axis=0).reshape(N, H)   # (N,H) h_{t-1}
    dzx = dz_x.reshape(N, G)                                               # (N,G)
    dW = np.empty_like(W)
    dW[:H] = h_prev.T @ dz_h.reshape(N, G)       # dW_h (H,G): z = h_{t-1} @ W_h + ...
    dW[H:] = x.reshape(N, I).T @ dzx             # dW_x (I,G): z = x_t @ W_x + ...
    dx = (dzx @ W[H:].T).reshape(T, B, I)        # (T,B,I)
    return dW, dx


# ----------------------------------------------------------------------------
# peephole
# ----------------------------------------------------------------------------

def peephole_gates(z, wc, c_prev):
    """i, f with peepholes on c_{t-1}, and g.  z (B,G) pre-activations without peepholes, wc (3,H), c_prev (B,H)
    -> i, f, g (B,H) each"""
    H = c_prev.shape[-1]
    i = sigmoid(z[:, 0:H] + wc[0] * c_prev)               # (B,H) input gate sees c_{t-1}
    f = sigmoid(z[:, H:2 * H] + wc[1] * c_prev)           # (B,H) forget gate sees c_{t-1}
    g = np.tanh(z[:, 2 * H:3 * H])                        # (B,H) candidate
    return i, f, g


def peephole_cell(i, f, g, c_prev):
    """c_t = f_t * c_{t-1} + i_t * g_t -> c (B,H)"""
    return f * c_prev + i * g


def peephole_output(zo, wc, c):
    """o_t with its peephole on c_t, then h_t = o_t * tanh(c_t).  zo (B,H), c (B,H) -> o, h (B,H)"""
    o = sigmoid(zo + wc[2] * c)                           # (B,H) output gate sees the new c_t
    h = o * np.tanh(c)                                    # (B,H)
    return o, h


def peephole_forward(x, W, b, wc, h0, c0):
    """One peephole layer over a window.

    x (T,B,I), W (H+I,4H), b (4H,), wc (3,H), h0, c0 (B,H) -> hs (T,B,H), hT, cT (B,H), cache
    """
    T, B, _ = x.shape
    H = h0.shape[1]
    xproj = input_projection(x, W[H:], b)    # (T,B,4H)
    hs = np.empty((T, B, H), x.dtype)        # h_t for every step
    cs = np.empty((T, B, H), x.dtype)        # c_t for every step
    acts = np.empty((T, B, 4 * H), x.dtype)  # activated gates i,f,g,o per step
    h, c = h0, c0
    for t in range(T):
        z = xproj[t] + h @ W[:H]             # (B,4H) pre-activations before the peepholes
        i, f, g = peephole_gates(z, wc, c)
        c = peephole_cell(i, f, g, c)
        o, h = peephole_output(z[:, 3 * H:], wc, c)
        acts[t] = np.concatenate([i, f, g, o], axis=1)
        hs[t], cs[t] = h, c
    return hs, h, c, (x, W, wc, h0, c0, hs, cs, acts)


def peephole_output_backward(dh, dc_next, o, c, wc):
    """Reverse of peephole_output.  dh (B,H) dL/dh_t, dc_next (B,H) dL/dc_t from step t+1
    -> dzo (B,H) gradient of o's pre-activation, dc (B,H) dL/dc_t over all paths, dwco (H,)"""
    tc = np.tanh(c)
    dzo = dh * tc * o * (1.0 - o)                         # h = o*tanh(c), o = s(zo + w_co*c): s' = s(1-s)
    dc = dc_next + dh * o * (1.0 - tc * tc) + dzo * wc[2]  # c reaches h through tanh and through o's peephole
    dwco = (dzo * c).sum(axis=0)                          # d(w_co * c)/dw_co = c, summed over the batch
    return dzo, dc, dwco


def peephole_cell_backward(dc, i, f, g, c_prev):
    """Reverse of peephole_cell: c = f*c_prev + i*g -> di, df, dg, dc_prev (B,H)"""
    return dc * g, dc * c_prev, dc * i, dc * f


def peephole_gates_backward(di, df, dg, i, f, g, wc, c_prev):
    """Reverse of peephole_gates -> dzi, dzf, dzg (B,H), dc_prev (B,H) through the peepholes, dwci, dwcf (H,)"""
    dzi = di * i * (1.0 - i)                              # i = s(zi + w_ci*c_prev)
    dzf = df * f * (1.0 - f)                              # f = s(zf + w_cf*c_prev)
    dzg = dg * (1.0 - g * g)                              # g = tanh(zg)
    dc_prev = dzi * wc[0] + dzf * wc[1]                   # c_{t-1} enters i and f through the peepholes
    return dzi, dzf, dzg, dc_prev, (dzi * c_prev).sum(axis=0), (dzf * c_prev).sum(axis=0)


def peephole_backward(dhs, dhT, dcT, cache):
    """BPTT through one peephole layer, mirroring peephole_forward in reverse.

    dhs (T,B,H); dhT, dcT (B,H) -> dx (T,B,I), dW (H+I,4H), db (4H,), dwc (3,H), dh0 (B,H), dc0 (B,H)
    """
    x, W, wc, h0, c0, hs, cs, acts = cache
    T = x.shape[0]
    H = h0.shape[1]
    dzs = np.empty_like(acts)                # (T,B,4H) pre-activation gradients
    dwc = np.zeros_like(wc)                  # (3,H)
    dh_next, dc_next = dhT, dcT
    for t in reversed(range(T)):
        c_prev = cs[t - 1] if t > 0 else c0
        i, f, g, o = (acts[t][:, k * H:(k + 1) * H] for k in range(4))
        dzo, dc, dwco = peephole_output_backward(dhs[t] + dh_next, dc_next, o, cs[t], wc)
        di, df, dg, dc_prev = peephole_cell_backward(dc, i, f, g, c_prev)
        dzi, dzf, dzg, dc_peep, dwci, dwcf = peephole_gates_backward(di, df, dg, i, f, g, wc, c_prev)
        dwc[0] += dwci                       # the peepholes are shared by every step: sum over t
        dwc[1] += dwcf
        dwc[2] += dwco
        dc_next = dc_prev + dc_peep          # c_{t-1} feeds c_t directly and the peepholes of i, f
        dzs[t] = np.concatenate([dzi, dzf, dzg, dzo], axis=1)
        dh_next = dzs[t] @ W[:H].T           # z = h_{t-1} @ W_h + ...  -> dL/dh_{t-1}
    dW, dx = weight_gradients(x, h0, hs, dzs, dzs, W)
    return dx, dW, dzs.sum(axis=(0, 1)), dwc, dh_next, dc_next


# ----------------------------------------------------------------------------
# coupled (CIFG)
# ----------------------------------------------------------------------------

def coupled_gates(z):
    """Pre-activations z (B,3H) -> activated gates (B,3H): f = s, g = tanh, o = s."""
    H = z.shape[-1] // 3
    a = np.empty_like(z)
    a[:, 0:H] = sigmoid(z[:, 0:H])                   # f_t
    a[:, H:2 * H] = np.tanh(z[:, H:2 * H])           # g_t
    a[:, 2 * H:] = sigmoid(z[:, 2 * H:])             # o_t
    return a


def coupled_cell(a, c_prev):
    """c_t = f_t * c_{t-1} + (1 - f_t) * g_t;  h_t = o_t * tanh(c_t).  a (B,3H), c_prev (B,H) -> h, c (B,H)"""
    H = c_prev.shape[-1]
    f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:]
    c = f * c_prev + (1.0 - f) * g                   # (B,H) what is forgotten is what gets written
    h = o * np.tanh(c)                               # (B,H)
    return h, c


def coupled_forward(x, W, b, h0, c0):
    """One coupled layer over a window.  x (T,B,I), W (H+I,3H), b (3H,), h0, c0 (B,H) -> hs, hT, cT, cache"""
    T, B, _ = x.shape
    H = h0.shape[1]
    xproj = input_projection(x, W[H:], b)    # (T,B,3H)
    hs = np.empty((T, B, H), x.dtype)
    cs = np.empty((T, B, H), x.dtype)
    acts = np.empty((T, B, 3 * H), x.dtype)  # activated gates f,g,o per step
    h, c = h0, c0
    for t in range(T):
        z = xproj[t] + h @ W[:H]             # (B,3H)
        acts[t] = coupled_gates(z)
        h, c = coupled_cell(acts[t], c)
        hs[t], cs[t] = h, c
    return hs, h, c, (x, W, h0, c0, hs, cs, acts)


def coupled_cell_backward(dh, dc_next, a, c, c_prev):
    """Reverse of coupled_cell -> df, dg, do (B,H) of the activated gates, dc_prev (B,H)"""
    H = c.shape[-1]
    f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:]
    tc = np.tanh(c)
    do = dh * tc                                     # h = o * tanh(c)
    dc = dc_next + dh * o * (1.0 - tc * tc)          # through tanh: 1 - tanh(c)^2
    df = dc * (c_prev - g)                           # c = f*c_prev + (1-f)*g: dc/df = c_prev - g
    dg = dc * (1.0 - f)
    dc_prev = dc * f
    return df, dg, do, dc_prev


def coupled_gates_backward(df, dg, do, a):
    """Reverse of coupled_gates -> dz (B,3H)"""
    H = df.shape[-1]
    f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:]
    dz = np.empty_like(a)
    dz[:, 0:H] = df * f * (1.0 - f)                  # sigmoid: s(1-s)
    dz[:, H:2 * H] = dg * (1.0 - g * g)              # tanh: 1 - g^2
    dz[:, 2 * H:] = do * o * (1.0 - o)
    return dz


def coupled_backward(dhs, dhT, dcT, cache):
    """BPTT through one coupled layer.  -> dx (T,B,I), dW (H+I,3H), db (3H,), dh0, dc0 (B,H)"""
    x, W, h0, c0, hs, cs, acts = cache
    T = x.shape[0]
    H = h0.shape[1]
    dzs = np.empty_like(acts)                # (T,B,3H)
    dh_next, dc_next = dhT, dcT
    for t in reversed(range(T)):
        c_prev = cs[t - 1] if t > 0 else c0
        df, dg, do, dc_next = coupled_cell_backward(dhs[t] + dh_next, dc_next, acts[t], cs[t], c_prev)
        dzs[t] = coupled_gates_backward(df, dg, do, acts[t])
        dh_next = dzs[t] @ W[:H].T           # -> dL/dh_{t-1}
    dW, dx = weight_gradients(x, h0, hs, dzs, dzs, W)
    return dx, dW, dzs.sum(axis=(0, 1)), dh_next, dc_next


# ----------------------------------------------------------------------------
# gru (torch.nn.GRU)
# ----------------------------------------------------------------------------

def gru_gates(xp, hp):
    """r, z and n from the input part xp = W_x x_t + bx and the recurrent part hp = W_h h_{t-1} + bh (B,3H)
    -> a (B,3H) activated r, z, n"""
    H = xp.shape[-1] // 3
    a = np.empty_like(xp)
    a[:, 0:H] = sigmoid(xp[:, 0:H] + hp[:, 0:H])                       # r_t
    a[:, H:2 * H] = sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])           # z_t
    a[:, 2 * H:] = np.tanh(xp[:, 2 * H:] + a[:, 0:H] * hp[:, 2 * H:])  # n_t: r gates W_hn h + b_hn
    return a


def gru_update(a, h_prev):
    """h_t = (1 - z_t) * n_t + z_t * h_{t-1}.  a (B,3H), h_prev (B,H) -> h (B,H)"""
    H = h_prev.shape[-1]
    z, n = a[:, H:2 * H], a[:, 2 * H:]
    return (1.0 - z) * n + z * h_prev


def gru_forward(x, W, bx, bh, h0, c0):
    """One GRU layer over a window.  x (T,B,I), W (H+I,3H), bx, bh (3H,), h0, c0 (B,H) -> hs, hT, cT = c0, cache"""
    T, B, _ = x.shape
    H = h0.shape[1]
    xproj = input_projection(x, W[H:], bx)   # (T,B,3H) the input half, b_i* included
    hs = np.empty((T, B, H), x.dtype)
    acts = np.empty((T, B, 3 * H), x.dtype)  # activated r, z, n per step
    hn = np.empty((T, B, H), x.dtype)        # W_hn h_{t-1} + b_hn, which r multiplies
    h = h0
    for t in range(T):
        hp = h @ W[:H] + bh                  # (B,3H) the recurrent half
        acts[t] = gru_gates(xproj[t], hp)
        hn[t] = hp[:, 2 * H:]
        h = gru_update(acts[t], h)
        hs[t] = h
    return hs, h, c0, (x, W, h0, hs, acts, hn)


def gru_update_backward(dh, a, h_prev):
    """Reverse of gru_update -> dz, dn (B,H) of the activated gates, dh_prev (B,H) along the direct path"""
    H = h_prev.shape[-1]
    z, n = a[:, H:2 * H], a[:, 2 * H:]
    dz = dh * (h_prev - n)                           # h = (1-z)*n + z*h_prev: dh/dz = h_prev - n
    dn = dh * (1.0 - z)
    dh_prev = dh * z
    return dz, dn, dh_prev


def gru_gates_backward(dz, dn, a, hn):
    """Reverse of gru_gates -> dxp (B,3H) gradient of W_x x + bx, dhp (B,3H) gradient of W_h h + bh"""
    H = dz.shape[-1]
    r, z, n = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:]
    dxp = np.empty_like(a)
    dhp = np.empty_like(a)
    dxp[:, 2 * H:] = dn * (1.0 - n * n)              # n = tanh(xn + r*hn): tanh' = 1 - n^2
    dhp[:, 2 * H:] = dxp[:, 2 * H:] * r              # d(r*hn)/dhn = r
    dr = dxp[:, 2 * H:] * hn                         # d(r*hn)/dr = hn
    dxp[:, 0:H] = dr * r * (1.0 - r)                 # r = s(xr + hr): s' = s(1-s), same for both halves
    dxp[:, H:2 * H] = dz * z * (1.0 - z)             # z = s(xz + hz)
    dhp[:, 0:2 * H] = dxp[:, 0:2 * H]
    return dxp, dhp


def gru_backward(dhs, dhT, dcT, cache):
    """BPTT through one GRU layer.  -> dx (T,B,I), dW (H+I,3H), dbx, dbh (3H,), dh0 (B,H), dc0 = dcT (B,H)"""
    x, W, h0, hs, acts, hn = cache
    T = x.shape[0]
    H = h0.shape[1]
    dxps = np.empty_like(acts)               # (T,B,3H) gradients of the input half
    dhps = np.empty_like(acts)               # (T,B,3H) gradients of the recurrent half
    dh_next = dhT
    for t in reversed(range(T)):
        h_prev = hs[t - 1] if t > 0 else h0
        dz, dn, dh_direct = gru_update_backward(dhs[t] + dh_next, acts[t], h_prev)
        dxps[t], dhps[t] = gru_gates_backward(dz, dn, acts[t], hn[t])
        dh_next = dh_direct + dhps[t] @ W[:H].T   # h_{t-1} reaches h_t directly and through hp = h W_h + bh
    dW, dx = weight_gradients(x, h0, hs, dhps, dxps, W)
    return dx, dW, dxps.sum(axis=(0, 1)), dhps.sum(axis=(0, 1)), dh_next, dcT


# ----------------------------------------------------------------------------
# dispatch by cell: p holds the layer's parameters by short name
# ----------------------------------------------------------------------------

def forward(cell, x, p, h0, c0):
    """-> hs (T,B,H), hT, cT (B,H), cache (cell, cell's cache)"""
    if cell == "peephole":
        out = peephole_forward(x, p["W"], p["b"], p["wc"], h0, c0)
    elif cell == "coupled":
        out = coupled_forward(x, p["W"], p["b"], h0, c0)
    elif cell == "gru":
        out = gru_forward(x, p["W"], p["bx"], p["bh"], h0, c0)
    else:
        raise ValueError(f"unknown cell {cell!r}")
    hs, hT, cT, cache = out
    return hs, hT, cT, (cell, cache)


def backward(dhs, dhT, dcT, cache):
    """-> dx (T,B,I), dp (dict by short name), dh0, dc0 (B,H)"""
    cell, c = cache
    if cell == "peephole":
        dx, dW, db, dwc, dh0, dc0 = peephole_backward(dhs, dhT, dcT, c)
        return dx, {"W": dW, "b": db, "wc": dwc}, dh0, dc0
    if cell == "coupled":
        dx, dW, db, dh0, dc0 = coupled_backward(dhs, dhT, dcT, c)
        return dx, {"W": dW, "b": db}, dh0, dc0
    dx, dW, dbx, dbh, dh0, dc0 = gru_backward(dhs, dhT, dcT, c)
    return dx, {"W": dW, "bx": dbx, "bh": dbh}, dh0, dc0
