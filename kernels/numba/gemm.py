"""A register-blocked GEMM written in Numba: C = alpha * op(A) @ op(B) + beta * C.

The call of a BLAS gemm on row-major 2-D views with contiguous rows (any row stride), but the
products never leave the jitted code: the LSTM's time loops multiply a few batch rows by the
recurrent weight at every step, and a BLAS call packs W_h again each time (docs/numba.md
compares the two).

How: the classic micro-kernel (Goto / BLIS). C is cut into register blocks of MR rows x NR columns;
each block's sums live in registers while k runs: per k, one broadcast of op(A)[i, k] per row, one
row of op(B) (NR contiguous values) and rows x NR fused multiply-adds. k is cut into blocks of KC so
the op(B) panel a block reads (KC x NR) stays in L1 while the row blocks pass over it, and the rows
in passes of MC so the op(A) block they read stays in L2 while the panels pass. The register blocks
are one family written out by block_source: MR rows, LAST = MR + 1 for the last rows of a pass on
AVX-512 (not MR and a lone row), 4 or 2 for a short last block (its last row repeated up to that
size, computed, not stored; the 2-row block splits k into even and odd sums so that as many FMA
chains run side by side as in the bigger blocks). A column block narrower than NR reads a zero-
padded copy of its op(B) columns; at most NARROW_MAX last columns are dot products instead. op(B) =
B^T is copied once into a (k, n) buffer with padded rows first (padded_t, by tiles): callers that
multiply by the same B^T many times (the time loops) pass such a copy instead.

Dimension legend: m, n, k as in BLAS (op(A) (m,k), op(B) (k,n), C (m,n)); MR x NR the
register block; KC the k block; MC the rows per pass.  Summation order differs from BLAS, so
results agree with it to rounding (tests/backends/test_numba_backend.py compares both with
NumPy).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ...core.environment import target_has_avx512, vector_width
from .fastmath import like
from .jit import JIT, REASSOC

# The tiles, defined here only (output_layer splits rows by MR, lstm_layer_columns pads by PAD).
# Register block: rows of C x columns, and LAST, the rows of a pass's last block when that many
# are left (0: none), by the target's registers.  AVX-512: 8 x 32 (two zmm a row, 16 zmm of sums)
# and a last block of 9.  AVX2 has 16 ymm registers, and LLVM loads all of a block's broadcasts of
# op(A) before its FMAs: 6 x 16 and 8 x 32 spill sums at every k, so 5 x 16 and no 6-row block
# (docs/numba.md, "AVX2-only CPUs").
MR, NR, LAST = (8, 32, 9) if target_has_avx512() else (5, 16, 0)
KC = 256                # k per block: a (KC, NR) panel of op(B) stays in L1
MC = 64                 # rows of op(A) per pass over the column panels: (MC, KC) stays in L2
PAD = 32                # elements added to each row of a padded() copy
SET_STRIDE = 1024       # bytes: op(B) rows a multiple of this apart share L1 sets (see padded) ...
PAD_MIN_ROWS = 256      # ... and gemm copies them with padded rows when m is at least this
NARROW_MAX = 4          # a last column panel this narrow is done as dot products, not padded to NR
TILE_ROWS, TILE_COLS = 16, 64   # padded_t's tile of W: 16 cache lines read along, written across
LINE = 64               # bytes: a cache line, where panel buffers start (panel_buffer)
TN_MIN_PANELS = 8       # op(A) = A^T is packed (_gemm_tn) when C has this many NR-wide panels to share the copy ...
TN_MAX_ROWS = 255       # ... and at most this many rows (more: behind BLAS by less than the tuner's margin; docs/numba.md)


def _stack_array(n):
    """An intrinsic: a pointer to n elements of like's dtype on the stack of the calling function
    (an alloca in its entry block: free, and promoted to registers when every index into it is
    a constant after unrolling)."""
    @intrinsic
    def stack_row(typingctx, like):
        dtype = like.dtype

        def codegen(context, builder, sig, args):
            ll = context.get_value_type(dtype)
            return builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(ll, n)), ll.as_pointer())

        return types.CPointer(dtype)(like), codegen
    return stack_row


_acc_row = _stack_array(NR)     # one row of a register block's sums


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


# Bytes a row of sums is updated in at a time: one zmm register on AVX-512 (ymm when its loops
# prefer 256-bit vectors); on AVX2 the whole row (0): ymm pieces measured slower (docs/numba.md).
VECTOR_BYTES = (64 if vector_width() != "256-bit" else 32) if target_has_avx512() else 0


def _row_update(add, NR):
    """An intrinsic: Cf[c0:c0 + NR] = alpha * acc[:NR] (+ Cf[c0:c0 + NR] with add), written as
    vector operations of VECTOR_BYTES each (the same loop in numba becomes NR scalar updates, each
    lane taken out of the register of sums; docs/numba.md, "Rows of sums and float32 constants")."""
    @intrinsic
    def row_update(typingctx, acc, Cf, c0, alpha):
        dtype = Cf.dtype

        def codegen(context, builder, sig, args):
            acc_, cf, c0_, alpha_ = args
            ll = context.get_value_type(dtype)
            size = context.get_abi_sizeof(ll)
            lanes = min(NR, VECTOR_BYTES // size) if VECTOR_BYTES else NR
            vec, i32, i64 = ir.VectorType(ll, lanes), ir.IntType(32), ir.IntType(64)
            a = context.cast(builder, alpha_, sig.args[3], dtype)
            splat = builder.insert_element(ir.Constant(vec, ir.Undefined), a, ir.Constant(i32, 0))
            splat = builder.shuffle_vector(splat, ir.Constant(vec, ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))   # (lanes,) alpha
            src = context.make_array(sig.args[0])(context, builder, acc_).data
            dst = builder.gep(context.make_array(sig.args[1])(context, builder, cf).data,
                              [context.cast(builder, c0_, sig.args[2], types.int64)])
            for j in range(0, NR, lanes):                 # one vector of the row at a time
                at = ir.Constant(i64, j)
                s = builder.bitcast(builder.gep(src, [at]), vec.as_pointer())
                d = builder.bitcast(builder.gep(dst, [at]), vec.as_pointer())
                out = builder.fmul(builder.load(s, align=size), splat)
                if add:
                    out = builder.fadd(builder.load(d, align=size), out)
                builder.store(out, d, align=size)
            return context.get_dummy_value()

        return types.void(acc, Cf, c0, alpha), codegen
    return row_update


_row_add, _row_set = _row_update(True, NR), _row_update(False, NR)


@numba.njit(inline="always", **JIT)
def _store(acc, Cf, c0, nr, alpha, add):
    """Cf[c0 + j] (+)= alpha * acc[j] for j < nr: added (add) or stored over whatever C held
    (the first k block of a beta = 0 product).  A full row is a constant loop, so acc stays in
    registers; a short one goes through a copy."""
    alpha = like(acc[0], alpha)                  # a float64 alpha would widen every update
    if nr == NR:
        if add:
            _row_add(acc, Cf, c0, alpha)
        else:
            _row_set(acc, Cf, c0, alpha)
    else:
        tmp = numba.carray(_acc_row(Cf), NR)
        for jj in range(NR):
            tmp[jj] = acc[jj]
        if add:
            for jj in range(nr):
                Cf[c0 + jj] += alpha * tmp[jj]
        else:
            for jj in range(nr):
                Cf[c0 + jj] = alpha * tmp[jj]


# ----------------------------------------------------------------------------
# The register blocks: one template, written out per size
# ----------------------------------------------------------------------------

def block_source(rows, k_split=1, exact=False):
    """Python source of the register block _block<rows>:

        _block<rows>(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)
        C[i0:i0+mr, j0:j0+nr] (+)= alpha * sum_{k0<=k<k1} op(A)[i, k] op(B)[k, j]

    op(A)[i, k] = Af[i*sai + k*sak]; the block's NR columns of op(B) row k are Bf[k*ldb + boff:][:NR]
    (boff = j0 in B itself, 0 in the zero-padded copy of a narrow last panel); only nr <= NR of
    them are stored, at C[i, j0 + jj] = Cf[i*ldc + j0 + jj]; without add the sums are stored (=).
    The sums are rows x k_split stack rows of NR (acc<s*rows + r>: row r, the k with k % k_split
    = s) that LLVM keeps in registers: written out line by line, not as a loop over rows, every
    index into them is a constant once the NR loops are unrolled.  exact: mr == rows always;
    else mr <= rows and the rows past mr repeat row i0+mr-1 and are not stored.  k_split 2:
    even and odd k sum apart and are added at the end.  print(block_source(8)) shows one.
    """
    assert rows >= 2 and k_split in (1, 2)
    R, S = rows, k_split
    acc = [f"acc{a}" for a in range(R * S)]
    out = [f"def _block{R}(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add):",
           f'    """The {R}-row register block: block_source({R}, {S}, {exact})."""']
    out += [f"    {a} = numba.carray(_acc_row(Cf), NR)" for a in acc]
    out += ["    for jj in range(NR):", "        " + "; ".join(f"{a}[jj] = 0" for a in acc)]
    if exact:                                               # row r of op(A): i0 + r
        row = ["i0"] + [f"(i0 + {r})" for r in range(1, R)]
    else:                                                   # row r, or the last one, i0 + mr - 1
        row = [f"r{r}" for r in range(R)]
        out += ["    last = mr - 1",
                "    " + ", ".join(row) + " = i0, " + ", ".join(f"i0 + min({r}, last)" for r in range(1, R))]

    def k_step(splits):
        """Statements of one pass over `splits` consecutive k (k, k+1, ...), indented for a loop body."""
        ks = ["k" if s == 0 else f"(k + {s})" for s in range(splits)]
        lines = [f"a{s * R + r} = Af[_u({row[r]} * sai + {ks[s]} * sak)]" for s in range(splits) for r in range(R)]
        lines += [f"kb{s} = {ks[s]} * ldb + boff" for s in range(splits)]       # op(B)[k+s, :] = Bf[kb:kb+NR]
        lines += ["for jj in range(NR):"]
        lines += [f"    b{s} = Bf[_u(kb{s} + jj)]" for s in range(splits)]
        lines += [f"    acc{s * R + r}[jj] += a{s * R + r} * b{s}" for s in range(splits) for r in range(R)]
        return ["        " + x for x in lines]

    if S == 1:
        out += ["    for k in range(k0, k1):"] + k_step(1)
    else:
        out += ["    k = k0", f"    while k + {S} <= k1:"] + k_step(S) + [f"        k += {S}"]
        out += ["    if k < k1:"] + k_step(1)
        out += ["    for jj in range(NR):",
                "        " + "; ".join(f"acc{r}[jj] += acc{s * R + r}[jj]" for s in range(1, S) for r in range(R))]
    for r in range(R):
        store = f"_store(acc{r}, Cf, {'i0' if r == 0 else f'(i0 + {r})'} * ldc + j0, nr, alpha, add)"
        out += [f"    {store}"] if exact or r == 0 else [f"    if mr > {r}:", f"        {store}"]
    return "\n".join(out) + "\n"


def _register_block(rows, k_split=1, exact=False):
    """The jitted _block<rows> of block_source, compiled as code of this file (so numba caches it
    and cache.py stamps it with the other kernels)."""
    ns = {}
    exec(compile(block_source(rows, k_split, exact), __file__, "exec"), globals(), ns)
    return numba.njit(**JIT)(ns[f"_block{rows}"])


_block_mr = _register_block(MR)
_block_last = _register_block(LAST, exact=True) if LAST else _block_mr    # the last LAST rows of a pass
_block4 = _register_block(4)
_block2 = _register_block(2, k_split=2)


@numba.njit(inline="always", **JIT)
def _rows(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add):
    """One register block of mr rows: MR, LAST for the last LAST, or 4 or 2 for a short last
    block (8 x 32: 25 rows = 8 + 8 + 9; 26 = 8 + 8 + 8 + 2, not 32)."""
    if mr == LAST:
        _block_last(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)
    elif mr > 4:
        _block_mr(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)
    elif mr > 2:
        _block4(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)
    else:
        _block2(Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add)


@numba.njit(inline="always", **JIT)
def _block_rows(left):
    """Rows of the next register block when `left` rows remain: MR, or all of the last LAST."""
    return left if left == LAST else min(MR, left)


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


@numba.njit(inline="always", **JIT)
def apply_beta(C, k, alpha, beta):
    """C = beta * C ahead of the sums -> (overwrite, done): with beta = 0 (and something to add) the
    first k block stores its sums instead (whatever C held, as BLAS); done: nothing to add."""
    overwrite = beta == 0.0 and k > 0 and alpha != 0.0
    if beta != 1.0 and not overwrite:
        _scale(C, beta)
    return overwrite, k == 0 or alpha == 0.0


@numba.njit(**REASSOC)
def _few_columns(Af, sai, sak, Bf, ldb, Cf, ldc, m, j0, j1, k, alpha, overwrite):
    """C[:, j0:j1] (+)= alpha * op(A) @ op(B)[:, j0:j1] for the few columns (<= NARROW_MAX) left
    after the NR-wide panels, one column at a time: V = 65 would otherwise compute an NR-wide
    zero-padded panel for one column.  Row-major op(A)
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
    with overwrite, C = alpha op(A) op(B) (the first k block stores, whatever C held).  The
    (KC, NR) panels are read where they lie, not packed as BLAS packs (docs/numba.md: slower here)."""
    full = n - n % NR
    if 0 < n - full <= NARROW_MAX:                                   # a few last columns: dot products
        _few_columns(Af, sai, sak, Bf, ldb, Cf, ldc, m, full, n, k, alpha, overwrite)
        n = full
    P = line_buffer(k * NR if full < n else 0, Cf)                  # the narrow last panel, zero-padded (k,NR)
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
def pack_a_t(Af, lda, k0, k1, m, Ap, mr_max, last):
    """Ap = op(A)[:, k0:k1] for op(A) = A^T (A's rows lda apart), one register block after another
    (rows as _block_rows cuts them: mr_max, or all of the last `last`): the block of rows i0..i0+mr
    starts at i0*kc and holds its mr values of each k side by side (at i0*kc + kk*mr).  Read in
    place, a block's k would each lie in a row of A of its own: kc cache lines a block."""
    kc = k1 - k0
    i0 = 0
    while i0 < m:
        mr = m - i0 if m - i0 == last else min(mr_max, m - i0)
        base = i0 * kc
        for kk in range(kc):
            src, dst = (k0 + kk) * lda + i0, base + kk * mr
            for r in range(mr):
                Ap[_u(dst + r)] = Af[_u(src + r)]
        i0 += mr


@numba.njit(**JIT)
def _gemm_tn(Af, lda, Bf, ldb, Cf, ldc, m, n, k, alpha, overwrite):
    """C (m,n) (+)= alpha * A^T (m,k) @ op(B) (k,n) for A (k,m) (the weight gradients, x^T dz):
    per k block, op(A)^T packed by register blocks (pack_a_t) and each (KC, NR) column panel of
    op(B) packed once, then every row block passes over the panel while it is in L1.  Read in
    place, op(B)'s rows (4H floats apart: a multiple of SET_STRIDE bytes) share a few L1 sets."""
    full = n - n % NR
    if 0 < n - full <= NARROW_MAX:                                   # a few last columns: axpys
        _few_columns(Af, 1, lda, Bf, ldb, Cf, ldc, m, full, n, k, alpha, overwrite)
        n = full
    kb = min(k, KC)
    Ap = np.empty(m * kb, Cf.dtype)                                  # (m, kc) op(A)'s k block, by blocks
    P = line_buffer(kb * NR, Cf)                                     # (kc, NR) one panel of op(B)
    one, zero = np.int64(1), np.int64(0)     # not literals: the blocks then compile for _gemm_nn's types only
    for k0 in range(0, k, KC):
        k1 = min(k0 + KC, k)
        kc, add = k1 - k0, k0 > 0 or not overwrite
        pack_a_t(Af, lda, k0, k1, m, Ap, MR, LAST)
        for j0 in range(0, n, NR):
            nr = min(NR, n - j0)
            _pack(Bf, ldb, k0, k1, j0, nr, P)
            i0 = zero
            while i0 < m:
                mr = _block_rows(m - i0)                             # block i0: Ap[i0*kc + kk*mr + r]
                _rows(Ap[i0 * kc - i0:], one, mr, P, NR, 0, Cf, ldc, i0, mr, j0, nr, zero, kc, alpha, add)
                i0 += mr


@numba.njit(**JIT)
def _gemm_tn_view(A, lda, Bk, C, ldc, m, n, k, alpha, overwrite):
    """_gemm_tn on the flat data of the views (Bk an argument: see _gemm_view)."""
    _gemm_tn(_flat(A), lda, _flat(Bk), row_stride(Bk), _flat(C), ldc, m, n, k, alpha, overwrite)


@numba.njit(**JIT)
def gemm(A, B, C, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C (m,n) = alpha * op(A) @ op(B) + beta * C, row-major 2-D views with contiguous rows.

    op(A) is (m,k): A itself (m,k) or, with trans_a, A.T for A (k,m); likewise op(B) (k,n).
    With many rows (m >= PAD_MIN_ROWS) an op(B) whose rows lie a multiple of SET_STRIDE bytes
    apart is read from a copy with padded rows (padded: an L1 cache-set conflict).  op(A) = A^T
    with at least TN_MIN_PANELS column panels and at most TN_MAX_ROWS rows runs _gemm_tn, which
    packs both operands by blocks (fewer panels, as the output layer's V = 65, share the copy of A
    too little; docs/numba.md, "The GEMM", on the rows).
    """
    m, n, k = gemm_sizes(A, B, C, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    overwrite, done = apply_beta(C, k, alpha, beta)
    if done:
        return
    check_rows_contiguous(A, B, C)
    lda, ldc = row_stride(A), row_stride(C)
    sai, sak = (1, lda) if trans_a else (lda, 1)                      # op(A)[i, k] = Af[i*sai + k*sak]
    packs_a = trans_a and n >= TN_MIN_PANELS * NR and m <= TN_MAX_ROWS   # else op(A) = A^T read in place
    if packs_a and trans_b:
        _gemm_tn_view(A, lda, padded_t(B), C, ldc, m, n, k, alpha, overwrite)     # both packed by blocks
    elif packs_a:
        _gemm_tn_view(A, lda, B, C, ldc, m, n, k, alpha, overwrite)
    elif trans_b:
        _gemm_view(A, sai, sak, padded_t(B), C, ldc, m, n, k, alpha, overwrite)   # (k,n) op(B), rows padded
    elif pads_b(m, row_stride(B) * B.itemsize):
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
    variable would be freed after its last use, before the product."""
    _gemm_nn(_flat(A), sai, sak, _flat(Bk), row_stride(Bk), _flat(C), ldc, m, n, k, alpha, overwrite)


@numba.njit(inline="always", **JIT)
def gemm_sizes(A, B, C, trans_a, trans_b):
    """(m, n, k) of C (m,n) = op(A) (m,k) op(B) (k,n); ValueError when the shapes disagree.
    (Shared with the BLAS gemm of benchmarks/dev/numba/blas.py, as are check_rows_contiguous
    and row_stride.)"""
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
def row_stride(X):
    """Elements between consecutive rows of a 2-D view (at least its row length)."""
    s = X.strides[0] // X.itemsize
    return s if (s >= X.shape[1] and X.shape[0] > 1) else max(X.shape[1], 1)


@numba.njit(**JIT)
def padded(X):
    """A copy of X (m,n) with rows PAD elements further apart than n -> the (m,n) view of it
    (any layout; padded_t copies a transposed one faster), for a B that many products read
    (the LSTM time loops' W_h at every step).
    Rows a multiple of SET_STRIDE bytes apart (W_h at H = 128: 2 KB) fall into a few sets of
    the L1 cache, so an NR-column panel of op(B) could not stay there from one row block to
    the next and every block would read it from L2 again (docs/numba.md, "L1 cache sets")."""
    m, n = X.shape
    out = np.empty((m, n + PAD), X.dtype)                            # (m, n + PAD)
    for i in range(m):
        for j in range(n):
            out[i, j] = X[i, j]
    return out[:, :n]


@numba.njit(**JIT)
def padded_t(W):
    """padded(W.T) for W (k,n) with contiguous rows -> (n,k) view of a copy with rows PAD further
    apart than k, copied by tiles of TILE_ROWS x TILE_COLS of W.  Copied row by row of W.T, each
    read is a cache line of W's of its own, and W's rows (a multiple of SET_STRIDE apart for
    W_h) share a few L1 sets: the lines are gone before the next row of W.T would use them.
    A tile's lines of W stay in L1 until all their elements are copied."""
    k, n = W.shape
    ld = k + PAD
    out = np.empty((n, ld), W.dtype)                                 # (n, k + PAD)
    Wf, Of, ldw = _flat(W), _flat(out), row_stride(W)
    for i0 in range(0, k, TILE_ROWS):
        i1 = min(i0 + TILE_ROWS, k)
        for j0 in range(0, n, TILE_COLS):
            j1 = min(j0 + TILE_COLS, n)
            for i in range(i0, i1):
                src = i * ldw
                for j in range(j0, j1):
                    Of[_u(j * ld + i)] = Wf[_u(src + j)]
    return out[:, :k]


@numba.njit(**JIT)
def panels(B):
    """B (k,n) -> P (ceil(n/NR), k, NR): its NR-column panels, each one contiguous block, the
    last zero-padded, for gemm_panels.  The time loops pack W_h so once a call: read in place,
    a panel's k rows of NR columns lie a row of B apart, scattered over pages the hardware
    prefetchers do not follow; packed, each panel is read as one sequential block."""
    k, n = B.shape
    P = panel_buffer(np.int64(1), (n + NR - 1) // NR, k, B)[0]      # (panels, k, NR)
    pack_panels(B, P)
    return P


@numba.njit(**JIT)
def panels_t(W):
    """panels(W.T) for W (n,k) -> (ceil(n/NR), k, NR)."""
    n, k = W.shape
    P = panel_buffer(np.int64(1), (n + NR - 1) // NR, k, W)[0]      # (panels, k, NR)
    pack_panels_t(W, P)
    return P


@numba.njit(**JIT)
def line_buffer(n, like):
    """An uninitialised (n,) array of like's dtype starting on a cache line: numba's np.empty starts
    on 32 bytes, half the time 32 bytes into a line, and every NR-wide row load of a packed panel
    then splits two lines (with AVX-512 each of a row's two zmm loads)."""
    raw = np.empty(n + LINE // like.itemsize, like.dtype)           # (n + one line,)
    off = (LINE - raw.ctypes.data % LINE) % LINE // like.itemsize
    return raw[off:off + n]


@numba.njit(**JIT)
def panel_buffer(nt, npanels, k, like):
    """An uninitialised (nt, npanels, k, NR) array of like's dtype starting on a cache line (line_buffer)."""
    return line_buffer(nt * npanels * k * NR, like).reshape((nt, npanels, k, NR))


@numba.njit(**JIT)
def pack_panels(B, P):
    """P (ceil(n/NR), k, NR) = the panels of B (k,n), zeros past column n (each panel as _pack
    packs gemm's narrow last one)."""
    k, n = B.shape
    Bf, ldb = _flat(B), row_stride(B)
    for p in range(P.shape[0]):
        j0 = p * NR
        _pack(Bf, ldb, 0, k, j0, max(0, min(NR, n - j0)), P[p].reshape(k * NR))


@numba.njit(**JIT)
def pack_panels_t(W, P):
    """P = the panels of W.T for W (n,k), read along W's rows; zeros past column n of W.T."""
    n, k = W.shape
    P[:] = 0
    for j in range(n):
        src, dst = W[j], P[j // NR]
        jj = j % NR
        for kk in range(k):
            dst[kk, jj] = src[kk]


@numba.njit(**JIT)
def gemm_panels(A, P, C, alpha=1.0, beta=0.0):
    """C (m,n) = alpha * A (m,k) @ B + beta * C for P = panels(B) (B (k,n'), n <= n'):
    gemm's register blocks over panels packed once (rows of A and C contiguous)."""
    m, n = C.shape
    k = P.shape[1]
    if A.shape[0] != m or A.shape[1] != k or n > P.shape[0] * NR:
        raise ValueError("gemm_panels: shapes do not match")
    if m == 0 or n == 0:
        return
    overwrite, done = apply_beta(C, k, alpha, beta)
    if done:
        return
    check_rows_contiguous(A, C, C)
    Af, Cf, Pf = _flat(A), _flat(C), P.reshape(P.size)
    lda, ldc = row_stride(A), row_stride(C)
    for k0 in range(0, k, KC):
        k1 = min(k0 + KC, k)
        add = k0 > 0 or not overwrite
        for ic in range(0, m, MC):
            ie = min(ic + MC, m)
            for j0 in range(0, n, NR):
                boff = (j0 // NR) * k * NR                          # panel j0 // NR: Pf[boff + kk*NR + jj]
                i0 = ic
                while i0 < ie:
                    mr = _block_rows(ie - i0)
                    _rows(Af, lda, 1, Pf, NR, boff, Cf, ldc, i0, mr, j0, min(NR, n - j0), k0, k1, alpha, add)
                    i0 += mr
