#!/usr/bin/env bash
# One GPU session: record the environment, install cudeform offline, run the whole
# suite (GPU tests included) and the CPU benchmark. Run from the repository root;
# results go to $OUT. Every step runs even if an earlier one failed; the exit status
# is pytest's. Wheels carried in wheels/ (hypothesis, onnx, onnxruntime, threadpoolctl) are installed
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
  for package in hypothesis onnx onnxruntime threadpoolctl; do
    "$PY" -m pip install --no-index --find-links wheels "$package" >> "$OUT/install.txt" 2>&1 \
      || note "could not install $package from wheels/"
  done
fi
if ! "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . >> "$OUT/install.txt" 2>&1; then
  note "editable install failed; using PYTHONPATH=$PWD"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# Stop pytest (SIGINT: it still writes its summary and junit) before a 10-minute call limit.
LIMIT=()
command -v timeout > /dev/null && LIMIT=(timeout -s INT -k 30 "${PYTEST_TIMEOUT:-480}")
${LIMIT[@]+"${LIMIT[@]}"} "$PY" -m pytest -q -rs -p no:cacheprovider \
  --junitxml="$OUT/junit.xml" tests > "$OUT/pytest.txt" 2>&1
pytest_rc=$?
tail -n 40 "$OUT/pytest.txt"

if "$PY" -c "import onnxruntime, onnx" 2>/dev/null; then
  "$PY" tests/bench_cpu_forward.py > "$OUT/bench_cpu.txt" 2>&1 || note "benchmark failed"
else
  echo "skipped: onnxruntime/onnx not importable" > "$OUT/bench_cpu.txt"
fi
note "pytest exit status: $pytest_rc"
exit "$pytest_rc"
