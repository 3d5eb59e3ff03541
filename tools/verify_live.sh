#!/usr/bin/env bash
# Wait until the API at URL serves environment ENV's live bundle and answers its whole test set as expected
# (`mlprod verify --env ENV --url URL`), for at most MINUTES (default 5): after a deploy or a promotion the API picks
# the new version up at its next pointer check (MLPROD_RELOAD_INTERVAL), so the first checks may see the old one.
# The token comes from MLPROD_API_TOKEN, or is signed with the API's MLPROD_JWT_SECRET (the pipelines' credentials).
# Usage: bash tools/verify_live.sh ENV URL [MINUTES]
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bash tools/verify_live.sh ENV URL [MINUTES]" >&2; exit 2; }
env=$1 url=$2 deadline=$((SECONDS + ${3:-5} * 60))
until mlprod verify --env "$env" --url "$url"; do
  status=$?
  [ "$status" -eq 4 ] || [ "$status" -eq 1 ] || exit "$status"  # a usage or config error will not heal by waiting
  if [ $SECONDS -ge $deadline ]; then
    echo "verify_live: $url did not serve $env's live bundle in time" >&2
    exit "$status"
  fi
  sleep "${VERIFY_INTERVAL:-10}"
done
