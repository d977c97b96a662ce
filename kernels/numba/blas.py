"""BLAS as a candidate GEMM: C = alpha * op(A) @ op(B) + beta * C through SciPy's BLAS.

The call np.dot makes inside jitted code (Numba's `numba_xxgemm` helper, which calls SciPy's
cython_blas ?gemm), but on row-major views with explicit leading dimensions, so a product may
accumulate (beta = 1) and write a block of a bigger array.  BLAS is column-major: the row-major
C = op(A) op(B) is issued as C^T = op(B)^T op(A)^T.  The call is a named external symbol, so the
functions using it are cached like the other kernels.  numba_tune.py times it against the
hand-written GEMM (gemm.py, gemm_variants.py) per product and machine.

Dimension legend: m, n, k as in BLAS (op(A) (m,k), op(B) (k,n), C (m,n)); nt threads.
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .gemm import check_rows_contiguous, gemm_sizes, row_stride
from .jit import JIT, PAR

_LL_CHAR = ir.IntType(8)
_LL_VOIDP = ir.IntType(8).as_pointer()


def available():
    """(True, '') when Numba finds SciPy's BLAS (what np.dot calls in jitted code), else (False, why)."""
    try:
        from numba.np.linalg import ensure_blas
        ensure_blas()
    except ImportError as e:
        return False, f"no BLAS for numba: {e}"
    return True, ""


@intrinsic
def _xxgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major BLAS ?gemm on the data pointers of three arrays (Fortran argument order)."""
    for arr in (a, b, c):
        if not isinstance(arr, types.Array) or arr.dtype not in (types.float32, types.float64):
            raise TypingError("_xxgemm takes float32 or float64 arrays")
    if not (a.dtype == b.dtype == c.dtype):
        raise TypingError("_xxgemm operands must share one dtype")
    dtype = c.dtype
    kind = ord("s" if dtype == types.float32 else "d")

    def codegen(context, builder, sig, args):
        ta, tb, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_ = args
        tys = sig.args
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.IntType(32), [_LL_CHAR, _LL_CHAR, _LL_CHAR, intp, intp, intp,
                                                 _LL_VOIDP, _LL_VOIDP, intp, _LL_VOIDP, intp,
                                                 _LL_VOIDP, _LL_VOIDP, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def ptr(ty, val):
            return builder.bitcast(context.make_array(ty)(context, builder, val).data, _LL_VOIDP)

        def slot(ty, val):
            return builder.bitcast(cgutils.alloca_once_value(
                builder, context.cast(builder, val, ty, dtype)), _LL_VOIDP)

        def as_intp(ty, val):
            return context.cast(builder, val, ty, types.intp)

        def as_char(ty, val):
            return builder.trunc(context.cast(builder, val, ty, types.int64), _LL_CHAR)

        builder.call(fn, (ir.Constant(_LL_CHAR, kind), as_char(tys[0], ta), as_char(tys[1], tb),
                          as_intp(tys[2], m_), as_intp(tys[3], n_), as_intp(tys[4], k_),
                          slot(tys[5], al), ptr(tys[6], a_), as_intp(tys[7], lda_),
                          ptr(tys[8], b_), as_intp(tys[9], ldb_), slot(tys[10], be),
                          ptr(tys[11], c_), as_intp(tys[12], ldc_)))
        return context.get_dummy_value()

    return types.void(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), codegen


_N, _T = ord("n"), ord("t")


@numba.njit(**JIT)
def gemm_blas(A, B, C, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C (m,n) = alpha * op(A) @ op(B) + beta * C by BLAS ?gemm; gemm.gemm's call and views."""
    m, n, k = gemm_sizes(A, B, C, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    if k == 0 or alpha == 0.0:
        for i in range(m):
            for j in range(n):
                C[i, j] = C[i, j] * beta if beta != 0.0 else 0.0
        return
    check_rows_contiguous(A, B, C)
    # column-major view: C^T (n,m) = op(B)^T (n,k) @ op(A)^T (k,m)
    _xxgemm(_T if trans_b else _N, _T if trans_a else _N, n, m, k, alpha,
            B, row_stride(B), A, row_stride(A), beta, C, row_stride(C))


@numba.njit(**PAR)
def _pgemm_blas(A, B, C, trans_a, trans_b, alpha, beta, nt, by_rows):
    """gemm_blas split over nt threads: blocks of C's rows (by_rows) or columns, one call each
    (BLAS itself runs one thread: numba_backend pins it)."""
    m, n = C.shape
    for t in numba.prange(nt):
        if by_rows:
            r0, r1 = t * m // nt, (t + 1) * m // nt
            Ak = A[:, r0:r1] if trans_a else A[r0:r1]
            gemm_blas(Ak, B, C[r0:r1], trans_a, trans_b, alpha, beta)
        else:
            j0, j1 = t * n // nt, (t + 1) * n // nt
            Bk = B[j0:j1] if trans_b else B[:, j0:j1]
            gemm_blas(A, Bk, C[:, j0:j1], trans_a, trans_b, alpha, beta)


@numba.njit(**JIT)
def mm_blas(A, B, C, trans_a, trans_b, alpha, beta, prod):
    """C = alpha op(A) op(B) + beta C by BLAS on the calling thread (prod None) or prod threads,
    split by columns unless C has too few of them for prod blocks of 64."""
    if prod is None:
        gemm_blas(A, B, C, trans_a, trans_b, alpha, beta)
    else:
        by_rows = C.shape[1] < 64 * prod
        _pgemm_blas(A[::1], B[::1], C[::1], trans_a, trans_b, float(alpha), float(beta), prod, by_rows)
