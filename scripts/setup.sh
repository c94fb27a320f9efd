#!/usr/bin/env bash
# Create .venv and install da3stream with its test dependencies. Safe to rerun:
# it does nothing when pyproject.toml has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# open3d needs libusb at import time; it is missing on fresh Debian machines.
if ! "$PY" -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('usb-1.0') else 1)"; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) >/dev/null
  else
    echo "setup: libusb-1.0 is missing; install it (Debian: apt-get install libusb-1.0-0)" >&2
  fi
fi

# Headless Chromium for the viewer test (tests/test_viewer.py opens the page in it).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
      || echo "setup: installing chromium failed; the viewer test needs it" >&2
  else
    echo "setup: chromium is missing; the viewer test will be skipped (Debian: apt-get install chromium)" >&2
  fi
fi

stamp=.venv/.da3stream-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# The CPU build of torch first; a plain requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev,viewer]" 2>&1 | grep -v "^WARNING: Location" || true
# The official DA3 network code, used only as a numerical oracle by the parity tests.
.venv/bin/python -m pip install -q --no-deps "depth-anything-3==0.1.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import da3stream, torch, zarr, av, open3d, matplotlib, viser" 
echo "$want" > "$stamp"
