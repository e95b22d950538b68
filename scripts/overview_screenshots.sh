#!/usr/bin/env bash
# The Overview screenshots (Live queue and Models tabs), light and dark, from the real app on
# Xvfb with trayer as the tray host. Dark is GTK's Adwaita:dark through Qt's gtk3 platform
# theme, as a user with a dark desktop gets it. Needs (Debian): xvfb trayer libgtk-3-0 and the
# Qt xcb libraries listed in scripts/screenshots.sh.
# Usage: scripts/overview_screenshots.sh [OUTDIR]   (default docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs}"
tmp=$(mktemp -d)
mkdir -m 700 "$tmp/run"
export DISPLAY=:78 XDG_CONFIG_HOME="$tmp/xdg" \
  XDG_RUNTIME_DIR="$tmp/run" QT_QPA_PLATFORM=xcb
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
Xvfb :78 -screen 0 1280x860x24 -nolisten tcp & pids+=($!)
sleep 1
trayer --edge top --align right --widthtype request --height 28 --tint 0x2b2b2b \
  --transparent true --alpha 0 --SetDockType true & pids+=($!)
sleep 0.5
# Each run its own cache directory: the second must not find the first's answers on disk.
XDG_CACHE_HOME="$tmp/cache-light" QT_QPA_PLATFORMTHEME=gtk3 GTK_THEME=Adwaita \
  .venv/bin/python scripts/overview_screenshots.py "$out" ""
XDG_CACHE_HOME="$tmp/cache-dark" QT_QPA_PLATFORMTHEME=gtk3 GTK_THEME=Adwaita:dark \
  .venv/bin/python scripts/overview_screenshots.py "$out" "-dark"
