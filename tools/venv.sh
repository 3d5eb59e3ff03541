# Sourced by tools/test.sh, tools/demo.sh and CI: make sure .venv exists and holds the
# project installed with every extra at the versions of constraints.txt, then activate it.
# Reinstalls only when settings.ini, setup.py or constraints.txt changed since the last
# install (a stamp inside .venv), so a second run starts in seconds.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "==> creating .venv with ${PYTHON:-python3.11}"
  rm -rf .venv
  "${PYTHON:-python3.11}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=$(cat settings.ini setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.mlprod-installed 2>/dev/null)" != "$stamp" ]; then
  echo "==> installing mlprod[dev] into .venv (constraints.txt)"
  python -m pip install -q --upgrade "pip>=24"
  python -m pip install -q -c constraints.txt -e ".[dev]"
  python -m pip check
  echo "$stamp" > .venv/.mlprod-installed
fi
