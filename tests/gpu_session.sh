#!/usr/bin/env bash
# The GPU session: the whole plan for a short, rare GPU run, in one call of at most 480 s.
#
#   OUT=<dir> bash tests/gpu_session.sh          (from the repository root)
#
# Stages, most needed first. Each has its own time limit (SIGINT at the limit, so pytest
# and the bench still write what they did), logs to $OUT/<stage>.log, goes on after a
# failure, and adds one row to $OUT/summary.md: stage | status | key numbers | seconds.
#
#   stage          limit  what
#   1 environment    30   GPU, driver, CUDA, Python, package versions; offline install of
#                         the wheels in wheels/ the image lacks, then cudeform (editable, or
#                         the source finder of tests/session/source_install.py)
#   2 smoke          60   NVRTC compile of all 32 modules, each timed; each op's forward and
#                         backward on one small case in float32/float16/bfloat16 against
#                         the NumPy path, largest errors
#   3 bench         150   S1-S4 and batch 16, fwd and fwd+bwd, 3 dtypes, every GPU peer
#                         found (torchvision, deformops, onnxruntime CUDA, cuDNN), peak
#                         memory, deterministic vs default backward (rows kept at SIGINT)
#   4 gpu-tests      90   pytest -m gpu, the ops' own files first (sanitizer tests left to
#                         5 and 7), then the NVRTC, resource and occupancy tests
#   5 memcheck       60   compute-sanitizer memcheck, small cases of all three ops, both
#                         scatter modes, both index widths (3 sanitizer processes)
#   6 determinism    30   two deterministic runs in two processes, compared bit for bit
#                   ---
#                   420   stages 1-6 on an H100
#   7 demo, racecheck, rest of the suite: with the time left before SESSION_LIMIT.
#
# How the budget was estimated (no stage has run on a GPU yet, so these are estimates
# from CPU-side measurements, to be replaced by the first session's times): NVRTC is
# host work, and compiling the 32 modules to sm_90 cubins took 35 s on a shared 2-core
# EPYC (tests/nvrtc.py, 1.1 s each, 3.3 s at most); the offline install of ~25 wheels
# takes about 15 s; the bench stops itself at its limit and keeps its rows, the small
# layers first; the GPU tests are about 300 small cases, most under 0.1 s once compiled
# (stage 2 fills CuPy's disk cache), plus torch.compile with inductor (~30 s cold);
# a sanitizer process is Python, CuPy and ~30 small launches slowed 10-100x (~15 s);
# a determinism run is an import and nine forward/backward pairs on cached modules.
#
# Without a CUDA device (or without CuPy) every GPU stage is recorded as "no CUDA device"
# and skipped at once; the script then exits 0 (CI runs it that way: .ci/run). With a
# device it exits 1 when any stage failed or ran out of time.
#
# The GPU machine has no network: whatever the image lacks travels in wheels/ (fetched
# here by tests/fetch_wheels.sh; the device call must carry it: carry ["wheels"]).
# Settings: SESSION_LIMIT (default 465 s from the start; no stage starts or runs past
# it), PYTHON (default: python, else python3).
set -u
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SCRIPT")/.."
export OUT=${OUT:-$PWD/gpu-session-out}
PY=${PYTHON:-$(command -v python || command -v python3)}
SESSION_LIMIT=${SESSION_LIMIT:-465}
SUMMARY=$OUT/summary.md
# The image's Python may be marked externally managed (PEP 668); the machine is thrown
# away after the session, so pip may install into it.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfEs)

# record STAGE STATUS NUMBERS SECONDS: one row of summary.md (| in text becomes /).
record() {
  local numbers=${3//|//}
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "${numbers//$'\n'/ }" "$4" >> "$SUMMARY"
  echo "[gpu_session] $1: $2 (${4} s) ${numbers//$'\n'/ }"
}

# key_numbers LOG: the stage's own "summary:" line, else pytest's result line, else
# the log's last line.
key_numbers() {
  local line
  line=$(grep -a '^summary: ' "$1" 2>/dev/null | tail -n 1)
  [ -n "$line" ] && { echo "${line#summary: }"; return; }
  line=$(grep -aE '^=* ?[0-9]+ (passed|failed|skipped|error|deselected).* in [0-9.]+s' "$1" \
         2>/dev/null | tail -n 1)
  [ -n "$line" ] && { echo "$line" | tr -d '='; return; }
  tail -n 1 "$1" 2>/dev/null | cut -c1-300
}

# stage NAME LIMIT COMMAND...: run COMMAND (a program, or one of the functions below,
# which this script runs in a child: bash gpu_session.sh --run FUNCTION) with output to
# $OUT/NAME.log, stopped with SIGINT (timeout sends it to the whole process group) after
# LIMIT seconds or at the session limit, whichever comes first; one row.
stage() {
  local name=$1 seconds=$2 left=$((SESSION_LIMIT - SECONDS - 5)) start=$SECONDS status rc
  shift 2
  [ "$left" -lt "$seconds" ] && seconds=$left
  if [ "$seconds" -lt 5 ]; then
    record "$name" "not run: no time left" "" 0
    failures=$((failures + 1))
    return 124
  fi
  if [ "$(type -t "$1")" = function ]; then
    set -- bash "$SCRIPT" --run "$@"
  fi
  timeout -s INT -k 10 "$seconds" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=passed ;;
    124) status="time limit (${seconds} s)"; failures=$((failures + 1)) ;;
    137) status="time limit (${seconds} s, killed 10 s later)"; failures=$((failures + 1)) ;;
    *) status="FAILED (exit $rc)"; failures=$((failures + 1)) ;;
  esac
  record "$name" "$status" "$(key_numbers "$OUT/$name.log")" $((SECONDS - start))
  return "$rc"
}

# gpu_stage NAME LIMIT COMMAND...: a stage that needs a CUDA device.
gpu_stage() {
  if [ -n "$NO_GPU" ]; then
    record "$1" "no CUDA device" "skipped" 0
    return 0
  fi
  stage "$@"
}

# --- 1. environment and offline install ---------------------------------------------------
environment() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  python: $("$PY" --version 2>&1) at $PY"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 \
    || echo "nvidia-smi failed or missing"
  "$PY" -m tests.session.wheels wheels
  if "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1
  then
    echo "cudeform: editable install"
  else
    echo "cudeform: editable install failed (see install.log); source finder instead"
    "$PY" -m tests.session.source_install
  fi
  local rc
  "$PY" - <<'PY'
import importlib.metadata as metadata
for name in ("cudeform", "numpy", "cupy-cuda13x", "cupy-cuda12x", "torch", "torchvision",
             "triton", "deformops", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript",
             "ml_dtypes", "hypothesis", "pytest", "threadpoolctl", "tqdm", "matplotlib",
             "chainer", "setuptools"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} absent")
try:
    import cupy
    runtime = cupy.cuda.runtime
    print(f"CUDA runtime {runtime.runtimeGetVersion()}, driver {runtime.driverGetVersion()}, "
          f"devices {runtime.getDeviceCount()}, CUDA path {cupy.cuda.get_cuda_path()}")
except Exception as error:
    print(f"CuPy: {type(error).__name__}: {error}")
import cudeform.adapters  # the check that the install maps the adapters
print(f"summary: cudeform {cudeform.__version__} from {cudeform.__file__}")
PY
  rc=$?
  echo "compute-sanitizer: $(command -v compute-sanitizer \
    || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo absent)"
  return "$rc"
}

determinism() {
  "$PY" -m tests.determinism_hashes "$OUT/determinism_1.json" || return 1
  "$PY" -m tests.determinism_hashes "$OUT/determinism_2.json" || return 1
  local count
  count=$(grep -c '": "' "$OUT/determinism_1.json")
  if cmp -s "$OUT/determinism_1.json" "$OUT/determinism_2.json"; then
    echo "summary: two processes, $count SHA-256 hashes of outputs and gradients, identical"
  else
    echo "summary: two processes, $count hashes: the runs DIFFER (see determinism_*.json)"
    return 1
  fi
}
# The ops' own GPU tests first, then every other file with GPU tests (adapters last: the
# inductor test compiles for a while).
CORE_GPU_TESTS=(tests/test_deform_conv_gpu.py tests/test_deform_roi_pool_gpu.py
                tests/test_deform_psroi_pool_gpu.py tests/test_determinism_gpu.py
                tests/test_gemm_gpu.py tests/test_device_placement.py)
gpu_tests() {
  local others
  others=$(grep -l -E 'requires_gpu|mark\.gpu' tests/test_*.py \
           | grep -v -x -F -f <(printf '%s\n' "${CORE_GPU_TESTS[@]}"))
  # shellcheck disable=SC2086  # one file name per word
  "${PYTEST[@]}" -m gpu -k "not compute_sanitizer" --junitxml="$OUT/gpu_tests.xml" \
    "${CORE_GPU_TESTS[@]}" $others
  local rc=$?
  [ "$rc" -eq 2 ] && return 2  # interrupted at the time limit
  "${PYTEST[@]}" --junitxml="$OUT/nvrtc_tests.xml" tests/test_kernels_nvrtc.py \
    tests/test_kernels_resources.py tests/test_gpu_occupancy.py || rc=1
  return "$rc"
}

# A stage function run in a child process (see stage).
if [ "${1:-}" = --run ]; then
  shift
  "$@"
  exit
fi

# --- the session ----------------------------------------------------------------------------
mkdir -p "$OUT"
failures=0
printf '| stage | status | key numbers | seconds |\n| --- | --- | --- | --- |\n' > "$SUMMARY"
NO_GPU=$("$PY" - 2>/dev/null <<'PY'
try:
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    print("" if count > 0 else "the CUDA runtime counts 0 devices")
except Exception as error:
    print(f"{type(error).__name__}: {str(error).strip()[:160]}" if str(error).strip()
          else type(error).__name__)
PY
) || NO_GPU="Python or CuPy failed to start"
stage environment 30 environment
# the row that names the GPU, or says why there is none
if [ -z "$NO_GPU" ]; then
  GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null \
             | head -n 1)
  record device "found" "${GPU_NAME:-nvidia-smi gave no name}" 0
else
  record device "no CUDA device" "$NO_GPU" 0
fi

# --- 2.-6. the GPU stages -------------------------------------------------------------------
gpu_stage smoke 60 "$PY" -m tests.session.smoke
gpu_stage bench 150 "$PY" -m tests.session.bench "$OUT"
gpu_stage gpu-tests 90 gpu_tests
gpu_stage memcheck 60 "${PYTEST[@]}" -k compute_sanitizer_memcheck tests/test_deform_conv_gpu.py \
  tests/test_deform_roi_pool_gpu.py tests/test_deform_psroi_pool_gpu.py \
  tests/test_fused_forward_gpu.py
gpu_stage determinism 30 determinism

# --- 7. with the time left ----------------------------------------------------------------
gpu_stage demo 30 "$PY" -m cudeform demo --device cuda --out "$OUT/demo_gpu.png"
gpu_stage racecheck 60 "${PYTEST[@]}" -k compute_sanitizer_racecheck tests/test_deform_conv_gpu.py \
  tests/test_deform_roi_pool_gpu.py tests/test_deform_psroi_pool_gpu.py \
  tests/test_fused_forward_gpu.py
# (the minimal-environment test needs the package registry, which the GPU machine lacks)
gpu_stage rest-of-suite 600 "${PYTEST[@]}" -m "not gpu" --junitxml="$OUT/rest.xml" tests \
  --ignore=tests/test_kernels_nvrtc.py --ignore=tests/test_kernels_resources.py \
  --ignore=tests/test_gpu_occupancy.py --ignore=tests/test_minimal_environment.py

record total "$([ -n "$NO_GPU" ] && echo "no CUDA device" || echo "$failures stage(s) failed")" \
  "" "$SECONDS"
cat "$SUMMARY"
[ -n "$NO_GPU" ] && exit 0
[ "$failures" -eq 0 ]
