"""A stand-in for the part of CuPy that the cupy backend uses, running on the CPU.

Arrays are NumPy arrays of a subclass (DeviceArray) whose memory plays the device's; the
RawModule compiles the same kernel source text with g++ against cuda_emu.h (every CUDA thread a
fiber) and launches kernels through ctypes, checking each argument's kind and size against the
kernel signature.  Stream capture records kernel launches (with raw pointers, as a real graph
does) and replays them; anything else attempted during a capture raises, as cuBLAS does in CuPy.

This checks the logic of kernels/cuda/*.cu and of the backend on machines without a GPU.  It does not
check CuPy's own API beyond what is mimicked here, nor timing, nor GPU memory-model subtleties.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
__version__ = "0-cpu-emulator"
float32, float64, int32, int64, uint32, uint64 = np.float32, np.float64, np.int32, np.int64, np.uint32, np.uint64

_CAPTURE = {"stream": None, "records": None}


def _no_capture(what):
    if _CAPTURE["stream"] is not None:
        raise NotImplementedError(f"{what} during stream capture (only kernels of the backend may be captured)")


# ----------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------

class _Mem:
    def __init__(self, ptr):
        self.ptr = ptr


class DeviceArray(np.ndarray):
    """A 'device' array: host memory, but no silent mixing with plain NumPy arrays."""

    @property
    def data(self):
        return _Mem(self.ctypes.data)

    def get(self, stream=None):
        _no_capture("copy to host")
        return np.array(self.view(np.ndarray), copy=True)

    def set(self, arr, stream=None):
        _no_capture("copy from host")
        if not isinstance(arr, np.ndarray) or isinstance(arr, DeviceArray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError("Shape mismatch")
        if not self.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        np.copyto(self.view(np.ndarray), arr)

    def copy(self, order="C"):
        _no_capture("copy")
        return super().copy(order)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _no_capture(f"elementwise {ufunc.__name__}")
        for x in inputs + (out or ()):
            if isinstance(x, np.ndarray) and not isinstance(x, DeviceArray) and x.ndim > 0:
                raise TypeError("mixing host (numpy) and device (cupy) arrays")
        args = [x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in out)
        res = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(res, np.ndarray):
            return res.view(DeviceArray)
        if isinstance(res, tuple):
            return tuple(r.view(DeviceArray) if isinstance(r, np.ndarray) else r for r in res)
        return np.asarray(res).view(DeviceArray)   # 0-d results stay on the 'device', as in CuPy

    def __float__(self):
        _no_capture("float()")
        return float(self.view(np.ndarray))

    def __setitem__(self, key, value):
        _no_capture("setitem")
        if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray) and value.ndim > 0:
            raise TypeError("mixing host (numpy) and device (cupy) arrays")
        super().__setitem__(key, value)


ndarray = DeviceArray


def _dev(a):
    return a.view(DeviceArray) if isinstance(a, np.ndarray) else np.asarray(a).view(DeviceArray)


_POOL = {}        # nbytes -> raw blocks (np.uint8) handed out by empty(); free when no array views one


def _pooled(nbytes):
    """A raw block of nbytes, reused once no array views it any more: as CuPy's memory pool, a
    steady loop gets the same addresses every iteration (the cuBLAS path's graphs rely on it)."""
    blocks = _POOL.setdefault(nbytes, [])
    for raw in blocks:
        if sys.getrefcount(raw) <= 3:          # the list, the loop variable, getrefcount's argument
            return raw
    raw = np.empty(max(nbytes, 1), np.uint8)
    if len(blocks) < 256:
        blocks.append(raw)
    return raw


def empty(shape, dtype=float64, order="C"):
    _no_capture("allocation")
    dt = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    a = _pooled(n * dt.itemsize)[:n * dt.itemsize].view(dt).reshape(shape)
    a[...] = np.nan if dt.kind == "f" else 0x5A5A5A      # garbage-like: reads before writes show up
    return _dev(a)


def zeros(shape, dtype=float64, order="C"):
    _no_capture("allocation")
    return _dev(np.zeros(shape, dtype))


def empty_like(a, dtype=None):
    return empty(a.shape, dtype or a.dtype)


def zeros_like(a, dtype=None):
    return zeros(a.shape, dtype or a.dtype)


def _pooled_copy(host):
    """A device copy (C order) of a host array, in a block from the pool."""
    out = empty(host.shape, host.dtype)
    out.view(np.ndarray)[...] = host
    return out


def asarray(a, dtype=None):
    _no_capture("asarray")
    if isinstance(a, DeviceArray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return _pooled_copy(np.asarray(np.asarray(a), dtype=dtype))


def array(a, dtype=None, order="C", copy=True):
    _no_capture("array")
    return _pooled_copy(np.asarray(np.asarray(a), dtype=dtype))


def ascontiguousarray(a, dtype=None):
    _no_capture("ascontiguousarray")
    if isinstance(a, DeviceArray) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return _pooled_copy(np.asarray(np.asarray(a), dtype=dtype))


def asnumpy(a):
    _no_capture("asnumpy")
    return np.array(np.asarray(a), copy=True)


def matmul(a, b, out=None):
    _no_capture("cuBLAS matmul")
    for x in (a, b) + ((out,) if out is not None else ()):
        if not isinstance(x, DeviceArray):
            raise TypeError("matmul of a non-device array")
    res = np.matmul(a.view(np.ndarray), b.view(np.ndarray))
    if out is None:
        out = empty(res.shape, res.dtype)                     # from the pool, as CuPy's
        out.view(np.ndarray)[...] = res
        return out
    if out.shape != res.shape or out.dtype != res.dtype:
        raise ValueError(f"out has shape {out.shape} {out.dtype}, the product {res.shape} {res.dtype}")
    out.view(np.ndarray)[...] = res
    return out


def vdot(a, b):
    return _dev(np.asarray(np.vdot(a.view(np.ndarray), b.view(np.ndarray))))


def sqrt(a):
    return _dev(np.sqrt(np.asarray(a)))


# ----------------------------------------------------------------------------
# cuBLAS by raw pointer (the part of cupy_backends.cuda.libs.cublas the backend calls)
# ----------------------------------------------------------------------------

def _colmajor(ptr, dt, rows, cols, ld):
    """The column-major matrix (rows, cols) with leading dimension ld at a raw address."""
    if ld < max(1, rows):
        raise ValueError(f"cuBLAS: leading dimension {ld} < rows {rows} (CUBLAS_STATUS_INVALID_VALUE)")
    dt = np.dtype(dt)
    size = ld * (cols - 1) + rows
    buf = np.ctypeslib.as_array((np.ctypeslib.as_ctypes_type(dt) * size).from_address(ptr))
    return np.lib.stride_tricks.as_strided(buf, (rows, cols), (dt.itemsize, ld * dt.itemsize))


class CublasStandIn:
    """sgemm / dgemm as cuBLAS computes them: column-major operands by raw pointer, alpha and
    beta read from host memory (pointer mode host), C not read when beta == 0."""

    def __init__(self):
        self.pointer_mode, self.calls = None, 0

    def setPointerMode(self, handle, mode):
        self.pointer_mode = mode

    def setStream(self, handle, stream):
        pass

    def sgemm(self, *args):
        self._gemm(np.float32, *args)

    def dgemm(self, *args):
        self._gemm(np.float64, *args)

    def _gemm(self, dt, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        if self.pointer_mode != 0:
            raise RuntimeError("cuBLAS pointer mode is not host: alpha and beta would be read from the device")
        # pointer mode host: cuBLAS reads alpha and beta before it returns (a capture bakes the values)
        al = float(_colmajor(alpha, dt, 1, 1, 1)[0, 0])
        be = float(_colmajor(beta, dt, 1, 1, 1)[0, 0])
        args = (transa, transb, m, n, k, al, A, lda, B, ldb, be, C, ldc)
        if _CAPTURE["stream"] is not None:     # real cuBLAS can be captured: record, replay later
            _CAPTURE["records"].append((_GemmNode(self, dt, args), None, None, None))
            return
        self._run(dt, *args)

    def _run(self, dt, transa, transb, m, n, k, al, A, lda, B, ldb, be, C, ldc):
        self.calls += 1
        a = _colmajor(A, dt, k, m, lda).T if transa else _colmajor(A, dt, m, k, lda)     # op(A) (m,k)
        b = _colmajor(B, dt, n, k, ldb).T if transb else _colmajor(B, dt, k, n, ldb)     # op(B) (k,n)
        c = _colmajor(C, dt, m, n, ldc)
        prod = al * (a @ b)
        c[...] = prod if be == 0 else prod + be * c


class _GemmNode:
    """A captured gemm: a graph node whose replay runs it on the recorded pointers."""

    def __init__(self, lib, dt, args):
        self.lib, self.dt, self.args = lib, dt, args

    def _execute(self, grid, block, packed):
        self.lib._run(self.dt, *self.args)


CUBLAS = CublasStandIn()


# ----------------------------------------------------------------------------
# Streams and graphs
# ----------------------------------------------------------------------------

class Stream:
    _current = None

    def __init__(self, null=False, non_blocking=False):
        self.ptr = 0 if null else id(self)
        self._prev = []

    def __enter__(self):
        self._prev.append(Stream._current)
        Stream._current = self
        return self

    def __exit__(self, *exc):
        Stream._current = self._prev.pop()
        return False

    def synchronize(self):
        _no_capture("synchronize")

    def begin_capture(self, mode=None):
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if _CAPTURE["stream"] is not None:
            raise RuntimeError("already capturing")
        _CAPTURE["stream"], _CAPTURE["records"] = self, []

    def end_capture(self):
        if _CAPTURE["stream"] is not self:
            raise RuntimeError("this stream is not capturing")
        records = _CAPTURE["records"]
        _CAPTURE["stream"] = _CAPTURE["records"] = None
        return Graph(records)

    def is_capturing(self):
        return _CAPTURE["stream"] is self


Stream.null = Stream(null=True)
Stream._current = Stream.null


class Graph:
    def __init__(self, records):
        self.records = records

    def launch(self, stream=None):
        _no_capture("graph launch")
        for kern, grid, block, packed in self.records:
            kern._execute(grid, block, packed)


def get_current_stream():
    return Stream._current


class Device:
    def __init__(self, i=0):
        self.id = i

    def synchronize(self):
        _no_capture("synchronize")


runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda i: {"major": 9, "minor": 0, "multiProcessorCount": 8, "name": b"CPU emulator"},
)
cuda = types.SimpleNamespace(Stream=Stream, Device=Device, get_current_stream=get_current_stream,
                             runtime=runtime, Graph=Graph,
                             device=types.SimpleNamespace(get_cublas_handle=lambda: 1))


# ----------------------------------------------------------------------------
# RawModule: g++ + cuda_emu.h, with a registry of the requested instantiations
# ----------------------------------------------------------------------------

def _cache_dir():
    d = os.environ.get("LSTM_ENGINE_EMU_CACHE") or os.path.join(tempfile.gettempdir(), "lstm_engine_cuda_emu")
    os.makedirs(d, exist_ok=True)
    return d


def _build(code, names):
    with open(os.path.join(HERE, "cuda_emu.h")) as f:
        header = f.read()
    digest = hashlib.sha256((header + code + "\n".join(names)).encode()).hexdigest()[:16]
    so = os.path.join(_cache_dir(), f"emu_{digest}.so")
    if os.path.exists(so):
        return so
    entries = ",\n".join(
        f'    {{"{n}", [](dim3 g, dim3 b, void** p, const char* k, const int* s, int c) '
        f'{{ emu::launch_kernel(&{n}, g, b, p, k, s, c); }}}}' for n in names)
    src = (f'#include "{os.path.join(HERE, "cuda_emu.h")}"\n{code}\n'
           f"static const EmuEntry emu_table[] = {{\n{entries}\n}};\n"
           'extern "C" int emu_launch(const char* name, const unsigned* g, const unsigned* b, void** params,\n'
           "                          const char* kinds, const int* sizes, int n, char* err, int errlen) {\n"
           f"    return emu_dispatch(emu_table, {len(names)}, name, g, b, params, kinds, sizes, n, err, errlen);\n"
           "}\n")
    cpp = so[:-3] + ".cpp"
    with open(cpp, "w") as f:
        f.write(src)
    tmp = so + f".tmp{os.getpid()}"
    cmd = ["g++", "-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-w", cpp, "-o", tmp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"emulator build failed:\n{r.stderr[-4000:]}")
    os.replace(tmp, so)
    return so


class RawModule:
    def __init__(self, code=None, options=(), name_expressions=None, **kw):
        self.code, self.names = code, list(name_expressions or [])
        self._lib = None

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"{name} is not among the name expressions")
        if self._lib is None:
            lib = ctypes.CDLL(_build(self.code, self.names))
            lib.emu_launch.restype = ctypes.c_int
            self._lib = lib
        return RawKernel(self._lib, name)


_KINDS = {np.int32: ("i", ctypes.c_int32), np.int64: ("i", ctypes.c_int64), np.uint64: ("u", ctypes.c_uint64),
          np.uint32: ("u", ctypes.c_uint32), np.float32: ("f", ctypes.c_float), np.float64: ("f", ctypes.c_double)}

LAUNCHES = {"count": 0}


class RawKernel:
    def __init__(self, lib, name):
        self.lib, self.name = lib, name

    @staticmethod
    def _pack(args):
        packed = []
        for i, a in enumerate(args):
            if isinstance(a, DeviceArray):
                packed.append(("p", ctypes.c_void_p(a.ctypes.data)))
            elif isinstance(a, np.ndarray):
                raise TypeError(f"argument {i}: a host numpy array cannot be a kernel argument")
            elif type(a) in _KINDS:
                kind, ct = _KINDS[type(a)]
                packed.append((kind, ct(a.item())))
            else:
                raise TypeError(f"argument {i}: pass numpy scalars of the kernel's type, not {type(a).__name__}")
        return packed

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        packed = self._pack(args)
        if _CAPTURE["stream"] is not None:
            _CAPTURE["records"].append((self, grid, block, packed))
            return
        self._execute(grid, block, packed)

    def _execute(self, grid, block, packed):
        LAUNCHES["count"] += 1
        n = len(packed)
        params = (ctypes.c_void_p * max(n, 1))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for _, v in packed])
        kinds = ctypes.create_string_buffer("".join(k for k, _ in packed).encode(), n + 1)
        sizes = (ctypes.c_int * max(n, 1))(*[ctypes.sizeof(v) for _, v in packed])
        err = ctypes.create_string_buffer(512)
        rc = self.lib.emu_launch(self.name.encode(), (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                                 params, kinds, sizes, n, err, 512)
        if rc:
            raise RuntimeError(f"{self.name}: {err.value.decode()}")


def kernel_names_in(code):
    return re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)", code)
