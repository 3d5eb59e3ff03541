#!/usr/bin/env bash
# The demo: set up .venv with what the demo needs (mlprod with its `train` extra, not the development set), then
# run `mlprod demo` (arguments pass through; `--serve` keeps the server running for you to try).
# Usage: bash tools/demo.sh [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
MLPROD_EXTRAS="${MLPROD_EXTRAS:-train}"
. tools/venv.sh
exec .venv/bin/mlprod demo "$@"
