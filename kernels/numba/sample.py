"""Numba kernel for batch-1 generation: n characters in one jitted call, no Python per step.

Dimension legend: L layers, H hidden, G = 4H, E embedding, V vocabulary, n characters.

Per character: every layer's cell (z = b + h_{t-1} W_h + x_t W_x as hand-written
matrix-vector loops over W_h and W_x cut into column panels, panel_acc, then the gates; for
layer 0 the caller may pass the table X0 = Emb @ W_x + b0 (V,G), so that b + x_t W_x is one
row read instead of an E x G product per character), the output projection (Wy in panels
too), temperature, top-k / top-p filtering and an inverse-CDF draw (draw.py).  The weights' panels are
float32 (float64), or float32 weights rounded to bfloat16 and stored in pairs (uint32, half the
bytes streamed a character; panel_acc widens each back to the float32 it stands for, the sums
stay float32) when the backend samples with bfloat16 weights, or 8-bit integers with a float32
scale per column (int8, a quarter of the bytes; the sums float32, scaled once per panel).  The
uniforms come in as an array drawn by the caller from its numpy Generator, one per
sampled character, exactly as the reference draws them, so both backends turn the same
seed into the same text.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from .draw import next_token
from .fastmath import fsigmoid, ftanh
from .gemm import _stack_array
from .jit import JIT
from .sync import FLAG_STRIDE, load_acquire, load_seq, spin_pause, spin_yield, store_seq


@intrinsic
def _f32_from_bits(typingctx, u):
    """The float32 whose bit pattern is the uint32 u (a register move, no conversion)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@numba.njit(**JIT)                  # a plain call: LLVM inlines it into the loop
def bf16_lo(w):
    """The float32 value of the bfloat16 in the low half of the uint32 w (exact)."""
    return _f32_from_bits(w << np.uint32(16))


@numba.njit(**JIT)                  # a plain call: LLVM inlines it into the loop
def bf16_hi(w):
    """The float32 value of the bfloat16 in the high half of the uint32 w (exact)."""
    return _f32_from_bits(w & np.uint32(0xFFFF0000))


@numba.njit(inline="always", **JIT)
def matvec_acc(v, M, z):
    """z (G,) += v (K,) @ M (K,G), four rows per pass so z is loaded once per four rows."""
    K, G = M.shape
    k = 0
    while k + 4 <= K:
        a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
        r0, r1, r2, r3 = M[k], M[k + 1], M[k + 2], M[k + 3]
        for j in range(G):
            z[j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]
        k += 4
    while k < K:
        a0, r0 = v[k], M[k]
        for j in range(G):
            z[j] += a0 * r0[j]
        k += 1


PANEL = 32               # columns of a panel: its sums stay in registers while the rows pass
_panel_acc_row = _stack_array(PANEL)


HALF = PANEL // 2         # bfloat16 pairs in a row of a bfloat16 panel
SCALE_ROWS = 4            # rows after an int8 panel's K rows: its columns' float32 scales, a byte a row


def panel_acc(v, Mp, z):
    """z (nb PANEL,) += v (K,) @ M (K,C), M stored as panels of PANEL columns, each panel's rows
    contiguous: float panels Mp (nb,K,PANEL) (numba_team.as_panels), or bfloat16 panels Mp
    (nb,K,HALF) uint32 whose word j of a row holds columns j (low half) and HALF + j (high half)
    as bfloat16 (numba_team.bf16_pairs), widened to float32 as they are read by a shift or a
    mask, no shuffle; or int8 panels Mp (nb,K+SCALE_ROWS,PANEL) (numba_team.int8_panels): the
    sums of v times the integers, then z += scale * sum per column.  Each sum is matvec_acc's (the
    same rows in fours, in the same order), but a panel's PANEL sums stay in registers down all
    its rows and the weights stream in one run, where matvec_acc loads and stores z every four rows."""


@overload(panel_acc, inline="always")
def _panel_acc(v, Mp, z):
    if isinstance(Mp.dtype, types.Float):           # the bodies themselves: inlined once, as an inline njit
        return _acc_float_panels
    if Mp.dtype == types.uint32:
        return _acc_bf16_panels
    if Mp.dtype == types.int8:
        return _acc_int8_panels
    raise TypingError(f"panel_acc takes float panels, bfloat16 pairs (uint32) or int8 panels, got {Mp.dtype}")


def _acc_float_panels(v, Mp, z):
    """panel_acc over float panels Mp (nb,K,PANEL)."""
    nb, K = Mp.shape[0], v.shape[0]
    for b in range(nb):
        acc = _panel_acc_row(z)                                   # (PANEL,) this panel's sums
        j0 = b * PANEL
        for j in range(PANEL):
            acc[j] = z[j0 + j]
        Mb = Mp[b]                                                # (rows,PANEL)
        K4 = K - K % 4
        for k in range(0, K4, 4):                                 # for, not while: numba's overload inlining
            a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
            r0, r1, r2, r3 = Mb[k], Mb[k + 1], Mb[k + 2], Mb[k + 3]
            for j in range(PANEL):
                acc[j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]
        for k in range(K4, K):
            a0, r0 = v[k], Mb[k]
            for j in range(PANEL):
                acc[j] += a0 * r0[j]
        for j in range(PANEL):
            z[j0 + j] = acc[j]


def _acc_bf16_panels(v, Mp, z):
    """panel_acc over bfloat16 pairs Mp (nb,K,HALF) uint32: the float loop's sums, in its order,
    over the widened weights."""
    nb, K = Mp.shape[0], v.shape[0]
    for b in range(nb):
        acc = _panel_acc_row(z)                                   # (PANEL,) this panel's sums
        j0 = b * PANEL
        for j in range(PANEL):
            acc[j] = z[j0 + j]
        Mb = Mp[b]                                                # (rows,HALF) pairs
        K4 = K - K % 4
        for k in range(0, K4, 4):                                 # for, not while: numba's overload inlining
            a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
            r0, r1, r2, r3 = Mb[k], Mb[k + 1], Mb[k + 2], Mb[k + 3]
            for j in range(HALF):
                acc[j] += a0 * bf16_lo(r0[j]) + a1 * bf16_lo(r1[j]) + a2 * bf16_lo(r2[j]) + a3 * bf16_lo(r3[j])
                acc[HALF + j] += (a0 * bf16_hi(r0[j]) + a1 * bf16_hi(r1[j]) + a2 * bf16_hi(r2[j])
                                  + a3 * bf16_hi(r3[j]))
        for k in range(K4, K):
            a0, r0 = v[k], Mb[k]
            for j in range(HALF):
                acc[j] += a0 * bf16_lo(r0[j])
                acc[HALF + j] += a0 * bf16_hi(r0[j])
        for j in range(PANEL):
            z[j0 + j] = acc[j]


@numba.njit(**JIT)                  # a plain call: LLVM inlines it into the loop
def int8_scale(Mb, K, j):
    """The float32 scale of column j of an int8 panel Mb (K+SCALE_ROWS,PANEL): its bits a byte a
    row in rows K..K+3, low byte first (numba_team.int8_panels)."""
    u = np.uint32(np.uint8(Mb[K, j]))
    u |= np.uint32(np.uint8(Mb[K + 1, j])) << np.uint32(8)
    u |= np.uint32(np.uint8(Mb[K + 2, j])) << np.uint32(16)
    u |= np.uint32(np.uint8(Mb[K + 3, j])) << np.uint32(24)
    return _f32_from_bits(u)


def _acc_int8_panels(v, Mp, z):
    """panel_acc over int8 panels Mp (nb,K+SCALE_ROWS,PANEL): the float loop's sums, in its
    order, over the integers widened to float32 (exact), each column's sum times its scale."""
    nb, K = Mp.shape[0], v.shape[0]
    for b in range(nb):
        acc = _panel_acc_row(z)                                   # (PANEL,) this panel's sums
        j0 = b * PANEL
        for j in range(PANEL):
            acc[j] = 0
        Mb = Mp[b]                                                # (K+SCALE_ROWS,PANEL)
        K4 = K - K % 4
        for k in range(0, K4, 4):                                 # for, not while: numba's overload inlining
            a0, a1, a2, a3 = v[k], v[k + 1], v[k + 2], v[k + 3]
            r0, r1, r2, r3 = Mb[k], Mb[k + 1], Mb[k + 2], Mb[k + 3]
            for j in range(PANEL):
                acc[j] += a0 * np.float32(r0[j]) + a1 * np.float32(r1[j]) + a2 * np.float32(r2[j]) \
                    + a3 * np.float32(r3[j])
        for k in range(K4, K):
            a0, r0 = v[k], Mb[k]
            for j in range(PANEL):
                acc[j] += a0 * np.float32(r0[j])
        for j in range(PANEL):
            z[j0 + j] += int8_scale(Mb, K, j) * acc[j]


@numba.njit(inline="always", **JIT)
def cell_step(Wp, zx, x, h, c, z):
    """One layer, one character, in place: h, c (H,) <- LSTM(W, x (I,), h, c), W (H+I,G) as
    Wp = (W_h, W_x) in panels (nb,H,PANEL), (nb,I,PANEL); z (nb PANEL,) scratch.

    zx (G,) starts the gate sum: the bias b, or (layer 0 with a table) the row
    Emb[token] @ W_x + b of the table, in which case x is empty and W's x rows unused."""
    H = h.shape[0]
    for j in range(4 * H):
        z[j] = zx[j]
    panel_acc(h, Wp[0], z)
    if x.shape[0] > 0:
        panel_acc(x, Wp[1], z)
    cell_gates(z, H, h, c)


@numba.njit(inline="always", **JIT)
def cell_gates(z, S, h, c):
    """h, c (n,) <- the cell's update of n units from their gate pre-activations z, the blocks
    i, f, g, o S apart (S = H for a whole layer; a team thread's units: its block width)."""
    for j in range(h.shape[0]):
        i = fsigmoid(z[j])
        f = fsigmoid(z[S + j])
        g = ftanh(z[2 * S + j])
        o = fsigmoid(z[3 * S + j])
        c[j] = f * c[j] + i * g
        h[j] = o * ftanh(c[j])


@numba.njit(inline="always", **JIT)
def layer_input(Emb, X0, bs, h_below, l, token, none):
    """(zx (G,), x (I,)) for layer l: layer 0 reads its table row X0[token] (x: `none`, an empty
    array) when X0 (V,G) has rows, else b0 and Emb[token]; layers above take b_l and h_below (H,).
    Every array returned is C-contiguous, so the callers' loops compile for one layout."""
    if l > 0:
        return bs[l], h_below
    if X0.shape[0] > 0:
        return X0[token], none
    return bs[0], Emb[token]


@numba.njit(inline="always", **JIT)
def draw(h, Wy, by, logits, temperature, top_k, top_p, greedy, u, zd, probs, order, p):
    """The next token from the top layer's h (H,): logits = by + h @ Wy, then next_token.
    Wy (H,V) as panels (nbV,H,PANEL); logits (nbV PANEL,), its first V the logits."""
    logits_block(h, Wy, by, logits, 0, Wy.shape[0])
    return next_token(logits[:by.shape[0]], temperature, top_k, top_p, greedy, u, zd, probs, order, p)


@numba.njit(inline="always", **JIT)
def logits_block(h, Wy, by, logits, b0, b1):
    """logits[b0 PANEL:b1 PANEL] = by + h (H,) @ the columns of panels b0..b1 of Wy (nbV,H,PANEL)
    (zeros past V)."""
    V = by.shape[0]
    for j in range(b0 * PANEL, b1 * PANEL):
        logits[j] = by[j] if j < V else 0
    panel_acc(h, Wy[b0:b1], logits[b0 * PANEL:b1 * PANEL])


@numba.njit(**JIT)
def sample_buffers(Gp, Vp, V, like):
    """Scratch of one generation call: z (Gp,) gate sums (zeros: the pad past G stays summed
    but unread) and logits (Vp,) (the output layer's panels' columns) in like's dtype; zd, probs,
    p (V,) float64 and order (V,) int64 for the filter; an empty array standing for "no x"
    (layer 0 with its table)."""
    dt = like.dtype
    return (np.zeros(Gp, dt), np.zeros(Vp, dt), np.empty(V), np.empty(V), np.empty(V),
            np.empty(V, np.int64), np.empty(0, dt))


@numba.njit(**JIT)
def generate_kernel(Emb, X0, Ws, bs, Wy, by, h, c, token, temperature, top_k, top_p, greedy, us, out):
    """Emb (V,E); X0 (V,G) the layer-0 table Emb @ W_x + b0, or (0,G) to compute it per
    character; Ws, bs tuples over layers of W (H+I,G) as (W_h, W_x) panels (cell_step), b (G,);
    Wy (H,V) as panels (nbV,H,PANEL), by (V,); h, c (L,H) state, updated in place; us (n,)
    uniforms (ignored when greedy) -> out (n,) int64 token ids."""
    L, H = h.shape
    V = by.shape[0]
    Gp, Vp = Ws[0][0].shape[0] * PANEL, Wy.shape[0] * PANEL                # the panels' columns
    z, logits, zd, probs, p, order, none = sample_buffers(Gp, Vp, V, by)
    for k in range(out.shape[0]):
        for l in range(L):
            zx, x = layer_input(Emb, X0, bs, h[l - 1], l, token, none)
            cell_step(Ws[l], zx, x, h[l], c[l], z)
        token = draw(h[L - 1], Wy, by, logits, temperature, top_k, top_p, greedy,
                     us[k] if not greedy else 0.0, zd, probs, order, p)
        out[k] = token


# ----------------------------------------------------------------------------
# What a team of nt threads shares (sample_team.py runs the team's layers): the caller's
# thread is thread 0, the others are long-lived workers (lstm_engine/backends/numba_team.py)
# that spin between jobs, so a 32-character call costs no thread start.
# ----------------------------------------------------------------------------

# Flag slots of a team (indices into its int64 flags, FLAG_STRIDE apart, see sync.py): the
# job counter, the stop flag, then per thread t its barrier counter and whether it is parked.
JOB, STOP = 0, FLAG_STRIDE


@numba.njit(inline="always", **JIT)
def ready_slot(t):
    return (2 + t) * FLAG_STRIDE


@numba.njit(inline="always", **JIT)
def parked_slot(t, nt):
    return (2 + nt + t) * FLAG_STRIDE


# Polls of a barrier (tens of ns each) before its waiter yields the CPU at every further poll:
# with more runnable threads than cores a partner may be off the CPU for a whole time slice,
# and spinning through it would keep it off longer.
SPINS_BEFORE_YIELD = 1024


@numba.njit(inline="always", **JIT)
def wait_for_team(flags, tid, nt, s):
    """Spin until every other thread's barrier counter reached s (yielding the CPU after
    SPINS_BEFORE_YIELD polls).  -> False when told to stop."""
    for u in range(nt):
        if u != tid:
            spins = 0
            while load_acquire(flags, ready_slot(u)) < s:
                if load_acquire(flags, STOP) != 0:
                    return False
                if spins < SPINS_BEFORE_YIELD:
                    spins += 1
                    spin_pause()
                else:
                    spin_yield()
    return True


@numba.njit(nogil=True, **JIT)
def team_publish(flags, job, nt):
    """Announce job number `job` (its inputs already written) -> bit t-1 set for each worker t
    that had parked and must be woken.  Sequentially consistent against team_worker's park:
    either the worker sees the job or this sees it parked."""
    store_seq(flags, JOB, job)
    asleep = 0
    for t in range(1, nt):
        if load_seq(flags, parked_slot(t, nt)) != 0:
            asleep |= 1 << (t - 1)
    return asleep


@numba.njit(**JIT)
def spin_polls(n):
    """n idle polls of the worker loop (for calibrating spin_limit against the clock)."""
    flags = np.zeros(FLAG_STRIDE * 2, np.int64)
    acc = 0
    for _ in range(n):
        acc += load_seq(flags, JOB)
        spin_pause()
    return acc
