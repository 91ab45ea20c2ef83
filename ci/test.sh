#!/usr/bin/env bash
# The README's test command: build everything needed, then run the test suite and the
# micro-benchmarks in their fast mode (they check that the hot paths work, not how fast).
set -euo pipefail
bash "$(dirname "$0")/build.sh"
. "$(dirname "$0")/env.sh"
# programs some tests drive; without them those tests skip, saying why
command -v chromium >/dev/null 2>&1 || [ -n "${PYLLAMA_WEBUI_NO_INSTALL:-}" ] || apt_ensure chromium || true  # web UI
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_ensure nginx-light || true             # replicas
python -m pytest tests benchmarks/test_micro.py --benchmark-disable -q "$@"
