#!/usr/bin/env bash
# Build the docs site into docs/_build/html: prepare docs/nbs/ from nbs/, then Sphinx
# executes every notebook and renders it with the API reference. Warnings are errors, and
# a failing notebook cell is one. Then headless Chromium opens every page (tools/check_site.py): no broken internal
# link, every image shown, the model card's figures. Needs the venv (bash tools/test.sh makes it).
# Usage: bash tools/docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
# Notebooks may talk to the loopback GCS emulator: see tools/test.sh.
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false

python tools/docs_prep.py
rm -rf docs/_build
python -m sphinx -q -b html -W --keep-going -j auto -c docs -d docs/_build/doctrees docs/nbs docs/_build/html
python tools/check_site.py docs/_build/html
echo "docs: open docs/_build/html/index.html"
