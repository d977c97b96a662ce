#!/usr/bin/env bash
# One-shot GPU check of the cupy backend, for a machine with an NVIDIA GPU and no network.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        (from anywhere; default OUT=./gpu-out)
#
# HOST_CPU=0 skips the closing numba-vs-PyTorch run on the host CPU (benchmarks/host_cpu_check.sh
# does it at length, and can run beside this script on other cores).
#
# Needs python3 with numpy, cupy, click, safetensors, pytest (torch, numba optional).  Writes few
# files under $OUT (a device lease returns at most 8):
#   gpu_check.log     everything this script prints (versions, test summary, tables)
#   pytest.log        the full pytest output of the GPU, host and torch-parity tests (all run, no -x)
#   parity.log        one line per compared tensor: max abs / normwise rel error vs the reference
#   bench.jsonl       `lstm-engine bench` results, if that command exists
#   gpu_bench.jsonl   benchmarks/gpu_bench.py results (cupy vs torch cuDNN, graphs on/off,
#                     cuBLAS path direct vs matmul; then the cell variants peephole, coupled, gru)
#   gpu_profile.jsonl benchmarks/gpu_profile.py: host / GPU / busy ms per phase of a training step
# Every step has a timeout; the whole script stays under 7 minutes.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
PY="${PYTHON:-python3}"
START=$(date +%s)
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(( $(date +%s) - START ))s)"; }
left() { echo $(( $1 - ( $(date +%s) - START ) )); }    # seconds until $1 s after the start

main() {

step "machine"
timeout 20 nvidia-smi || echo "nvidia-smi failed"
timeout 20 nvcc --version | tail -2 || echo "no nvcc"
timeout 60 "$PY" - <<'EOF' || echo "version probe failed"
import sys, platform
print("python", sys.version.split()[0], platform.machine())
for m in ("numpy", "cupy", "torch", "numba", "scipy", "click", "safetensors", "pytest"):
    try:
        mod = __import__(m)
        print(f"{m:12s} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"{m:12s} MISSING ({type(e).__name__}: {e})")
try:
    import cupy
    p = cupy.cuda.runtime.getDeviceProperties(0)
    print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion(),
          "device", p["name"], f"cc {p['major']}.{p['minor']}", "SMs", p["multiProcessorCount"])
except Exception as e:
    print("cupy device probe failed:", e)
try:
    import torch
    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.is_available())
except Exception as e:
    print("torch probe failed:", e)
EOF

step "install (editable, offline; PYTHONPATH is the fallback)"
# installed already (e.g. by a script running beside this one): a second editable install would race it
"$PY" -c "import lstm_engine, os, sys; sys.exit(not lstm_engine.__file__.startswith(os.getcwd()))" 2>/dev/null \
  || timeout 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3 || echo "pip install failed"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import lstm_engine.backends.cupy_backend as cb; print('cupy backend available:', cb.is_available())"

step "tests: GPU parity (LSTM and the cell variants) + host checks, then cupy against torch float64 (CUPY_TF32=0, NVIDIA_TF32_OVERRIDE=0)"
PYTEST_TIMEOUT=""
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_TIMEOUT="--timeout=60"
: > "$OUT/parity.log"
CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0 LSTM_ENGINE_GPU_REPORT="$OUT/parity.log" \
  timeout 150 "$PY" -m pytest -q -rfEs $PYTEST_TIMEOUT -p no:cacheprovider \
  tests/backends/test_cupy_backend.py tests/backends/test_cupy_host.py > "$OUT/pytest.log" 2>&1
echo "pytest exit code $? (0 = all passed, 124 = timed out)"
tail -n 25 "$OUT/pytest.log"
# the cupy cases only: the CPU backends' cases would spend the budget on numba's first compile
echo "=== tests/backends/test_torch_parity.py -k cupy" >> "$OUT/pytest.log"
CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0 timeout 60 "$PY" -m pytest -q -rfEs $PYTEST_TIMEOUT -p no:cacheprovider \
  tests/backends/test_torch_parity.py -k cupy >> "$OUT/pytest.log" 2>&1
echo "torch parity exit code $? (0 = all passed, 5 = no cupy case collected, 124 = timed out)"
tail -n 3 "$OUT/pytest.log"
# data-parallel: the NCCL all-reduce through a real one-GPU communicator (docs/distributed.md)
echo "=== tests/distributed/test_nccl.py -k one_gpu" >> "$OUT/pytest.log"
timeout 40 "$PY" -m pytest -q -rfEs $PYTEST_TIMEOUT -p no:cacheprovider \
  tests/distributed/test_nccl.py -k one_gpu >> "$OUT/pytest.log" 2>&1
echo "one-GPU NCCL exit code $? (0 = passed, 124 = timed out; skipped shows the reason)"
tail -n 3 "$OUT/pytest.log"
echo "--- parity lines marked FAIL or NON-FINITE (all lines in parity.log):"
grep -E "FAIL|NON-FINITE|DIFFER" "$OUT/parity.log" | head -40 || true
echo "--- worst float32 / float64 relative errors:"
for dt in float32 float64; do
  grep "$dt" "$OUT/parity.log" | grep -o "rel [0-9.e+-]*" | sort -t' ' -k2 -g | tail -1 | sed "s/^/$dt /"
done

step "benchmarks/gpu_bench.py: cupy step paths and graphs on/off vs torch cuDNN on this card"
timeout 95 "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_bench.jsonl" --budget 70
echo "gpu_bench exit code $?"

step "benchmarks/gpu_bench.py --cells: peephole, coupled, gru (kernels/cuda/cells.cu) vs nn.GRU / the cupy lstm"
timeout 60 "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_bench.jsonl" --budget 40 --cells lstm,gru,peephole,coupled \
  --configs seed,medium --variants auto --samples 1
echo "gpu_bench --cells exit code $?"

step "benchmarks/gpu_profile.py: host vs GPU time per phase; the cuBLAS path direct vs matmul"
timeout 60 "$PY" benchmarks/gpu_profile.py --configs seed,medium,large --variants auto,cublas,cublas-matmul \
  --steps 5 --out "$OUT/gpu_profile.jsonl"
echo "gpu_profile exit code $?"

step "lstm-engine bench (validate, then time; short settings to fit the budget)"
# bench writes its JSON only at the end, so it runs in parts that each finish well inside their
# timeout: the GPU rows (cupy + torch cuDNN) for all four configs, then numba against torch on the host.
if "$PY" -m lstm_engine.cli bench --help > /dev/null 2>&1; then
  : > "$OUT/bench.jsonl"
  T_GPU=$(( $(left 350) - 40 ))          # leave ~90 s for the numba part
  [ "${HOST_CPU:-1}" = 0 ] && T_GPU=$(left 390)
  if [ "$T_GPU" -gt 15 ]; then
    timeout "$T_GPU" "$PY" -m lstm_engine.cli bench --backends cupy,torch --configs seed,karpathy,medium,large \
      --what train,sample --seconds 0.5 --repeats 3 --json "$OUT/bench_gpu.jsonl"
    echo "bench (cupy,torch) exit code $?"
  else
    echo "bench (cupy,torch) skipped: ${T_GPU}s left"
  fi
  # the host CPU (the GPU machines' hosts are Intel Xeons, a CPU the 2-core dev machines may lack):
  # numba against PyTorch on two pinned cores, as on a 2-core machine
  T_CPU=$(left 400)
  [ "${HOST_CPU:-1}" = 0 ] && T_CPU=0 && echo "HOST_CPU=0: the host part is left to benchmarks/host_cpu_check.sh"
  PIN=""; taskset -c 0,1 true 2>/dev/null && PIN="taskset -c 0,1"
  echo "host CPU: $(lscpu | sed -n 's/^Model name: *//p'), model $(lscpu | sed -n 's/^Model: *//p'); pinned: ${PIN:-no}"
  if [ "$T_CPU" -gt 15 ]; then
    NUMBA_NUM_THREADS=2 timeout "$T_CPU" $PIN "$PY" -m lstm_engine.cli bench --backends numba,torch-cpu --threads 2 \
      --configs seed,karpathy,medium --what train,sample --seconds 0.5 --repeats 3 --json "$OUT/bench_numba.jsonl"
    echo "bench (numba, torch-cpu; 2 threads) exit code $?"
  else
    echo "bench (numba) skipped: ${T_CPU}s left"
  fi
  cat "$OUT"/bench_gpu.jsonl "$OUT"/bench_numba.jsonl >> "$OUT/bench.jsonl" 2>/dev/null
  rm -f "$OUT"/bench_gpu.jsonl "$OUT"/bench_numba.jsonl
else
  echo "no 'bench' command in this checkout; skipped"
fi

step "done"
ls -la "$OUT"
}

main 2>&1 | tee "$LOG"
