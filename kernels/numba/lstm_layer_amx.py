"""The LSTM time loops with the recurrent products on AMX tiles (bfloat16 products on Intel CPUs
with AMX, where gemm_bf16's vdpbf16ps runs slower than float32 FMAs).

As lstm_layer_bf16's loops, split by batch rows, but each step's h_{t-1} W_h (forward) and
dz_t W_h^T (backward) go through gemm_amx.mm_amx_packed_jit: W_h (or W_h^T) is packed into tiles
once per call, each step's rows of h_{t-1} or dz_t as they come.  The gates, the bias and every
state stay float32.  Import only where gemm_amx.available().

Dimension legend:
    T time steps   B batch   H hidden size   G = 4H gates   V vocabulary (layer 0's table)
    R rows of a thread (r1 - r0)   kq k steps of 32 (H forward, G backward)   BM gemm_amx's block rows
"""
from __future__ import annotations

import numba
import numpy as np

from .gates import gates_backward, gates_forward
from .gemm_amx import BM, TILE, mm_amx_packed_jit, pack_b, tile_config
from .jit import JIT, PAR
from .lstm_layer import accumulate_step, gather_step


@numba.njit(**JIT)
def forward_steps(Whp, b, h0, c0, hs, cs, acts, r0, r1, tokens, table, cfg):
    """lstm_layer.forward_steps for rows r0..r1-1 with Whp (nb, kq, 2, 16, 16) the packed W_h (H,G):
    acts (T,B,G) holds x_t W_x (or gets table[tokens[t]] at step t) -> activated gates, hs, cs."""
    hp = np.empty(((r1 - r0 + BM - 1) // BM, Whp.shape[1], 2, TILE, TILE), np.uint32)   # tiles of h_{t-1}'s rows
    one = np.float32(1.0)
    for t in range(acts.shape[0]):
        h_prev = h0 if t == 0 else hs[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        gather_step(tokens, table, acts, t, r0, r1)                         # x_t W_x of layer 0
        mm_amx_packed_jit(h_prev[r0:r1], Whp, acts[t, r0:r1], False, one, one, hp, cfg)   # += h_{t-1} @ W_h
        gates_forward(acts[t], b, c_prev, cs[t], hs[t], r0, r1)


@numba.njit(**PAR)
def forward_steps_par(Whp, b, h0, c0, hs, cs, acts, nt, tokens, table, cfg):
    B = h0.shape[0]
    for k in numba.prange(nt):
        forward_steps(Whp, b, h0, c0, hs, cs, acts, k * B // nt, (k + 1) * B // nt, tokens, table, cfg)


@numba.njit(**JIT)
def backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, r0, r1, tokens, db, dtable, cfg):
    """lstm_layer.backward_steps for rows r0..r1-1 with WhTp (nb, kq, 2, 16, 16) the packed W_h^T
    (G,H): dh = dz_t W_h^T each step; dzs, and db (G,), dtable (V,G) summed over these rows."""
    zp = np.empty(((r1 - r0 + BM - 1) // BM, WhTp.shape[1], 2, TILE, TILE), np.uint32)  # tiles of dz_t's rows
    one, zero = np.float32(1.0), np.float32(0.0)
    for t in range(acts.shape[0] - 1, -1, -1):
        c_prev = c0 if t == 0 else cs[t - 1]
        gates_backward(dhs[t], dh, dc, acts[t], cs[t], c_prev, dzs[t], r0, r1)
        accumulate_step(tokens, dzs, t, r0, r1, db, dtable)
        mm_amx_packed_jit(dzs[t, r0:r1], WhTp, dh[r0:r1], False, one, zero, zp, cfg)     # dh = dz_t @ W_h^T


@numba.njit(**PAR)
def backward_steps_par(dhs, WhTp, c0, cs, acts, dzs, dh, dc, nt, tokens, dbp, dtp, cfg):
    B = dh.shape[0]
    for k in numba.prange(nt):
        backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, k * B // nt, (k + 1) * B // nt, tokens,
                       dbp[k], dtp[k], cfg)


@numba.njit(**JIT)
def _backward(dhs, WhTp, c0, cs, acts, dzs, dh, dc, rows, tokens, db, dtable, cfg):
    db[:] = 0
    dtable[:] = 0
    if rows is not None:
        dbp = np.zeros((rows,) + db.shape, db.dtype)                # (nt,G) per-thread partial sums
        dtp = np.zeros((rows,) + dtable.shape, dtable.dtype)        # (nt,V,G)
        backward_steps_par(dhs, WhTp, c0, cs, acts, dzs, dh, dc, rows, tokens, dbp, dtp, cfg)
        for k in range(rows):
            db += dbp[k]
            dtable += dtp[k]
    else:
        backward_steps(dhs, WhTp, c0, cs, acts, dzs, dh, dc, np.int64(0), dh.shape[0], tokens, db, dtable, cfg)


def run_forward_steps(Wh, b, h0, c0, hs, cs, acts, rows, tokens, table):
    """The time loop on `rows` threads split by batch rows (None: the calling thread); Wh (H,G)
    rows contiguous (W[:H])."""
    Whp = pack_b(Wh, False, rows)                                           # op(B) = W_h (H,G) in tiles
    if rows is not None:
        forward_steps_par(Whp, b, h0, c0, hs, cs, acts, rows, tokens, table, tile_config())
    else:
        forward_steps(Whp, b, h0, c0, hs, cs, acts, np.int64(0), h0.shape[0], tokens, table, tile_config())


def run_backward_steps(dhs, Wh, c0, cs, acts, dzs, dh, dc, rows, tokens, db, dtable):
    """The reverse time loop (see run_forward_steps) -> dzs, db (G,) the sum of the dz rows,
    dtable (V,G) the dz rows summed by token (V = 0: no table)."""
    WhTp = pack_b(Wh, True, rows)                                           # op(B) = W_h^T (G,H) in tiles
    _backward(dhs, WhTp, c0, cs, acts, dzs, dh, dc, rows, tokens, db, dtable, tile_config())
