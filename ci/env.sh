# Sourced by the ci/ scripts: apt_ensure, a shared compiler cache and one virtual environment
# ($PYLLAMA_VENV, default .venv), activated.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# apt_ensure PACKAGE... : install the Debian packages that are missing, when we are root with apt;
# otherwise say what is missing and go on (callers decide whether that is fatal).
apt_ensure() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "ci: installing ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
      || { echo "ci: could not install ${missing[*]}"; return 1; }
  else
    echo "ci: missing ${missing[*]} (Debian: apt-get install ${missing[*]})"
    return 1
  fi
}

# ccache keeps rebuilds (and CI reruns from fresh clones) fast
command -v ccache >/dev/null 2>&1 || apt_ensure ccache || echo "ci: no ccache, builds will be slower"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
export CCACHE_BASEDIR="$ROOT"       # paths relative to the checkout, so a fresh clone hits the cache
export CCACHE_NOHASHDIR=1
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"

PY="${PYTHON:-python3}"
VENV="${PYLLAMA_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "ci: creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
