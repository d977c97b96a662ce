"""A register-blocked GEMM written in Numba: C = alpha * op(A) @ op(B) + beta * C.

Same call as numba_blas.gemm (row-major 2-D views with contiguous rows, any row stride), but
the products never leave the jitted code for BLAS.  Why: the LSTM's time loops multiply a few
batch rows by the recurrent weight at every step (16 x 128 @ 128 x 512 per thread at the
seed config), and OpenBLAS packs W_h again on each of those small calls.  Measured one thread
on this machine (Zen 5, AVX-512; GFLOP/s; benchmarks/gemm.py, 2026-11-27):

    shape (m, k, n)          OpenBLAS (OPENBLAS_CORETYPE=Haswell)   OpenBLAS (SkylakeX)   this (two runs)
    16 x 128 x 512   (h W_h)                  59                           96             222
    64 x 384 x 768   (h W_h)                  97                          180             230
    3200 x 384 x 1536 (x W_x)                118                          231       182 - 203

How: the classic micro-kernel (Goto / BLIS).  C is cut into blocks of MR rows x NR columns;
each block's MR x NR sums live in registers (eight stack rows of NR, which LLVM keeps in 16
zmm registers for float32) while k runs: per k, MR broadcasts of op(A)[i, k], one row of op(B)
(NR contiguous values) and MR x NR fused multiply-adds.  k is cut into blocks of KC so the
op(B) panel a block reads (KC x NR) stays in L1 while the row blocks pass over it, and the rows
in passes of MC so the op(A) block they read stays in L2 while the panels pass.  The last nine
rows of a pass are one 9-row block; a short last row block runs a 4- or 2-row kernel and
repeats its last row up to that size (computed, not stored); a column block narrower than NR reads a zero-padded copy of its op(B) columns.
op(B) = B^T is copied once into a contiguous (k, n) buffer first: callers that multiply by
the same B^T many times (the time loops) pass a transposed copy instead.

Dimension legend: m, n, k as in BLAS (op(A) (m,k), op(B) (k,n), C (m,n)); MR x NR the
register block; KC the k block; MC the rows per pass.  Summation order differs from BLAS, so
results agree with it to rounding (tests/test_numba_backend.py::test_gemm_on_strided_blocks_with_beta
compares both against NumPy).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import JIT, REASSOC

MR, NR, KC = 8, 32, 256
MC = 64                 # rows of op(A) per pass over the column panels (64 x 256: 64 KB, stays in L2)
PAD = 32                # elements added to each row of a padded() copy
SET_STRIDE = 1024       # bytes: op(B) rows a multiple of this apart share L1 sets (see padded) ...
NARROW_MAX = 4          # a last column panel this narrow is done as dot products, not padded to NR
PAD_MIN_ROWS = 256      # ... and gemm copies op(B) with padded rows when m is at least this (copy ~ k*n
#                         against 2*m*k*n FLOP; medium's 6400 x 512 x 2048: 134 -> 173 GFLOP/s one thread)


@intrinsic
def _stack_row(typingctx, like, size):
    """A pointer to `size` (a literal) elements of like's dtype on the stack of the calling
    function (an alloca in its entry block: free, and promoted to registers when every index
    into it is a constant after unrolling)."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    n, dtype = size.literal_value, like.dtype

    def codegen(context, builder, sig, args):
        ll = context.get_value_type(dtype)
        return builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(ll, n)), ll.as_pointer())

    return types.CPointer(dtype)(like, size), codegen


@intrinsic
def _flat(typingctx, X):
    """The data of a 2-D view as a 1-D C-contiguous array of all elements its rows span
    (index i*row_stride + j), so the kernels index with explicit strides and LLVM sees unit
    steps along rows.  It borrows X's memory: the caller keeps X alive."""
    if not isinstance(X, types.Array) or X.ndim != 2:
        return None
    out = types.Array(X.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        dst = context.make_array(out)(context, builder)
        shape = cgutils.unpack_tuple(builder, src.shape, 2)
        strides = cgutils.unpack_tuple(builder, src.strides, 2)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(X.dtype)))
        zero, one = context.get_constant(types.intp, 0), context.get_constant(types.intp, 1)
        rows_m1 = builder.sub(shape[0], one)
        empty = builder.or_(builder.icmp_signed("==", shape[0], zero), builder.icmp_signed("==", shape[1], zero))
        span = builder.add(builder.mul(rows_m1, builder.sdiv(strides[0], itemsize)), shape[1])
        n = builder.select(empty, zero, span)
        context.populate_array(dst, data=src.data, shape=cgutils.pack_array(builder, [n]),
                               strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize,
                               meminfo=None)
        return dst._getvalue()

    return out(X), codegen


@numba.njit(inline="always", **JIT)
def _u(i):
    """An index as unsigned: Numba then skips its negative-index wraparound select."""
    return np.uintp(i)


@numba.njit(**JIT)
def _block(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add):
    """C[i0:i0+mr, j0:j0+nr] += alpha * sum_{k0<=k<k1} op(A)[i, k] op(B)[k, j]  (mr <= MR, nr <= NR);
    without add the sums are stored (=) instead.

    op(A)[i, k] = Af[i*sai + k*sak]; the block's NR columns of op(B) row k are Bf[k*ldb + boff:][:NR]
    (boff = j0 in B itself, 0 in the zero-padded copy of a narrow last panel); only nr of them are stored, at
    C[i, j0 + jj] = Cf[i*ldc + j0 + jj].  Rows past mr repeat row i0+mr-1."""
    acc0 = numba.carray(_stack_row(Cf, 32), NR)                     # one register row per row of C (32 = NR,
    acc1 = numba.carray(_stack_row(Cf, 32), NR)                     # a literal: the intrinsic needs one)
    acc2 = numba.carray(_stack_row(Cf, 32), NR)
    acc3 = numba.carray(_stack_row(Cf, 32), NR)
    acc4 = numba.carray(_stack_row(Cf, 32), NR)
    acc5 = numba.carray(_stack_row(Cf, 32), NR)
    acc6 = numba.carray(_stack_row(Cf, 32), NR)
    acc7 = numba.carray(_stack_row(Cf, 32), NR)
    for jj in range(NR):
        acc0[jj] = 0; acc1[jj] = 0; acc2[jj] = 0; acc3[jj] = 0      # noqa: E702
        acc4[jj] = 0; acc5[jj] = 0; acc6[jj] = 0; acc7[jj] = 0      # noqa: E702
    last = mr - 1
    r0, r1, r2, r3 = i0, i0 + min(1, last), i0 + min(2, last), i0 + min(3, last)
    r4, r5, r6, r7 = i0 + min(4, last), i0 + min(5, last), i0 + min(6, last), i0 + min(7, last)
    for k in range(k0, k1):
        a0 = Af[_u(r0 * sai + k * sak)]; a1 = Af[_u(r1 * sai + k * sak)]      # noqa: E702
        a2 = Af[_u(r2 * sai + k * sak)]; a3 = Af[_u(r3 * sai + k * sak)]      # noqa: E702
        a4 = Af[_u(r4 * sai + k * sak)]; a5 = Af[_u(r5 * sai + k * sak)]      # noqa: E702
        a6 = Af[_u(r6 * sai + k * sak)]; a7 = Af[_u(r7 * sai + k * sak)]      # noqa: E702
        kb = k * ldb + boff                                         # this block's op(B)[k, :] = Bf[kb:kb+NR]
        for jj in range(NR):
            b = Bf[_u(kb + jj)]
            acc0[jj] += a0 * b; acc1[jj] += a1 * b; acc2[jj] += a2 * b; acc3[jj] += a3 * b  # noqa: E702
            acc4[jj] += a4 * b; acc5[jj] += a5 * b; acc6[jj] += a6 * b; acc7[jj] += a7 * b  # noqa: E702
    _store(acc0, Cf, i0 * ldc + j0, nr, alpha, add)
    if mr > 1:
        _store(acc1, Cf, (i0 + 1) * ldc + j0, nr, alpha, add)
    if mr > 2:
        _store(acc2, Cf, (i0 + 2) * ldc + j0, nr, alpha, add)
    if mr > 3:
        _store(acc3, Cf, (i0 + 3) * ldc + j0, nr, alpha, add)
    if mr > 4:
        _store(acc4, Cf, (i0 + 4) * ldc + j0, nr, alpha, add)
    if mr > 5:
        _store(acc5, Cf, (i0 + 5) * ldc + j0, nr, alpha, add)
    if mr > 6:
        _store(acc6, Cf, (i0 + 6) * ldc + j0, nr, alpha, add)
    if mr > 7:
        _store(acc7, Cf, (i0 + 7) * ldc + j0, nr, alpha, add)


@numba.njit(**JIT)
def _block4(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add):
    """_block for a short row block (mr <= 4): half the registers and half the work."""
    acc0 = numba.carray(_stack_row(Cf, 32), NR)                     # one register row per row of C
    acc1 = numba.carray(_stack_row(Cf, 32), NR)
    acc2 = numba.carray(_stack_row(Cf, 32), NR)
    acc3 = numba.carray(_stack_row(Cf, 32), NR)
    for jj in range(NR):
        acc0[jj] = 0; acc1[jj] = 0; acc2[jj] = 0; acc3[jj] = 0      # noqa: E702
    last = mr - 1
    r0, r1, r2, r3 = i0, i0 + min(1, last), i0 + min(2, last), i0 + min(3, last)
    for k in range(k0, k1):
        a0 = Af[_u(r0 * sai + k * sak)]; a1 = Af[_u(r1 * sai + k * sak)]      # noqa: E702
        a2 = Af[_u(r2 * sai + k * sak)]; a3 = Af[_u(r3 * sai + k * sak)]      # noqa: E702
        kb = k * ldb + boff                                         # this block's op(B)[k, :] = Bf[kb:kb+NR]
        for jj in range(NR):
            b = Bf[_u(kb + jj)]
            acc0[jj] += a0 * b; acc1[jj] += a1 * b; acc2[jj] += a2 * b; acc3[jj] += a3 * b  # noqa: E702
    _store(acc0, Cf, i0 * ldc + j0, nr, alpha, add)
    if mr > 1:
        _store(acc1, Cf, (i0 + 1) * ldc + j0, nr, alpha, add)
    if mr > 2:
        _store(acc2, Cf, (i0 + 2) * ldc + j0, nr, alpha, add)
    if mr > 3:
        _store(acc3, Cf, (i0 + 3) * ldc + j0, nr, alpha, add)


@numba.njit(**JIT)
def _block2(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add):
    """_block for two rows (mr <= 2): even and odd k sum into separate rows of registers, so
    eight FMA chains run side by side as in the bigger blocks (two rows alone would wait on
    the FMA latency); the halves are added at the end."""
    acc0 = numba.carray(_stack_row(Cf, 32), NR)                     # row 0, even k
    acc1 = numba.carray(_stack_row(Cf, 32), NR)                     # row 1, even k
    acc2 = numba.carray(_stack_row(Cf, 32), NR)                     # row 0, odd k
    acc3 = numba.carray(_stack_row(Cf, 32), NR)                     # row 1, odd k
    for jj in range(NR):
        acc0[jj] = 0; acc1[jj] = 0; acc2[jj] = 0; acc3[jj] = 0      # noqa: E702
    r0, r1 = i0, i0 + min(1, mr - 1)
    k = k0
    while k + 2 <= k1:
        a0 = Af[_u(r0 * sai + k * sak)]; a1 = Af[_u(r1 * sai + k * sak)]      # noqa: E702
        a2 = Af[_u(r0 * sai + (k + 1) * sak)]; a3 = Af[_u(r1 * sai + (k + 1) * sak)]      # noqa: E702
        kb, kc = k * ldb + boff, (k + 1) * ldb + boff               # op(B)[k, :] and op(B)[k+1, :]
        for jj in range(NR):
            b, d = Bf[_u(kb + jj)], Bf[_u(kc + jj)]
            acc0[jj] += a0 * b; acc1[jj] += a1 * b; acc2[jj] += a2 * d; acc3[jj] += a3 * d  # noqa: E702
        k += 2
    if k < k1:
        a0 = Af[_u(r0 * sai + k * sak)]; a1 = Af[_u(r1 * sai + k * sak)]      # noqa: E702
        kb = k * ldb + boff
        for jj in range(NR):
            b = Bf[_u(kb + jj)]
            acc0[jj] += a0 * b; acc1[jj] += a1 * b                  # noqa: E702
    for jj in range(NR):
        acc0[jj] += acc2[jj]; acc1[jj] += acc3[jj]                  # noqa: E702
    _store(acc0, Cf, i0 * ldc + j0, nr, alpha, add)
    if mr > 1:
        _store(acc1, Cf, (i0 + 1) * ldc + j0, nr, alpha, add)


@numba.njit(**JIT)
def _block9(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add):
    """_block for the last nine rows (mr = 9): one block instead of 8 + 1, whose lone row
    (computed by _block2) cost about a third of an 8-row block: karpathy's 25 rows per thread
    (8 + 8 + 9).  Eighteen zmm rows of sums, two of op(B), broadcasts from memory."""
    acc0 = numba.carray(_stack_row(Cf, 32), NR)                     # one register row per row of C
    acc1 = numba.carray(_stack_row(Cf, 32), NR)
    acc2 = numba.carray(_stack_row(Cf, 32), NR)
    acc3 = numba.carray(_stack_row(Cf, 32), NR)
    acc4 = numba.carray(_stack_row(Cf, 32), NR)
    acc5 = numba.carray(_stack_row(Cf, 32), NR)
    acc6 = numba.carray(_stack_row(Cf, 32), NR)
    acc7 = numba.carray(_stack_row(Cf, 32), NR)
    acc8 = numba.carray(_stack_row(Cf, 32), NR)
    for jj in range(NR):
        acc0[jj] = 0; acc1[jj] = 0; acc2[jj] = 0; acc3[jj] = 0; acc4[jj] = 0  # noqa: E702
        acc5[jj] = 0; acc6[jj] = 0; acc7[jj] = 0; acc8[jj] = 0                # noqa: E702
    for k in range(k0, k1):
        a0 = Af[_u(i0 * sai + k * sak)]; a1 = Af[_u((i0 + 1) * sai + k * sak)]      # noqa: E702
        a2 = Af[_u((i0 + 2) * sai + k * sak)]; a3 = Af[_u((i0 + 3) * sai + k * sak)]      # noqa: E702
        a4 = Af[_u((i0 + 4) * sai + k * sak)]; a5 = Af[_u((i0 + 5) * sai + k * sak)]      # noqa: E702
        a6 = Af[_u((i0 + 6) * sai + k * sak)]; a7 = Af[_u((i0 + 7) * sai + k * sak)]      # noqa: E702
        a8 = Af[_u((i0 + 8) * sai + k * sak)]
        kb = k * ldb + boff                                         # this block's op(B)[k, :] = Bf[kb:kb+NR]
        for jj in range(NR):
            b = Bf[_u(kb + jj)]
            acc0[jj] += a0 * b; acc1[jj] += a1 * b; acc2[jj] += a2 * b; acc3[jj] += a3 * b  # noqa: E702
            acc4[jj] += a4 * b; acc5[jj] += a5 * b; acc6[jj] += a6 * b; acc7[jj] += a7 * b  # noqa: E702
            acc8[jj] += a8 * b
    _store(acc0, Cf, i0 * ldc + j0, nr, alpha, add)
    _store(acc1, Cf, (i0 + 1) * ldc + j0, nr, alpha, add)
    _store(acc2, Cf, (i0 + 2) * ldc + j0, nr, alpha, add)
    _store(acc3, Cf, (i0 + 3) * ldc + j0, nr, alpha, add)
    _store(acc4, Cf, (i0 + 4) * ldc + j0, nr, alpha, add)
    _store(acc5, Cf, (i0 + 5) * ldc + j0, nr, alpha, add)
    _store(acc6, Cf, (i0 + 6) * ldc + j0, nr, alpha, add)
    _store(acc7, Cf, (i0 + 7) * ldc + j0, nr, alpha, add)
    _store(acc8, Cf, (i0 + 8) * ldc + j0, nr, alpha, add)


@numba.njit(inline="always", **JIT)
def _store(acc, Cf, c0, nr, alpha, add):
    """Cf[c0 + j] (+)= alpha * acc[j] for j < nr: added (add) or stored over whatever C held
    (the first k block of a beta = 0 product).  A full row is a constant loop, so acc stays in
    registers; a short one goes through a copy."""
    if nr == NR:
        Cr = Cf[c0:c0 + NR]
        if add:
            for jj in range(NR):
                Cr[jj] += alpha * acc[jj]
        else:
            for jj in range(NR):
                Cr[jj] = alpha * acc[jj]
    else:
        tmp = numba.carray(_stack_row(Cf, 32), NR)
        for jj in range(NR):
            tmp[jj] = acc[jj]
        if add:
            for jj in range(nr):
                Cf[c0 + jj] += alpha * tmp[jj]
        else:
            for jj in range(nr):
                Cf[c0 + jj] = alpha * tmp[jj]


@numba.njit(inline="always", **JIT)
def _rows(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add):
    """One register block: 8 rows, 9 for the last nine, or 4 or 2 for a short last block (25 rows =
    8 + 8 + 9; 26 = 8 + 8 + 8 + 2, not 32)."""
    if mr == 9:
        _block9(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)
    elif mr > 4:
        _block(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)
    elif mr > 2:
        _block4(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)
    else:
        _block2(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)


@numba.njit(inline="always", **JIT)
def _block_rows(left):
    """Rows of the next register block when `left` rows remain: MR, or all nine of the last nine."""
    return left if left == 9 else min(MR, left)


@numba.njit(**JIT)
def _pack(Bf, ldb, k0, k1, j0, nr, P):
    """P (flat (k1-k0, NR)) = op(B)[k0:k1, j0:j0+nr], zero-padded to NR columns."""
    for kk in range(k1 - k0):
        src, dst = (k0 + kk) * ldb + j0, kk * NR
        if nr == NR:
            for jj in range(NR):
                P[_u(dst + jj)] = Bf[_u(src + jj)]
        else:
            for jj in range(nr):
                P[_u(dst + jj)] = Bf[_u(src + jj)]
            for jj in range(nr, NR):
                P[_u(dst + jj)] = 0


@numba.njit(**JIT)
def _scale(C, beta):
    """C = beta * C; beta = 0 writes zeros (whatever C held, NaN included), as BLAS does."""
    for i in range(C.shape[0]):
        row = C[i]
        if beta == 0.0:
            for j in range(C.shape[1]):
                row[j] = 0
        else:
            for j in range(C.shape[1]):
                row[j] *= beta


@numba.njit(**REASSOC)
def _few_columns(Af, sai, sak, Bf, ldb, Cf, ldc, m, j0, j1, k, alpha, overwrite):
    """C[:, j0:j1] (+)= alpha * op(A) @ op(B)[:, j0:j1] for the few columns (<= NARROW_MAX) left
    after the NR-wide panels, one column at a time: V = 65 would otherwise compute a 32-wide
    zero-padded panel for one column (a third of the output layer's products).  Row-major op(A)
    (sak = 1): a dot product per row; op(A) = A^T (sai = 1): an axpy over the rows per k.
    Reassociated so that LLVM vectorises the sums."""
    col = np.empty(k, Cf.dtype)                                      # (k,) op(B)[:, j]
    zero = np.zeros(1, Cf.dtype)[0]                                  # (C may hold NaN: beta = 0)
    acc = np.empty(m if sak != 1 else 0, Cf.dtype)                   # (m,) sums for the axpy form
    for j in range(j0, j1):
        for kk in range(k):
            col[kk] = Bf[_u(kk * ldb + j)]
        if sak == 1:
            for i in range(m):
                base = i * sai
                s = zero
                for kk in range(k):
                    s += Af[_u(base + kk)] * col[kk]
                _put(Cf, i * ldc + j, alpha * s, overwrite)
        else:
            acc[:] = 0
            for kk in range(k):
                base, b = kk * sak, col[kk]
                for i in range(m):
                    acc[i] += Af[_u(base + i * sai)] * b
            for i in range(m):
                _put(Cf, i * ldc + j, alpha * acc[i], overwrite)


@numba.njit(inline="always", **JIT)
def _put(Cf, at, v, overwrite):
    if overwrite:
        Cf[_u(at)] = v
    else:
        Cf[_u(at)] += v


@numba.njit(**JIT)
def _gemm_nn(Af, sai, sak, Bf, ldb, Cf, ldc, m, n, k, alpha, overwrite):
    """C (m,n) += alpha * op(A) (m,k) @ op(B) (k,n), op(B) row-major in Bf with row stride ldb;
    with overwrite, C = alpha op(A) op(B) (the first k block stores, whatever C held).
    (Copying each (KC, NR) panel contiguous first, as BLAS packs, measured slower here:
    165 against 179 GFLOP/s at 3200 x 384 x 1536, and 133 against 232 at 64 x 384 x 768.)"""
    full = n - n % NR
    if 0 < n - full <= NARROW_MAX:                                   # a few last columns: dot products
        _few_columns(Af, sai, sak, Bf, ldb, Cf, ldc, m, full, n, k, alpha, overwrite)
        n = full
    P = np.zeros(k * NR if full < n else 0, Cf.dtype)               # the narrow last panel, zero-padded (k,NR)
    if full < n:
        _pack(Bf, ldb, 0, k, full, n - full, P)
    for k0 in range(0, k, KC):
        k1 = min(k0 + KC, k)
        add = k0 > 0 or not overwrite
        for ic in range(0, m, MC):                                   # MC rows of op(A) stay in L2 ...
            ie = min(ic + MC, m)
            for j0 in range(0, full, NR):                            # ... while the panels pass
                i0 = ic
                while i0 < ie:
                    mr = _block_rows(ie - i0)
                    _rows(Af, sai, sak, Bf, ldb, j0, Cf, ldc, i0, mr, j0, NR, k0, k1, alpha, add)
                    i0 += mr
            if full < n:
                i0 = ic
                while i0 < ie:
                    mr = _block_rows(ie - i0)
                    _rows(Af, sai, sak, P, NR, 0, Cf, ldc, i0, mr, full, n - full, k0, k1, alpha, add)
                    i0 += mr


@numba.njit(**JIT)
def gemm(A, B, C, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C (m,n) = alpha * op(A) @ op(B) + beta * C, row-major 2-D views with contiguous rows.

    op(A) is (m,k): A itself (m,k) or, with trans_a, A.T for A (k,m); likewise op(B) (k,n).
    With many rows (m >= PAD_MIN_ROWS) an op(B) whose rows lie a multiple of SET_STRIDE bytes
    apart is read from a copy with padded rows (padded: an L1 cache-set conflict).
    """
    m, n, k = gemm_sizes(A, B, C, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    overwrite = beta == 0.0 and k > 0 and alpha != 0.0              # stored, not zeroed then added
    if beta != 1.0 and not overwrite:
        _scale(C, beta)
    if k == 0 or alpha == 0.0:
        return
    check_rows_contiguous(A, B, C)
    lda, ldc = _row_stride(A), _row_stride(C)
    sai, sak = (1, lda) if trans_a else (lda, 1)                      # op(A)[i, k] = Af[i*sai + k*sak]
    if trans_b and pads_b(m, n * C.itemsize):
        _gemm_view(A, sai, sak, padded(B.T), C, ldc, m, n, k, alpha, overwrite)   # (k,n) op(B), rows padded
    elif trans_b:
        _gemm_view(A, sai, sak, np.ascontiguousarray(B.T), C, ldc, m, n, k, alpha, overwrite)   # (k,n) op(B)
    elif pads_b(m, _row_stride(B) * B.itemsize):
        _gemm_view(A, sai, sak, padded(B), C, ldc, m, n, k, alpha, overwrite)     # rows padded: see padded()
    else:
        _gemm_view(A, sai, sak, B, C, ldc, m, n, k, alpha, overwrite)


@numba.njit(inline="always", **JIT)
def pads_b(m, row_bytes):
    """True when gemm reads op(B) from a padded copy: C has many rows (m >= PAD_MIN_ROWS) and
    op(B)'s rows lie a multiple of SET_STRIDE bytes apart (row_bytes)."""
    return m >= PAD_MIN_ROWS and row_bytes % SET_STRIDE == 0


@numba.njit(**JIT)
def _gemm_view(A, sai, sak, Bk, C, ldc, m, n, k, alpha, overwrite):
    """_gemm_nn on the flat data of the views.  Bk (k,n) = op(B) arrives as an argument, so a
    copy made for this call (gemm's padded or transposed op(B)) stays alive while _gemm_nn
    reads it: _flat's 1-D view does not own the memory, and a copy held only by a local
    variable would be freed after its last use, before the product (a use after free that
    crashed on 50 MB copies)."""
    _gemm_nn(_flat(A), sai, sak, _flat(Bk), _row_stride(Bk), _flat(C), ldc, m, n, k, alpha, overwrite)


@numba.njit(inline="always", **JIT)
def gemm_sizes(A, B, C, trans_a, trans_b):
    """(m, n, k) of C (m,n) = op(A) (m,k) op(B) (k,n); ValueError when the shapes disagree.
    (Shared with numba_blas.gemm, as are check_rows_contiguous and _row_stride.)"""
    m, n = C.shape
    am, k = (A.shape[1], A.shape[0]) if trans_a else (A.shape[0], A.shape[1])
    bk, bn = (B.shape[1], B.shape[0]) if trans_b else (B.shape[0], B.shape[1])
    if am != m or bn != n or bk != k:
        raise ValueError("gemm: shapes do not match")
    return m, n, k


@numba.njit(inline="always", **JIT)
def check_rows_contiguous(A, B, C):
    """ValueError unless every row of the three views is contiguous (unit stride along it)."""
    if A.strides[1] != A.itemsize and A.shape[1] > 1 or B.strides[1] != B.itemsize and B.shape[1] > 1 \
            or C.strides[1] != C.itemsize and C.shape[1] > 1:
        raise ValueError("gemm: rows must be contiguous")


@numba.njit(inline="always", **JIT)
def _row_stride(X):
    """Elements between consecutive rows of a 2-D view (at least its row length)."""
    s = X.strides[0] // X.itemsize
    return s if (s >= X.shape[1] and X.shape[0] > 1) else max(X.shape[1], 1)


@numba.njit(**JIT)
def padded(X):
    """A copy of X (m,n), any layout, with rows PAD elements further apart than n -> the (m,n)
    view of it, for a B that many products read (the LSTM time loops' W_h at every step).
    Rows 2 KB or 4 KB apart (W_h at H = 128: 512 floats a row) fall into a few sets of the
    48 KB L1 cache, so a 32-column panel of op(B) could not stay there from one row block to
    the next and every block read it from L2 again (the short row blocks then cost nearly as
    much as full ones).  One thread, GFLOP/s with row stride n / n + PAD (2026-11-27):
    25 x 128 x 512 196 / 215, 25 x 512 x 128 202 / 220, 64 x 512 x 1024 183 / 243 (medium's
    per-thread step), 16 x 128 x 512 (no short block) 236-245 either way; medium's input
    projection per thread 6400 x 512 x 1024 (B rows 8 KB apart) 134 / 173, its weight gradient
    512 x 6400 x 1024 142 / 177 (the copy: 3.8 ms of 47)."""
    m, n = X.shape
    out = np.empty((m, n + PAD), X.dtype)                            # (m, n + PAD)
    for i in range(m):
        for j in range(n):
            out[i, j] = X[i, j]
    return out[:, :n]
