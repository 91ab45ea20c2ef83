#!/usr/bin/env bash
# The README's test command: build everything needed, then run the test suite.
set -euo pipefail
bash "$(dirname "$0")/build.sh"
. "$(dirname "$0")/env.sh"
python -m pytest tests -q "$@"
