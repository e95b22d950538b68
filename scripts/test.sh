#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint and run both suites:
# tests/server (asyncio) and tests/app (Qt offscreen, on a qasync loop) in separate processes.
# Usage: scripts/test.sh [pytest args, passed to both]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/bootstrap.sh test
# The tests run the frontend's own stream-parsing code under Node, and curl as the guide does.
command -v node >/dev/null || apt_install nodejs
command -v curl >/dev/null || apt_install curl
# desktop-file-validate checks the desktop entry (tests/server/test_packaging_files.py).
command -v desktop-file-validate >/dev/null || apt_install desktop-file-utils || true
# Qt's offscreen platform needs a few shared libraries a minimal Debian lacks.
if ! QT_QPA_PLATFORM=offscreen .venv/bin/python -c \
    "from PySide6.QtWidgets import QApplication; QApplication([])" >/dev/null 2>&1; then
  apt_install libglib2.0-0 libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy server app  # --strict, from pyproject
.venv/bin/python -m pytest tests/server "$@"
QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/app "$@"
