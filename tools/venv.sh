# Sourced by tools/test.sh, tools/demo.sh and CI: make sure .venv exists and holds the project installed with the
# extras in MLPROD_EXTRAS (default: dev, every extra) at the versions of constraints.txt, then activate it.
# Reinstalls only when settings.ini, setup.py or constraints.txt changed since the last install, or when the
# extras asked for are not there yet (a stamp inside .venv; `dev` covers every other extra), so a second run
# starts in seconds.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
extras="${MLPROD_EXTRAS:-dev}"

if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "==> creating .venv with ${PYTHON:-python3.11}"
  rm -rf .venv
  "${PYTHON:-python3.11}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=$(cat settings.ini setup.py constraints.txt | sha256sum | cut -d' ' -f1)
have_stamp="" have_extras=""
read -r have_stamp have_extras < .venv/.mlprod-installed 2>/dev/null || true
have_extras="${have_extras:-dev}"  # stamps written before extras were recorded were all dev installs
if [ "$have_stamp" != "$stamp" ] || { [ "$have_extras" != "$extras" ] && [ "$have_extras" != dev ]; }; then
  echo "==> installing mlprod[$extras] into .venv (constraints.txt)"
  # chained, so that a failure stops here (and leaves no stamp) even where the caller did not `set -e`
  { python -m pip install -q --upgrade "pip>=24" \
      && python -m pip install -q -c constraints.txt -e ".[$extras]" \
      && python -m pip check \
      && echo "$stamp $extras" > .venv/.mlprod-installed; } \
    || { echo "tools/venv.sh: installing mlprod[$extras] failed" >&2; return 1 2>/dev/null || exit 1; }
fi
