"""The hand-written GEMM in other register blockings, for numba_tune.py to choose from per machine.

gemm.py's blocking on AVX-512 (MR x NR = 8 x 32: 16 zmm registers of float32 sums) suits a core with
one 512-bit FMA pipe per cycle's worth of loads; a core with two 512-bit FMA units needs more sums
in flight per loaded value, and an AVX2-only core has 16 ymm registers (gemm.py runs 5 x 16 there).
So the same driver (gemm._gemm_nn's loops, gemm.block_source's register blocks) is written out here
for each blocking of BLOCKINGS, under names of its own (so numba's disk cache keeps them apart), and
compiled as code of this file (cached and stamped with the other kernels). Which one runs a product
is measured, not assumed: numba_tune.py validates and times them on the model's shapes.

Dimension legend: m, n, k as in BLAS (op(A) (m,k), op(B) (k,n), C (m,n)); MR x NR the register
block; nt threads.  Every product function has lstm_layer.mm's call:
    mm_<tag>(A, B, C, trans_a, trans_b, alpha, beta, prod)     prod: None or a thread count
"""
from __future__ import annotations

import numba

from . import gemm as _g
from .jit import JIT

# tag -> (MR, NR): rows x columns of the register block (gemm.py's own: 8 x 32, or 5 x 16 without
# AVX-512).  12x32 keeps 24 zmm registers of sums (two FMA units); 6x16 keeps 12 ymm registers
# (AVX2, 16 registers in all).
# A family here is MR rows and the short blocks 4 and 2 (fewer blocks than gemm.py's: compile time).
BLOCKINGS = {"12x32": (12, 32), "6x16": (6, 16)}

_DRIVER = '''
def _store_{t}(acc, Cf, c0, nr, alpha, add):
    """gemm._store for NR = {NR}."""
    if nr == {NR}:
        if add:
            _row_add(acc, Cf, c0, alpha)
        else:
            _row_set(acc, Cf, c0, alpha)
    else:
        tmp = numba.carray(_acc_row(Cf), {NR})
        for jj in range({NR}):
            tmp[jj] = acc[jj]
        if add:
            for jj in range(nr):
                Cf[c0 + jj] += alpha * tmp[jj]
        else:
            for jj in range(nr):
                Cf[c0 + jj] = alpha * tmp[jj]


def _pack_{t}(Bf, ldb, k0, k1, j0, nr, P):
    """gemm._pack for NR = {NR}."""
    for kk in range(k1 - k0):
        src, dst = (k0 + kk) * ldb + j0, kk * {NR}
        for jj in range(nr):
            P[_u(dst + jj)] = Bf[_u(src + jj)]
        for jj in range(nr, {NR}):
            P[_u(dst + jj)] = 0


def _gemm_nn_{t}(Af, sai, sak, Bf, ldb, Cf, ldc, m, n, k, alpha, overwrite):
    """gemm._gemm_nn with the {MR} x {NR} register blocks."""
    full = n - n % {NR}
    if 0 < n - full <= NARROW_MAX:
        _few_columns(Af, sai, sak, Bf, ldb, Cf, ldc, m, full, n, k, alpha, overwrite)
        n = full
    P = line_buffer(k * {NR} if full < n else 0, Cf)                 # (k,NR) the narrow last panel
    if full < n:
        _pack_{t}(Bf, ldb, 0, k, full, n - full, P)
    for k0 in range(0, k, KC):
        k1 = min(k0 + KC, k)
        add = k0 > 0 or not overwrite
        for ic in range(0, m, MC):
            ie = min(ic + MC, m)
            for j0 in range(0, full, {NR}):
                i0 = ic
                while i0 < ie:
                    mr = min({MR}, ie - i0)
                    _rows_{t}(Af, sai, sak, Bf, ldb, j0, Cf, ldc, i0, mr, j0, {NR}, k0, k1, alpha, add)
                    i0 += mr
            if full < n:
                i0 = ic
                while i0 < ie:
                    mr = min({MR}, ie - i0)
                    _rows_{t}(Af, sai, sak, P, {NR}, 0, Cf, ldc, i0, mr, full, n - full, k0, k1, alpha, add)
                    i0 += mr


def _gemm_tn_{t}(Af, lda, Bf, ldb, Cf, ldc, m, n, k, alpha, overwrite):
    """gemm._gemm_tn (op(A) = A^T, both operands packed) with the {MR} x {NR} register blocks."""
    full = n - n % {NR}
    if 0 < n - full <= NARROW_MAX:
        _few_columns(Af, 1, lda, Bf, ldb, Cf, ldc, m, full, n, k, alpha, overwrite)
        n = full
    kb = min(k, KC)
    Ap = np.empty(m * kb, Cf.dtype)                                  # (m, kc) op(A)'s k block, by blocks
    P = line_buffer(kb * {NR}, Cf)                                   # (kc, NR) one panel of op(B)
    one, zero = np.int64(1), np.int64(0)
    for k0 in range(0, k, KC):
        k1 = min(k0 + KC, k)
        kc, add = k1 - k0, k0 > 0 or not overwrite
        pack_a_t(Af, lda, k0, k1, m, Ap, {MR}, 0)
        for j0 in range(0, n, {NR}):
            nr = min({NR}, n - j0)
            _pack_{t}(Bf, ldb, k0, k1, j0, nr, P)
            i0 = zero
            while i0 < m:
                mr = min({MR}, m - i0)
                _rows_{t}(Ap[i0 * kc - i0:], one, mr, P, {NR}, 0, Cf, ldc, i0, mr, j0, nr, zero, kc, alpha, add)
                i0 += mr


def _tn_view_{t}(A, lda, Bk, C, ldc, m, n, k, alpha, overwrite):
    """gemm._gemm_tn_view."""
    _gemm_tn_{t}(_flat(A), lda, _flat(Bk), row_stride(Bk), _flat(C), ldc, m, n, k, alpha, overwrite)


def _view_{t}(A, sai, sak, Bk, C, ldc, m, n, k, alpha, overwrite):
    """gemm._gemm_view: Bk arrives as an argument, so a copy made for the call stays alive."""
    _gemm_nn_{t}(_flat(A), sai, sak, _flat(Bk), row_stride(Bk), _flat(C), ldc, m, n, k, alpha, overwrite)


def gemm_{t}(A, B, C, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """gemm.gemm with the {MR} x {NR} register blocks."""
    m, n, k = gemm_sizes(A, B, C, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    overwrite, done = apply_beta(C, k, alpha, beta)
    if done:
        return
    check_rows_contiguous(A, B, C)
    lda, ldc = row_stride(A), row_stride(C)
    sai, sak = (1, lda) if trans_a else (lda, 1)
    packs_a = trans_a and n >= TN_MIN_PANELS * {NR} and m <= TN_MAX_ROWS
    if packs_a and trans_b:
        _tn_view_{t}(A, lda, padded_t(B), C, ldc, m, n, k, alpha, overwrite)
    elif packs_a:
        _tn_view_{t}(A, lda, B, C, ldc, m, n, k, alpha, overwrite)
    elif trans_b:
        _view_{t}(A, sai, sak, padded_t(B), C, ldc, m, n, k, alpha, overwrite)
    elif pads_b(m, row_stride(B) * B.itemsize):
        _view_{t}(A, sai, sak, padded(B), C, ldc, m, n, k, alpha, overwrite)
    else:
        _view_{t}(A, sai, sak, B, C, ldc, m, n, k, alpha, overwrite)


def _pgemm_{t}(A, B, C, trans_a, trans_b, alpha, beta, nt, by_rows):
    """gemm_{t} over nt threads: blocks of {MR} rows of C (by_rows) or column blocks."""
    m, n = C.shape
    blocks = (m + {MR} - 1) // {MR}
    for t in numba.prange(nt):
        if by_rows:
            r0, r1 = min(t * blocks // nt * {MR}, m), min((t + 1) * blocks // nt * {MR}, m)
            if r1 > r0:
                Ak = A[:, r0:r1] if trans_a else A[r0:r1]
                gemm_{t}(Ak, B, C[r0:r1], trans_a, trans_b, alpha, beta)
        else:
            j0, j1 = t * n // nt, (t + 1) * n // nt
            Bk = B[j0:j1] if trans_b else B[:, j0:j1]
            gemm_{t}(A, Bk, C[:, j0:j1], trans_a, trans_b, alpha, beta)


def mm_{t}(A, B, C, trans_a, trans_b, alpha, beta, prod):
    """C = alpha op(A) op(B) + beta C on the calling thread (prod None) or prod threads, split by
    columns unless C has fewer than 2 NR columns a thread (V = 65: rows)."""
    if prod is None:
        gemm_{t}(A, B, C, trans_a, trans_b, alpha, beta)
    else:
        by_rows = C.shape[1] < 2 * {NR} * prod
        _pgemm_{t}(A[::1], B[::1], C[::1], trans_a, trans_b, float(alpha), float(beta), prod, by_rows)
'''


SHORT = (4, 2)      # the short last blocks (rows) below MR


def _rows_source(tag, mr):
    """_rows_<tag>: the register block for mr rows (MR, then the short sizes; a block of fewer
    rows than its size repeats its last row, computed and not stored)."""
    args = "Af, sai, sak, Bf, ldb, boff, Cf, ldc, i0, mr, j0, nr, k0, k1, alpha, add"
    sizes = [mr] + list(SHORT)
    out = [f"def _rows_{tag}({args}):"]
    for i, (size, below) in enumerate(zip(sizes, sizes[1:] + [0])):
        test = ("if" if i == 0 else "elif") + f" mr > {below}:" if below else "else:"
        out += [f"    {test}", f"        _block{size}_{tag}({args})"]
    return "\n".join(out) + "\n"


def driver_source(tag, mr, nr):
    """Python source of one blocking's GEMM: register blocks, driver, threads (print it to read)."""
    blocks = [_g.block_source(s, k_split=2 if s == 2 else 1) for s in [mr] + list(SHORT)]
    blocks = [src.replace("(Af,", f"_{tag}(Af,", 1) for src in blocks]            # _block<rows>_<tag>
    blocks = [src.replace("_store(", f"_store_{tag}(") for src in blocks]
    return "\n\n".join(blocks + [_rows_source(tag, mr), _DRIVER.format(t=tag, MR=mr, NR=nr)])


def _compile(tag, mr, nr):
    """-> the namespace of one blocking, its functions jitted (PAR for the threaded split)."""
    ns = dict(vars(_g))                                      # gemm's helpers; NR and _acc_row replaced
    ns.update(NR=nr, _acc_row=_g._stack_array(nr), _row_add=_g._row_update(True, nr),
              _row_set=_g._row_update(False, nr), numba=numba, __name__=__name__)
    code = compile(driver_source(tag, mr, nr), __file__, "exec")
    plain = {}
    exec(code, ns, plain)
    inline = (f"_rows_{tag}", f"_store_{tag}")
    for name, fn in plain.items():
        if name.startswith(f"_pgemm_{tag}"):
            ns[name] = numba.njit(**dict(JIT, parallel=True))(fn)
        else:
            ns[name] = numba.njit(inline="always" if name in inline else "never", **JIT)(fn)
    return ns


_NS = {tag: _compile(tag, mr, nr) for tag, (mr, nr) in BLOCKINGS.items()}
PRODUCTS = {f"gemm{tag}": _NS[tag][f"mm_{tag}"] for tag in BLOCKINGS}     # name -> mm-like product
GEMMS = {f"gemm{tag}": _NS[tag][f"gemm_{tag}"] for tag in BLOCKINGS}      # name -> gemm-like call
