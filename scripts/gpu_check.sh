#!/usr/bin/env bash
# Every GPU figure of the project in one command (python -m da3stream.bench gpu), for a lent
# GPU machine: installs the wheels that scripts/gpu_wheels.sh put in .whl/ (when present) into a
# temporary folder, takes the robot video from .gpu_data/ (else the shared/ folder beside the
# repository), and writes gpu_report.json, gpu_report.md and gpu_log.txt into $OUT (else runs/gpu).
# Extra arguments go to the benchmark, e.g. --budget-s 300, --no-giant, --smoke. See docs/GPU.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${OUT:-runs/gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
args=(--out "$out")
[ -f .gpu_data/robot_unitree.mp4 ] && args+=(--video .gpu_data/robot_unitree.mp4)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -m da3stream.bench gpu "${args[@]}" "$@" 2>&1 | tee "$out/gpu_log.txt"
exit "${PIPESTATUS[0]}"
