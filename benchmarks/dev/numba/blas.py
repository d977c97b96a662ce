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
from numba.np.linalg import ensure_blas

from lstm_engine.kernels.numba.gemm import row_stride
from lstm_engine.kernels.numba.gemm import check_rows_contiguous, gemm_sizes

ensure_blas()    # ImportError early when SciPy is missing

from lstm_engine.kernels.numba.blas import _N, _T, _xxgemm   # noqa: E402  the shipped ?gemm intrinsic


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
