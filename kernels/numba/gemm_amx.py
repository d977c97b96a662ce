"""A GEMM with bfloat16 operands and float32 sums on Intel AMX: C = alpha * op(A) @ op(B) + beta * C.

Why: on Intel CPUs vdpbf16ps (kernels/numba/gemm_bf16.py) runs slower than the float32 FMA GEMM,
so bfloat16 products only pay there through AMX, whose tdpbf16ps multiplies a (16, 32) bfloat16
tile by a (32, 16) one into a (16, 16) float32 tile in one instruction.  Same interface and same
rounding as gemm_bf16.mm_bf16 (operands rounded to bfloat16, nearest even, while packed; float32
sums), for Intel CPUs with AMX (Sapphire Rapids and later): the bfloat16 products' GEMM
there (numba_tune.opt_in) and, through mm_amx_packed_jit, the time loops' (lstm_layer_amx.py).

How: Linux grants tile state per process (arch_prctl ARCH_REQ_XCOMP_PERM, asked once in
available()); every thread then loads the tile configuration (ldtilecfg: eight tiles of 16 rows
of 64 bytes) before its first tile instruction and releases it after.  op(A) is packed into
blocks of BM = 32 rows, op(B) into panels of BN = 32 columns, both as 16 x 16 uint32 tiles per
k step of KS = 16 pairs (32 k), zeros past m, n and k, so each tile is 1 KiB read with a stride
of 64 bytes:
    A tiles hold [row, pair] (pair p of row i: k = 2p low half, 2p+1 high half);
    B tiles hold [pair, column] ("VNNI": pair p of column j: rows 2p and 2p+1 of op(B)).
The micro-kernel (_tile_block, LLVM IR) keeps a 32 x 32 block of C in four accumulator tiles
(0..3), loads two A tiles (4, 5) and two B tiles (6, 7) a k step and issues four tdpbf16ps.
A thread's job, MC row blocks x NG panels, runs over k in chunks of KC steps (the chunk's tiles
stay in L1/L2: over all of k they fall out of L2 and the tile loads starve), its blocks' sums
parked in a per-thread float32 scratch between chunks; gemm_bf16.store_block then applies them to C with
alpha and beta, clipped at the edges.  Where k fits one chunk of up to KC_ONE steps (the time
loops' products) and alpha is 1, beta 0 or 1, a whole block's tiles load from and store to C
itself: no scratch, no store_block pass.  The operands are rounded while packed, by gemm_bf16's
rule on the float32 bits (the same bits), 16 lanes at a time in LLVM IR: along rows through one
vector shuffle (_pair_row; LLVM leaves a stride-2 loop scalar), across rows from two row loads
(_pair_cols), written straight into the packed tile where no transpose is needed.

Entry points: mm_amx (gemm_bf16.mm_bf16's interface); pack_b + mm_amx_packed for a B packed
once (weights); mm_amx_packed_jit, the same callable from numba code (a recurrent time step).

Dimension legend: m, n, k as in BLAS (op(A) (m,k), op(B) (k,n), C (m,n)); kq = ceil(k/32) k
steps of KS pairs; mb = ceil(m/BM) row blocks; nb = ceil(n/BN) column panels.

Compile and call only where available() says so: elsewhere LLVM cannot emit tile instructions,
and without the permission the first one raises SIGILL.
"""
from __future__ import annotations

import ctypes
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .gemm_bf16 import _pack_buffer, store_block   # packed operands kept by (role, shape), as there
from .jit import JIT, PAR


BM, BN = 32, 32         # C block of the micro-kernel: 2 x 2 tiles of 16 x 16 float32
TILE = 16               # rows of a tile; also its uint32 columns (64 bytes)
KS = 16                 # pairs of k a tile row holds (one k step)
KC = 8                  # k steps of a chunk: 16 KiB of a block's (or panel's) tiles
KC_ONE = 16             # k of up to this many steps runs as one chunk (measured: KC's split costs more there)
MC, NG = 4, 8           # row blocks x panels of a job: its k chunk, 192 KiB, and sums, 128 KiB, in L2

_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

_state = {}             # "ok": the cached (bool, reason) of available()


def _tile_config():
    """The 64-byte ldtilecfg operand: palette 1, tiles 0..7 of 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)                                            # (64,) the tile configuration
    cfg[0] = 1                                                              # palette 1: 8 tiles of up to 16 x 64 bytes
    cfg[16:48].view(np.uint16)[:8] = 4 * TILE                               # bytes per row
    cfg[48:56] = TILE                                                       # rows
    return cfg


_CFG = _tile_config()


def available():
    """(True, "") where the CPU has AMX tiles with bfloat16, numba compiles for them and Linux
    granted this process the tile state, else (False, why).  Asks for the permission once."""
    if "ok" in _state:
        return _state["ok"]
    _state["ok"] = _check()
    return _state["ok"]


def _check():
    import llvmlite.binding as llvm
    from numba.core import config

    from ...core.environment import get
    if get("LSTM_ENGINE_NUMBA_ISA", "native") == "avx2":
        return False, "LSTM_ENGINE_NUMBA_ISA=avx2 holds numba to AVX2, which has no AMX"
    if not sys.platform.startswith("linux"):
        return False, "AMX permission is requested through Linux's arch_prctl; this is not Linux"
    if config.CPU_FEATURES:                                                  # numba told to compile for given features
        feats = config.CPU_FEATURES.split(",")
        if not ("+amx-tile" in feats and "+amx-bf16" in feats):
            return False, "NUMBA_CPU_FEATURES lacks +amx-tile,+amx-bf16"
    else:
        if config.CPU_NAME not in (None, "host"):
            return False, f"NUMBA_CPU_NAME={config.CPU_NAME} may lack AMX"
        host = llvm.get_host_cpu_features()
        if not (host.get("amx-tile") and host.get("amx-bf16")):
            return False, "this CPU has no AMX with bfloat16 (amx-tile, amx-bf16)"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM),
                      ctypes.c_long(_XFEATURE_XTILEDATA))
    if rc != 0:
        return False, f"Linux refused the AMX tile state (arch_prctl errno {ctypes.get_errno()})"
    return True, ""


# ----------------------------------------------------------------------------
# Tile instructions (LLVM intrinsics with immediate tile numbers)
# ----------------------------------------------------------------------------

_i8, _i64 = ir.IntType(8), ir.IntType(64)
_p8 = _i8.as_pointer()


def _fn(builder, name, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), args), name)


@intrinsic
def _tile_begin(typingctx, cfg):
    """ldtilecfg cfg (64,) uint8: this thread's tiles as _CFG says."""
    def codegen(context, builder, sig, args):
        c = context.make_array(sig.args[0])(context, builder, args[0])
        builder.call(_fn(builder, "llvm.x86.ldtilecfg", [_p8]), [builder.bitcast(c.data, _p8)])
        return context.get_dummy_value()
    return types.void(cfg), codegen


@intrinsic
def _tile_end(typingctx):
    """tilerelease: the thread's tile state back to its init state (cheaper context switches)."""
    def codegen(context, builder, sig, args):
        builder.call(_fn(builder, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _tile_block(typingctx, Ap, Bp, acc, ia, jb, q0, q1, resume):
    """acc (BM, BN) float32, rows contiguous (a scratch block or C's), (+)= op(A) block ia x
    op(B) panel jb over k steps q0..q1 (each (kq, 2, 16, 16) packed) by tdpbf16ps: tiles 0..3 the
    sums (loaded from acc when resume, else zeroed), 4..5 the A halves, 6..7 the B halves."""
    def codegen(context, builder, sig, args):
        ap, bp, acc_, ia_, jb_, q0_, q1_, resume_ = args
        A = context.make_array(sig.args[0])(context, builder, ap)            # (mb, kq, 2, 16, 16) uint32
        B = context.make_array(sig.args[1])(context, builder, bp)            # (nb, kq, 2, 16, 16) uint32
        S = context.make_array(sig.args[2])(context, builder, acc_)          # (BM, BN) float32
        srow = cgutils.unpack_tuple(builder, S.strides, 2)[0]                # bytes between acc's rows
        load = _fn(builder, "llvm.x86.tileloadd64", [_i8, _p8, _i64])
        store = _fn(builder, "llvm.x86.tilestored64", [_i8, _p8, _i64])
        dot = _fn(builder, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
        zero = _fn(builder, "llvm.x86.tilezero", [_i8])
        c8 = lambda v: ir.Constant(_i8, v)                                   # noqa: E731
        c64 = lambda v: ir.Constant(_i64, v)                                 # noqa: E731
        step = 2 * TILE * TILE * 4                                           # bytes of one k step of a block
        kq = cgutils.unpack_tuple(builder, A.shape, 5)[1]
        ia64, jb64, qa, qb = (context.cast(builder, v, t, types.int64)
                              for v, t in zip(args[3:7], sig.args[3:7]))
        a0 = builder.gep(builder.bitcast(A.data, _p8), [builder.mul(builder.mul(ia64, kq), c64(step))])
        b0 = builder.gep(builder.bitcast(B.data, _p8), [builder.mul(builder.mul(jb64, kq), c64(step))])
        s0 = builder.bitcast(S.data, _p8)
        sums = [builder.gep(s0, [builder.add(builder.mul(c64(i * TILE), srow), c64(j * TILE * 4))])
                for i in range(2) for j in range(2)]
        again = context.cast(builder, resume_, sig.args[7], types.boolean)   # tile (i, j): rows 16i, columns 16j
        with builder.if_else(again) as (then, otherwise):
            with then:
                for t in range(4):
                    builder.call(load, [c8(t), sums[t], srow])
            with otherwise:
                for t in range(4):
                    builder.call(zero, [c8(t)])
        entry = builder.basic_block
        head, body, done = (builder.append_basic_block(s) for s in ("amx.head", "amx.body", "amx.done"))
        builder.branch(head)
        builder.position_at_end(head)
        q = builder.phi(_i64)
        q.add_incoming(qa, entry)
        builder.cbranch(builder.icmp_signed("<", q, qb), body, done)
        builder.position_at_end(body)
        off = builder.mul(q, c64(step))
        pa, pb = builder.gep(a0, [off]), builder.gep(b0, [off])
        for h in range(2):
            builder.call(load, [c8(4 + h), builder.gep(pa, [c64(h * step // 2)]), c64(4 * TILE)])
            builder.call(load, [c8(6 + h), builder.gep(pb, [c64(h * step // 2)]), c64(4 * TILE)])
        for i in range(2):
            for j in range(2):
                builder.call(dot, [c8(2 * i + j), c8(4 + i), c8(6 + j)])
        q.add_incoming(builder.add(q, c64(1)), builder.basic_block)
        builder.branch(head)
        builder.position_at_end(done)
        for t in range(4):
            builder.call(store, [c8(t), sums[t], srow])
        return context.get_dummy_value()

    return types.void(Ap, Bp, acc, ia, jb, q0, q1, resume), codegen


# ----------------------------------------------------------------------------
# Packing: float32 -> bfloat16 pairs in tiles
# ----------------------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def _pair(u, v):
    """gemm_bf16._pair on the float32 bits u (low half) and v (high half), rounded to nearest
    even, the same bits: uint32 views vectorise where a scalar float view (through memory) keeps
    the loop scalar, and the casts keep numba's uint64 promotion out of the vectors."""
    one, half = np.uint32(1), np.uint32(0x7FFF)
    lo = np.uint32(np.uint32(u + half) + np.uint32((u >> np.uint32(16)) & one)) >> np.uint32(16)
    hi = np.uint32(np.uint32(v + half) + np.uint32((v >> np.uint32(16)) & one)) & np.uint32(0xFFFF0000)
    return np.uint32(lo | hi)


def _rounded_pair(builder, even, odd):
    """The (16,) uint32 pairs of even (low halves) and odd (high halves) float32 bits, as _pair."""
    splat = lambda c: ir.Constant(ir.VectorType(ir.IntType(32), KS), [c] * KS)   # noqa: E731

    def rounded(u):
        return builder.add(builder.add(u, splat(0x7FFF)), builder.and_(builder.lshr(u, splat(16)), splat(1)))
    return builder.or_(builder.lshr(rounded(even), splat(16)), builder.and_(rounded(odd), splat(0xFFFF0000)))


def _row_at(context, builder, ty, arr, i, j):
    """(i8*) address of X[i, j] (rows contiguous) for array arr of numba type ty."""
    X = context.make_array(ty)(context, builder, arr)
    row_stride = cgutils.unpack_tuple(builder, X.strides, 2)[0]
    return builder.gep(builder.bitcast(X.data, _p8), [builder.add(builder.mul(i, row_stride),
                                                                  builder.mul(j, ir.Constant(_i64, 4)))])


@intrinsic
def _pair_row(typingctx, X, i, j, tile, r):
    """tile[r, :16] = the 16 pairs of X[i, j:j+32] (uint32 float32 bits), as _pair: one vector
    load, an even/odd shuffle, the rounding in 16 lanes (LLVM leaves the stride-2 loop scalar)."""
    def codegen(context, builder, sig, args):
        x_, i_, j_, t_, r_ = args
        v32, v16 = ir.VectorType(ir.IntType(32), 2 * KS), ir.VectorType(ir.IntType(32), KS)
        i64, j64, r64 = (context.cast(builder, v, t, types.int64)
                         for v, t in ((i_, sig.args[1]), (j_, sig.args[2]), (r_, sig.args[4])))
        v = builder.load(builder.bitcast(_row_at(context, builder, sig.args[0], x_, i64, j64), v32.as_pointer()),
                         align=4)
        even = builder.shuffle_vector(v, ir.Constant(v32, ir.Undefined), ir.Constant(v16, list(range(0, 2 * KS, 2))))
        odd = builder.shuffle_vector(v, ir.Constant(v32, ir.Undefined), ir.Constant(v16, list(range(1, 2 * KS, 2))))
        dst = _row_at(context, builder, sig.args[3], t_, r64, ir.Constant(_i64, 0))
        builder.store(_rounded_pair(builder, even, odd), builder.bitcast(dst, v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(X, i, j, tile, r), codegen


@intrinsic
def _pair_cols(typingctx, X, i, j, tile, r):
    """tile[r, :16] = the pairs of X[i, j:j+16] (low halves) and X[i+1, j:j+16] (high halves),
    uint32 float32 bits, as _pair: two vector loads, the rounding in 16 lanes."""
    def codegen(context, builder, sig, args):
        x_, i_, j_, t_, r_ = args
        v16 = ir.VectorType(ir.IntType(32), KS)
        i64, j64, r64 = (context.cast(builder, v, t, types.int64)
                         for v, t in ((i_, sig.args[1]), (j_, sig.args[2]), (r_, sig.args[4])))
        lo, hi = (builder.load(builder.bitcast(_row_at(context, builder, sig.args[0], x_, row, j64),
                                               v16.as_pointer()), align=4)
                  for row in (i64, builder.add(i64, ir.Constant(_i64, 1))))
        dst = _row_at(context, builder, sig.args[3], t_, r64, ir.Constant(_i64, 0))
        builder.store(_rounded_pair(builder, lo, hi), builder.bitcast(dst, v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(X, i, j, tile, r), codegen


@numba.njit(**JIT)
def _pack_along(X, out, transpose, t, prod):
    """Pack X (rows, k) (float32 bits as uint32), whose rows are op(A)'s rows (A) or op(B)'s
    columns (B, trans_b), into out (nblk, kq, 2, 16, 16) tiles: run t of prod runs of blocks.
    Each tile is built [row, pair] and stored transposed when transpose (B's tiles are
    [pair, column]).  Zeros past rows and k."""
    rows, k = X.shape
    nblk, kq = out.shape[0], out.shape[1]
    zero = np.uint32(0)
    tile = np.empty((TILE, TILE), np.uint32)                                # (16, 16) [row, pair]
    for blk in range(t * nblk // prod, (t + 1) * nblk // prod):
        for q in range(kq):
            k0 = q * 2 * KS
            for h in range(2):
                r0 = (2 * blk + h) * TILE
                if r0 + TILE <= rows and k0 + 2 * KS <= k:             # a whole tile: no bounds
                    for r in range(TILE):
                        _pair_row(X, r0 + r, k0, tile, r)
                else:
                    for r in range(TILE):
                        for pp in range(KS):
                            i, kk = r0 + r, k0 + 2 * pp
                            lo = X[i, kk] if i < rows and kk < k else zero
                            hi = X[i, kk + 1] if i < rows and kk + 1 < k else zero
                            tile[r, pp] = _pair(lo, hi)
                _put(tile, out, blk, q, h, transpose)


@numba.njit(**JIT)
def _pack_across(X, out, transpose, t, prod):
    """Pack X^T (X (k, cols), float32 bits as uint32), whose columns are op(A)'s rows (A,
    trans_a) or op(B)'s columns (B), into out as _pack_along does, each tile built [pair, column]:
    run t of prod runs of k steps, each reading its 32 rows of X across every block, so X
    streams once."""
    k, cols = X.shape
    nblk, kq = out.shape[0], out.shape[1]
    zero = np.uint32(0)
    tile = np.empty((TILE, TILE), np.uint32)                                # (16, 16) [pair, column]
    for q in range(t * kq // prod, (t + 1) * kq // prod):
        k0 = q * 2 * KS
        for blk in range(nblk):
            for h in range(2):
                c0 = (2 * blk + h) * TILE
                if c0 + TILE <= cols and k0 + 2 * KS <= k:             # a whole tile: no bounds
                    dst = tile if transpose else out[blk, q, h]             # (16, 16) [pair, column]
                    for pp in range(KS):
                        _pair_cols(X, k0 + 2 * pp, c0, dst, pp)
                    if transpose:
                        _put(tile, out, blk, q, h, True)
                else:
                    for pp in range(KS):
                        for c in range(TILE):
                            j, kk = c0 + c, k0 + 2 * pp
                            lo = X[kk, j] if j < cols and kk < k else zero
                            hi = X[kk + 1, j] if j < cols and kk + 1 < k else zero
                            tile[pp, c] = _pair(lo, hi)
                    _put(tile, out, blk, q, h, transpose)


@numba.njit(inline="always", **JIT)
def _put(tile, out, blk, q, h, transpose):
    """out[blk, q, h] = tile (16, 16), or its transpose."""
    dst = out[blk, q, h]
    if transpose:
        for a in range(TILE):
            for b in range(TILE):
                dst[b, a] = tile[a, b]
    else:
        for a in range(TILE):
            for b in range(TILE):
                dst[a, b] = tile[a, b]


@numba.njit(**PAR)
def _pack_par(X, out, transpose, along, prod):
    """The packing's prod runs on numba's threads."""
    # np.int64(): one signature, so one compile, of the callee (jit.py)
    for t in numba.prange(prod):
        if along:
            _pack_along(X, out, transpose, np.int64(t), prod)
        else:
            _pack_across(X, out, transpose, np.int64(t), prod)


@numba.njit(**JIT)
def _pack_on(X, out, transpose, along, prod):
    """X (float32 bits as uint32) packed into out on the calling thread (prod None or 1: no
    dispatch to the pool, which on a busy machine waits for every worker) or prod > 1 threads."""
    if prod == 1:
        if along:
            _pack_along(X, out, transpose, np.int64(0), np.int64(1))
        else:
            _pack_across(X, out, transpose, np.int64(0), np.int64(1))
    else:
        _pack_par(X, out, transpose, along, prod)


def _pack(X, rows_first, out, role, prod):
    """op(X) into out on prod threads (None: this one): A role, tiles [row, pair]; B role,
    tiles [pair, column].  rows_first: X's rows are the blocked dimension (A untransposed, B
    transposed), else its columns are."""
    transpose = (role == "B") == rows_first
    _pack_on(X.view(np.uint32), out, transpose, rows_first, prod or 1)


# ----------------------------------------------------------------------------
# The product
# ----------------------------------------------------------------------------

@numba.njit(**JIT)
def _gemm_part(Ap, Bp, C, alpha, beta, t, prod, cfg):
    """Run t of prod of C (m,n) = alpha * (packed op(A)) (packed op(B)) + beta * C.  Jobs are
    (MC row blocks, NG panels) pairs, row-chunk-major, split into prod contiguous runs; each run
    loads the tile configuration in its own thread and releases the tiles after.  A job sweeps k
    in chunks of KC steps, keeping its blocks' sums in a scratch between chunks, so the chunk's
    op(A) and op(B) stay in L1/L2 (a whole k of them falls out of L2 and the tile loads starve)."""
    mb, nb, kq = Ap.shape[0], Bp.shape[0], Ap.shape[1]
    m, n = C.shape
    chunks, groups = (mb + MC - 1) // MC, (nb + NG - 1) // NG
    jobs = chunks * groups
    kc = max(kq, 1) if kq <= KC_ONE else KC                                 # k = 0 still zeroes the sums
    in_c = kc >= kq and alpha == 1 and (beta == 0 or beta == 1)             # whole blocks sum in C's tiles
    a = np.float32(alpha)
    b = np.float32(beta)
    sums = np.empty((min(MC, mb), min(NG, nb), BM, BN), np.float32)         # (MC, NG, BM, BN) a job's blocks
    _tile_begin(cfg)
    for job in range(t * jobs // prod, (t + 1) * jobs // prod):
        i0, j0 = job // groups * MC, job % groups * NG
        i1, j1 = min(mb, i0 + MC), min(nb, j0 + NG)
        for q0 in range(0, max(kq, 1), kc):
            for ib in range(i0, i1):                                        # its A tiles stay in L1 across panels
                for jb in range(j0, j1):
                    if in_c and (ib + 1) * BM <= m and (jb + 1) * BN <= n:
                        _tile_block(Ap, Bp, C[ib * BM:(ib + 1) * BM, jb * BN:(jb + 1) * BN], ib, jb, 0, kq, beta != 0)
                    else:
                        _tile_block(Ap, Bp, sums[ib - i0, jb - j0], ib, jb, q0, min(kq, q0 + kc), q0 > 0)
        for ib in range(i0, i1):
            for jb in range(j0, j1):
                if not (in_c and (ib + 1) * BM <= m and (jb + 1) * BN <= n):
                    store_block(sums[ib - i0, jb - j0], C, ib * BM, jb * BN, a, b, beta)
    _tile_end()


@numba.njit(**PAR)
def _gemm_par(Ap, Bp, C, alpha, beta, prod, cfg):
    for t in numba.prange(prod):
        _gemm_part(Ap, Bp, C, alpha, beta, np.int64(t), prod, cfg)


@numba.njit(**JIT)
def _gemm_on(Ap, Bp, C, alpha, beta, prod, cfg):
    """The product on the calling thread (prod 1) or prod threads (as _pack_on)."""
    if prod == 1:
        _gemm_part(Ap, Bp, C, alpha, beta, np.int64(0), np.int64(1), cfg)
    else:
        _gemm_par(Ap, Bp, C, alpha, beta, prod, cfg)


@numba.njit(**JIT)
def mm_amx_packed_jit(A, Bp, C, trans_a, alpha, beta, Ap, cfg):
    """mm_amx_packed on the calling thread, callable from numba code (a recurrent step inside a
    threaded kernel): Ap (mb, kq, 2, 16, 16) uint32 the caller's scratch for op(A), Bp from
    pack_b, cfg = tile_config().  Needs available() asked first, in Python."""
    transpose = bool(trans_a)                                   # a plain bool, as _pack_on passes
    if transpose:
        _pack_across(A.view(np.uint32), Ap, transpose, np.int64(0), np.int64(1))
    else:
        _pack_along(A.view(np.uint32), Ap, transpose, np.int64(0), np.int64(1))
    _gemm_part(Ap, Bp, C, np.float64(alpha), np.float64(beta), np.int64(0), np.int64(1), cfg)


def tile_config():
    """The ldtilecfg operand (64,) uint8 that mm_amx_packed_jit takes."""
    return _CFG


def pack_b(B, trans_b, prod=None):
    """op(B) (k,n) packed into a fresh (nb, kq, 2, 16, 16) uint32 buffer, for mm_amx_packed and
    mm_amx_packed_jit: pack the weights once, not every time step."""
    _check_operands(B)
    k, n = B.shape[::-1] if trans_b else B.shape
    Bp = np.empty(((n + BN - 1) // BN, (k + 2 * KS - 1) // (2 * KS), 2, TILE, TILE), np.uint32)
    _pack(B, trans_b, Bp, "B", prod)
    return Bp


def _check_operands(*arrays):
    """float32 2-D arrays with contiguous rows: the packers read each row as float32 bits."""
    ok, why = available()
    if not ok:
        raise RuntimeError(why)
    for X in arrays:
        if X.dtype != np.float32 or X.ndim != 2 or (X.size and X.shape[1] > 1 and X.strides[1] != 4):
            raise ValueError("mm_amx takes 2-D float32 arrays whose rows are contiguous")


def mm_amx_packed(A, Bp, C, trans_a, alpha, beta, prod):
    """mm_amx with op(B) already packed by pack_b (the weights of a recurrent product, packed once)."""
    _check_operands(A, C)
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    if m == 0 or n == 0:
        return
    Ap = _pack_buffer("A", ((m + BM - 1) // BM, Bp.shape[1], 2, TILE, TILE))  # (mb, kq, 2, 16, 16) tiles of op(A)
    assert Bp.shape[0] * BN >= n and Bp.shape[1] == (k + 2 * KS - 1) // (2 * KS)
    _pack(A, not trans_a, Ap, "A", prod)
    _gemm_on(Ap, Bp, C, float(alpha), float(beta), prod or 1, _CFG)


def mm_amx(A, B, C, trans_a, trans_b, alpha, beta, prod):
    """C = alpha op(A) op(B) + beta C with bfloat16 operands and float32 sums on AMX tiles, on prod
    threads (None: the calling thread); gemm_bf16.mm_bf16's interface.  float32 arrays whose rows
    are contiguous.  The packed operands live in buffers kept by shape: one caller thread at a time."""
    _check_operands(A, B, C)
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    if m == 0 or n == 0:
        return
    kq = (k + 2 * KS - 1) // (2 * KS)
    Ap = _pack_buffer("A", ((m + BM - 1) // BM, kq, 2, TILE, TILE))         # (mb, kq, 2, 16, 16) tiles of op(A)
    Bp = _pack_buffer("B", ((n + BN - 1) // BN, kq, 2, TILE, TILE))         # (nb, kq, 2, 16, 16) tiles of op(B)
    _pack(A, not trans_a, Ap, "A", prod)
    _pack(B, trans_b, Bp, "B", prod)                                        # op(B)'s columns are B's rows when trans_b
    _gemm_on(Ap, Bp, C, float(alpha), float(beta), prod or 1, _CFG)
