#!/usr/bin/env bash
# Install the gateway into .venv and run it (headless) on http://localhost:8080.
# Usage: scripts/run.sh [--simulate] [chatbot-backend args]
#   --simulate   also start the bundled Ollama simulator (port 11435) and use it: no Ollama needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "${1:-}" = "--simulate" ]; then
  shift
  .venv/bin/chatbot-backend simulate-ollama --port 11435 &
  sim=$!
  trap 'kill $sim 2>/dev/null || true' EXIT
  export CHATBOT_OLLAMA_API_URL=http://127.0.0.1:11435
fi
.venv/bin/chatbot-backend "$@"
