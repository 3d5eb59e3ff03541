#!/usr/bin/env bash
# The demo: set up .venv as the tests do, then run `mlprod demo` (arguments pass through).
# Usage: bash tools/demo.sh [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
. tools/venv.sh
exec .venv/bin/mlprod demo "$@"
