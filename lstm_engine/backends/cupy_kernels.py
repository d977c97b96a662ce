"""The CUDA side of the CuPy backend: kernel sources, their template instantiations, compiling
them once per process, launch configurations, and replaying time loops as CUDA graphs.

Everything here that does not launch a kernel works without CuPy or a GPU, so the host tests
(tests/backends/test_cupy_host.py) check the instantiation list, the pointer-struct layouts and the
tile choice, and compile the very text NVRTC gets with `nvcc --ptx` (see ptx_check_source).

Dimension legend: T time, B batch rows, H hidden, G = 4H, V vocab.
"""
from __future__ import annotations

import collections
import ctypes
import functools
import os
import re
import warnings

import numpy as np

# ----------------------------------------------------------------------------
# Sources and instantiations
# ----------------------------------------------------------------------------

# launch options of the cupy backend (cupy_backend.set_options changes them; tests force paths)
OPTIONS = {
    "step": os.environ.get("LSTM_ENGINE_CUPY_STEP", "auto"),
    "graphs": os.environ.get("LSTM_ENGINE_CUPY_GRAPHS", "1") != "0",
    "tile": None,      # None: choose_tile decides; or one of cupy_kernels.TILES (tests)
    "persist_units": None,   # None: persist_plan decides the units per block; an int forces it (tests)
    # the cuBLAS step path's per-step product: 'direct' (cuBLAS by raw pointer, little host time)
    # or 'matmul' (cp.matmul on slices: array objects per call; kept for the A/B in gpu_bench.py)
    "blas": os.environ.get("LSTM_ENGINE_CUPY_BLAS", "direct"),
}

COMPILE_OPTIONS = ("--std=c++17",)      # given to NVRTC (RawModule) and to nvcc in the ptx check
# what CuPy appends to every RawModule compile besides -arch (and, for NVRTC 12+, the NVRTC-only
# --device-as-default-execution-space): the ptx check passes it to nvcc as well
CUPY_APPENDED_OPTIONS = ("-ftz=true",)
CTYPES = {"float32": "float", "float64": "double"}
THREADS = 256                           # every kernel of the tiled family runs 256 threads

# tile configs of the fused LSTM kernels: (BT rows, JT units, RB rows/thread, RJ units/thread);
# (JT/RJ) * (BT/RB) == THREADS, see tile_product in kernels/cuda/lstm.cu
TILES = {
    "narrow": (4, 64, 1, 1),    # B <= 4: generation of one sequence, evaluation streams
    "small": (16, 16, 1, 1),    # many small blocks: fills the GPU when B*H is small
    "big": (32, 32, 2, 2),      # 2x2 rows x units per thread: better reuse once blocks are plenty
}
GEN_TILES = ("narrow", "small")
# lanes per (row, unit) pair of the persistent kernels (a power of two <= 32: one warp's shuffles)
PERSIST_KS = (8, 16, 32)

# kernel base name -> (file, takes a tile config)
KERNELS = {
    "lstm_fwd_fused": ("lstm.cu", "train"),
    "lstm_bwd_fused": ("lstm.cu", "train"),
    "lstm_fwd_persist": ("lstm.cu", "persist"),
    "lstm_bwd_persist": ("lstm.cu", "persist"),
    "lstm_fwd_cell": ("lstm.cu", None),
    "lstm_bwd_cell": ("lstm.cu", None),
    "gen_lstm_step": ("lstm.cu", "gen"),
    "gen_logits": ("lstm.cu", "gen"),
    "softmax_xent": ("train_ops.cu", None),
    "adam_multi": ("train_ops.cu", None),
    "sumsq_multi": ("train_ops.cu", None),
    "embed_gather": ("train_ops.cu", None),
    "embed_scatter_add": ("train_ops.cu", None),
    "sample_tokens": ("sampling.cu", None),
    # the cell variants (cupy_cells.py): a training step's gates, a generation step
    "peephole_fwd_cell": ("cells.cu", None),
    "peephole_bwd_cell": ("cells.cu", None),
    "coupled_fwd_cell": ("cells.cu", None),
    "coupled_bwd_cell": ("cells.cu", None),
    "gru_fwd_cell": ("cells.cu", None),
    "gru_bwd_cell": ("cells.cu", None),
    "gen_peephole_step": ("cells.cu", None),
    "gen_coupled_step": ("cells.cu", None),
    "gen_gru_step": ("cells.cu", None),
}
KERNEL_FILES = ("lstm.cu", "train_ops.cu", "sampling.cu", "cells.cu")

# field order of the pointer structs FwdPtrs / BwdPtrs in kernels/cuda/lstm.cu
FWD_FIELDS = ("xproj", "W", "b", "hbuf", "cbuf", "acts")
BWD_FIELDS = ("W", "acts", "cbuf", "dhs", "dhT", "dzs", "dc")


def ctype(dtype):
    """numpy dtype -> the C type of the kernels' template argument (float32 / float64 only)."""
    name = np.dtype(dtype).name
    if name not in CTYPES:
        raise ValueError(f"the cupy backend computes in float32 or float64, not {name}")
    return CTYPES[name]


def kernel_name(base, dtype, tile=None):
    """The name expression of one instantiation, e.g. 'lstm_fwd_fused<float,16,16,1,1>'."""
    kind = KERNELS[base][1]
    if kind is None:
        if tile is not None:
            raise ValueError(f"{base} takes no tile config")
        return f"{base}<{ctype(dtype)}>"
    if kind == "persist":
        if tile not in PERSIST_KS:
            raise ValueError(f"{base} needs KS among {PERSIST_KS}, got {tile!r}")
        return f"{base}<{ctype(dtype)},{tile}>"
    allowed = GEN_TILES if kind == "gen" else tuple(TILES)
    if tile not in allowed:
        raise ValueError(f"{base} needs a tile config among {allowed}, got {tile!r}")
    return f"{base}<{ctype(dtype)},{','.join(str(x) for x in TILES[tile])}>"


def kernel_variants(kind):
    """The tile / KS arguments a kernel kind is instantiated for ([None] for untemplated ones)."""
    if kind is None:
        return [None]
    return list({"gen": GEN_TILES, "persist": PERSIST_KS}.get(kind, TILES))


def name_expressions(filename):
    """Every instantiation of the kernels in one .cu file (what RawModule compiles)."""
    out = []
    for base, (fname, kind) in KERNELS.items():
        if fname != filename:
            continue
        for dt in CTYPES:
            tiles = kernel_variants(kind)
            out.extend(kernel_name(base, dt, tile) for tile in tiles)
    return out


def kernel_dir():
    """Directory of the .cu files: the installed lstm_engine.kernels.cuda, else the checkout's kernels/cuda."""
    try:
        import lstm_engine.kernels.cuda as pkg
        d = os.path.dirname(pkg.__file__)
        if os.path.exists(os.path.join(d, KERNEL_FILES[0])):
            return d
    except ImportError:
        pass
    return os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "kernels", "cuda"))


def kernel_source(filename):
    with open(os.path.join(kernel_dir(), filename), encoding="utf-8") as f:
        return f.read()


def ptx_check_source(filename):
    """The RawModule source plus host-side references that make nvcc instantiate exactly the
    templates listed in name_expressions (NVRTC instantiates them from the names instead)."""
    refs = ",\n    ".join(f"(void*)&{name}" for name in name_expressions(filename))
    return (kernel_source(filename)
            + "\n// ---- added for the nvcc ptx check only: instantiate every name expression ----\n"
            + f"void* lstm_engine_instantiations[] = {{\n    {refs}\n}};\n")


def struct_fields(source, struct):
    """Field names of `template <typename T> struct NAME { ... };` in a .cu source, in order."""
    m = re.search(r"struct\s+" + struct + r"\s*\{(.*?)\};", source, re.S)
    if not m:
        raise ValueError(f"struct {struct} not found")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    return tuple(re.findall(r"(\w+)\s*;", body))


# ----------------------------------------------------------------------------
# Compiling (needs CuPy): once per process per file; CuPy also caches binaries on disk
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def module(filename):
    import cupy
    return cupy.RawModule(code=kernel_source(filename), options=COMPILE_OPTIONS,
                          name_expressions=name_expressions(filename))


_FUNCTIONS = {}


def get(base, dtype, tile=None):
    """The compiled kernel (a cupy.RawKernel) for one instantiation, memoised."""
    key = (base, np.dtype(dtype).name, tile)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        name = kernel_name(base, dtype, tile)
        try:
            fn = module(KERNELS[base][0]).get_function(name)
        except Exception as e:   # NVRTC errors carry the compiler log; keep it for the log
            raise RuntimeError(f"could not compile/load {name} from kernels/{KERNELS[base][0]}: {e}") from e
        _FUNCTIONS[key] = fn
    return fn


def i32(x):
    """Kernel int argument (a bare Python int would be passed as 64 bits)."""
    return np.int32(x)


NULL = np.uint64(0)     # a null pointer argument


def ptr(a):
    """Device pointer of a CuPy array as a kernel argument, or NULL for None."""
    return NULL if a is None else np.uint64(a.data.ptr)


def blocks(n, per=THREADS):
    return (max(1, -(-int(n) // per)),)


# ----------------------------------------------------------------------------
# cuBLAS by raw pointer (the per-step product of the cuBLAS step path)
# ----------------------------------------------------------------------------

def cublas_binding():
    """CuPy's thin cuBLAS binding."""
    try:
        from cupy_backends.cuda.libs import cublas         # CuPy 9 and later
    except ImportError:
        from cupy.cuda import cublas                        # older layouts
    return cublas


def cublas_handle():
    import cupy
    return cupy.cuda.device.get_cublas_handle()


def loaded_libraries(name, maps="/proc/self/maps"):
    """Paths of the shared libraries called `name` (e.g. 'libcublas.so', any version suffix) that
    this process has loaded, in load order, each once."""
    paths = []
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            for line in f:
                path = line.split()[-1] if line.strip() else ""
                if os.path.basename(path).startswith(name + ".") and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


class CublasCtypes:
    """The cuBLAS entry points of the cuBLAS step path, called through ctypes on the libcublas
    that CuPy has loaded, with the call signatures of CuPy's binding.  CuPy's binding refuses
    every call while a stream is capturing ("calling cuBLAS API during stream capture is
    currently unsupported"); cuBLAS itself can be captured, so this is what lets the
    cuBLAS path's time loops become CUDA graphs."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        P, I = ctypes.c_void_p, ctypes.c_int
        self._fns = {}
        for name, args in (("cublasSgemm_v2", [P, I, I, I, I, I, P, P, I, P, I, P, P, I]),
                           ("cublasDgemm_v2", [P, I, I, I, I, I, P, P, I, P, I, P, P, I]),
                           ("cublasSetStream_v2", [P, P]),
                           ("cublasSetPointerMode_v2", [P, I])):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, I
            self._fns[name] = fn
        self.path = path

    def _call(self, name, *args):
        status = self._fns[name](*args)
        if status != 0:
            raise RuntimeError(f"{name} failed with cuBLAS status {status}")

    def sgemm(self, *args):
        self._call("cublasSgemm_v2", *args)

    def dgemm(self, *args):
        self._call("cublasDgemm_v2", *args)

    def setStream(self, handle, stream):
        self._call("cublasSetStream_v2", handle, stream)

    def setPointerMode(self, handle, mode):
        self._call("cublasSetPointerMode_v2", handle, mode)


@functools.lru_cache(maxsize=None)
def cublas_module():
    """What RowMajorGemm calls: libcublas through ctypes where the library can be found (Linux),
    else CuPy's binding (no CUDA graphs of cuBLAS loops then).  The CPU emulator's tests swap in
    a stand-in with the same methods."""
    binding = cublas_binding()
    cublas_handle()                                  # creating a handle loads libcublas
    paths = loaded_libraries("libcublas.so")
    if len(paths) == 1:                              # two copies (say CuPy's and torch's): which one
        try:                                         # made the handle is unknown, keep the binding
            return CublasCtypes(paths[0])
        except (OSError, AttributeError):
            pass
    return binding


class RowMajorGemm:
    """C (M,N) = op(A) (M,K) @ op(B) (K,N) on row-major device buffers given by raw pointers.

    One cuBLAS call and no array objects: cp.matmul on slices spends host time per call on
    views, checks and dispatch, which at T*L*2 calls a step makes the cuBLAS step path
    host-bound (figures in docs/gpu.md, 'Where a step's time goes').
    Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the operands swap and
    keep their transpose flags; lda/ldb/ldc are the row strides (in elements) of the stored
    matrices.  alpha = 1, beta = 0 or 1, read from host memory (pointer mode host).
    """

    N, T = 0, 1     # CUBLAS_OP_N, CUBLAS_OP_T

    def __init__(self, dtype):
        lib = self.lib = cublas_module()
        name = np.dtype(dtype).name
        if name not in CTYPES:
            raise ValueError(f"the cupy backend computes in float32 or float64, not {name}")
        self.fn = lib.sgemm if name == "float32" else lib.dgemm
        self.handle = cublas_handle()
        lib.setPointerMode(self.handle, 0)          # CUBLAS_POINTER_MODE_HOST: alpha, beta below
        self._scalars = np.array([1.0, 0.0], dtype)  # kept alive with this object
        self.one = self._scalars.ctypes.data
        self.zero = self.one + self._scalars.itemsize

    def bind_stream(self):
        """Make the handle enqueue on the current stream (a capturing one inside a capture)."""
        import cupy
        self.lib.setStream(self.handle, cupy.cuda.get_current_stream().ptr)

    def __call__(self, M, N, K, A, lda, trans_a, B, ldb, trans_b, C, ldc, accumulate=False):
        self.fn(self.handle, trans_b, trans_a, N, M, K, self.one, B, ldb, A, lda,
                self.one if accumulate else self.zero, C, ldc)


# ----------------------------------------------------------------------------
# Launch configurations
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def sm_count():
    try:
        import cupy
        dev = cupy.cuda.Device().id
        return int(cupy.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"])
    except Exception:
        return 108


@functools.lru_cache(maxsize=None)
def smem_optin():
    """Largest dynamic shared memory a block may opt in to (bytes); 48 KiB if unknown."""
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return int(props.get("sharedMemPerBlockOptin") or 48 * 1024)
    except Exception:
        return 48 * 1024


def choose_tile(B, H, n_sm=None, gen=False):
    """Tile config of the fused kernels for B rows and H units (or V columns in gen_logits)."""
    if B <= 4:
        return "narrow"
    if gen:
        return "small"
    n_sm = n_sm or sm_count()
    bt, jt = TILES["big"][:2]
    big_blocks = -(-B // bt) * -(-H // jt)
    return "big" if big_blocks >= n_sm else "small"


def tile_grid(tile, rows, cols):
    """grid (ceil(cols/JT), ceil(rows/BT)) of a tiled kernel."""
    bt, jt = TILES[tile][:2]
    return (-(-cols // jt), -(-rows // bt))


# ----------------------------------------------------------------------------
# CUDA graphs of time loops
# ----------------------------------------------------------------------------

GRAPH_STATUS = {"captured": 0, "replayed": 0, "error": None}
# the same for the cuBLAS step path's loops (cuBLAS inside a capture: a failure there switches
# only these graphs off, never the kernel-only ones above)
BLAS_GRAPH_STATUS = {"captured": 0, "replayed": 0, "error": None}


class LoopGraphs:
    """Runs a loop of launches eagerly or as a replayed CUDA graph.

    Kernel-only loops (status 'GRAPH_STATUS'): the kernels read their buffer pointers from a small
    device array (a pointer struct), so the graph of a loop shape is captured once (the second
    time the shape is seen) and then replayed on new buffers: before each replay the host writes
    the new pointers into the graph's own struct, stream-ordered on the current stream.
    Loops with cuBLAS calls (status 'BLAS_GRAPH_STATUS', pointers None): cuBLAS bakes its
    pointers into the graph, so the key holds every pointer the loop touches and a graph is
    replayed only on exactly those buffers; a training loop allocates the same blocks from CuPy's
    pool every step, so the key repeats.  One stream is assumed.
    """

    def __init__(self, capacity=32, status="GRAPH_STATUS"):
        self.graphs = collections.OrderedDict()   # key -> (graph, device struct or None)
        self.seen = collections.Counter()
        self.capacity = capacity
        self.status_name = status                 # looked up at call time (tests swap the dicts)
        self._stream = None

    @property
    def status(self):
        return globals()[self.status_name]

    def run(self, key, pointers, launch, use_graph):
        """pointers: np.uint64 array (None: no struct); launch(struct) enqueues the loop on the
        current stream."""
        import cupy
        stream = cupy.cuda.get_current_stream()
        entry = self.graphs.get(key) if use_graph else None
        if entry is None and use_graph and self.status["error"] is None:
            if len(self.seen) > 4 * self.capacity:            # keys that never came back
                self.seen.clear()
            self.seen[key] += 1
            if self.seen[key] >= 2:
                entry = self._capture(key, pointers, launch)
        if entry is None:
            struct = None
            if pointers is not None:
                struct = cupy.empty(len(pointers), np.uint64)
                struct.set(pointers, stream=stream)
            launch(struct)
            return
        graph, struct = entry
        self.graphs.move_to_end(key)
        if struct is not None:
            struct.set(pointers, stream=stream)
        graph.launch(stream=stream)
        self.status["replayed"] += 1

    def _capture(self, key, pointers, launch):
        import cupy
        struct = None if pointers is None else cupy.empty(len(pointers), np.uint64)
        graph = capture(lambda: launch(struct), self)
        if graph is None:
            return None
        self.graphs[key] = (graph, struct)
        if len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)
        return graph, struct

    def capture_stream(self):
        import cupy
        if self._stream is None:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        return self._stream


def capture(enqueue, owner):
    """Capture what enqueue() launches into a CUDA graph; None (owner's graphs off) on failure."""
    s = owner.capture_stream()
    status = owner.status
    graph = None
    try:
        with s:
            s.begin_capture()
            try:
                enqueue()
            finally:
                graph = s.end_capture()
    except Exception as e:
        status["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        warnings.warn(f"CUDA graph capture failed, running these loops eagerly from now on ({status['error']})",
                      RuntimeWarning, stacklevel=3)
        return None
    status["captured"] += 1
    return graph
