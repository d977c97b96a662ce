"""The LSTM time loops with the recurrent products in bfloat16 (LSTM_ENGINE_TUNE=bf16).

As lstm_layer's forward_steps / backward_steps, split by batch rows, but each step's
h_{t-1} W_h (forward) and dz_t W_h^T (backward) go through gemm_bf16's register block: W_h is
packed once per call into bfloat16 panels, each step's rows of h_{t-1} or dz_t as they come.
The gates, the bias and every state stay float32.  Import only where gemm_bf16.available().

Dimension legend:
    T time steps   B batch   H hidden size   G = 4H gates   V vocabulary (layer 0's table)
    R rows of a thread (r1 - r0)   kp pairs of the product's k (H forward, G backward)
    MR x NR gemm_bf16's register block
"""
from __future__ import annotations

import numba
import numpy as np

from .gates import gates_backward, gates_forward
from .gemm_bf16 import MR, NR, _block, _pack_rows, pack_row, store_block
from .jit import JIT, PAR
from .lstm_layer import accumulate_step, gather_step


@numba.njit(inline="always", **JIT)
def _pack_step(X, r0, r1, out):
    """Rows r0..r1-1 of X (B,k) into out (ceil(R/MR), kp, MR) bfloat16 pairs, zero past them."""
    for blk in range(out.shape[0]):
        for r in range(MR):
            i = r0 + blk * MR + r
            pack_row(X[i] if i < r1 else X[0, :0], out, blk, r)


@numba.njit(inline="always", **JIT)
def _step_product(Xp, Wp, C, r0, r1, add, acc):
    """C[r0:r1] (+)= (packed rows) Xp (.., kp, MR) @ (packed panels) Wp (nb, kp, NR); acc (MR,NR)
    the block's scratch.  Panels outer: a panel serves every row block from L1."""
    rows = C[r0:r1]                                                        # (R, n) view
    beta = 1.0 if add else 0.0
    one = np.float32(1.0)
    for jb in range(Wp.shape[0]):
        for ib in range(Xp.shape[0]):
            _block(Xp, Wp, acc, ib, jb)
            store_block(acc, rows, ib * MR, jb * NR, one, one, beta)


@numba.njit(**JIT)
def forward_steps(Whp, b, h0, c0, hs, cs, acts, r0, r1, tokens, table):
    """lstm_layer.forward_steps for rows r0..r1-1 with Whp (nb, kp, NR) the packed W_h (H,G):
    acts (T,B,G) holds x_t W_x (or gets table[tokens[t]] at step t) -> activated gates, hs, cs."""
    hp = np.empty(((r1 - r0 + MR - 1) // MR, Whp.shape[1], MR), np.uint32)  # (.., kp, MR) rows of h_{t-1}
    acc = np.empty((MR, NR), np.float32)                                    # (MR,NR) one block's sums
    for t in range(acts.shape[0]):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gather_step(tokens, table, acts, t, r0, r1)                         # x_t W_x of layer 0
        _pack_step(h_prev, r0, r1, hp)
        _step_product(hp, Whp, acts[t], r0, r1, True, acc)                  # += h_{t-1} @ W_h
        gates_forward(acts[t], b, c_prev, cs[t], hs[t], r0, r1)


@numba.njit(**PAR)
def forward_steps_par(Whp, b, h0, c0, hs, cs, acts, nt, tokens, table):
    B = h0.shape[0]
    for k in numba.prange(nt):
        forward_steps(Whp, b, h0, c0, hs, cs, acts, k * B // nt, (k + 1) * B // nt, tokens, table)


@numba.njit(**JIT)
def backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, r0, r1, tokens, db, dtable):
    """lstm_layer.backward_steps for rows r0..r1-1 with WhTp (nb, kp, NR) the packed W_h^T (G,H):
    dh = dz_t W_h^T each step; dzs, and db (G,), dtable (V,G) summed over these rows."""
    zp = np.empty(((r1 - r0 + MR - 1) // MR, WhTp.shape[1], MR), np.uint32)  # (.., kp, MR) rows of dz_t
    acc = np.empty((MR, NR), np.float32)                                     # (MR,NR) one block's sums
    for t in range(acts.shape[0] - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        gates_backward(dhs[t], dh, dc, acts[t], cs[t], c_prev, dzs[t], r0, r1)
        accumulate_step(tokens, dzs, t, r0, r1, db, dtable)
        _pack_step(dzs[t], r0, r1, zp)
        _step_product(zp, WhTp, dh, r0, r1, False, acc)                      # dh = dz_t @ W_h^T


@numba.njit(**PAR)
def backward_steps_par(dhs, WhTp, c0, cs, acts, dzs, dh, dc, nt, tokens, dbp, dtp):
    B = dh.shape[0]
    for k in numba.prange(nt):
        backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, k * B // nt, (k + 1) * B // nt, tokens,
                       dbp[k], dtp[k])


@numba.njit(**JIT)
def packed_panels(Wh, transpose):
    """W_h (H,G) as gemm_bf16's op(B) panels: of W_h (nb = ceil(G/NR), ceil(H/2), NR), or with
    transpose of W_h^T (ceil(H/NR), ceil(G/2), NR)."""
    H, G = Wh.shape
    n, k = (H, G) if transpose else (G, H)
    out = np.empty(((n + NR - 1) // NR, (k + 1) // 2, NR), np.uint32)
    _pack_rows(Wh, not transpose, NR, out)                                  # op(B)^T's rows: op(B)'s columns
    return out


@numba.njit(**JIT)
def run_forward_steps(Wh, b, h0, c0, hs, cs, acts, rows, tokens, table):
    """The time loop on `rows` threads split by batch rows (None: the calling thread)."""
    Whp = packed_panels(Wh, False)
    if rows is not None:
        forward_steps_par(Whp, b, h0, c0, hs, cs, acts, rows, tokens, table)
    else:
        forward_steps(Whp, b, h0, c0, hs, cs, acts, np.int64(0), h0.shape[0], tokens, table)


@numba.njit(**JIT)
def run_backward_steps(dhs, Wh, c0, cs, acts, dzs, dh, dc, rows, tokens, db, dtable):
    """The reverse time loop (see run_forward_steps) -> dzs, db (G,) the sum of the dz rows,
    dtable (V,G) the dz rows summed by token (V = 0: no table)."""
    WhTp = packed_panels(Wh, True)
    db[:] = 0
    dtable[:] = 0
    if rows is not None:
        dbp = np.zeros((rows,) + db.shape, db.dtype)                # (nt,G) per-thread partial sums
        dtp = np.zeros((rows,) + dtable.shape, dtable.dtype)        # (nt,V,G)
        backward_steps_par(dhs, WhTp, c0, cs, acts, dzs, dh, dc, rows, tokens, dbp, dtp)
        for k in range(rows):
            db += dbp[k]
            dtable += dtp[k]
    else:
        backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, np.int64(0), dh.shape[0], tokens, db, dtable)
