#!/usr/bin/env bash
# The README's test command: build everything needed, then run the test suite and the
# micro-benchmarks in their fast mode (they check that the hot paths work, not how fast).
set -euo pipefail
bash "$(dirname "$0")/build.sh"
. "$(dirname "$0")/env.sh"
python -m pytest tests benchmarks/test_micro.py --benchmark-disable -q "$@"
