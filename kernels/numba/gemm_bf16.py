"""A GEMM with bfloat16 operands and float32 sums: C = alpha * op(A) @ op(B) + beta * C.

For CPUs with AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and later):
one vdpbf16ps multiplies 16 pairs of bfloat16 and adds them into 16 float32 sums, twice the
multiply-adds of a float32 FMA per instruction.  op(A) and op(B) are rounded to bfloat16 (8 bits
of mantissa, round to nearest even) as they are packed; the sums and C stay float32.  An opt-in
product (LSTM_ENGINE_TUNE=bf16, docs/numba.md "bfloat16 products"): its results differ from the
float32 product by the operands' rounding, about 2^-9 relative each, so the tuner never picks it
on its own.

How: op(A) is packed into blocks of MR rows, (kp, MR) pairs each, and op(B) into panels of NR
columns, (kp, NR) pairs each: a pair holds k = 2p in its low 16 bits and k = 2p+1 in its high 16
(zero past k).  The register block (_block, LLVM IR) keeps MR x NR sums in 16 zmm registers; per
pair p it broadcasts each row's pair and issues two vdpbf16ps a row.  Blocks are stored through a
per-thread (MR, NR) scratch with alpha and beta.

Dimension legend: m, n, k as in BLAS (op(A) (m,k), op(B) (k,n), C (m,n)); kp = ceil(k/2) pairs;
MR x NR the register block; mb = ceil(m/MR) row blocks; nb = ceil(n/NR) column panels.

Import this module only where available() says so: on another CPU LLVM cannot compile vdpbf16ps.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import JIT, PAR

MR, NR = 8, 32          # register block: 8 rows x 2 zmm of 16 sums
LANES = 16              # float32 sums in one zmm
PAIRS_PER_TASK = 16     # pairs of op(X)^T's rows a packing task reads across all blocks
MC_BLOCKS = 8           # row blocks a panel serves while in L1 (their op(A), 8 x kp x 32 bytes, in L2)


def available():
    """(True, "") where numba compiles for a CPU with AVX512_BF16, else (False, why)."""
    from numba.core import config

    from ...core.environment import get, host_features
    if get("LSTM_ENGINE_NUMBA_ISA", "native") == "avx2":
        return False, "LSTM_ENGINE_NUMBA_ISA=avx2 holds numba to AVX2, which has no bfloat16 products"
    features = config.CPU_FEATURES
    if features:
        ok = "+avx512bf16" in features.split(",")
    else:
        host = host_features() or {}
        ok = features is None and bool(host.get("avx512bf16"))
    return (True, "") if ok else (False, "this CPU has no AVX512_BF16 (vdpbf16ps)")


# ----------------------------------------------------------------------------
# Packing: float32 -> pairs of bfloat16 in a uint32
# ----------------------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def _bf16(x):
    """The bfloat16 bits of float32 x, rounded to nearest even (NaN not special-cased)."""
    u = np.uint32(np.float32(x).view(np.uint32))
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@numba.njit(inline="always", **JIT)
def _pair(lo, hi):
    """A uint32 holding bfloat16(lo) in its low half and bfloat16(hi) in its high half."""
    return _bf16(lo) | (_bf16(hi) << np.uint32(16))


@numba.njit(**PAR)
def _pack_rows(X, trans, width, out):
    """Pack op(X) (rows, k) into out (ceil(rows/width), kp, width) uint32 pairs, zeros past the
    rows and past k.  op(X) = X^T when trans (X (k, rows)), else X (rows, k)."""
    if trans:
        _pack_columns(X, width, out)
        return
    rows = X.shape[0]
    for blk in numba.prange(out.shape[0]):
        for r in range(width):                           # along each row of X: reads in order
            i = blk * width + r
            pack_row(X[i] if i < rows else X[0, :0], out, blk, r)


@numba.njit(inline="always", **JIT)
def pack_row(x, out, blk, r):
    """x (k,), one row of op(X), into out[blk, :, r] as bfloat16 pairs, zeros past k (all zeros
    for an empty x: a row past the last)."""
    k, kp = x.shape[0], out.shape[1]
    for p in range(k // 2):
        out[blk, p, r] = _pair(x[2 * p], x[2 * p + 1])
    if k % 2:
        out[blk, k // 2, r] = _pair(x[k - 1], x.dtype.type(0))
    for p in range((k + 1) // 2, kp):
        out[blk, p, r] = 0


@numba.njit(inline="always", **JIT)
def _pack_columns(X, width, out):
    """_pack_rows for op(X) = X^T (X (k, rows)): PAIRS_PER_TASK pairs of X's rows at a time, read
    across every block in order, so each row of X streams once."""
    k, rows = X.shape
    nblk, kp = out.shape[0], out.shape[1]
    zero = X.dtype.type(0)
    for task in numba.prange((kp + PAIRS_PER_TASK - 1) // PAIRS_PER_TASK):
        for blk in range(nblk):
            c0 = blk * width
            for p in range(task * PAIRS_PER_TASK, min(kp, (task + 1) * PAIRS_PER_TASK)):
                lo = X[2 * p]
                if c0 + width <= rows and 2 * p + 1 < k:
                    hi = X[2 * p + 1]
                    for r in range(width):
                        out[blk, p, r] = _pair(lo[c0 + r], hi[c0 + r])
                else:
                    for r in range(width):
                        i = c0 + r
                        a = lo[i] if i < rows else zero
                        b = X[2 * p + 1, i] if i < rows and 2 * p + 1 < k else zero
                        out[blk, p, r] = _pair(a, b)


# ----------------------------------------------------------------------------
# The register block
# ----------------------------------------------------------------------------

@intrinsic
def _block(typingctx, Ap, Bp, acc, ia, ib):
    """acc (MR,NR) = sum_p Ap[ia] (kp, MR) pairs x Bp[ib] (kp, NR) pairs, by vdpbf16ps."""
    def codegen(context, builder, sig, args):
        ap, bp, acc_, ia_, ib_ = args
        A = context.make_array(sig.args[0])(context, builder, ap)            # (mb, kp, MR) uint32
        B = context.make_array(sig.args[1])(context, builder, bp)            # (nb, kp, NR) uint32
        S = context.make_array(sig.args[2])(context, builder, acc_)          # (MR,NR) float32, contiguous
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vf, vi = ir.VectorType(f32, LANES), ir.VectorType(i32, LANES)
        dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vi, vi]),
                                             "llvm.x86.avx512bf16.dpbf16ps.512")
        kp = cgutils.unpack_tuple(builder, A.shape, 3)[1]
        ia64 = context.cast(builder, ia_, sig.args[3], types.int64)
        ib64 = context.cast(builder, ib_, sig.args[4], types.int64)
        a0 = builder.gep(A.data, [builder.mul(builder.mul(ia64, kp), ir.Constant(i64, MR))])
        b0 = builder.gep(B.data, [builder.mul(builder.mul(ib64, kp), ir.Constant(i64, NR))])
        zero = ir.Constant(vf, None)
        entry = builder.basic_block
        head, body, done = (builder.append_basic_block(n) for n in ("bf16.head", "bf16.body", "bf16.done"))
        builder.branch(head)
        builder.position_at_end(head)
        p = builder.phi(i64)
        sums = [builder.phi(vf) for _ in range(MR * 2)]                     # row r: sums[2r], sums[2r+1]
        p.add_incoming(ir.Constant(i64, 0), entry)
        for s in sums:
            s.add_incoming(zero, entry)
        builder.cbranch(builder.icmp_signed("<", p, kp), body, done)
        builder.position_at_end(body)
        brow = builder.gep(b0, [builder.mul(p, ir.Constant(i64, NR))])
        b = [builder.load(builder.bitcast(builder.gep(brow, [ir.Constant(i64, h * LANES)]), vi.as_pointer()),
                          align=4) for h in range(2)]                        # op(B) pairs, 2 x (16,)
        arow = builder.gep(a0, [builder.mul(p, ir.Constant(i64, MR))])
        new = []
        for r in range(MR):
            a = builder.load(builder.gep(arow, [ir.Constant(i64, r)]), align=4)
            av = builder.insert_element(ir.Constant(vi, ir.Undefined), a, ir.Constant(i32, 0))
            av = builder.shuffle_vector(av, ir.Constant(vi, ir.Undefined), ir.Constant(vi, [0] * LANES))
            new += [builder.call(dot, [sums[2 * r + h], av, b[h]]) for h in range(2)]
        p.add_incoming(builder.add(p, ir.Constant(i64, 1)), builder.basic_block)
        for s, v in zip(sums, new):
            s.add_incoming(v, builder.basic_block)
        builder.branch(head)
        builder.position_at_end(done)
        for j, s in enumerate(sums):
            dst = builder.bitcast(builder.gep(S.data, [ir.Constant(i64, j * LANES)]), vf.as_pointer())
            builder.store(s, dst, align=4)
        return context.get_dummy_value()

    return types.void(Ap, Bp, acc, ia, ib), codegen


@numba.njit(inline="always", **JIT)
def store_block(acc, C, i0, j0, a, b, beta):
    """C[i0:i0+R, j0:j0+N] = a * acc (R,N) (+ b * C unless beta is 0), clipped to C (this
    module's and gemm_amx's register or tile blocks)."""
    m, n = C.shape
    R, N = acc.shape
    if i0 + R <= m and j0 + N <= n:                      # a full block: no clipping in the loops
        for r in range(R):
            row = C[i0 + r, j0:j0 + N]
            if beta == 0:
                for j in range(N):
                    row[j] = a * acc[r, j]
            else:
                for j in range(N):
                    row[j] = a * acc[r, j] + b * row[j]
        return
    for r in range(min(R, m - i0)):
        row = C[i0 + r]
        for j in range(min(N, n - j0)):
            v = a * acc[r, j]
            row[j0 + j] = v if beta == 0 else v + b * row[j0 + j]


@numba.njit(**PAR)
def _gemm_packed(Ap, Bp, C, alpha, beta, prod):
    """C (m,n) = alpha * (packed op(A)) (packed op(B)) + beta * C.  Jobs are (MC_BLOCKS row
    blocks, panel) pairs, row-chunk-major, split into prod contiguous runs: a panel (kp, NR)
    serves the chunk's blocks from L1, the chunk's blocks serve every panel from L2."""
    mb, nb = Ap.shape[0], Bp.shape[0]
    chunks = (mb + MC_BLOCKS - 1) // MC_BLOCKS
    jobs = chunks * nb
    a = np.float32(alpha)
    b = np.float32(beta)
    for t in numba.prange(prod):
        acc = np.empty((MR, NR), np.float32)                                # (MR,NR) one block's sums
        for job in range(t * jobs // prod, (t + 1) * jobs // prod):
            ch, jb = job // nb, job % nb
            for ib in range(ch * MC_BLOCKS, min(mb, (ch + 1) * MC_BLOCKS)):
                _block(Ap, Bp, acc, ib, jb)
                store_block(acc, C, ib * MR, jb * NR, a, b, beta)


_packs = {}     # (role, shape) -> the packed operand buffer, kept: fresh ones of megabytes page-fault every call


def _pack_buffer(role, shape):
    buf = _packs.get((role, shape))
    if buf is None:
        buf = _packs[role, shape] = np.empty(shape, np.uint32)
    return buf


def mm_bf16(A, B, C, trans_a, trans_b, alpha, beta, prod):
    """C = alpha op(A) op(B) + beta C with bfloat16 operands and float32 sums, the product on prod
    threads (None: the calling thread; the packing runs on numba's threads either way); the
    numba_tune candidate interface.  float32 arrays only.  The
    packed operands live in buffers kept by shape: one caller thread at a time."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    kp = (k + 1) // 2
    Ap = _pack_buffer("A", ((m + MR - 1) // MR, kp, MR))                   # (mb, kp, MR) pairs of op(A)
    Bp = _pack_buffer("B", ((n + NR - 1) // NR, kp, NR))                   # (nb, kp, NR) pairs of op(B)
    _pack_rows(A, trans_a, MR, Ap)
    _pack_rows(B, not trans_b, NR, Bp)                                     # op(B)^T's rows are op(B)'s columns
    _gemm_packed(Ap, Bp, C, float(alpha), float(beta), prod or 1)
