"""The CuPy backend: the reference's equations as CUDA kernels (kernels/cuda/*.cu) plus cuBLAS.

Same interface as numpy_backend (see backends/__init__.py); arrays live on the GPU.
CuPy is optional: this module imports without it and is_available() says what to install.

Dimension legend:
    T time steps   B batch   I input size of a layer   H hidden   G = 4H   V vocab
    E embedding    N = T*B rows when time and batch are flattened

Where the work goes (per layer and window):
    x W_x for all T steps             one cuBLAS product (N,I)@(I,G) before the loop
    the time loop                     per step either ONE fused kernel (recurrent product in
                                      shared memory + gate equations), replayed as a CUDA graph,
                                      or cuBLAS h@W_h + one cell kernel (two launches, also a
                                      graph); or ONE persistent kernel for all T steps
    dW_h, dW_x, dx                    one cuBLAS product each over all N rows after the loop
step_mode() picks the persistent kernels at seed-sized B*H, the fused path for small B*H*H
(launch-bound) and cuBLAS for big layers; set_options() or the environment variables
LSTM_ENGINE_CUPY_STEP=auto|fused|cublas|persist and LSTM_ENGINE_CUPY_GRAPHS=0|1 override it.
Embedding, softmax cross-entropy, Adam and the gradient norm are kernels of
kernels/cuda/train_ops.cu; sampling lives in cupy_generate.py.  The cell variants (peephole,
coupled, gru) run through cupy_cells.py (kernels/cuda/cells.cu, the cuBLAS step path).

Float32 matrix products use full FP32: CuPy enables TF32 only when CUPY_TF32=1.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np

from . import cupy_kernels as ck

try:
    import cupy as cp
except Exception as _e:   # ImportError, or CUDA libraries missing underneath CuPy
    cp = None
    _IMPORT_ERROR = " ".join(str(_e).split())
else:
    _IMPORT_ERROR = ""

NAME = "cupy"
xp = cp

INSTALL_HINT = ("install CuPy for your CUDA version, e.g. `pip install 'lstm-engine[gpu]'` "
                "(cupy-cuda12x), on a machine with an NVIDIA GPU; or choose --backend numba")

OPTIONS = ck.OPTIONS    # the launch options, shared with cupy_generate (one dict)
# fused per-step kernels while B*H*H stays below this, the cuBLAS path above it: the boundary lies
# between karpathy (0.8e6, fused faster) and medium (16.8e6, cuBLAS faster); see docs/gpu.md, 'Step paths'
FUSED_MAX_WORK = {"float32": 8e6, "float64": 8e6}
# auto takes the persistent kernels up to this B*H (seed-sized): the only size where they beat the
# fused path in every measurement; see docs/gpu.md, 'Step paths'
PERSIST_MAX_BH = 32 * 128

_availability = None


def is_available():
    """(True, '') when CuPy imports and sees a CUDA GPU of compute capability >= 6.0."""
    global _availability
    if _availability is None:
        _availability = _probe()
    return _availability


def _probe():
    if cp is None:
        why = f" ({_IMPORT_ERROR[:120]})" if _IMPORT_ERROR and "No module named" not in _IMPORT_ERROR else ""
        return False, f"CuPy is not installed{why}; {INSTALL_HINT}"
    try:
        n = cp.cuda.runtime.getDeviceCount()
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    except Exception as e:
        msg = " ".join(str(e).split())[:160]
        return False, f"CuPy found no usable NVIDIA GPU ({msg}); check the driver with nvidia-smi or choose --backend numba"
    if n < 1:
        return False, "CuPy found no NVIDIA GPU; choose --backend numba"
    if props["major"] < 6:
        return False, (f"the GPU has compute capability {props['major']}.{props['minor']}; "
                       f"the cupy backend needs 6.0 or newer; choose --backend numba")
    return _check_env_options()


def _check_env_options():
    """(False, why) when an LSTM_ENGINE_CUPY_* variable holds a value the backend does not know
    (set_options checks its arguments; the environment is read once, at import)."""
    for var, key, modes in (("LSTM_ENGINE_CUPY_STEP", "step", STEP_MODES), ("LSTM_ENGINE_CUPY_BLAS", "blas", BLAS_MODES)):
        if OPTIONS[key] not in modes:
            return False, (f"{var}={OPTIONS[key]!r} is not one of {', '.join(modes)}; "
                           f"set one of those or unset it")
    return True, ""


STEP_MODES = ("auto", "fused", "cublas", "persist")


BLAS_MODES = ("direct", "matmul")


def set_options(step=None, graphs=None, tile=None, persist_units=None, blas=None):
    """Choose the step path ('auto', 'fused', 'cublas', 'persist'), CUDA graphs on/off, how the
    cuBLAS path calls cuBLAS ('direct' or 'matmul') and (for tests) the tile config of the fused
    kernels ('auto' resets it) and the units per block of the persistent kernels (0 resets it)
    -> the old options (pass them back with set_options(**old))."""
    old = dict(OPTIONS, tile=OPTIONS["tile"] or "auto", persist_units=OPTIONS["persist_units"] or 0)
    if blas is not None:
        if blas not in BLAS_MODES:
            raise ValueError(f"blas must be one of {', '.join(BLAS_MODES)}, not {blas!r}")
        OPTIONS["blas"] = blas
    if persist_units is not None:
        OPTIONS["persist_units"] = int(persist_units) or None
    if tile is not None:
        if tile != "auto" and tile not in ck.TILES:
            raise ValueError(f"tile must be auto or one of {tuple(ck.TILES)}, not {tile!r}")
        OPTIONS["tile"] = None if tile == "auto" else tile
    if step is not None:
        if step not in STEP_MODES:
            raise ValueError(f"step must be one of {', '.join(STEP_MODES)}, not {step!r}")
        OPTIONS["step"] = step
    if graphs is not None:
        OPTIONS["graphs"] = bool(graphs)
    return old


def step_mode(B, H, dtype):
    """'fused' (one kernel per step, graph-capturable), 'cublas' (cuBLAS + cell kernel) or
    'persist' (one kernel per window, W_h in shared memory; only where persist_plan fits)."""
    mode = OPTIONS["step"]
    if mode == "persist":
        if persist_plan(B, H, dtype) is not None:
            return "persist"
        mode = "auto"
    if mode != "auto":
        return mode
    if B * H <= PERSIST_MAX_BH and _persist_fits(B, H, dtype):
        return "persist"
    return "fused" if B * H * H <= FUSED_MAX_WORK[np.dtype(dtype).name] else "cublas"


def _persist_fits(B, H, dtype):
    try:
        return persist_plan(B, H, dtype) is not None
    except Exception:          # no device to ask for its SM count / shared memory: not persistent
        return False


def persist_plan(B, H, dtype, n_sm=None, smem_max=None):
    """(JU units per block, blocks, KS lanes per pair, shared bytes) of the persistent kernels, or
    None when the W_h slices do not fit: at most one block per SM (all resident for the grid
    barrier) and a slice of 4*JU*H values within the per-block shared-memory limit."""
    n_sm = n_sm or ck.sm_count()
    smem_max = smem_max or ck.smem_optin()
    JU = OPTIONS["persist_units"] or -(-H // n_sm)
    blocks = -(-H // JU)
    smem = 4 * JU * H * np.dtype(dtype).itemsize
    if blocks > n_sm or smem > smem_max:
        return None
    want = max(1, ck.THREADS // (B * JU))              # lanes per pair so every pair has a group
    KS = max(k for k in ck.PERSIST_KS if k <= max(want, ck.PERSIST_KS[0]))
    return JU, blocks, KS, smem


def asarray(a, dtype=None):
    """Host or device array -> contiguous CuPy array (host copies are queued, not waited for)."""
    if isinstance(a, np.ndarray) and not isinstance(a, cp.ndarray):
        host = np.ascontiguousarray(a, dtype=dtype)
        out = cp.empty(host.shape, host.dtype)
        if host.size:
            out.set(host, stream=cp.cuda.get_current_stream())
        return out
    return cp.ascontiguousarray(cp.asarray(a, dtype=dtype))


def to_numpy(a):
    """CuPy (or NumPy) array -> host NumPy array."""
    if cp is not None and isinstance(a, cp.ndarray):
        return cp.asnumpy(a)
    return np.asarray(a)


def synchronize():
    cp.cuda.get_current_stream().synchronize()


# ----------------------------------------------------------------------------
# Host-side checks (no GPU needed)
# ----------------------------------------------------------------------------

def check_lstm_shapes(x_shape, W_shape, b_shape, h0_shape, c0_shape):
    """-> (T, B, I, H); ValueError naming the mismatch otherwise."""
    if len(x_shape) != 3:
        raise ValueError(f"x must be (T,B,I), got shape {tuple(x_shape)}")
    T, B, I = x_shape
    if len(h0_shape) != 2 or h0_shape[0] != B:
        raise ValueError(f"h0 must be (B,H) with B={B}, got {tuple(h0_shape)}")
    H = h0_shape[1]
    if tuple(c0_shape) != (B, H):
        raise ValueError(f"c0 must be (B,H)=({B},{H}), got {tuple(c0_shape)}")
    if tuple(W_shape) != (H + I, 4 * H):
        raise ValueError(f"W must be (H+I,4H)=({H + I},{4 * H}), got {tuple(W_shape)}")
    if tuple(b_shape) != (4 * H,):
        raise ValueError(f"b must be (4H,)=({4 * H},), got {tuple(b_shape)}")
    if min(T, B, I, H) < 1:
        raise ValueError(f"empty LSTM input: T={T} B={B} I={I} H={H}")
    return T, B, I, H


def pointer_table(arrays):
    """np.uint64 array of device pointers, in the order of a kernel's pointer struct."""
    return np.array([a.data.ptr for a in arrays], dtype=np.uint64)


# ----------------------------------------------------------------------------
# LSTM layer: forward and backward over a window
# ----------------------------------------------------------------------------

_LOOPS = ck.LoopGraphs()
_BLAS_LOOPS = ck.LoopGraphs(status="BLAS_GRAPH_STATUS")    # the cuBLAS path's loops, keyed by pointers


class LstmCache:
    """What lstm_backward needs: inputs and the per-step values of the forward."""

    def __init__(self, x, W, hbuf, cbuf, acts, mode):
        self.x, self.W = x, W                  # (T,B,I), (H+I,G)
        self.hbuf, self.cbuf = hbuf, cbuf      # (T+1,B,H): slot 0 = h0, c0
        self.acts = acts                       # (T,B,G) activated gates
        self.mode = mode


def lstm_forward(x, W, b, h0, c0):
    """x (T,B,I), W (H+I,G), b (G,), h0, c0 (B,H) -> hs (T,B,H), hT, cT (B,H), cache."""
    T, B, I, H = check_lstm_shapes(x.shape, W.shape, b.shape, h0.shape, c0.shape)
    dt = W.dtype
    ck.ctype(dt)
    W, b = cp.ascontiguousarray(W), cp.ascontiguousarray(b, dtype=dt)
    x = cp.ascontiguousarray(x, dtype=dt)
    G = 4 * H
    xproj = cp.matmul(x.reshape(T * B, I), W[H:]).reshape(T, B, G)   # the one big product
    hbuf = cp.empty((T + 1, B, H), dt)
    cbuf = cp.empty((T + 1, B, H), dt)
    acts = cp.empty((T, B, G), dt)
    hbuf[0] = h0
    cbuf[0] = c0
    mode = step_mode(B, H, dt)
    if mode == "persist":
        _forward_persist(xproj, W, b, hbuf, cbuf, acts)
    elif mode == "fused":
        _forward_fused(xproj, W, b, hbuf, cbuf, acts)
    else:
        _forward_cublas(xproj, W, b, hbuf, cbuf, acts)
    return hbuf[1:], hbuf[T], cbuf[T], LstmCache(x, W, hbuf, cbuf, acts, mode)


def _forward_fused(xproj, W, b, hbuf, cbuf, acts):
    T, B, G = xproj.shape
    H = G // 4
    tile = OPTIONS["tile"] or ck.choose_tile(B, H)
    kern = ck.get("lstm_fwd_fused", W.dtype, tile)
    grid = ck.tile_grid(tile, B, H)
    ptrs = pointer_table([xproj, W, b, hbuf, cbuf, acts])        # order of ck.FWD_FIELDS

    def launch(struct):
        for t in range(T):
            kern(grid, (ck.THREADS,), (struct, ck.i32(t), ck.i32(B), ck.i32(H)))

    _LOOPS.run(("fwd", W.dtype.name, T, B, H, tile), ptrs, launch, OPTIONS["graphs"])


# the barrier counters of the last persistent launches: [arrivals, spin timeouts] (tests read [1])
PERSIST_BARS = []


def _launch_persist(base, W, ptrs, T, B, H):
    JU, blocks, KS, smem = persist_plan(B, H, W.dtype)
    kern = ck.get(base, W.dtype, KS)
    if smem > 48 * 1024 and getattr(kern, "max_dynamic_shared_size_bytes", 0) < smem:
        kern.max_dynamic_shared_size_bytes = smem
    struct = asarray(ptrs)
    bar = cp.zeros(2, cp.uint32)
    kern((blocks,), (ck.THREADS,), (struct, bar, ck.i32(T), ck.i32(B), ck.i32(H), ck.i32(JU)), shared_mem=smem)
    PERSIST_BARS[:] = PERSIST_BARS[-7:] + [bar]


def _forward_persist(xproj, W, b, hbuf, cbuf, acts):
    T, B, G = xproj.shape
    _launch_persist("lstm_fwd_persist", W, pointer_table([xproj, W, b, hbuf, cbuf, acts]), T, B, G // 4)


def _direct_gemm(dtype):
    """A RowMajorGemm when blas='direct' and CuPy's cuBLAS binding loads, else None (cp.matmul;
    the first failure is kept in BLAS_STATUS and switches the process to 'matmul')."""
    if OPTIONS["blas"] != "direct":
        return None
    try:
        return ck.RowMajorGemm(dtype)
    except (ImportError, AttributeError, OSError) as e:
        BLAS_STATUS["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        OPTIONS["blas"] = "matmul"
        warnings.warn(f"cuBLAS binding unavailable, the cuBLAS step path uses cp.matmul ({BLAS_STATUS['error']})",
                      RuntimeWarning, stacklevel=3)
        return None


BLAS_STATUS = {"error": None}


def _forward_cublas(xproj, W, b, hbuf, cbuf, acts):
    T, B, G = xproj.shape
    H = G // 4
    cell = ck.get("lstm_fwd_cell", W.dtype)
    zrec = cp.empty((B, G), W.dtype)             # h_{t-1} @ W_h
    grid, dims = ck.blocks(B * H), (ck.i32(B), ck.i32(H))
    gemm = _direct_gemm(W.dtype)
    if gemm is None:                             # cp.matmul on slices: array objects per step, host-bound
        Wh = W[:H]                               # (H,G)
        for t in range(T):
            cp.matmul(hbuf[t], Wh, out=zrec)
            cell(grid, (ck.THREADS,), (xproj[t], b, zrec, cbuf[t], acts[t], cbuf[t + 1], hbuf[t + 1]) + dims)
        return
    u64, sz = np.uint64, W.dtype.itemsize
    sBH, sBG = B * H * sz, B * G * sz            # bytes per step of (B,H) and (B,G) slices
    x0, h0, c0, a0 = xproj.data.ptr, hbuf.data.ptr, cbuf.data.ptr, acts.data.ptr
    wh, z = W.data.ptr, zrec.data.ptr            # W_h = the first H rows of W

    def launch(_):
        gemm.bind_stream()
        for t in range(T):
            gemm(B, G, H, h0 + t * sBH, H, gemm.N, wh, G, gemm.N, z, G)          # zrec = h_{t-1} @ W_h
            cell(grid, (ck.THREADS,), (u64(x0 + t * sBG), b, zrec, u64(c0 + t * sBH), u64(a0 + t * sBG),
                                       u64(c0 + (t + 1) * sBH), u64(h0 + (t + 1) * sBH)) + dims)

    key = ("fwd", W.dtype.name, T, B, H, x0, h0, c0, a0, wh, z, b.data.ptr)   # every pointer it touches
    _BLAS_LOOPS.run(key, None, launch, OPTIONS["graphs"])


def lstm_backward(dhs, dhT, dcT, cache):
    """BPTT through one layer -> dx (T,B,I), dW (H+I,G), db (G,), dh0, dc0 (B,H)."""
    x, W, hbuf, cbuf, acts = cache.x, cache.W, cache.hbuf, cache.cbuf, cache.acts
    T, B, I = x.shape
    H = hbuf.shape[2]
    G, N, dt = 4 * H, T * B, W.dtype
    dhs = cp.ascontiguousarray(dhs, dtype=dt)
    dhT = cp.ascontiguousarray(dhT, dtype=dt)
    dc = cp.array(dcT, dtype=dt, order="C", copy=True)   # running dL/dc: dc_T in, dc_0 out
    dzs = cp.empty((T, B, G), dt)                         # dL/dz_t for every step
    if cache.mode == "persist":
        _backward_persist(W, acts, cbuf, dhs, dhT, dzs, dc)
    elif cache.mode == "fused":
        _backward_fused(W, acts, cbuf, dhs, dhT, dzs, dc)
    else:
        _backward_cublas(W, acts, cbuf, dhs, dhT, dzs, dc)
    dz2 = dzs.reshape(N, G)
    dW = cp.empty_like(W)
    cp.matmul(hbuf[:T].reshape(N, H).T, dz2, out=dW[:H])     # dW_h = sum_t h_{t-1}^T dz_t
    cp.matmul(x.reshape(N, I).T, dz2, out=dW[H:])            # dW_x = sum_t x_t^T dz_t
    db = dz2.sum(axis=0)                                      # (G,)
    dx = cp.matmul(dz2, W[H:].T).reshape(T, B, I)             # (T,B,I)
    dh0 = cp.matmul(dzs[0], W[:H].T)                          # (B,H)
    return dx, dW, db, dh0, dc


def _backward_fused(W, acts, cbuf, dhs, dhT, dzs, dc):
    T, B, G = acts.shape
    H = G // 4
    tile = OPTIONS["tile"] or ck.choose_tile(B, H)
    kern = ck.get("lstm_bwd_fused", W.dtype, tile)
    grid = ck.tile_grid(tile, B, H)
    ptrs = pointer_table([W, acts, cbuf, dhs, dhT, dzs, dc])     # order of ck.BWD_FIELDS

    def launch(struct):
        for t in reversed(range(T)):
            kern(grid, (ck.THREADS,), (struct, ck.i32(t), ck.i32(B), ck.i32(H), ck.i32(t < T - 1)))

    _LOOPS.run(("bwd", W.dtype.name, T, B, H, tile), ptrs, launch, OPTIONS["graphs"])


def _backward_persist(W, acts, cbuf, dhs, dhT, dzs, dc):
    T, B, G = acts.shape
    _launch_persist("lstm_bwd_persist", W, pointer_table([W, acts, cbuf, dhs, dhT, dzs, dc]), T, B, G // 4)


def _backward_cublas(W, acts, cbuf, dhs, dhT, dzs, dc):
    T, B, G = acts.shape
    H = G // 4
    cell = ck.get("lstm_bwd_cell", W.dtype)
    dhrec = cp.empty((B, H), W.dtype)            # dz_{t+1} @ W_h^T
    grid, dims = ck.blocks(B * H), (ck.i32(B), ck.i32(H))
    gemm = _direct_gemm(W.dtype)
    if gemm is None:
        WhT = W[:H].T                            # (G,H) view
        for t in reversed(range(T)):
            if t < T - 1:
                cp.matmul(dzs[t + 1], WhT, out=dhrec)
            dh_next = dhrec if t < T - 1 else dhT
            cell(grid, (ck.THREADS,), (dhs[t], dh_next, acts[t], cbuf[t + 1], cbuf[t], dc, dzs[t]) + dims)
        return
    u64, sz = np.uint64, W.dtype.itemsize
    sBH, sBG = B * H * sz, B * G * sz
    d0, a0, c0, z0 = dhs.data.ptr, acts.data.ptr, cbuf.data.ptr, dzs.data.ptr
    wh, r = W.data.ptr, dhrec.data.ptr

    def launch(_):
        gemm.bind_stream()
        for t in reversed(range(T)):
            if t < T - 1:
                gemm(B, H, G, z0 + (t + 1) * sBG, G, gemm.N, wh, G, gemm.T, r, H)   # dhrec = dz_{t+1} @ W_h^T
            dh_next = dhrec if t < T - 1 else dhT
            cell(grid, (ck.THREADS,), (u64(d0 + t * sBH), dh_next, u64(a0 + t * sBG), u64(c0 + (t + 1) * sBH),
                                       u64(c0 + t * sBH), dc, u64(z0 + t * sBG)) + dims)

    key = ("bwd", W.dtype.name, T, B, H, d0, a0, c0, z0, wh, r, dhT.data.ptr, dc.data.ptr)
    _BLAS_LOOPS.run(key, None, launch, OPTIONS["graphs"])


# ----------------------------------------------------------------------------
# Layer 0: embedding gather / scatter-add around the LSTM
# ----------------------------------------------------------------------------

def _token_ids(tokens):
    return cp.ascontiguousarray(cp.asarray(tokens), dtype=cp.int32)


def embed_lstm_forward(tokens, Emb, W, b, h0, c0):
    """tokens (T,B) int, Emb (V,E) -> as lstm_forward.  Ids outside [0,V) give NaN rows."""
    tok = _token_ids(tokens)
    if tok.ndim != 2:
        raise ValueError(f"tokens must be (T,B), got shape {tok.shape}")
    T, B = tok.shape
    V, E = Emb.shape
    Emb = cp.ascontiguousarray(Emb)
    x = cp.empty((T, B, E), Emb.dtype)                        # (T,B,E) = Emb[tokens]
    ck.get("embed_gather", Emb.dtype)(ck.blocks(T * B * E), (ck.THREADS,),
                                      (Emb, tok, x, np.int64(T * B), ck.i32(E), ck.i32(V)))
    hs, hT, cT, cache = lstm_forward(x, W, b, h0, c0)
    return hs, hT, cT, (tok, Emb.shape, cache)


def embed_lstm_backward(dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dW, db, dh0, dc0; dEmb is a scatter-add of dx over the tokens (atomics)."""
    tok, (V, E), lcache = cache
    dx, dW, db, dh0, dc0 = lstm_backward(dhs, dhT, dcT, lcache)
    dEmb = cp.zeros((V, E), dx.dtype)
    N = tok.size
    ck.get("embed_scatter_add", dx.dtype)(ck.blocks(N * E), (ck.THREADS,),
                                          (dx, tok, dEmb, np.int64(N), ck.i32(E), ck.i32(V)))
    return dEmb, dW, db, dh0, dc0


# ----------------------------------------------------------------------------
# Any cell (the interface's cell_*): p holds the layer's parameters by short name;
# the cache carries the cell so the backward knows which to run
# ----------------------------------------------------------------------------

def _variants():
    """-> (cupy_cells, this module): the host code of the peephole, coupled and gru kernels, handed
    this backend (its cuBLAS binding and graph cache) so that it does not import it back."""
    from . import cupy_cells
    return cupy_cells, sys.modules[__name__]


def cell_forward(cell, x, p, h0, c0):
    """One layer of `cell` over a window (as numpy_backend.cell_forward)."""
    if cell != "lstm":
        cells, be = _variants()
        hs, hT, cT, cache = cells.cell_forward(be, cell, x, p, h0, c0)
        return hs, hT, cT, (cell, cache)
    hs, hT, cT, cache = lstm_forward(x, p["W"], p["b"], h0, c0)
    return hs, hT, cT, ("lstm", cache)


def cell_backward(dhs, dhT, dcT, cache):
    """-> dx (T,B,I), dp (dict by short name), dh0, dc0"""
    if cache[0] != "lstm":
        return _variants()[0].cell_backward(dhs, dhT, dcT, cache[1])
    dx, dW, db, dh0, dc0 = lstm_backward(dhs, dhT, dcT, cache[1])
    return dx, {"W": dW, "b": db}, dh0, dc0


def embed_cell_forward(cell, tokens, Emb, p, h0, c0):
    """Layer 0 of `cell` with the embedding gather (as numpy_backend.embed_cell_forward)."""
    if cell != "lstm":
        cells, be = _variants()
        hs, hT, cT, cache = cells.embed_cell_forward(be, cell, tokens, Emb, p, h0, c0)
        return hs, hT, cT, (cell, cache)
    hs, hT, cT, cache = embed_lstm_forward(tokens, Emb, p["W"], p["b"], h0, c0)
    return hs, hT, cT, ("lstm", cache)


def embed_cell_backward(dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dp (dict by short name), dh0, dc0"""
    if cache[0] != "lstm":
        return _variants()[0].embed_cell_backward(dhs, dhT, dcT, cache[1])
    dEmb, dW, db, dh0, dc0 = embed_lstm_backward(dhs, dhT, dcT, cache[1])
    return dEmb, {"W": dW, "b": db}, dh0, dc0


# ----------------------------------------------------------------------------
# Output layer: linear map to the logits
# ----------------------------------------------------------------------------

def linear_forward(x, W, b):
    """x (N,H) @ W (H,V) + b (V,) -> logits (N,V)."""
    return x @ W + b


def linear_backward(x, dy, W):
    """Gradients of linear_forward for dL/dy (N,V) -> dx (N,H) = dy W^T, dW (H,V) = x^T dy, db (V,)."""
    return dy @ W.T, x.T @ dy, dy.sum(axis=0)


# ----------------------------------------------------------------------------
# Output, optimiser
# ----------------------------------------------------------------------------

def softmax_xent(logits, targets, need_grad=True):
    """logits (N,V), targets (N,) int -> (mean loss as a float, dlogits (N,V) or None)."""
    logits = cp.ascontiguousarray(logits)
    N, V = logits.shape
    ck.ctype(logits.dtype)
    tgt = _token_ids(targets).reshape(-1)
    if tgt.shape[0] != N:
        raise ValueError(f"targets must have {N} entries, got {tgt.shape[0]}")
    loss_rows = cp.empty(N, logits.dtype)
    dlogits = cp.empty_like(logits) if need_grad else None
    ck.get("softmax_xent", logits.dtype)((N,), (ck.THREADS,),
                                         (logits, tgt, loss_rows, ck.ptr(dlogits), ck.i32(N), ck.i32(V)))
    return float(loss_rows.sum()) / N, dlogits


_NORM_BLOCKS = 128


def global_norm(grads):
    """sqrt(sum of squares) over every gradient array -> float (one kernel, one copy back)."""
    arrays = [cp.ascontiguousarray(g) for g in grads.values()]
    if not arrays:
        return 0.0
    dt = arrays[0].dtype
    table = np.concatenate([pointer_table(arrays), np.array([a.size for a in arrays], np.uint64)])
    dtable = asarray(table)
    partials = cp.empty(_NORM_BLOCKS, cp.float64)
    ck.get("sumsq_multi", dt)((_NORM_BLOCKS,), (ck.THREADS,), (dtable, ck.i32(len(arrays)), partials))
    return math.sqrt(math.fsum(partials.get().tolist()))


def adam_update(params, grads, m, v, step, lr, beta1, beta2, eps, grad_scale=1.0):
    """Adam with bias correction, in place, all tensors in one kernel launch."""
    names = list(params)
    if not names:
        return
    dt = params[names[0]].dtype
    grads_c = [cp.ascontiguousarray(grads[n], dtype=dt) for n in names]
    rows = []
    for n, g in zip(names, grads_c):
        if g.shape != params[n].shape:
            raise ValueError(f"gradient {n} has shape {g.shape}, the parameter {params[n].shape}")
        rows += [params[n].data.ptr, g.data.ptr, m[n].data.ptr, v[n].data.ptr]
    sizes = [params[n].size for n in names]
    dtable = asarray(np.array(rows + sizes, dtype=np.uint64))
    T = np.dtype(dt).type
    scalars = (lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps,
               1.0 - beta1 ** step, 1.0 - beta2 ** step, grad_scale)
    grid = (min(1024, max(1, -(-max(sizes) // ck.THREADS))),)
    ck.get("adam_multi", dt)(grid, (ck.THREADS,), (dtable, ck.i32(len(names))) + tuple(T(s) for s in scalars))


# ----------------------------------------------------------------------------
# Sampling (on the device; see cupy_generate.py)
# ----------------------------------------------------------------------------

def generate(weights, state, token, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None, cache=None,
             cell="lstm"):
    """Sample n tokens after `token` on the GPU; state is carried and updated -> ids (n,) int64.
    cache: as in numba_backend.generate; unused here (the GPU step is not bound by the input product)."""
    from .cupy_generate import generate_batch
    return generate_batch(weights, state, [token], n, temperature, top_k, top_p, greedy, rng, cell)[0]


def generate_batch(weights, state, tokens, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None,
                   cell="lstm"):
    """S sequences at once: tokens (S,), state [h (S,H), c (S,H)] per layer -> ids (S, n) int64."""
    from .cupy_generate import generate_batch as _gb
    return _gb(weights, state, tokens, n, temperature, top_k, top_p, greedy, rng, cell)
