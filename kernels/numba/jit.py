"""The @numba.njit options of every kernel module (and of the experiments under benchmarks/dev).

    JIT      cached machine code; error_model="numpy" drops the Python ZeroDivisionError checks
             (so loops vectorise); FMA contraction allowed
    PAR      JIT with numba's threads (prange)
    REASSOC  JIT where LLVM may also reorder a sum into vector partial sums
    STRICT   cached, no contraction: rounds operation by operation as NumPy does (Adam)

A callee compiles once per signature of argument types its callers pass.  A prange index is
typed int64 when numba first types the loop and uint64 in the parallel body, and a literal
0, 1, True or False is a type of its own, so the kernels pass np.int64(k), np.int64(0),
bool(flag) and np.float64(alpha) where one callee is reached both ways.
"""
from __future__ import annotations

from . import cache  # noqa: F401  (the cache locator, in place before the importer's first @njit(cache=True))

JIT = dict(cache=True, error_model="numpy", fastmath={"contract"})
PAR = dict(JIT, parallel=True)
REASSOC = dict(JIT, fastmath={"reassoc", "contract"})
STRICT = dict(cache=True, error_model="numpy")
