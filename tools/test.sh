#!/usr/bin/env bash
# THE test command: venv, package/notebook sync, README sync, notebook tests (slow cells
# included), pytest, docs build. Stops at the first failure with its exit status.
# Usage: bash tools/test.sh      (from anywhere; works on a fresh clone)
set -euo pipefail
cd "$(dirname "$0")/.."

# gcsfs asks a bucket's type over gRPC first; against the loopback emulator that hangs 60 s.
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false

step() { echo; echo "==> $* ($((SECONDS))s)"; }

step "virtualenv"
. tools/venv.sh

step "mlprod/ and nbs/ in sync, notebooks clean"
python tools/check_clean.py

step "README.md in sync with nbs/index.ipynb"
python tools/make_readme.py --check

# nbs/jobs/ holds papermill job notebooks: they need parameters and are run by the tests.
step "nbdev_test (slow cells included)"
nbdev_test --flags slow --skip_folder_re '^([_.]|jobs$)' --timing
# Say which flagged cells did not run, and why, instead of passing over them in silence.
for flag in $(sed -n 's/^tst_flags *= *//p' settings.ini); do
  [ "$flag" = slow ] && continue
  why="they need what the flag names (a local Spark with Java 17 for 'spark')"
  [ -f "tests/test_$flag.py" ] && why="$why; tests/test_$flag.py covers it, or says why it skips"
  echo "nbdev_test: cells flagged '#| $flag' were not run ($why); run them with: nbdev_test --flags '$flag'"
done
nbs_tested=$(python -c "from nbdev.doclinks import nbglob; print(len(nbglob(skip_folder_re='^([_.]|jobs$)')))")

step "pytest"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ -z "$(find tests \( -name "test_*.py" -o -name "*_test.py" \) -print -quit 2>/dev/null)" ]; then
  echo "no test files in tests/ yet: nothing for pytest to run" | tee "$log"
else
  # pytest's exit 5 (no test collected) fails too: test files that hold no test are a mistake.
  # -rs lists every skipped test with its reason; reports/pytest.xml is the JUnit report CI collects.
  rm -f reports/image.json
  set +e
  pytest -q -rs tests --timeout "${PYTEST_TIMEOUT:-300}" -p no:cacheprovider --junitxml reports/pytest.xml \
    --durations 15 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || { echo "pytest failed (exit $rc)"; exit "$rc"; }
fi

step "docs"
bash tools/docs.sh

echo; echo "==> all checks passed in ${SECONDS}s"
echo "notebooks: $nbs_tested passed, 0 failed"
tail -n 1 "$log"
if [ -f reports/image.json ]; then echo "serving image (tests/test_image.py):"; cat reports/image.json; fi
