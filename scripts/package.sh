#!/usr/bin/env bash
# Build the one-folder bundle of the desktop app: dist/chatbot-companion/ and a .tar.gz of it.
# Usage: scripts/package.sh [DISTDIR]   (default dist)
set -euo pipefail
cd "$(dirname "$0")/.."
dist="${1:-dist}"
bash scripts/bootstrap.sh gui,package
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/pyinstaller --noconfirm --clean --log-level WARN \
  --distpath "$dist" --workpath "$work" packaging/chatbot-companion.spec
tar -C "$dist" -czf "$dist/chatbot-companion-$(uname -s | tr A-Z a-z)-$(uname -m).tar.gz" \
  chatbot-companion
du -sh "$dist/chatbot-companion" "$dist"/*.tar.gz
echo "bundle: $dist/chatbot-companion/chatbot-companion"
