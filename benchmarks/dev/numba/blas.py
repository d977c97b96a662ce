"""Row-major GEMM for Numba kernels: C = alpha * op(A) @ op(B) + beta * C through BLAS.

np.dot inside @njit code only writes a fresh or fully overwritten output and needs
contiguous operands.  The LSTM kernels also want to accumulate (beta = 1) and to
multiply blocks of bigger arrays (rows of a window, a slice of the fused weight), so
`gemm` calls the same BLAS that np.dot uses - SciPy's, through Numba's own
`numba_xxgemm` helper (the one np.dot and np.linalg.pinv call) - with explicit leading
dimensions.  The call is a named external symbol, so functions using it could be cached
(this experiment compiles without a cache: it is not stamped with the package's kernels).

Operands are 2-D array views whose rows are contiguous (unit stride along the last
axis); the row stride may be anything >= the row length.  BLAS is column-major, so a
row-major product C = op(A) op(B) is issued as C^T = op(B)^T op(A)^T.
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas

from lstm_engine.kernels.numba.gemm import row_stride
from lstm_engine.kernels.numba.gemm import check_rows_contiguous, gemm_sizes

ensure_blas()    # ImportError early when SciPy is missing

_LL_CHAR = ir.IntType(8)
_LL_VOIDP = ir.IntType(8).as_pointer()


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


@numba.njit
def gemm(A, B, C, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C (m,n) = alpha * op(A) @ op(B) + beta * C, row-major views with contiguous rows.

    op(A) is (m,k): A itself (m,k) or, with trans_a, A.T for A (k,m); likewise op(B) (k,n).
    """
    m, n, k = gemm_sizes(A, B, C, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    if k == 0:
        for i in range(m):
            for j in range(n):
                C[i, j] = C[i, j] * beta if beta != 0.0 else 0.0
        return
    check_rows_contiguous(A, B, C)
    # column-major view: C^T (n,m) = op(B)^T (n,k) @ op(A)^T (k,m)
    _xxgemm(_T if trans_b else _N, _T if trans_a else _N, n, m, k, alpha,
            B, row_stride(B), A, row_stride(A), beta, C, row_stride(C))
