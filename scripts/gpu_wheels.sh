#!/usr/bin/env bash
# Prepare what a lent GPU machine lacks, on a machine with registry access: the wheels
# (Python 3.12, manylinux x86_64) of the packages the GPU suite imports beyond that
# machine's own image, into .whl/, and the robot video into .gpu_data/ (both ignored by git;
# name both in the device run's carry). docs/GPU.md has the whole procedure.
#   usage: scripts/gpu_wheels.sh [VIDEO]   (default: ../shared/data/robot_unitree.mp4)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
video=${1:-../shared/data/robot_unitree.mp4}
# the store (zarr and its codecs), video decoding (av), the official network as the
# comparison (depth-anything-3 with its config needs and evo, which its Giant imports)
wheels=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 backports.zstd==1.8.0
        av==18.1.0 omegaconf==2.4.0 addict==2.4.0 evo==1.38.1 depth-anything-3==0.1.1)
mkdir -p .whl .gpu_data
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
if [ -f "$video" ]; then
  cp "$video" .gpu_data/
else
  echo "gpu_wheels: $video not found; pass the robot video's path" >&2
  exit 1
fi
du -sh .whl .gpu_data
