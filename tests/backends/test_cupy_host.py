"""Host-side checks of the cupy backend: no GPU, no CuPy needed.

- every kernels/cuda/*.cu compiles with `nvcc --ptx` for sm_80 and sm_90 (skipped without nvcc), from the
  same text and options RawModule gets, each name expression instantiated (one .entry each)
- the pointer structs in lstm.cu match the order the host packs them in
- dtype dispatch, shape checks, tile choice, option switches
- without CuPy (or a GPU): is_available() says why, `--backend cupy` is a one-line UserError
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from lstm_engine.backends import INTERFACE, get_backend
from lstm_engine.backends import cupy_backend as cb
from lstm_engine.backends import cupy_kernels as ck
from lstm_engine.errors import UserError

NVCC = shutil.which("nvcc")


# ----------------------------------------------------------------------------
# nvcc --ptx of the exact RawModule source
# ----------------------------------------------------------------------------

@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH; the CUDA toolkit compiles the kernels here")
def test_every_kernel_file_compiles_to_ptx_for_sm80_and_sm90(tmp_path):
    jobs = []
    for fname in ck.KERNEL_FILES:
        src = tmp_path / fname
        src.write_text(ck.ptx_check_source(fname))
        for arch in ("sm_80", "sm_90"):
            out = tmp_path / f"{fname}.{arch}.ptx"
            cmd = [NVCC, "--ptx", f"-arch={arch}", *ck.COMPILE_OPTIONS, *ck.CUPY_APPENDED_OPTIONS,
                   str(src), "-o", str(out)]
            jobs.append((fname, arch, out, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                            stderr=subprocess.STDOUT, text=True)))
    problems = []
    for fname, arch, out, proc in jobs:
        log, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            problems.append(f"{fname} {arch}: nvcc failed\n{log}")
            continue
        ptx = out.read_text()
        entries = len(re.findall(r"\.entry\s", ptx))
        want = len(ck.name_expressions(fname))
        if entries != want:
            problems.append(f"{fname} {arch}: {entries} kernels in the PTX, {want} name expressions")
        if f".target {arch}" not in ptx:
            problems.append(f"{fname} {arch}: PTX is not for {arch}")
    assert not problems, "\n".join(problems)


def test_ptx_check_source_is_the_rawmodule_source_plus_instantiations():
    for fname in ck.KERNEL_FILES:
        src = ck.ptx_check_source(fname)
        assert src.startswith(ck.kernel_source(fname))
        added = src[len(ck.kernel_source(fname)):]
        assert added.count("(void*)&") == len(ck.name_expressions(fname))
        assert not re.search(r"^\s*#", added, re.M)                            # no extra defines
        assert not re.search(r"^\s*#\s*include", ck.kernel_source(fname), re.M)  # NVRTC has no headers


def test_every_name_expression_names_a_kernel_of_its_file():
    for fname in ck.KERNEL_FILES:
        code = ck.kernel_source(fname)
        kernels = set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)|"
                                 r"__launch_bounds__\([^)]*\)\s*\n\s*(\w+)\(", code))
        names = {a or b for a, b in kernels}
        bases = {n.split("<")[0] for n in ck.name_expressions(fname)}
        assert bases == names, (fname, bases ^ names)


def test_kernel_names_and_dtype_dispatch():
    assert ck.kernel_name("softmax_xent", np.float32) == "softmax_xent<float>"
    assert ck.kernel_name("lstm_fwd_fused", "float64", "small") == "lstm_fwd_fused<double,16,16,1,1>"
    assert ck.kernel_name("gen_logits", "float32", "narrow") == "gen_logits<float,4,64,1,1>"
    with pytest.raises(ValueError, match="float32 or float64"):
        ck.kernel_name("softmax_xent", np.float16)
    with pytest.raises(ValueError, match="tile config"):
        ck.kernel_name("gen_logits", "float32", "big")
    with pytest.raises(ValueError, match="takes no tile"):
        ck.kernel_name("adam_multi", "float32", "small")
    assert ck.kernel_name("lstm_bwd_persist", "float32", 16) == "lstm_bwd_persist<float,16>"
    assert len(set(ck.name_expressions("lstm.cu"))) == 2 * (3 + 3 + 3 + 3 + 1 + 1 + 2 + 2)


def test_tiles_use_the_thread_count_the_kernels_assume():
    for bt, jt, rb, rj in ck.TILES.values():
        assert bt % rb == 0 and jt % rj == 0 and (jt // rj) * (bt // rb) == ck.THREADS
    assert re.search(r"#define THREADS %d\b" % ck.THREADS, ck.kernel_source("lstm.cu"))
    for fname in ("train_ops.cu", "sampling.cu"):   # launched with (ck.THREADS,) blocks too
        assert re.search(r"#define NT %d\b" % ck.THREADS, ck.kernel_source(fname)), fname


def test_pointer_structs_match_the_host_order():
    src = ck.kernel_source("lstm.cu")
    assert ck.struct_fields(src, "FwdPtrs") == ck.FWD_FIELDS
    assert ck.struct_fields(src, "BwdPtrs") == ck.BWD_FIELDS
    # and the backend packs them in that order
    import inspect
    body = inspect.getsource(cb._forward_fused)
    assert "pointer_table([xproj, W, b, hbuf, cbuf, acts])" in body
    assert "pointer_table([W, acts, cbuf, dhs, dhT, dzs, dc])" in inspect.getsource(cb._backward_fused)


def test_choose_tile():
    assert ck.choose_tile(1, 1024, n_sm=132) == "narrow"
    assert ck.choose_tile(4, 512, n_sm=132) == "narrow"
    assert ck.choose_tile(32, 128, n_sm=132) == "small"          # 4 big blocks only
    assert ck.choose_tile(256, 1024, n_sm=132) == "big"          # 256 big blocks
    assert ck.choose_tile(64, 64, n_sm=132, gen=True) == "small"
    assert ck.tile_grid("small", 33, 37) == (3, 3)
    assert ck.tile_grid("narrow", 1, 64) == (1, 1)


# ----------------------------------------------------------------------------
# Shape checks and switches
# ----------------------------------------------------------------------------

def test_check_lstm_shapes():
    assert cb.check_lstm_shapes((5, 3, 7), (44, 148), (148,), (3, 37), (3, 37)) == (5, 3, 7, 37)
    bad = [((5, 3), (44, 148), (148,), (3, 37), (3, 37), "x must be"),
           ((5, 3, 7), (44, 148), (148,), (2, 37), (3, 37), "h0 must be"),
           ((5, 3, 7), (44, 148), (148,), (3, 37), (3, 36), "c0 must be"),
           ((5, 3, 7), (45, 148), (148,), (3, 37), (3, 37), "W must be"),
           ((5, 3, 7), (44, 148), (147,), (3, 37), (3, 37), "b must be"),
           ((0, 3, 7), (44, 148), (148,), (3, 37), (3, 37), "empty")]
    for *shapes, msg in bad:
        with pytest.raises(ValueError, match=msg):
            cb.check_lstm_shapes(*shapes)


def test_cell_kernels_are_registered_and_shapes_checked():
    """cells.cu holds a forward and a backward step kernel and a generation step per cell variant,
    each instantiated for float and double; the host check names the cell's wrong parameter."""
    from lstm_engine.backends import cupy_cells as cc
    want = {f"{c}_{d}_cell" for c in cc.CELLS for d in ("fwd", "bwd")} | {f"gen_{c}_step" for c in cc.CELLS}
    names = ck.name_expressions("cells.cu")
    assert {n.split("<")[0] for n in names} == want and len(names) == 2 * len(want)
    assert ck.kernel_name("gru_bwd_cell", "float64") == "gru_bwd_cell<double>"
    src = ck.kernel_source("cells.cu")
    assert re.search(r"#define THREADS %d\b" % ck.THREADS, src)
    assert re.search(r"#define GEN_UNITS %d\b" % cc.GEN_UNITS, src) and ck.THREADS % cc.GEN_UNITS == 0
    assert cc.gen_grid(3, 65) == (3, 3) and cc.gen_grid(1, 32) == (1, 1)
    z = np.zeros
    gru = {"W": z((44, 111)), "bx": z(111), "bh": z(111)}
    assert cc.check_cell("gru", (5, 3, 7), gru, (3, 37), (3, 37)) == (5, 3, 7, 37)
    peep = {"W": z((44, 148)), "b": z(148), "wc": z((3, 37))}
    assert cc.check_cell("peephole", (5, 3, 7), peep, (3, 37), (3, 37)) == (5, 3, 7, 37)
    bad = [("coupled", (5, 3, 7), {"W": z((44, 148)), "b": z(148)}, "coupled W must be"),
           ("peephole", (5, 3, 7), {**peep, "wc": z((4, 37))}, "peephole wc must be"),
           ("gru", (5, 3, 7), {"W": z((44, 111)), "b": z(111)}, "a gru layer takes parameters W, bx, bh"),
           ("gru", (5, 3), gru, "x must be"),
           ("lstm", (5, 3, 7), {"W": z((44, 148)), "b": z(148)}, "cover peephole, coupled, gru")]
    for cell, x_shape, p, msg in bad:
        with pytest.raises(ValueError, match=msg):
            cc.check_cell(cell, x_shape, p, (3, 37), (3, 37))


def test_step_mode_and_options(monkeypatch):
    old = cb.set_options(step="auto", graphs=True, tile="auto", blas="direct")
    try:
        monkeypatch.setattr(cb.ck, "sm_count", lambda: 132)         # an H100's figures
        monkeypatch.setattr(cb.ck, "smem_optin", lambda: 232448)
        assert cb.step_mode(32, 128, "float32") == "persist"      # seed-sized: the persistent kernels won
        assert cb.step_mode(50, 128, "float32") == "fused"        # karpathy-sized: launch-bound
        assert cb.step_mode(128, 1024, "float32") == "cublas"     # large: the product dominates
        assert cb.step_mode(64, 512, "float64") == "cublas"
        assert cb.step_mode(64, 512, "float32") == "cublas"      # medium: the cuBLAS path (docs/gpu.md, "Step paths")
        cb.set_options(step="fused", tile="big")
        assert cb.step_mode(128, 1024, "float32") == "fused" and cb.OPTIONS["tile"] == "big"
        with pytest.raises(ValueError):
            cb.set_options(step="fast")
        with pytest.raises(ValueError):
            cb.set_options(tile="huge")
        with pytest.raises(ValueError):
            cb.set_options(blas="cutlass")
        assert cb.set_options(blas="matmul")["blas"] == "direct" and cb.OPTIONS["blas"] == "matmul"
    finally:
        cb.set_options(**old)
    assert (cb.OPTIONS == {"step": "auto", "graphs": True, "tile": None, "persist_units": None, "blas": "direct"}
            or old["step"] != "auto" or old["blas"] != "direct")


def test_persist_plan():
    """Units per block, blocks <= SMs, lanes per pair, shared bytes; None when W_h does not fit."""
    old = cb.set_options(step="persist", persist_units=0)
    try:
        assert cb.persist_plan(32, 128, "float32", n_sm=132, smem_max=227 * 1024) == (1, 128, 8, 2048)
        assert cb.persist_plan(64, 512, "float32", n_sm=132, smem_max=227 * 1024) == (4, 128, 8, 32768)
        assert cb.persist_plan(4, 100, "float64", n_sm=132, smem_max=48 * 1024) == (1, 100, 32, 3200)
        assert cb.persist_plan(64, 1024, "float32", n_sm=132, smem_max=227 * 1024)[:3] == (8, 128, 8)
        assert cb.persist_plan(64, 1024, "float64", n_sm=132, smem_max=227 * 1024) is None   # 256 KiB slice
        cb.set_options(persist_units=3)
        assert cb.persist_plan(2, 37, "float32", n_sm=132, smem_max=48 * 1024) == (3, 13, 32, 4 * 3 * 37 * 4)
    finally:
        cb.set_options(**old)


def test_generation_request_checks():
    from lstm_engine.backends.cupy_generate import check_request
    w = {"Emb": np.zeros((5, 2))}
    assert check_request(w, [0, 4], 3, 1.0, 0, 1.0, False).tolist() == [0, 4]
    for args, msg in [(([5], 3, 1.0, 0, 1.0, False), "start tokens"), (([], 3, 1.0, 0, 1.0, False), "at least one"),
                      (([1], -1, 1.0, 0, 1.0, False), "n must"), (([1], 3, 0.0, 0, 1.0, False), "temperature"),
                      (([1], 3, 1.0, 0, 1.5, False), "top_p"), (([1], 3, 1.0, -1, 1.0, False), "top_k")]:
        with pytest.raises(ValueError, match=msg):
            check_request(w, *args)
    assert check_request(w, [1], 3, 0.0, 0, 1.0, True).tolist() == [1]    # greedy ignores temperature


# ----------------------------------------------------------------------------
# Without CuPy: the module imports, says what to install, and the CLI prints one line
# ----------------------------------------------------------------------------

@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setattr(cb, "cp", None)
    monkeypatch.setattr(cb, "xp", None)
    monkeypatch.setattr(cb, "_IMPORT_ERROR", "No module named 'cupy'")
    monkeypatch.setattr(cb, "_availability", None)
    yield


def test_module_has_the_whole_interface():
    missing = [n for n in INTERFACE if not hasattr(cb, n)]
    assert not missing and cb.NAME == "cupy" and callable(cb.generate_batch)


def test_is_available_explains_what_to_install(no_cupy):
    ok, why = cb.is_available()
    assert not ok and "CuPy is not installed" in why and "pip install" in why and "\n" not in why
    with pytest.raises(UserError, match="CuPy is not installed") as e:
        get_backend("cupy")
    assert "\n" not in str(e.value)


def test_auto_skips_cupy_without_it(no_cupy):
    assert get_backend("auto").NAME != "cupy"


def test_to_numpy_of_host_arrays_needs_no_cupy(no_cupy):
    a = np.arange(3.0)
    assert cb.to_numpy(a) is a


def test_cli_backend_cupy_without_cupy_is_one_line(no_cupy, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path))
    from lstm_engine.cli import main
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 50)
    res = CliRunner().invoke(main, ["train", "--backend", "cupy", "--corpus", str(corpus), "--steps", "1",
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: backend 'cupy' is not usable here: CuPy is not installed")
    assert "Traceback" not in res.output


def test_engine_imports_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import lstm_engine, lstm_engine.backends.cupy_backend as cb\n"
            "ok, why = cb.is_available(); assert not ok and 'pip install' in why, why\n"
            "from lstm_engine.backends import get_backend; print(get_backend('auto').NAME)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("numba", "numpy")


_CUBLAS_STUB = r"""
#include <stdint.h>
static double last[16];
static int status = 0;
#define KEEP(i, v) last[i] = (double)(v)
#define GEMM(NAME, T)                                                                            \
int NAME(void* h, int ta, int tb, int m, int n, int k, const T* al, const T* A, int lda,          \
         const T* B, int ldb, const T* be, T* C, int ldc) {                                      \
    KEEP(0, (intptr_t)h); KEEP(1, ta); KEEP(2, tb); KEEP(3, m); KEEP(4, n); KEEP(5, k);           \
    KEEP(6, *al); KEEP(7, (intptr_t)A); KEEP(8, lda); KEEP(9, (intptr_t)B); KEEP(10, ldb);       \
    KEEP(11, *be); KEEP(12, (intptr_t)C); KEEP(13, ldc); KEEP(14, sizeof(T)); return status;     \
}
GEMM(cublasSgemm_v2, float)
GEMM(cublasDgemm_v2, double)
int cublasSetStream_v2(void* h, void* s) { KEEP(0, (intptr_t)h); KEEP(15, (intptr_t)s); return status; }
int cublasSetPointerMode_v2(void* h, int mode) { KEEP(0, (intptr_t)h); KEEP(1, mode); return status; }
double stub_last(int i) { return last[i]; }
void stub_status(int s) { status = s; }
"""


def test_cublas_ctypes_passes_every_argument(tmp_path):
    """CublasCtypes (cuBLAS through ctypes, what lets cuBLAS loops be captured) against a stub
    library with cuBLAS's symbols: every argument arrives where the C signature expects it,
    alpha / beta are read through their host pointers, a failing status raises, and
    loaded_libraries finds the library once it is loaded."""
    import ctypes
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    src, lib_path = tmp_path / "stub.c", tmp_path / "libcublasstub.so.99"   # a real libcublas may be loaded too
    src.write_text(_CUBLAS_STUB)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", str(src), "-o", str(lib_path)], check=True)
    cub = ck.CublasCtypes(str(lib_path))
    stub = ctypes.CDLL(str(lib_path))
    stub.stub_last.restype, stub.stub_last.argtypes = ctypes.c_double, [ctypes.c_int]
    assert ck.loaded_libraries("libcublasstub.so") == [str(lib_path)]
    for fn, dt in ((cub.sgemm, np.float32), (cub.dgemm, np.float64)):
        scal = np.array([2.5, 0.5], dt)
        A, B, C = 0x10000, 0x20000, 0x30000
        fn(0x1234, 1, 0, 7, 9, 11, scal.ctypes.data, A, 13, B, 15, scal.ctypes.data + scal.itemsize, C, 17)
        got = [stub.stub_last(i) for i in range(15)]
        assert got == [0x1234, 1, 0, 7, 9, 11, 2.5, A, 13, B, 15, 0.5, C, 17, np.dtype(dt).itemsize]
    cub.setStream(0x99, 0x4242)
    assert (stub.stub_last(0), stub.stub_last(15)) == (0x99, 0x4242)
    cub.setPointerMode(0x77, 0)
    assert (stub.stub_last(0), stub.stub_last(1)) == (0x77, 0)
    stub.stub_status(7)
    with pytest.raises(RuntimeError, match="cublasSgemm_v2 failed with cuBLAS status 7"):
        cub.sgemm(0, 0, 0, 1, 1, 1, scal.ctypes.data, A, 1, B, 1, scal.ctypes.data, C, 1)
