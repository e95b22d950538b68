#!/usr/bin/env bash
# Add Chatbot Companion to this user's application menu (desktop entry + hicolor icons), or
# take it out again. Nothing outside ${XDG_DATA_HOME:-~/.local/share} is touched; no root needed.
# Usage: scripts/install_desktop.sh [LAUNCHER]     install; LAUNCHER defaults to $CHATBOT_EXEC,
#                                                  else this checkout's .venv/bin/chatbot-companion
#        scripts/install_desktop.sh --uninstall    remove what an install put there
# A bundle: scripts/install_desktop.sh dist/chatbot-companion/chatbot-companion
set -euo pipefail

APP_ID=chatbot-companion
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The same template app/autostart.py fills for Start at Login, so both entries are one.
TEMPLATE=$ROOT/resources/$APP_ID.desktop.in
ICONS=$ROOT/resources/icons/hicolor
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
APPS=$DATA/applications
ENTRY=$APPS/$APP_ID.desktop
HICOLOR=$DATA/icons/hicolor

usage() { sed -n '4,7s/^# \{0,1\}//p' "$0"; }
die() { echo "install_desktop: $*" >&2; exit 1; }

# One argument as the desktop entry spec wants it in Exec (shell quoting is not the same: single
# quotes do not quote there), then escaped as every string value is. Mirrors
# app/autostart.py's exec_field(); tests/server/test_packaging_files.py keeps them equal.
exec_arg() {
  local arg=$1 reserved=$' \t\n"\'\\><~|&;$*?#()`' quoted="" out="" c i
  local needs_quotes=0
  [ -z "$arg" ] && needs_quotes=1
  for ((i = 0; i < ${#arg}; i++)); do
    c=${arg:i:1}
    [[ $reserved == *"$c"* ]] && needs_quotes=1
    case $c in '"' | '`' | '$' | '\') quoted+="\\$c" ;; *) quoted+=$c ;; esac
  done
  [ "$needs_quotes" = 1 ] && arg="\"$quoted\""
  for ((i = 0; i < ${#arg}; i++)); do
    c=${arg:i:1}
    case $c in
      %) out+=%% ;;
      \\) out+='\\' ;;
      $'\n') out+='\n' ;;
      $'\t') out+='\t' ;;
      $'\r') out+='\r' ;;
      *) out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

# Refresh the desktop's caches where the tools exist; a desktop without them scans on its own.
refresh_caches() {
  if command -v update-desktop-database >/dev/null && [ -d "$APPS" ]; then
    update-desktop-database -q "$APPS" || true
  fi
  if command -v gtk-update-icon-cache >/dev/null && [ -d "$HICOLOR" ]; then
    # -t: a user's hicolor directory usually has no index.theme of its own.
    gtk-update-icon-cache -q -f -t "$HICOLOR" || true
  fi
}

# The Python interpreter a pip-made launcher $1 runs: its virtual environment's, else the one its
# #! line names; nothing for other launchers (a PyInstaller bundle is a binary).
launcher_python() {
  local dir line=""
  dir=$(dirname "$1")
  if [ -f "$dir/../pyvenv.cfg" ] && [ -x "$dir/python" ]; then
    printf '%s\n' "$dir/python"
    return
  fi
  [ "$(head -c 2 "$1")" = '#!' ] || return 0
  IFS= read -r line <"$1" || true
  line=${line#\#!}
  case $line in /*python*) [ -x "$line" ] && printf '%s\n' "$line" ;; esac
  return 0
}

# Refuse a launcher that would not start the desktop app, before anything is installed: the menu
# entry would do nothing on a double-click, and say why only in the session's journal.
check_launcher() {
  local launcher=$1 python out
  python=$(launcher_python "$launcher")
  if [ -n "$python" ]; then
    # `--version` would pass: it answers before the app imports Qt.
    out=$("$python" -c 'import PySide6.QtWidgets, qasync' 2>&1 </dev/null) ||
      die "$launcher cannot start the desktop app:
  $python cannot import PySide6 and qasync ($(printf '%s\n' "$out" | tail -n 1)).
  Install the gui extra into that environment: bash scripts/bootstrap.sh gui for this
  checkout's .venv (or pip install -e '.[gui]' with that environment's pip), then run this again."
  else
    local bounded=()
    if command -v timeout >/dev/null; then bounded=(timeout 60); fi
    out=$(${bounded[@]+"${bounded[@]}"} "$launcher" --version 2>&1 </dev/null) ||
      die "$launcher does not start: \`$(basename "$launcher") --version\` failed:
  $(printf '%s\n' "$out" | tail -n 3)
  Rebuild the bundle (make package), or for a checkout's .venv: bash scripts/bootstrap.sh gui."
  fi
}

# Whether directory $1 holds nothing but (at most) the file named $2.
only_holds() { [ -z "$(find "$1" -mindepth 1 ! -name "$2" -print -quit)" ]; }

do_uninstall() {
  rm -f "$ENTRY"
  rm -f "$HICOLOR"/*/apps/"$APP_ID".png
  # Empty size directories go; ones holding other programs' icons stay.
  for dir in "$HICOLOR"/*/apps; do
    if [ -d "$dir" ]; then rmdir --ignore-fail-on-non-empty "$dir" "${dir%/apps}"; fi
  done
  # The caches an install made go with the last entry or icon they described.
  if [ -d "$HICOLOR" ] && only_holds "$HICOLOR" icon-theme.cache; then
    rm -f "$HICOLOR/icon-theme.cache"
    rmdir "$HICOLOR"
    rmdir --ignore-fail-on-non-empty "$DATA/icons"
  fi
  if [ -d "$APPS" ] && only_holds "$APPS" mimeinfo.cache; then
    rm -f "$APPS/mimeinfo.cache"
    rmdir "$APPS"
  fi
  refresh_caches
  echo "removed $ENTRY and the $APP_ID icons under $HICOLOR"
  local autostart=${XDG_CONFIG_HOME:-$HOME/.config}/autostart/$APP_ID.desktop
  if [ -e "$autostart" ]; then
    echo "note: Start at Login is still on ($autostart); untick it in the tray or delete the file"
  fi
}

do_install() {
  local launcher=$1
  [ -n "$launcher" ] || launcher=$ROOT/.venv/bin/$APP_ID
  # Exec must be absolute: the menu does not start programs from this directory.
  case $launcher in /*) ;; *) launcher=$PWD/$launcher ;; esac
  [ -f "$launcher" ] && [ -x "$launcher" ] || die "no executable launcher at $launcher
  (install the app first: scripts/run.sh, or pip install -e '.[gui]' in .venv; or pass the path)"
  check_launcher "$launcher"
  [ -f "$TEMPLATE" ] || die "missing $TEMPLATE"
  compgen -G "$ICONS/*/apps/$APP_ID.png" >/dev/null ||
    die "no icons under $ICONS (run: .venv/bin/python scripts/make_icons.py)"

  local line
  tmp=$(mktemp -d)  # global: the EXIT trap outlives this function
  trap 'rm -rf "$tmp"' EXIT
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line == *@EXEC@* ]]; then
      line="${line%%@EXEC@*}$(exec_arg "$launcher")${line#*@EXEC@}"
    fi
    printf '%s\n' "$line"
  done <"$TEMPLATE" >"$tmp/$APP_ID.desktop"

  if command -v desktop-file-validate >/dev/null; then
    local report
    # Hints (e.g. more than one main category) are advice, not errors: only errors stop us.
    if ! report=$(desktop-file-validate "$tmp/$APP_ID.desktop" 2>&1); then
      printf '%s\n' "$report" | grep -v ': hint: ' >&2 || true
      die "the desktop entry does not validate"
    fi
    printf '%s\n' "$report" | grep -v ': hint: ' | grep . >&2 || true
  fi

  mkdir -p "$APPS"
  install -m 644 "$tmp/$APP_ID.desktop" "$ENTRY"
  local png size
  for png in "$ICONS"/*/apps/"$APP_ID".png; do
    size=$(basename "$(dirname "$(dirname "$png")")")
    install -D -m 644 "$png" "$HICOLOR/$size/apps/$APP_ID.png"
  done
  refresh_caches
  echo "installed $ENTRY (Exec=$(exec_arg "$launcher")) and icons under $HICOLOR"
}

case ${1:-} in
  -h | --help) usage ;;
  --uninstall)
    [ $# -eq 1 ] || die "--uninstall takes no other argument"
    do_uninstall
    ;;
  -*) usage >&2; exit 2 ;;
  *)
    [ $# -le 1 ] || die "one launcher at most (got $#)"
    do_install "${1:-${CHATBOT_EXEC:-}}"
    ;;
esac
