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
# The official ollama package for JavaScript, which a test drives against the gateway.
command -v npm >/dev/null || apt_install npm
# The web dashboard's browser test drives Debian's Chromium (tests/server/test_web_dashboard.py).
command -v chromium >/dev/null || apt_install chromium
# ... and Debian's Firefox ESR over WebDriver BiDi, which it serves itself: no driver
# (tests/server/test_web_dashboard_firefox.py).
command -v firefox-esr >/dev/null || apt_install firefox-esr
# A real Redis for the shared cache tier's tests (tests/server/test_cache_tiers.py).
command -v redis-server >/dev/null || apt_install redis-server
(cd tests/js && npm ci --no-audit --no-fund --silent)
# desktop-file-validate checks the desktop entry (tests/server/test_packaging_files.py).
command -v desktop-file-validate >/dev/null || apt_install desktop-file-utils || true
# Qt's offscreen platform needs a few shared libraries a minimal Debian lacks.
if ! QT_QPA_PLATFORM=offscreen .venv/bin/python -c \
    "from PySide6.QtWidgets import QApplication; QApplication([])" >/dev/null 2>&1; then
  apt_install libglib2.0-0 libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3
fi
# The memory test runs the app on a real X server under Qt's GTK theme, with trayer as the tray
# host (tests/app/test_memory.py); Mesa's driver is what that theme used to load for nothing.
for tool in Xvfb trayer xwininfo import; do
  command -v "$tool" >/dev/null || { need_x=1; break; }
done
if [ -n "${need_x:-}" ] || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
  apt_install xvfb trayer x11-utils imagemagick libgtk-3-0 libgl1-mesa-dri libxcb-cursor0 \
    libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 \
    libxcb-render-util0 libxcb-shape0
fi
# Every check runs even when an earlier one failed, so one run shows all that is wrong;
# the script fails if any did.
failed=()
check() {
  local name=$1
  shift
  "$@" || failed+=("$name")
}
check "ruff check" .venv/bin/ruff check .
check "ruff format" .venv/bin/ruff format --check .
check mypy .venv/bin/mypy server app  # --strict, from pyproject
check "server tests" .venv/bin/python -m pytest tests/server "$@"
check "GUI tests" env QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/app "$@"
if [ ${#failed[@]} -gt 0 ]; then
  (IFS=,; echo "FAILED: ${failed[*]}" >&2)
  exit 1
fi
echo "All checks passed: ruff, mypy, server tests, GUI tests."
