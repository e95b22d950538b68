#!/usr/bin/env bash
# Install Chatbot Companion into .venv and run it, serving http://localhost:8080:
# the tray app when there is a display, the headless server otherwise.
# Usage: scripts/run.sh [--headless] [--simulate] [args for the command]
#   --headless   run chatbot-backend (no GUI) even where there is a display.
#   --simulate   also start the bundled Ollama simulator (port 11435) and use it: no Ollama needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
cmd=chatbot-companion
if [ "${1:-}" = "--headless" ]; then
  shift
  cmd=chatbot-backend
elif [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" = Linux ]; then
  echo "No display found: running the headless server (chatbot-backend)." >&2
  cmd=chatbot-backend
fi
if [ "$cmd" = chatbot-companion ]; then
  bash scripts/bootstrap.sh gui
  # Qt's X11 plugin needs these on a minimal Debian/Ubuntu desktop.
  if [ "$(uname)" = Linux ] && ! ldconfig -p | grep -q libxcb-cursor.so.0; then
    apt_install libglib2.0-0 libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3 \
      libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
      libxcb-randr0 libxcb-render-util0 libxcb-shape0 || true
  fi
else
  bash scripts/bootstrap.sh
fi
if [ "${1:-}" = "--simulate" ]; then
  shift
  .venv/bin/chatbot-backend simulate-ollama --port 11435 &
  sim=$!
  trap 'kill $sim 2>/dev/null || true' EXIT
  export CHATBOT_OLLAMA_API_URL=http://127.0.0.1:11435
fi
.venv/bin/$cmd "$@"
