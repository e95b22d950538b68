# Shared shell helpers for scripts/*.sh (sourced, not run).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root to run: $*" >&2; return 1; fi
}
apt_install() {
  command -v apt-get >/dev/null || { echo "no apt-get: please install $*" >&2; return 1; }
  if [ -z "${_APT_UPDATED:-}" ]; then as_root apt-get update -qq && _APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
