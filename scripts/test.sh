#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint and run the whole suite.
# Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/bootstrap.sh test
# The tests run the frontend's own stream-parsing code under Node, and curl as the guide does.
command -v node >/dev/null || apt_install nodejs
command -v curl >/dev/null || apt_install curl
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
