#!/usr/bin/env bash
# Download into wheels/ the wheels that the GPU image may lack, for Python 3.12 on
# x86-64 Linux: the GPU machine has no network, so tests/gpu_session.sh installs them
# offline (only those whose distribution the image does not have already).
#
#   bash tests/fetch_wheels.sh [FOLDER]        (default: wheels/, which git ignores)
#
# The device call must then carry the folder: carry ["wheels"]. What travels (the work
# tree plus carried folders) is limited to 64 MiB, so the folder must stay well under
# that: any single wheel over PER_WHEEL_MIB (default 20) is removed with a warning, and
# the script fails when the total passes TOTAL_MIB (default 48). onnxruntime-gpu (about
# 200 MB) cannot travel: the onnxruntime CUDA peer runs only if the image has it.
#
# Each package is fetched with --no-deps, so the list names the dependencies too.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-wheels}
PER_WHEEL_MIB=${PER_WHEEL_MIB:-20}
TOTAL_MIB=${TOTAL_MIB:-48}

PACKAGES=(
  # the test runner
  pytest iniconfig packaging pluggy pygments
  # property tests
  hypothesis attrs sortedcontainers
  # cudeform's own requirement, and the demo's
  threadpoolctl tqdm
  matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six
  # ONNX export tests and the bfloat16 arrays of the GPU tests
  onnx onnxscript onnx-ir ml-dtypes typing-extensions protobuf
  # the fused Triton deformable convolution peer (pure Python; needs torch, and Triton,
  # which CUDA builds of torch bring)
  deformops
  # the editable install's build backend
  setuptools
  # CUDA's crt/mma.h, which the fused forward's WMMA includes, where CUDA comes from wheels
  nvidia-cuda-crt
)

mkdir -p "$DEST"
# pip takes each platform tag literally: name the older manylinux tags that 2.28 covers.
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --dest "$DEST" "${PACKAGES[@]}"

status=0
for wheel in "$DEST"/*.whl; do
  mib=$(( $(stat -c %s "$wheel") / 1048576 ))
  if [ "$mib" -gt "$PER_WHEEL_MIB" ]; then
    echo "WARNING: $(basename "$wheel") is $mib MiB, over $PER_WHEEL_MIB MiB: removed" >&2
    rm -f "$wheel"
  fi
done
total=$(du -sm "$DEST" | cut -f1)
count=$(ls "$DEST"/*.whl | wc -l)
echo "wheels: $count files, $total MiB in $DEST (the device call carries at most 64 MiB with the work tree)"
if [ "$total" -gt "$TOTAL_MIB" ]; then
  echo "ERROR: $DEST holds $total MiB, over $TOTAL_MIB MiB" >&2
  status=1
fi
exit "$status"
