"""The machine a benchmark ran on: CPU, BLAS, library versions, GPU, thread settings, sgemm peak.

Every benchmark result carries these fields, so a number can always be traced back to
the machine and settings that produced it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
import time
from importlib import metadata

import numpy as np

from ..core import environment
from ..errors import UserError


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cupy_version():
    for dist in ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"):
        v = _version(dist)
        if v:
            return v
    return None


def cpu_model():
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    return environment.cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_id():
    """-> 'vendor family F model M' and the vector ISA the CPU offers ('avx512f+amx', 'avx2', ...),
    from lscpu's source."""
    info = environment.cpuinfo()
    ident = " ".join(p for p in (info.get("vendor_id"), info.get("cpu family") and f"family {info['cpu family']}",
                                 info.get("model") and f"model {info['model']}") if p) or None
    flags = set(info.get("flags", "").split())
    isa = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), None)
    if isa and "amx_tile" in flags:
        isa += "+amx"
    return ident, isa


def torch_isa(torch):
    """The vector ISA PyTorch's CPU kernels dispatch to ('AVX512', 'AVX2', ...); None when unknown."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None


def numpy_blas():
    """-> (name and version, thread count, kernel) of the BLAS NumPy calls, read by threadpoolctl;
    kernel: the core type it runs (OpenBLAS: 'Haswell', 'SkylakeX', ...), None when it does not say."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (install threadpoolctl)", None, None
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    mine = [i for i in blas if "numpy" in i.get("filepath", "")] or blas
    if not mine:
        return "unknown", None, None
    i = mine[0]
    return f"{i.get('internal_api')} {i.get('version') or ''}".strip(), i.get("num_threads"), i.get("architecture")


def gpu_name():
    """Name of GPU 0 as CuPy or an already imported torch sees it; None without a GPU."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:                                   # a broken driver is "no GPU" here
            pass
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() > 0:
                name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
                return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            pass
    return None


def machine_info(threads=None):
    """Flat dict of the machine fields every result row carries."""
    blas, blas_threads, blas_kernel = numpy_blas()
    ident, isa = cpu_id()
    torch = sys.modules.get("torch")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    numba_threads = numba_vectors = None
    if importlib.util.find_spec("numba") is not None:
        numba = environment.import_numba()
        numba_threads, numba_vectors = numba.get_num_threads(), environment.vector_width()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu": cpu_model(),
        "cpu_id": ident,
        "cpu_isa": isa,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "threads": threads,
        "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "blas": blas,
        "blas_threads": blas_threads,
        "blas_kernel": blas_kernel,
        "numba_threads": numba_threads,
        "numba_vectors": numba_vectors,
        "numba_gemm": environment.get("LSTM_ENGINE_TUNE", "auto"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_isa": torch_isa(torch) if torch is not None else None,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "numba_version": _version("numba"),
        "cupy_version": _cupy_version(),
        "torch_version": _version("torch"),
        "gpu": gpu_name(),
    }


def machine_line(m):
    """One line for the terminal: CPU, cores, BLAS and threads, versions, GPU, peaks."""
    peaks = [f"CPU {m['sgemm_cpu_gflops']:.1f}" if m.get("sgemm_cpu_gflops") else None,
             f"GPU {m['sgemm_gpu_gflops']:.0f}" if m.get("sgemm_gpu_gflops") else None]
    peak = ", ".join(p for p in peaks if p)
    cpu = ", ".join(p for p in (m.get("cpu_id"), m.get("cpu_isa")) if p)
    kernel = f", kernel {m['blas_kernel']}" if m.get("blas_kernel") else ""
    torch_extra = ", ".join(p for p in (m.get("torch_threads") and f"threads: {m['torch_threads']}",
                                        m.get("torch_isa") and f"ISA {m['torch_isa']}") if p)
    return (f"machine: {m['cpu']}" + (f" ({cpu})" if cpu else "")
            + f", {m['cores']} cores ({m['cores_usable']} usable, load {m['load_avg']}); "
            f"BLAS {m['blas']} (threads: {m['blas_threads']}{kernel}); numba threads: {m['numba_threads']}"
            + (f" (vectors {m['numba_vectors']})" if m.get("numba_vectors") not in (None, "default") else "")
            + (f", GEMMs: {m['numba_gemm']} (LSTM_ENGINE_TUNE)" if m.get("numba_gemm") not in (None, "auto") else "")
            + (", sampler weights: bf16" if m.get("numba_gemm") == "bf16" else "") + "; "
            f"numpy {m['numpy_version']}, numba {m['numba_version'] or '-'}, cupy {m['cupy_version'] or '-'}, "
            f"torch {m['torch_version'] or '-'}"
            + (f" ({torch_extra})" if torch_extra else "")
            + f"; GPU {m['gpu'] or 'none'}"
            + (f"; sgemm peak GFLOP/s: {peak}" if peak else "") + f"; {m['date']}")


@contextlib.contextmanager
def thread_settings(threads, torch_too=False):
    """Set BLAS (threadpoolctl), numba and, when torch_too, torch threads to `threads` for the block."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise UserError(f"--threads must be >= 1 (got {threads})")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise UserError("--threads needs threadpoolctl: pip install threadpoolctl") from None
    restore = []
    if torch_too and importlib.util.find_spec("torch") is not None:
        # before numba starts its OpenMP threads: a torch imported after them runs slower (benchmarks/README.md)
        import torch
        old_t = torch.get_num_threads()
        torch.set_num_threads(threads)
        restore.append(lambda: torch.set_num_threads(old_t))
    if importlib.util.find_spec("numba") is not None:
        numba = environment.import_numba()
        top = numba.config.NUMBA_NUM_THREADS
        if threads > top:
            raise UserError(f"--threads {threads} is more than numba's pool of {top}; "
                            f"pass --threads <= {top} or set NUMBA_NUM_THREADS={threads}")
        old = numba.get_num_threads()
        numba.set_num_threads(threads)
        restore.append(lambda: numba.set_num_threads(old))
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        for undo in restore:
            undo()


# ----------------------------------------------------------------------------
# sgemm peak: the yardstick for "fraction of the machine"
# ----------------------------------------------------------------------------

def _best_rate(run, sync, flops, seconds, max_runs=50):
    """Best GFLOP/s over repeated runs of `run` (after one warm-up) for about `seconds`."""
    run()
    sync()
    best, t_end, runs = 0.0, time.perf_counter() + seconds, 0
    while runs < 3 or (time.perf_counter() < t_end and runs < max_runs):
        t0 = time.perf_counter()
        run()
        sync()
        best = max(best, flops / (time.perf_counter() - t0) / 1e9)
        runs += 1
    return best


def sgemm_peak_cpu(n=1024, seconds=0.5):
    """GFLOP/s of a float32 n x n matrix product (2 n^3 FLOP), best of several: the faster of
    NumPy's matmul (its BLAS) and the numba kernels' own GEMM on all numba threads.  (A BLAS
    held to an older kernel, e.g. OPENBLAS_CORETYPE=Haswell on an AVX-512 machine, would
    otherwise put the yardstick below what the engine reaches.)"""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)   # (n,n)
    b = rng.standard_normal((n, n), dtype=np.float32)   # (n,n)
    out = np.empty((n, n), np.float32)                   # (n,n)
    best = _best_rate(lambda: np.matmul(a, b, out=out), lambda: None, 2.0 * n ** 3, seconds)
    try:
        numba = environment.import_numba()

        from ..kernels.numba.output_layer import mm_rows
    except ImportError:       # pragma: no cover - numba is an install requirement
        return best
    nt = numba.get_num_threads()
    own = _best_rate(lambda: mm_rows(a, b, out, False, False, nt if nt > 1 else None), lambda: None,
                     2.0 * n ** 3, seconds)
    return max(best, own)


def sgemm_peak_gpu(n=4096, seconds=0.5):
    """GFLOP/s of a float32 n x n matmul on GPU 0 (CuPy, else torch with TF32 off); None without one."""
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() > 0:
                a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
                b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
                sync = cupy.cuda.Device().synchronize
                return _best_rate(lambda: a @ b, sync, 2.0 * n ** 3, seconds)
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.randn(n, n, device="cuda")
        b = torch.randn(n, n, device="cuda")
        return _best_rate(lambda: a @ b, torch.cuda.synchronize, 2.0 * n ** 3, seconds)
    return None
