#!/usr/bin/env bash
# One-shot check of the numba backend against PyTorch on a machine's CPU, as on a 2-core machine:
# two pinned cores, first as the CPU is (AVX-512 where it has it), then with both sides held to
# AVX2 (numba for Haswell, OpenBLAS on its Haswell kernels, PyTorch's ATen/MKL/oneDNN at AVX2).
#
#   OUT=/some/dir bash benchmarks/host_cpu_check.sh [BUDGET_SECONDS] [PARTS]
#
# PARTS: native, avx2 or native,avx2 (the default), sharing BUDGET_SECONDS (default 540) equally;
# OUT defaults to ./cpu-out; CORES (default 0,1) names the two cores to pin to.  A cold numba cache (a fresh checkout, or a kernel edit) compiles for
# two to three minutes in each part's tune and again in its bench: give a cold part 300 s or more.
#
# For a borrowed machine whose CPU the 2-core development machines lack (the GPU machines' hosts
# are Intel Xeons).  Needs python3 with numpy, numba, scipy, click, safetensors and torch.  Writes
# under $OUT (a device lease returns at most 8 files):
#   host_cpu_check.log  everything printed: lscpu, `lstm-engine tune` tables, `bench` tables
#   bench_native.jsonl, bench_avx2.jsonl   the bench results of each part
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./cpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/host_cpu_check.log"
PY="${PYTHON:-python3}"
BUDGET="${1:-540}"
PARTS="${2:-native,avx2}"
START=$(date +%s)
export PYTHONUNBUFFERED=1 NUMBA_NUM_THREADS=2 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2
step() { echo; echo "=== $* ($(( $(date +%s) - START ))s)"; }
left() { echo $(( $1 - ( $(date +%s) - START ) )); }    # seconds until $1 s after the start

# part NAME END ENV...: tune then bench under ENV, both ending by END seconds after the start
part() {
  local name=$1 end=$2; shift 2
  local t
  t=$(( $(left "$end") * 9 / 20 ))
  step "$name: lstm-engine tune (${t}s at most; compiles on a cold cache)"
  if [ "$t" -gt 20 ]; then
    timeout "$t" env "$@" $PIN "$PY" -m lstm_engine.cli tune --configs seed,karpathy,medium
    echo "tune exit code $? (124: timed out; bench then uses what was measured)"
  fi
  t=$(left "$end")
  step "$name: lstm-engine bench numba vs torch-cpu (${t}s at most)"
  if [ "$t" -gt 20 ]; then
    timeout "$t" env "$@" $PIN "$PY" -m lstm_engine.cli bench --backends numba,torch-cpu --threads 2 \
      --configs tiny,seed,karpathy,medium --what train,sample --seconds 0.5 --repeats 3 --json "$OUT/bench_$name.jsonl"
    echo "bench exit code $?"
  else
    echo "skipped: ${t}s left"
  fi
}

main() {
step "machine"
lscpu | grep -E "^(Model name|CPU family|Model|Thread|Core|Socket|CPU\(s\)|L1d|L2|L3)"
echo "vector ISA flags: $(grep -m1 -o -wE 'avx2|fma|avx512[a-z0-9_]*|amx[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
lscpu -e 2>/dev/null | head -5
CORES="${CORES:-0,1}"
PIN=""; taskset -c "$CORES" true 2>/dev/null && PIN="taskset -c $CORES"
echo "pinned to cores $CORES: ${PIN:-no}"
# installed already (e.g. by a script running beside this one): a second editable install would race it
"$PY" -c "import lstm_engine, os, sys; sys.exit(not lstm_engine.__file__.startswith(os.getcwd()))" 2>/dev/null \
  || timeout 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3 || echo "pip install failed"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

n=$(echo "$PARTS" | tr ',' '\n' | grep -c .)
i=0
for name in $(echo "$PARTS" | tr ',' ' '); do
  i=$(( i + 1 ))
  end=$(( BUDGET * i / n ))
  case "$name" in
    native) part native "$end" -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ;;
    avx2) part avx2 "$end" -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Haswell LSTM_ENGINE_NUMBA_ISA=avx2 \
            ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
    *) echo "unknown part '$name' (native, avx2)" ;;
  esac
done

step "done"
ls -la "$OUT"
}

main 2>&1 | tee "$LOG"
