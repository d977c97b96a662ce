"""The cell variants on the GPU: peephole, coupled and gru (kernels/cuda/cells.cu) behind the cupy backend.

The equations are those of numpy_cells.py (the reference); this module validates, allocates and
launches.  cupy_backend hands itself in as `be` (its cuBLAS binding and graph cache), so that this
module does not import it back.  Per layer and window, as the LSTM's cuBLAS step path:
    x W_x for all T steps           one cuBLAS product (N,I)@(I,G) before the loop
    the time loop                   per step cuBLAS h_{t-1} W_h (backward: dz_{t+1} W_h^T) by raw
                                    pointer + one cell kernel; the loop is a CUDA graph keyed by
                                    its pointers (cupy_backend._BLAS_LOOPS) when graphs are on
    dW_h, dW_x, biases, dx          one cuBLAS product / reduction each over all N rows
The step options fused / persist are the LSTM's; the cells take this path whatever `step` says,
and follow `blas` (direct / matmul) and `graphs`.

Dimension legend:
    T time steps   B batch   I input size of a layer   H hidden   N = T*B   V vocab   E embedding
    G gate columns of W: 4H (peephole: i|f|g|o), 3H (coupled: f|g|o; gru: r|z|n)
    A cached values per step: 4H (peephole: i,f,g,o), 3H (coupled: f,g,o), 4H (gru: r,z,n,hn)
"""
from __future__ import annotations

import numpy as np

from . import cupy_kernels as ck

try:
    import cupy as cp
except Exception:
    cp = None

CELLS = ("peephole", "coupled", "gru")
GATES = {"peephole": 4, "coupled": 3, "gru": 3}            # gate blocks of H columns in W
CACHED = {"peephole": 4, "coupled": 3, "gru": 4}           # blocks of H cached per step (A / H)
PARAMS = {"peephole": ("W", "b", "wc"), "coupled": ("W", "b"), "gru": ("W", "bx", "bh")}


def check_cell(cell, x_shape, p, h0_shape, c0_shape):
    """-> (T, B, I, H); ValueError naming the cell's mismatch otherwise."""
    if cell not in CELLS:
        raise ValueError(f"the cupy cell kernels cover {', '.join(CELLS)}, not {cell!r}")
    if sorted(p) != sorted(PARAMS[cell]):
        raise ValueError(f"a {cell} layer takes parameters {', '.join(PARAMS[cell])}, got {', '.join(sorted(p))}")
    if len(x_shape) != 3:
        raise ValueError(f"x must be (T,B,I), got shape {tuple(x_shape)}")
    T, B, I = x_shape
    if len(h0_shape) != 2 or h0_shape[0] != B:
        raise ValueError(f"h0 must be (B,H) with B={B}, got {tuple(h0_shape)}")
    H = h0_shape[1]
    if tuple(c0_shape) != (B, H):
        raise ValueError(f"c0 must be (B,H)=({B},{H}), got {tuple(c0_shape)}")
    G = GATES[cell] * H
    want = {"W": (H + I, G), "b": (G,), "bx": (G,), "bh": (G,), "wc": (3, H)}
    for name in PARAMS[cell]:
        if tuple(p[name].shape) != want[name]:
            raise ValueError(f"{cell} {name} must be {want[name]}, got {tuple(p[name].shape)}")
    if min(T, B, I, H) < 1:
        raise ValueError(f"empty {cell} input: T={T} B={B} I={I} H={H}")
    return T, B, I, H


class CellCache:
    """What cell_backward needs: the cell, its inputs and the per-step values of the forward."""

    def __init__(self, be, cell, x, p, hbuf, cbuf, acts):
        self.be, self.cell = be, cell         # the backend module, the cell
        self.x, self.p = x, p                 # (T,B,I), parameters by short name (contiguous)
        self.hbuf, self.cbuf = hbuf, cbuf     # (T+1,B,H): slot 0 = h0, c0 (gru: cbuf = (c0,) only)
        self.acts = acts                      # (T,B,A)


class _Loop:
    """Raw pointers of a time loop's buffers and its per-step product (cuBLAS by pointer, or
    cp.matmul on slices when blas='matmul' or the binding is missing)."""

    def __init__(self, be, dtype):
        self.be, self.gemm = be, be._direct_gemm(dtype)
        self.sz = np.dtype(dtype).itemsize

    def at(self, a, t):
        """Pointer to a[t] (a C-contiguous, t along axis 0) as a kernel argument."""
        return np.uint64(a.data.ptr + t * (a.size // a.shape[0]) * self.sz)

    def product(self, A, t, W, H, out, trans):
        """out = A[t] @ W_h (trans False: (B,H)@(H,G)) or A[t] @ W_h^T (trans True: (B,G)@(G,H))."""
        B, G = out.shape[0], W.shape[1]
        if self.gemm is None:
            cp.matmul(A[t], W[:H].T if trans else W[:H], out=out)
        elif trans:
            self.gemm(B, H, G, int(self.at(A, t)), G, self.gemm.N, W.data.ptr, G, self.gemm.T, out.data.ptr, H)
        else:
            self.gemm(B, G, H, int(self.at(A, t)), H, self.gemm.N, W.data.ptr, G, self.gemm.N, out.data.ptr, G)

    def run(self, key, launch):
        """The loop eagerly, or as a graph of its pointers (cuBLAS by pointer only: the matmul
        path makes array objects, which a capture refuses)."""
        if self.gemm is None:
            launch(None)
            return

        def with_stream(struct):
            self.gemm.bind_stream()
            launch(struct)

        self.be._BLAS_LOOPS.run(key, None, with_stream, ck.OPTIONS["graphs"])


def _params(p, dt):
    return {n: cp.ascontiguousarray(a, dtype=dt) for n, a in p.items()}


# ----------------------------------------------------------------------------
# Forward over a window
# ----------------------------------------------------------------------------

def cell_forward(be, cell, x, p, h0, c0):
    """x (T,B,I), p by short name, h0, c0 (B,H) -> hs (T,B,H), hT, cT (B,H), cache."""
    T, B, I, H = check_cell(cell, x.shape, p, h0.shape, c0.shape)
    dt = p["W"].dtype
    ck.ctype(dt)
    p = _params(p, dt)
    x = cp.ascontiguousarray(x, dtype=dt)
    G, W = GATES[cell] * H, p["W"]
    xproj = cp.matmul(x.reshape(T * B, I), W[H:]).reshape(T, B, G)   # (T,B,G) the one big product
    hbuf = cp.empty((T + 1, B, H), dt)                                 # (T+1,B,H)
    hbuf[0] = h0
    acts = cp.empty((T, B, CACHED[cell] * H), dt)                      # (T,B,A)
    if cell == "gru":
        cbuf = cp.array(c0, dtype=dt, order="C", copy=True)[None]      # (1,B,H): c is carried unchanged
        _gru_forward_loop(_Loop(be, dt), xproj, p, hbuf, acts)
        return hbuf[1:], hbuf[T], cbuf[0], CellCache(be, cell, x, p, hbuf, cbuf, acts)
    cbuf = cp.empty((T + 1, B, H), dt)                                 # (T+1,B,H)
    cbuf[0] = c0
    _lstm_like_forward_loop(_Loop(be, dt), cell, xproj, p, hbuf, cbuf, acts)
    return hbuf[1:], hbuf[T], cbuf[T], CellCache(be, cell, x, p, hbuf, cbuf, acts)


def _lstm_like_forward_loop(loop, cell, xproj, p, hbuf, cbuf, acts):
    """Peephole / coupled: per step zrec = h_{t-1} W_h, then the gates and the cell."""
    T, B, G = xproj.shape
    H = hbuf.shape[2]
    W, dt = p["W"], p["W"].dtype
    kern = ck.get(f"{cell}_fwd_cell", dt)
    zrec = cp.empty((B, G), dt)                  # (B,G) h_{t-1} W_h
    extra = (p["wc"],) if cell == "peephole" else ()
    grid, dims = ck.blocks(B * H), (ck.i32(B), ck.i32(H))

    def launch(_):
        for t in range(T):
            loop.product(hbuf, t, W, H, zrec, trans=False)
            kern(grid, (ck.THREADS,), (loop.at(xproj, t), p["b"], zrec) + extra
                 + (loop.at(cbuf, t), loop.at(acts, t), loop.at(cbuf, t + 1), loop.at(hbuf, t + 1)) + dims)

    loop.run(("cell fwd", cell, dt.name, T, B, H) + _ptrs(xproj, hbuf, cbuf, acts, zrec, *p.values()), launch)


def _gru_forward_loop(loop, xproj, p, hbuf, acts):
    """GRU: per step zrec = h_{t-1} W_h, then r, z, n and h (hn = zrec_n + bh_n cached)."""
    T, B, G = xproj.shape
    H = hbuf.shape[2]
    W, dt = p["W"], p["W"].dtype
    kern = ck.get("gru_fwd_cell", dt)
    zrec = cp.empty((B, G), dt)                  # (B,G) h_{t-1} W_h
    grid, dims = ck.blocks(B * H), (ck.i32(B), ck.i32(H))

    def launch(_):
        for t in range(T):
            loop.product(hbuf, t, W, H, zrec, trans=False)
            kern(grid, (ck.THREADS,), (loop.at(xproj, t), p["bx"], zrec, p["bh"], loop.at(hbuf, t),
                                       loop.at(acts, t), loop.at(hbuf, t + 1)) + dims)

    loop.run(("cell fwd", "gru", dt.name, T, B, H) + _ptrs(xproj, hbuf, acts, zrec, *p.values()), launch)


def _ptrs(*arrays):
    return tuple(a.data.ptr for a in arrays)


# ----------------------------------------------------------------------------
# Backward over a window (mirrors the forward in reverse)
# ----------------------------------------------------------------------------

def cell_backward(dhs, dhT, dcT, cache):
    """BPTT through one layer -> dx (T,B,I), dp (by short name), dh0, dc0 (B,H)."""
    x, p, hbuf = cache.x, cache.p, cache.hbuf
    W, dt = p["W"], p["W"].dtype
    T, B, I = x.shape
    H, N = hbuf.shape[2], T * B
    dhs = cp.ascontiguousarray(dhs, dtype=dt)
    dhT = cp.ascontiguousarray(dhT, dtype=dt)
    if cache.cell == "gru":
        return _gru_backward(dhs, dhT, dcT, cache)
    dc = cp.array(dcT, dtype=dt, order="C", copy=True)                # running dL/dc: dc_T in, dc_0 out
    dzs = cp.empty((T, B, GATES[cache.cell] * H), dt)                  # (T,B,G) dL/dz_t
    _lstm_like_backward_loop(_Loop(cache.be, dt), cache.cell, W, p, cache.acts, cache.cbuf, dhs, dhT, dzs, dc)
    dz2 = dzs.reshape(N, -1)                                           # (N,G)
    dW = cp.empty_like(W)
    cp.matmul(hbuf[:T].reshape(N, H).T, dz2, out=dW[:H])               # dW_h = sum_t h_{t-1}^T dz_t
    cp.matmul(x.reshape(N, I).T, dz2, out=dW[H:])                      # dW_x = sum_t x_t^T dz_t
    dp = {"W": dW, "b": dz2.sum(axis=0)}                               # db (G,)
    if cache.cell == "peephole":
        dp["wc"] = _peephole_dwc(dzs, cache.cbuf, H)
    dx = cp.matmul(dz2, W[H:].T).reshape(T, B, I)                      # (T,B,I)
    dh0 = cp.matmul(dzs[0], W[:H].T)                                   # (B,H)
    return dx, dp, dh0, dc


def _peephole_dwc(dzs, cbuf, H):
    """dw_ci = sum c_{t-1} dz_i, dw_cf = sum c_{t-1} dz_f, dw_co = sum c_t dz_o -> (3,H)."""
    T = dzs.shape[0]
    dwc = cp.empty((3, H), dzs.dtype)
    dwc[0] = (dzs[:, :, :H] * cbuf[:T]).sum(axis=(0, 1))              # i = s(z_i + w_ci c_{t-1})
    dwc[1] = (dzs[:, :, H:2 * H] * cbuf[:T]).sum(axis=(0, 1))         # f = s(z_f + w_cf c_{t-1})
    dwc[2] = (dzs[:, :, 3 * H:] * cbuf[1:]).sum(axis=(0, 1))          # o = s(z_o + w_co c_t)
    return dwc


def _lstm_like_backward_loop(loop, cell, W, p, acts, cbuf, dhs, dhT, dzs, dc):
    """Peephole / coupled: per step dhrec = dz_{t+1} W_h^T (dhT at the last step), then the cell."""
    T, B, _ = dzs.shape
    H, dt = cbuf.shape[2], W.dtype
    kern = ck.get(f"{cell}_bwd_cell", dt)
    dhrec = cp.empty((B, H), dt)                 # (B,H) dz_{t+1} W_h^T
    extra = (p["wc"],) if cell == "peephole" else ()
    grid, dims = ck.blocks(B * H), (ck.i32(B), ck.i32(H))

    def launch(_):
        for t in reversed(range(T)):
            if t < T - 1:
                loop.product(dzs, t + 1, W, H, dhrec, trans=True)
            dh_next = dhrec if t < T - 1 else dhT
            kern(grid, (ck.THREADS,), (loop.at(dhs, t), dh_next, loop.at(acts, t), loop.at(cbuf, t + 1),
                                       loop.at(cbuf, t)) + extra + (dc, loop.at(dzs, t)) + dims)

    loop.run(("cell bwd", cell, dt.name, T, B, H) + _ptrs(W, acts, cbuf, dhs, dhT, dzs, dc, dhrec, *extra), launch)


def _gru_backward(dhs, dhT, dcT, cache):
    x, p, hbuf, acts = cache.x, cache.p, cache.hbuf, cache.acts
    W, dt = p["W"], p["W"].dtype
    T, B, I = x.shape
    H, N = hbuf.shape[2], T * B
    G = 3 * H
    carry = cp.array(dhT, dtype=dt, order="C", copy=True)   # (B,H) dL/dh_t through z h_{t-1}: dhT in
    dxp = cp.empty((T, B, G), dt)                            # (T,B,G) dL/d(x_t W_x + bx)
    dhp = cp.empty((T, B, G), dt)                            # (T,B,G) dL/d(h_{t-1} W_h + bh)
    _gru_backward_loop(_Loop(cache.be, dt), W, acts, hbuf, dhs, carry, dxp, dhp)
    dx2, dh2 = dxp.reshape(N, G), dhp.reshape(N, G)          # (N,G)
    dW = cp.empty_like(W)
    cp.matmul(hbuf[:T].reshape(N, H).T, dh2, out=dW[:H])     # dW_h = sum_t h_{t-1}^T dhp_t
    cp.matmul(x.reshape(N, I).T, dx2, out=dW[H:])            # dW_x = sum_t x_t^T dxp_t
    dp = {"W": dW, "bx": dx2.sum(axis=0), "bh": dh2.sum(axis=0)}
    dx = cp.matmul(dx2, W[H:].T).reshape(T, B, I)            # (T,B,I)
    dh0 = cp.matmul(dhp[0], W[:H].T) + carry                 # (B,H) the product's part + z_0 dh_0
    dc0 = cp.array(dcT, dtype=dt, order="C", copy=True)      # c is carried unchanged: dc0 = dcT
    return dx, dp, dh0, dc0


def _gru_backward_loop(loop, W, acts, hbuf, dhs, carry, dxp, dhp):
    """GRU: per step dhrec = dhp_{t+1} W_h^T (none at the last step), then the gates."""
    T, B, _ = dxp.shape
    H, dt = hbuf.shape[2], W.dtype
    kern = ck.get("gru_bwd_cell", dt)
    dhrec = cp.empty((B, H), dt)                 # (B,H) dhp_{t+1} W_h^T
    grid = ck.blocks(B * H)

    def launch(_):
        for t in reversed(range(T)):
            if t < T - 1:
                loop.product(dhp, t + 1, W, H, dhrec, trans=True)
            kern(grid, (ck.THREADS,), (loop.at(dhs, t), dhrec, loop.at(acts, t), loop.at(hbuf, t), carry,
                                       loop.at(dxp, t), loop.at(dhp, t), ck.i32(B), ck.i32(H), ck.i32(t < T - 1)))

    loop.run(("cell bwd", "gru", dt.name, T, B, H) + _ptrs(W, acts, hbuf, dhs, carry, dxp, dhp, dhrec), launch)


# ----------------------------------------------------------------------------
# Layer 0: the embedding gather / scatter-add around the cell (kernels of train_ops.cu)
# ----------------------------------------------------------------------------

def embed_cell_forward(be, cell, tokens, Emb, p, h0, c0):
    """tokens (T,B) int, Emb (V,E) -> as cell_forward.  Ids outside [0,V) give NaN rows."""
    tok = cp.ascontiguousarray(cp.asarray(tokens), dtype=cp.int32)     # (T,B)
    if tok.ndim != 2:
        raise ValueError(f"tokens must be (T,B), got shape {tok.shape}")
    T, B = tok.shape
    V, E = Emb.shape
    Emb = cp.ascontiguousarray(Emb)
    x = cp.empty((T, B, E), Emb.dtype)                                  # (T,B,E) = Emb[tokens]
    ck.get("embed_gather", Emb.dtype)(ck.blocks(T * B * E), (ck.THREADS,),
                                      (Emb, tok, x, np.int64(T * B), ck.i32(E), ck.i32(V)))
    hs, hT, cT, cache = cell_forward(be, cell, x, p, h0, c0)
    cache.embed = (tok, (V, E))
    return hs, hT, cT, cache


def embed_cell_backward(dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dp, dh0, dc0; dEmb is a scatter-add of dx over the tokens (atomics)."""
    tok, (V, E) = cache.embed
    dx, dp, dh0, dc0 = cell_backward(dhs, dhT, dcT, cache)
    dEmb = cp.zeros((V, E), dx.dtype)                                   # (V,E)
    ck.get("embed_scatter_add", dx.dtype)(ck.blocks(tok.size * E), (ck.THREADS,),
                                          (dx, tok, dEmb, np.int64(tok.size), ck.i32(E), ck.i32(V)))
    return dEmb, dp, dh0, dc0


# ----------------------------------------------------------------------------
# Generation: one step of one layer (used by cupy_generate.GenPlan)
# ----------------------------------------------------------------------------

def gen_layer_params(cell, weights, l):
    """The parameter arrays the cell's generation step kernel takes before h_prev, in order."""
    names = {"lstm": ("b",), "peephole": ("b", "wc"), "coupled": ("b",), "gru": ("bx", "bh")}[cell]
    return [weights[f"W{l}"]] + [weights[f"{n}{l}"] for n in names]


GEN_UNITS = 32     # units per block of a generation step (#define GEN_UNITS in cells.cu)


def gen_grid(S, H):
    """Grid of a generation step: block (u, s) computes GEN_UNITS units of sequence s, its
    THREADS threads splitting the reduction."""
    return (-(-H // GEN_UNITS), S)


def gen_step_kernel(cell, dtype, S, H):
    """The compiled generation step of a cell and its grid -> (kernel, grid)."""
    return ck.get(f"gen_{cell}_step", dtype), gen_grid(S, H)
