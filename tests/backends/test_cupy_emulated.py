"""The cupy backend's kernels and host code on a CPU emulator: CI checks of the CUDA code without a GPU.

tests/backends/cuda_emu/fake_cupy.py stands in for CuPy: kernels/cuda/*.cu are compiled with g++ against
tests/backends/cuda_emu/cuda_emu.h (each CUDA thread a fiber), arrays are host memory, stream capture
records and replays kernel launches.  The parity tests are those of the GPU run (cupy_cases.py).
What this cannot check: CuPy's real API beyond the mimicked part, GPU timing and memory model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest

from lstm_engine.backends import cupy_backend as cb
from lstm_engine.backends import cupy_cells as cc
from lstm_engine.backends import cupy_generate as cg
from lstm_engine.backends import cupy_kernels as ck

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")

from cupy_cases import *  # noqa: E402,F401,F403  (the shared tests)
from cupy_cases import make_env  # noqa: E402
from cupy_cell_cases import *  # noqa: E402,F401,F403  (the cell variants' shared tests)

_FAKE = None


def _fake_cupy():
    global _FAKE
    if _FAKE is None:
        path = os.path.join(os.path.dirname(__file__), "cuda_emu", "fake_cupy.py")
        spec = importlib.util.spec_from_file_location("lstm_engine_fake_cupy", path)
        _FAKE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_FAKE)
    return _FAKE


def _clear_kernel_caches():
    ck.module.cache_clear()
    ck.sm_count.cache_clear()
    ck.smem_optin.cache_clear()
    ck._FUNCTIONS.clear()


@pytest.fixture
def env(monkeypatch):
    fake = _fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for mod, name in ((cb, "cp"), (cb, "xp"), (cg, "cp"), (cc, "cp")):
        monkeypatch.setattr(mod, name, fake)
    monkeypatch.setattr(cb, "_availability", None)
    monkeypatch.setattr(ck, "cublas_module", lambda: fake.CUBLAS)
    monkeypatch.setattr(cb, "_LOOPS", ck.LoopGraphs())
    monkeypatch.setattr(cg, "_PLANS", cg._Plans())
    monkeypatch.setattr(ck, "GRAPH_STATUS", {"captured": 0, "replayed": 0, "error": None})
    monkeypatch.setattr(ck, "BLAS_GRAPH_STATUS", {"captured": 0, "replayed": 0, "error": None})
    monkeypatch.setattr(cb, "_BLAS_LOOPS", ck.LoopGraphs(status="BLAS_GRAPH_STATUS"))
    # the emulator runs blocks one after another, so a grid barrier across several blocks cannot work:
    # 'auto' must not pick the persistent kernels here (their one-block cases are tested explicitly)
    monkeypatch.setattr(cb, "PERSIST_MAX_BH", 0)
    _clear_kernel_caches()
    yield make_env(cb, cg, ck, fake, emulated=True)
    _clear_kernel_caches()


def test_graphs_were_captured_and_replayed(env, options):
    """The graph path really captures (not silently eager): counts of captures and replays."""
    import numpy as np
    options(step="fused", graphs=True)
    rng = np.random.default_rng(0)
    d = env.cb.asarray
    for _ in range(3):
        x, W, b = d(rng.standard_normal((4, 2, 3))), d(rng.standard_normal((8, 20))), d(np.zeros(20))
        h = d(np.zeros((2, 5)))
        hs, hT, cT, cache = env.cb.lstm_forward(x, W, b, h, h)
        env.cb.lstm_backward(d(rng.standard_normal((4, 2, 5))), h, h, cache)
    assert env.ck.GRAPH_STATUS == {"captured": 2, "replayed": 4, "error": None}   # 2nd call: capture + launch


def test_capture_refuses_cublas(env):
    """The fake refuses non-kernel work during capture, as CuPy refuses cuBLAS: so the tests above
    prove that the captured loops hold nothing but our kernels."""
    import numpy as np
    s = env.cp.cuda.Stream(non_blocking=True)
    a = env.cb.asarray(np.ones((2, 2)))
    with s:
        s.begin_capture()
        with pytest.raises(NotImplementedError):
            env.cp.matmul(a, a)
        s.end_capture()


def test_cublas_path_calls_cublas_by_pointer(env, options):
    """The cuBLAS step path makes one gemm per recurrent product (T forward, T-1 backward) through
    the pointer binding with blas='direct', and none with blas='matmul' (cp.matmul on slices)."""
    import numpy as np
    rng = np.random.default_rng(2)
    T, B, I, H = 5, 3, 4, 6
    d = env.cb.asarray
    x, W, b = d(rng.standard_normal((T, B, I))), d(rng.standard_normal((H + I, 4 * H))), d(np.zeros(4 * H))
    h = d(np.zeros((B, H)))
    for blas, want in (("direct", 2 * T - 1), ("matmul", 0)):
        options(step="cublas", graphs=False, blas=blas)
        before = env.cp.CUBLAS.calls
        hs, hT, cT, cache = env.cb.lstm_forward(x, W, b, h, h)
        env.cb.lstm_backward(d(rng.standard_normal((T, B, H))), h, h, cache)
        assert env.cp.CUBLAS.calls - before == want, blas



def test_cublas_loops_are_captured_on_repeated_buffers(env, options):
    """With graphs on, the cuBLAS path's loops (gemm + cell kernel per step) are captured once their
    pointers repeat (the pool hands back the same blocks, as CuPy's does) and replayed with the
    same results as the reference; the fused path's kernel-only graphs are not touched."""
    import numpy as np
    from cupy_cases import _check_layer, _layer_inputs, report
    options(step="cublas", graphs=True, blas="direct")
    inputs = _layer_inputs(np.random.default_rng(6), 5, 3, 4, 7, "float64")
    rep = report(env, "cublas path with graphs, float64")
    for k in range(5):
        _check_layer(env, rep, f"call{k} ", inputs, "float64")
    rep.done()
    st = env.ck.BLAS_GRAPH_STATUS
    assert st["error"] is None and st["captured"] == 2 and st["replayed"] >= 4, st      # fwd + bwd
    assert env.ck.GRAPH_STATUS["captured"] == 0


@pytest.mark.parametrize("cell", ["peephole", "gru"])
def test_cell_loops_are_captured_on_repeated_buffers(env, options, cell):
    """The cell variants' loops (gemm + gate kernel per step) become graphs once their pointers
    repeat, and the replays give the reference's numbers; with blas='matmul' no gemm goes through
    the pointer binding and nothing is captured."""
    import numpy as np
    from cupy_cases import report
    from cupy_cell_cases import _cell_inputs, _check_cell_layer
    inputs = _cell_inputs(np.random.default_rng(7), cell, 5, 3, 4, 7, "float64")
    options(graphs=True, blas="matmul")
    calls = env.cp.CUBLAS.calls
    with report(env, f"{cell} matmul") as rep:
        _check_cell_layer(env, rep, "", cell, inputs, "float64")
    assert env.cp.CUBLAS.calls == calls and env.ck.BLAS_GRAPH_STATUS["captured"] == 0
    options(blas="direct")
    rep = report(env, f"{cell} cuBLAS path with graphs, float64")
    for k in range(5):
        _check_cell_layer(env, rep, f"call{k} ", cell, inputs, "float64")
    rep.done()
    st = env.ck.BLAS_GRAPH_STATUS
    assert st["error"] is None and st["captured"] == 2 and st["replayed"] >= 4, st      # fwd + bwd


@pytest.mark.parametrize("var,key", [("LSTM_ENGINE_CUPY_STEP", "step"), ("LSTM_ENGINE_CUPY_BLAS", "blas")])
def test_a_bad_environment_option_is_a_one_line_error(env, monkeypatch, var, key):
    """An unknown value in LSTM_ENGINE_CUPY_STEP / _BLAS makes the backend unusable with a
    one-line reason (it used to fall back silently); a known value leaves it usable."""
    from lstm_engine.backends import get_backend
    from lstm_engine.errors import UserError
    assert cb.is_available() == (True, "")
    monkeypatch.setitem(cb.OPTIONS, key, "fast")
    monkeypatch.setattr(cb, "_availability", None)
    with pytest.raises(UserError, match=f"{var}='fast' is not one of") as e:
        get_backend("cupy")
    assert "\n" not in str(e.value)
