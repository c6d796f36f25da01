#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtual environment in .venv with a CPU build of
# PyTorch, arithlens (editable) and its test tools, plus Debian's chromium for the report tests.
# Re-running it is safe and quick.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -d .venv ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pinned so pip takes the CPU build (on this project's machines it lies on local disk);
# an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,sweep]"  # sweep: Ray, for `arithlens sweep`

# Headless Chromium renders report.html in the report tests (they skip without it).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "note: install Debian's 'chromium' package to run the report rendering tests" >&2
  fi
fi
echo "arithlens is installed in .venv: run '.venv/bin/arithlens run', test with '.venv/bin/python -m pytest -q'"
