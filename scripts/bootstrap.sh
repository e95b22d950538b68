#!/usr/bin/env bash
# Create .venv (if needed) and install the project into it, editable, with the given extras.
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
extras="${1:-}"
PY="${PYTHON:-python3}"

"$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
  || { echo "Python 3.11 or newer is needed (found: $("$PY" --version 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  # Debian's python3 ships venv and ensurepip in a separate package.
  "$PY" -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; "$PY" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
spec="."
if [ -n "$extras" ]; then spec=".[$extras]"; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
