"""README.md as a newcomer meets it: its install, first-API, curl and deploy lines run as written, in a fresh folder.

The blocks are read from README.md itself (the `sh` blocks under "Install", "Your first API" and "Deploying through
environments"), and each runs in bash unchanged, with three declared differences:
- `git clone URL` cannot reach GitHub here: the working tree's files (tracked and untracked, not ignored) are copied
  to the folder the clone would make, so the test sees uncommitted changes too;
- the fresh `.venv` the README creates sees this test run's installed packages through `PYTHONPATH`, so its
  `pip install -e ".[train]"` only installs mlprod itself (~15 s) instead of resolving and installing ~150
  packages (3+ minutes here). What this leaves untested is that the `train` extra alone is enough; set
  `MLPROD_README_FULL_INSTALL=1` to run the real install (CI can afford it on a schedule);
- the server listens on a free port (through `PORT`, which `mlprod serve` reads) instead of 8080, and the curl line's
  `8080` is replaced by it, so the test never collides with another server.
"""
import configparser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def sections(text: str) -> dict:
    "{H2 heading: [its ```sh blocks]} of a Markdown text."
    out = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        out[heading.strip()] = re.findall(r"^```sh\n(.*?)^```", body, flags=re.M | re.S)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_lists_every_command_and_no_unpublished_install():
    from mlprod.reference import commands
    missing = [c.name for c in commands() if f"`mlprod {c.name}`" not in README]
    assert not missing, f"README.md does not list {missing}: run `python tools/make_readme.py --execute`"
    assert not re.search(r"pip install ['\"]?mlprod", README), "mlprod is not on PyPI: install from a clone"
    install = sections(README)["Install"][0]
    assert 'pip install -e ".[train]"' in install and "python3.11 -m venv .venv" in install
    # every extra the README names exists
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    extras = {k[: -len("_requirements")] for k in cfg["DEFAULT"] if k.endswith("_requirements")} | {"dev", "all"}
    named = set(re.findall(r"^\| `(\w+)` \|", README, flags=re.M))
    assert named and named <= extras, named - extras


def test_readme_links_point_into_the_repository():
    "Every relative link of README.md names a file of the repository; no link leaves it but to the web."
    links = re.findall(r"\]\(([^)#\s]+)", README)
    assert links
    local = [u for u in links if not re.match(r"https?://", u)]
    assert all((ROOT / u).is_file() for u in local), [u for u in local if not (ROOT / u).is_file()]
    assert not re.search(r"INTERFACES\.md|TOOLCHAIN\.md|DESIGN\.md|/work/", README)


def test_readme_first_serve_settings_are_the_ones_serve_needs():
    "The settings the README gives a first serve are the ones the server asks for when they are missing."
    first = "\n".join(sections(README)["Your first API"])
    for name in ("MLPROD_JWT_SECRET", "MLPROD_AUTH=off"):
        assert name in README
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "serve", "nothing.bundle"], capture_output=True,
                       text=True, env={k: v for k, v in os.environ.items() if not k.startswith("MLPROD_")})
    assert r.returncode == 2 and "missing_key" in r.stderr.splitlines()[-1]
    assert "MLPROD_JWT_SECRET" in r.stderr and "MLPROD_AUTH=off" in r.stderr
    assert '"Authorization: Bearer $TOKEN"' in first  # double quotes: the shell expands $TOKEN


@pytest.mark.timeout(900)
def test_readme_install_and_first_api_run_as_written(tmp_path):
    blocks = sections(README)
    install, (train, serve, call) = blocks["Install"][0], blocks["Your first API"]
    clone = re.search(r"^git clone \S+\n(cd (\S+))\n", install, flags=re.M)
    assert clone, install
    fresh = tmp_path / clone.group(2)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (fresh / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, fresh / f)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPROD_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    if os.environ.get("MLPROD_README_FULL_INSTALL") != "1":
        env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]

    def bash(block, cwd, timeout=600, **kw):
        return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout, **kw)

    r = bash(install.replace(clone.group(0), clone.group(1) + "\n"), tmp_path, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    venv = f". {fresh}/.venv/bin/activate\n"
    r = bash(venv + train, fresh)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (fresh / "penguins.bundle" / "manifest.json").exists()

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(["bash", "-euo", "pipefail", "-c", venv + serve], cwd=fresh, stdout=log, stderr=log,
                              env={**env, "PORT": str(port)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        r = bash(call.replace("127.0.0.1:8080", f"127.0.0.1:{port}"), fresh, timeout=60)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["success"] is True and answer["code"] == "ok", answer
        assert answer["model"]["name"] == "penguins"
        assert answer["prediction"]["label"] in ("Adelie", "Chinstrap", "Gentoo")
        # the README's example answer has the real answer's shape
        shown = json.loads(re.search(r"```json\n(.*?)```", README, flags=re.S).group(1))
        assert shown.keys() == answer.keys() and shown["prediction"].keys() == answer["prediction"].keys()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    # the deploy lines, in the same folder, on the bundle trained above
    (deploy,) = blocks["Deploying through environments"]
    r = bash(venv + deploy, fresh)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    version = json.loads((fresh / "penguins.bundle" / "manifest.json").read_text())["version"]
    assert f"{version} is live in dev" in r.stdout and f"{version} is live in staging" in r.stdout, r.stdout
    assert (fresh / "mlprod.yaml").exists() and (fresh / "environments" / "staging" / "ledger.jsonl").exists()
