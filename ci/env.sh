# Sourced by the ci/ scripts: one virtual environment and a shared compiler cache.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# ccache keeps rebuilds (and CI reruns from fresh clones) fast; install it when we can.
if ! command -v ccache >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "ci: installing ccache"
  (apt-get update -qq && apt-get install -y -qq ccache) >/dev/null 2>&1 || echo "ci: could not install ccache (builds will be slower)"
fi
# headless Chromium for the web UI test (tests/server/test_webui.py skips, saying why, without it)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
   && [ -z "${PYLLAMA_WEBUI_NO_INSTALL:-}" ]; then
  echo "ci: installing chromium"
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "ci: could not install chromium"
fi
# nginx for the replicas example test (tests/server/test_replicas_nginx.py skips, saying why, without it)
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  echo "ci: installing nginx-light"
  (apt-get update -qq && apt-get install -y -qq nginx-light) >/dev/null 2>&1 || echo "ci: could not install nginx"
fi
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
