#!/usr/bin/env bash
# Install Chatbot Companion into .venv and run it, serving http://localhost:8080:
# the tray app when there is a display, the headless server otherwise.
# Usage: scripts/run.sh [--headless] [--simulate] [args for the command]
#   --headless   run chatbot-backend (no GUI) even where there is a display.
#   --simulate   also start the bundled Ollama simulator and use it: no Ollama needed. The
#                command starts once the simulator answers.
# The two flags may come in either order; every other argument goes to the command
# (e.g. --port 8081). SIGINT or SIGTERM stops the command and the simulator; if either of them
# ends, so does the other. The script exits with the command's status (1 if the simulator ended
# first or never answered).
# Environment:
#   CHATBOT_SIM_PORT=11435      the simulator's port.
#   CHATBOT_SKIP_INSTALL=1      run what .venv already has: no pip, no apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

die() { echo "run.sh: $*" >&2; exit 1; }

headless=0 simulate=0 args=()
for arg in "$@"; do
  case $arg in
    --headless) headless=1 ;;
    --simulate) simulate=1 ;;
    *) args+=("$arg") ;;
  esac
done
sim_port=${CHATBOT_SIM_PORT:-11435}
skip_install=${CHATBOT_SKIP_INSTALL:-}
# The command rejects CHATBOT_* variables that are not settings: these two are only ours.
unset CHATBOT_SIM_PORT CHATBOT_SKIP_INSTALL

cmd=chatbot-companion
if [ "$headless" = 1 ]; then
  cmd=chatbot-backend
elif [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" = Linux ]; then
  echo "No display found: running the headless server (chatbot-backend)." >&2
  cmd=chatbot-backend
fi
if [ "$skip_install" = 1 ]; then
  [ -x ".venv/bin/$cmd" ] || die "no .venv/bin/$cmd: run without CHATBOT_SKIP_INSTALL=1 first"
elif [ "$cmd" = chatbot-companion ]; then
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

# The children run in the background so that a signal reaches this script's traps at once (a
# foreground child would delay them until it returned) and is passed on to both of them.
app="" sim=""

# Wait for child $1; a trapped signal interrupts `wait`, so wait again while the child lives.
reap() {
  local rc
  while :; do
    wait "$1" && rc=0 || rc=$?
    kill -0 "$1" 2>/dev/null || return "$rc"
  done
}

# Stop both children and exit with $1, or with the command's status if $2 is "app" and the
# command was started. The command goes first, so that it drains while its Ollama is still
# there. SIGTERM for both: background children of a script ignore SIGINT. A second signal while
# they shut down kills them outright.
finish() {
  local status=$1 rc
  trap - EXIT
  trap 'kill -KILL $app $sim 2>/dev/null || true' INT TERM
  if [ -n "$app" ]; then
    kill -TERM "$app" 2>/dev/null || true
    reap "$app" && rc=0 || rc=$?
    if [ "${2:-}" = app ]; then status=$rc; fi
  fi
  if [ -n "$sim" ]; then
    kill -TERM "$sim" 2>/dev/null || true
    reap "$sim" || true
  fi
  exit "$status"
}
trap 'finish 130 app' INT
trap 'finish 143 app' TERM
trap 'finish $?' EXIT

if [ "$simulate" = 1 ]; then
  .venv/bin/chatbot-backend simulate-ollama --port "$sim_port" &
  sim=$!
  url=http://127.0.0.1:$sim_port/api/version
  # Start the command only once the simulator answers, so its first health check finds Ollama.
  limit=30
  deadline=$((SECONDS + limit))
  until .venv/bin/python -c '
import sys, urllib.request
urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=1)
' "$url" 2>/dev/null; do
    kill -0 "$sim" 2>/dev/null || die "the Ollama simulator exited before it answered" \
      "(is port $sim_port in use? set CHATBOT_SIM_PORT)"
    [ "$SECONDS" -lt "$deadline" ] || die "the Ollama simulator did not answer $url in $limit s"
    sleep 0.1
  done
  export CHATBOT_OLLAMA_API_URL=http://127.0.0.1:$sim_port
fi

.venv/bin/$cmd ${args[@]+"${args[@]}"} &
app=$!
# Whichever child ends first ends the run: the command with its own status, or the simulator.
wait -n && rc=0 || rc=$?
if ! kill -0 "$app" 2>/dev/null; then
  app=""  # already reaped by `wait -n`
  finish "$rc"
fi
echo "run.sh: the Ollama simulator stopped; stopping $cmd" >&2
finish 1
