#!/usr/bin/env bash
# GPU tuning run: where the time of a training step goes, and an A/B of the persistent
# time-loop kernels (LSTM_ENGINE_CUPY_STEP=persist) against the automatic choice and torch
# cuDNN fp32, on the same card.  No network needed.
#
#   OUT=/some/dir bash benchmarks/gpu_tune.sh        (from anywhere; default OUT=./gpu-out)
#
# Files under $OUT (6 at most):
#   gpu_tune.log       everything printed (versions, test summary, profile and A/B tables)
#   pytest.log         tests/backends/test_cupy_backend.py (GPU parity, the persistent path included)
#   parity.log         one line per compared tensor (max abs / rel error)
#   gpu_profile.jsonl  benchmarks/gpu_profile.py: per-phase host / gpu / busy ms, wall, idle
#   gpu_bench.jsonl    benchmarks/gpu_bench.py: train auto vs persist vs torch, sampling S=1
#   bench_cpu.jsonl    lstm-engine bench, numba vs torch-cpu on the host CPU (only with numba)
# Every part has a timeout; the whole script stays under 210 seconds.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
START=$(date +%s)
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(( $(date +%s) - START ))s)"; }
left() { echo $(( $1 - ( $(date +%s) - START ) )); }    # seconds until $1 s after the start
cap() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }   # min

main() {
step "machine"
timeout 10 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv || echo "nvidia-smi failed"
timeout 30 "$PY" -c "
import cupy, torch
p = cupy.cuda.runtime.getDeviceProperties(0)
print('cupy', cupy.__version__, 'device', p['name'], 'SMs', p['multiProcessorCount'],
      'smem optin', p.get('sharedMemPerBlockOptin'), 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())
" || echo "version probe failed"

step "install (editable, offline; PYTHONPATH is the fallback)"
timeout 40 "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2 || echo "pip install failed"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step "GPU tests: tests/backends/test_cupy_backend.py (persist cases included; CUPY_TF32=0)"
: > "$OUT/parity.log"
CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0 LSTM_ENGINE_GPU_REPORT="$OUT/parity.log" \
  timeout 50 "$PY" -m pytest -q -rfEs -p no:cacheprovider tests/backends/test_cupy_backend.py > "$OUT/pytest.log" 2>&1
echo "pytest exit code $? (0 = all passed, 124 = timed out)"
tail -n 15 "$OUT/pytest.log"
echo "--- persist parity lines that FAIL (all lines in parity.log):"
grep -i "persist" "$OUT/parity.log" | grep -E "FAIL|NON-FINITE|DIFFER" | head -20 || true
echo "--- worst float32 / float64 relative errors of the persist cases:"
for dt in float32 float64; do
  grep -i "persist" "$OUT/parity.log" | grep "$dt" | grep -o "rel [0-9.e+-]*" | sort -t' ' -k2 -g | tail -1 | sed "s/^/$dt /"
done

step "gpu_profile.py: where a training step's time goes (auto vs persist)"
timeout "$(cap "$(left 150)" 50)" "$PY" benchmarks/gpu_profile.py --configs seed,karpathy,medium,large \
  --variants auto,persist --steps 5 --out "$OUT/gpu_profile.jsonl"
echo "gpu_profile exit code $?"

step "A/B: cupy auto vs persist vs torch cuDNN; train + batch-1 sampling"
T_AB=$(cap "$(left 175)" 60)
timeout "$T_AB" "$PY" benchmarks/gpu_bench.py --configs seed,karpathy,medium,large --variants auto,persist \
  --what train,sample --samples 1 --budget $(( T_AB - 12 )) --out "$OUT/gpu_bench.jsonl"
echo "gpu_bench exit code $?"

step "host CPU: lstm-engine bench numba vs torch-cpu (only if the numba backend is in this checkout)"
if [ -f lstm_engine/backends/numba_backend.py ] && "$PY" -c "import numba" 2>/dev/null; then
  : > "$OUT/bench_cpu.jsonl"
  for cfg in seed karpathy medium; do          # one call per config: bench writes its JSON at the end
    T_CPU=$(left 205)
    if [ "$T_CPU" -lt 12 ]; then echo "bench $cfg skipped: ${T_CPU}s left"; continue; fi
    timeout "$T_CPU" "$PY" -m lstm_engine.cli bench --backends numba,torch-cpu --configs "$cfg" \
      --what train,sample --seconds 0.5 --repeats 3 --json "$OUT/bench_cpu_part.jsonl"
    echo "bench $cfg exit code $?"
    cat "$OUT/bench_cpu_part.jsonl" >> "$OUT/bench_cpu.jsonl" 2>/dev/null
    rm -f "$OUT/bench_cpu_part.jsonl"
  done
else
  echo "no numba backend (lstm_engine/backends/numba_backend.py) or no numba: skipped"
fi

step "done"
ls -la "$OUT"
}

main 2>&1 | tee "$OUT/gpu_tune.log"
