#!/usr/bin/env bash
# One GPU session, within one 10-minute call: record the environment, install cudeform
# offline, then
#   1. the whole suite (GPU tests included: CuPy against NumPy in every dtype, cuBLAS
#      against its NumPy twin, deterministic mode bit for bit, compute-sanitizer
#      memcheck and racecheck on small cases of all three ops, in both scatter modes);
#   2. two deterministic runs of all three ops in two processes, compared bit for bit
#      (SHA-256 of every output and gradient);
#   3. the bench on S1-S4, fwd and fwd+bwd, float32, float16 and bfloat16, against
#      torchvision and cuDNN, with peak memory, and the deterministic backward against
#      the default one;
#   4. the demo on the GPU, if time is left.
# Run from the repository root; results go to $OUT. Every step runs even if an earlier
# one failed; the exit status is pytest's. Each step has a time limit, and no step may
# run past SESSION_LIMIT seconds (default 530) from the start, so the session fits a
# 540-second budget: pytest ${PYTEST_TIMEOUT:-250} s, determinism ${DETERMINISM_TIMEOUT:-60} s
# for both runs, bench ${GPU_BENCH_TIMEOUT:-170} s, demo ${DEMO_TIMEOUT:-30} s. Wheels
# carried in wheels/ are installed offline when present.
set -u
OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
SESSION_LIMIT=${SESSION_LIMIT:-530}
note() { echo "[gpu_session] $*" | tee -a "$OUT/env.txt"; }

{
  echo "== date: $(date -u +%FT%TZ)  host: $(hostname)"
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi failed or missing"
  echo "== python: $("$PY" --version 2>&1) at $PY"
  for module in cupy numpy torch torchvision ml_dtypes hypothesis onnx onnxruntime pytest; do
    "$PY" -c "import $module; print('$module', $module.__version__)" 2>&1 | tail -n 1
  done
  "$PY" -c "import cupy; r = cupy.cuda.runtime; print('CUDA runtime', r.runtimeGetVersion(), \
'driver', r.driverGetVersion(), 'devices', r.getDeviceCount()); \
print('CUDA path', cupy.cuda.get_cuda_path())" 2>&1 | tail -n 2
  echo "== compute-sanitizer: $(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo absent)"
} > "$OUT/env.txt" 2>&1

if [ -d wheels ]; then
  for package in hypothesis onnx onnxruntime threadpoolctl tqdm matplotlib; do
    "$PY" -m pip install --no-index --find-links wheels "$package" >> "$OUT/install.txt" 2>&1 \
      || note "could not install $package from wheels/"
  done
fi
if ! "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . >> "$OUT/install.txt" 2>&1; then
  note "editable install failed; using PYTHONPATH=$PWD"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# limit SECONDS COMMAND...: stop COMMAND with SIGINT after SECONDS, or sooner if the
# session limit comes first (pytest still writes its summary and junit; the bench prints
# its summary and keeps the JSON rows done). Returns 124 without running when no time is left.
limit() {
  local seconds=$1 left=$((SESSION_LIMIT - SECONDS - 5))
  shift
  [ "$left" -lt "$seconds" ] && seconds=$left
  if [ "$seconds" -lt 5 ]; then
    note "no time left for: $*"
    return 124
  fi
  if command -v timeout > /dev/null; then
    timeout -s INT -k 10 "$seconds" "$@"
  else
    "$@"
  fi
}

# 1. The whole suite.
limit "${PYTEST_TIMEOUT:-250}" "$PY" -m pytest -q -rs -p no:cacheprovider \
  --junitxml="$OUT/junit.xml" tests > "$OUT/pytest.txt" 2>&1
pytest_rc=$?
tail -n 40 "$OUT/pytest.txt"
note "pytest exit status: $pytest_rc after ${SECONDS} s"

# 2. Two deterministic runs, two processes, bit for bit.
half=$(( ${DETERMINISM_TIMEOUT:-60} / 2 ))
if limit "$half" "$PY" -m tests.determinism_hashes "$OUT/determinism_1.json" \
      2>> "$OUT/determinism.log" \
    && limit "$half" "$PY" -m tests.determinism_hashes "$OUT/determinism_2.json" \
      2>> "$OUT/determinism.log"; then
  if cmp -s "$OUT/determinism_1.json" "$OUT/determinism_2.json"; then
    note "deterministic runs: identical, $(grep -c ':' "$OUT/determinism_1.json") hashes"
  else
    note "deterministic runs DIFFER: see $OUT/determinism_1.json and _2.json"
  fi
else
  note "determinism runs failed or timed out (see $OUT/determinism.log)"
fi

# 3. The bench on S1-S4 (the batch-16 layers of the full run are left out for time).
limit "${GPU_BENCH_TIMEOUT:-170}" "$PY" -c "
import sys
from cudeform._bench import run
from cudeform._bench.cases import GPU_CASES
sys.exit(run('cuda', GPU_CASES, json_path='$OUT/bench_gpu.json'))
" > "$OUT/bench_gpu.txt" 2>> "$OUT/bench_gpu.log" \
  || note "GPU benchmark failed or timed out (exit status $?)"

# 4. The demo, with what is left.
limit "${DEMO_TIMEOUT:-30}" "$PY" -m cudeform demo --device cuda --out "$OUT/demo_gpu.png" \
  > "$OUT/demo_gpu.txt" 2>> "$OUT/demo_gpu.log" || note "demo failed or timed out (exit status $?)"
note "session done after ${SECONDS} s; pytest exit status: $pytest_rc"
exit "$pytest_rc"
