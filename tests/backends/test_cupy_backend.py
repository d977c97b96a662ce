"""GPU parity tests of the cupy backend against the NumPy reference (skipped without CuPy + GPU).

The test bodies are in cupy_cases.py (the CPU emulator runs the same ones in CI); this module adds
what only a real GPU can show: no TF32 in float32 products, every kernel loads, timing-free
sanity of graphs.  benchmarks/gpu_check.sh runs it with CUPY_TF32=0 and NVIDIA_TF32_OVERRIDE=0 and
collects the per-tensor error lines in $OUT/parity.log.
"""
from __future__ import annotations

import os

os.environ.setdefault("CUPY_TF32", "0")       # before CuPy is imported: full-FP32 products

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lstm_engine.backends import cupy_backend as cb  # noqa: E402
from lstm_engine.backends import cupy_generate as cg  # noqa: E402
from lstm_engine.backends import cupy_kernels as ck  # noqa: E402

_OK, _WHY = cb.is_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"needs CuPy and an NVIDIA GPU: {_WHY}")

from cupy_cases import *  # noqa: E402,F401,F403  (the shared parity tests)
from cupy_cases import make_env, report  # noqa: E402
from cupy_cell_cases import *  # noqa: E402,F401,F403  (the cell variants' parity tests)


@pytest.fixture
def env():
    yield make_env(cb, cg, ck, cb.cp, emulated=False)
    cb.cp.cuda.Device().synchronize()     # an asynchronous kernel fault fails the test that caused it


def test_device_and_every_kernel_loads(env):
    cp = env.cp
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    rep = report(env, f"device {name} cc {props['major']}.{props['minor']} SMs {props['multiProcessorCount']} "
                      f"cupy {cp.__version__} CUPY_TF32={os.environ.get('CUPY_TF32')}")
    for base, (_, kind) in ck.KERNELS.items():
        tiles = ck.kernel_variants(kind)
        for dt in ("float32", "float64"):
            for tile in tiles:
                fn = ck.get(base, dt, tile)
                rep.equal(ck.kernel_name(base, dt, tile), fn is not None, True)
    rep.done()


def test_float32_products_are_full_fp32(env):
    """TF32 would show as ~1e-3 relative error against float64; full FP32 stays near 1e-6.  The
    tolerance sits between the two (a check of the device's mode, not of our kernels)."""
    cp = env.cp
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 512)), rng.standard_normal((512, 256))
    want = a @ b
    got = cp.asnumpy(cp.matmul(cp.asarray(a, np.float32), cp.asarray(b, np.float32)))
    rep = report(env, "fp32 matmul (TF32 off?)")
    rep.check("a@b", got, want, "float32", tol=2e-5)
    rep.done()


def test_graph_status_after_the_suite(env, options):
    """Graphs were captured without error somewhere in this session (or are captured now)."""
    options(step="fused", graphs=True)
    rng = np.random.default_rng(1)
    d = env.cb.asarray
    for _ in range(3):
        h = d(np.zeros((2, 5), np.float32))
        x = d(rng.standard_normal((3, 2, 4)).astype(np.float32))
        W, b = d(rng.standard_normal((9, 20)).astype(np.float32)), d(np.zeros(20, np.float32))
        env.cb.lstm_forward(x, W, b, h, h)
    status = dict(ck.GRAPH_STATUS)
    rep = report(env, f"graph status {status}")
    rep.equal("no capture error", status["error"] is None, True)
    rep.equal("captured some", status["captured"] > 0, True)
    rep.done()
