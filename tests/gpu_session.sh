#!/usr/bin/env bash
# One GPU session: record the environment, install cudeform offline, run the whole
# suite (GPU tests included), then the benchmark on the GPU (full run) and on the CPU
# (quick run). Run from the repository root; results go to $OUT. Every step runs even
# if an earlier one failed; the exit status is pytest's. Each step has a time limit,
# so that the session fits a 10-minute call: pytest ${PYTEST_TIMEOUT:-270} s, the GPU
# bench ${GPU_BENCH_TIMEOUT:-180} s, the CPU bench ${CPU_BENCH_TIMEOUT:-60} s, the demo
# on the GPU ${DEMO_TIMEOUT:-60} s. Wheels carried in wheels/ (hypothesis, onnx,
# onnxruntime, threadpoolctl, tqdm, matplotlib and its dependencies) are installed
# offline when present.
set -u
OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
note() { echo "[gpu_session] $*" | tee -a "$OUT/env.txt"; }

{
  echo "== date: $(date -u +%FT%TZ)  host: $(hostname)"
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi failed or missing"
  echo "== python: $("$PY" --version 2>&1) at $PY"
  for module in cupy numpy torch ml_dtypes hypothesis onnx onnxruntime pytest; do
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

# limit SECONDS COMMAND...: stop COMMAND with SIGINT after SECONDS (pytest still writes
# its summary and junit; the bench prints its summary and keeps the JSON rows done).
limit() {
  local seconds=$1
  shift
  if command -v timeout > /dev/null; then
    timeout -s INT -k 20 "$seconds" "$@"
  else
    "$@"
  fi
}

limit "${PYTEST_TIMEOUT:-270}" "$PY" -m pytest -q -rs -p no:cacheprovider \
  --junitxml="$OUT/junit.xml" tests > "$OUT/pytest.txt" 2>&1
pytest_rc=$?
tail -n 40 "$OUT/pytest.txt"

# The bench reports missing peers itself; stderr goes to the log, not the tables.
limit "${GPU_BENCH_TIMEOUT:-180}" "$PY" -m cudeform bench --device cuda \
  --json "$OUT/bench_gpu.json" > "$OUT/bench_gpu.txt" 2>> "$OUT/bench_gpu.log" \
  || note "GPU benchmark failed or timed out (exit status $?)"
limit "${CPU_BENCH_TIMEOUT:-60}" "$PY" -m cudeform bench --device cpu --quick \
  --json "$OUT/bench_cpu.json" > "$OUT/bench_cpu.txt" 2>> "$OUT/bench_cpu.log" \
  || note "CPU benchmark failed or timed out (exit status $?)"
limit "${DEMO_TIMEOUT:-60}" "$PY" -m cudeform demo --device cuda --out "$OUT/demo_gpu.png" \
  > "$OUT/demo_gpu.txt" 2>> "$OUT/demo_gpu.log" || note "demo failed or timed out (exit status $?)"
note "pytest exit status: $pytest_rc"
exit "$pytest_rc"
