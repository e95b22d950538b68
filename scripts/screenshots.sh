#!/usr/bin/env bash
# Take the README's screenshots: the app under Xvfb with trayer as the tray host, against the
# simulator, after some traffic. Needs (Debian): xvfb xauth trayer xdotool imagemagick
# libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0
# libxcb-render-util0 libxcb-shape0 fonts-dejavu-core.
# Usage: scripts/screenshots.sh [OUTDIR]   (default docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs}"
mkdir -p "$out"
tmp=$(mktemp -d)
# A runtime directory of its own: a companion the user has running must not answer for this one.
mkdir -m 700 "$tmp/run"
export DISPLAY=:77 XDG_CONFIG_HOME="$tmp/xdg" XDG_RUNTIME_DIR="$tmp/run" QT_QPA_PLATFORM=xcb
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

Xvfb :77 -screen 0 1280x860x24 -nolisten tcp & pids+=($!)
sleep 1
trayer --edge top --align right --widthtype request --height 28 --tint 0x2b2b2b \
  --transparent true --alpha 0 --SetDockType true & pids+=($!)
.venv/bin/chatbot-backend simulate-ollama --port 11477 --tokens 60 --token-delay-ms 15 \
  --first-token-delay-ms 80 --models llama3.2:latest,qwen3:4b >/dev/null 2>&1 & pids+=($!)
sleep 1
# API keys for three users (the config keeps only their hashes), so the dashboard can say whose
# requests these are.
cfg="$tmp/config.toml"
key() { .venv/bin/chatbot-backend keys --config "$cfg" create "$1" --role "$2" 2>/dev/null; }
alice=$(key alice admin)
ci=$(key ci-runner batch)
bob=$(key bob user)
CHATBOT_CONFIG="$cfg" CHATBOT_OLLAMA_API_URL=http://127.0.0.1:11477 PORT=8477 \
  .venv/bin/chatbot-companion >"$tmp/app.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -sf localhost:8477/health >/dev/null && break; sleep 0.2; done

# Traffic: questions, repeats (cache hits), a few at once (queue), another model.
# chat KEY QUESTION [MODEL]
chat() { curl -s -X POST localhost:8477/api/chat-optimized -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $1" \
  -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$2\"}],\"model\":\"${3:-llama3.2}\",\"stream\":false}" >/dev/null; }
for q in "What is a cache?" "Explain queues" "What is a cache?" "Why is the sky blue?"; do
  chat "$alice" "$q"
done
for q in a b c d; do chat "$ci" "parallel $q" & done; sleep 0.5
chat "$alice" "Explain queues"; chat "$bob" "Summarize this" qwen3:4b &
sleep 2
for _ in $(seq 6); do chat "$bob" "What is a cache?"; sleep 0.7; done
# Ollama's own API too, so the dashboard has more than one endpoint to tell apart.
# native KEY ENDPOINT BODY
native() { curl -s -X POST "localhost:8477/api/$2" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $1" -d "$3" >/dev/null; }
for q in "Hello" "Hello" "What is RAM?"; do
  native "$alice" chat "{\"model\":\"llama3.2\",\"messages\":[{\"role\":\"user\",\"content\":\"$q\"}],\"stream\":false}"
done
for prompt in "Write a haiku" "Write a haiku"; do
  native "$ci" generate "{\"model\":\"qwen3:4b\",\"prompt\":\"$prompt\",\"stream\":false}"
done
wait_chats() { sleep 3; }
wait_chats

# The dashboard: a second launch raises the first one's window.
CHATBOT_CONFIG="$cfg" .venv/bin/chatbot-companion >/dev/null 2>&1 || true
sleep 2
win=$(xdotool search --onlyvisible --name "^Chatbot Companion$" | head -1)
xdotool windowsize "$win" 1040 760 windowmove "$win" 0 40
sleep 2
import -window root -crop 1040x760+0+40 "$out/dashboard.png"

# The tray menu: right-click the icon in trayer's panel.
xdotool windowunmap "$win"
tray=$(xdotool search --onlyvisible --class trayer | tail -1)
eval "$(xdotool getwindowgeometry --shell "$tray")"
xdotool mousemove $((X + WIDTH / 2)) $((Y + HEIGHT / 2)) click 3
sleep 1
import -window root -crop 440x220+840+0 "$out/tray-menu.png"
echo "screenshots in $out/"
