"""Every command the Jenkinsfile and the GitHub workflows call exists and runs, with the same arguments.

The command lines are read from the files themselves (Jenkins' `sh '...'` and `script: '...'`, the workflows' `run:`
blocks), split at `&&`, and each one is classified; a line no rule knows fails the inventory test, so a new command in
a pipeline needs a test here. Where a command would touch Google Cloud it runs against local stand-ins:
- the environments' stores are buckets on the GCS emulator (`gcs` fixture), in a config like the one the pipelines
  get from their credentials;
- each environment's Cloud Run service is a real `mlprod serve --env NAME` on loopback, following the live pointer,
  with its own JWT secret, and its URL stands for what `tools/cloudrun.sh url NAME` would print;
- `. tools/venv.sh &&` is dropped from a line: this test run's own venv (which tools/test.sh made) is on PATH.
Not run here, because they need Google Cloud or a registry: the `gcloud` lines (checked for form: the Cloud Run
deploy line with `DRY_RUN=1`, flag by flag against `gcloud run deploy`'s reference) and `docker push`. `docker build`
is tests/test_image.py (podman, the same Dockerfile and context); `bash tools/test.sh` and `bash tools/docs.sh` are
this very run.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ROOT / ".github" / "workflows"
VENV_BIN = str(Path(sys.executable).parent)

# (pattern, kind): how each command of a pipeline is run by this suite.
KINDS = [
    (r"^\. tools/venv\.sh$", "setup"),  # made by tools/test.sh for this very run
    (r"^bash tools/(test|docs)\.sh$", "this run"),
    (r"^mlprod (train|sign|deploy|promote|rollback|card) ", "model pipeline"),
    (r"^bash tools/verify_live\.sh (dev|staging|prod|\"\$ENVIRONMENT\") \"\$API_URL\"$", "model pipeline"),
    (r"^(API_URL=\"\$\()?bash tools/cloudrun\.sh (deploy|url) ", "gcloud (form checked)"),
    (r"^gcloud auth (activate-service-account --key-file|configure-docker) ", "gcloud (form checked)"),
    (r"^docker build -t \"\$IMAGE\" \.$", "tests/test_image.py"),
    (r"^docker push \"\$IMAGE\"$", "not run: needs a registry"),
    (r"^papermill mlprod/jobs/train\.ipynb ", "training job"),
    (r"^python -m pip wheel ", "release wheel"),
    (r"^printf '%s\\n' \"\$CONFIG_YAML\" > \"\$RUNNER_TEMP/mlprod\.yaml\"$", "workflow plumbing"),
    (r"^mkdir -p runs$", "workflow plumbing"),
    (r"^echo \"MLPROD_CONFIG=\$RUNNER_TEMP/mlprod\.yaml\" >> \"\$GITHUB_ENV\"$", "workflow plumbing"),
]


def jenkins_lines() -> list:
    "The shell commands of the Jenkinsfile, in file order, with the stage each sits in."
    text = (ROOT / "Jenkinsfile").read_text()
    out, stage = [], None
    pattern = r"stage\('([^']+)'\)|(?:\bsh\s+|script:\s*)(?:'\'\'(.*?)'\'\'|'((?:[^'\\]|\\.)*)')"
    for m in re.finditer(pattern, text, flags=re.S):
        if m.group(1):
            stage = m.group(1)
        else:  # a Groovy string in single quotes: \\ is one backslash; the shell joins `\` + newline
            script = (m.group(2) or m.group(3)).replace("\\\\", "\\")
            out += [(stage, part) for part in split(re.sub(r" *\\\n\s*", " ", script))]
    return out


def workflow_lines(name: str) -> list:
    "The shell commands of a workflow, in file order, with the job each sits in."
    doc = yaml.safe_load((FLOWS / name).read_text())
    out = []
    for job, spec in doc["jobs"].items():
        for step in spec.get("steps", []):
            for line in re.sub(r" *\\\n\s*", " ", step.get("run", "")).splitlines():
                out += [(job, part) for part in split(line)]
    return out


def split(line: str) -> list:
    "A shell line as its commands: split at `&&`, stripped, blank ones dropped."
    return [p.strip() for p in line.split(" && ") if p.strip()]


def kind(command: str) -> str | None:
    return next((k for pattern, k in KINDS if re.search(pattern, command)), None)


def all_lines() -> list:
    return ([("Jenkinsfile", s, c) for s, c in jenkins_lines()]
            + [(f.name, j, c) for f in sorted(FLOWS.glob("*.yml")) for j, c in workflow_lines(f.name)])


def test_every_pipeline_command_is_known_to_a_test():
    lines = all_lines()
    assert len(lines) > 30
    unknown = [f"{f} [{s}]: {c}" for f, s, c in lines if kind(c) is None]
    assert not unknown, "commands no test runs (add a rule to KINDS and a test):\n" + "\n".join(unknown)
    unrun = sorted({" ".join(c.removeprefix('API_URL="$(').split()[:2]) for _, _, c in lines
                    if kind(c).startswith(("gcloud", "not run"))})
    # the only steps this suite cannot run: they need Google Cloud or a container registry
    assert unrun == ["bash tools/cloudrun.sh", "docker push", "gcloud auth"], unrun


def model_sequence(lines: list) -> list:
    "The model pipeline's commands that move a bundle, in order, without the venv set-up."
    return [c for _, c in lines if kind(c) == "model pipeline"]


def test_jenkins_and_github_run_the_same_model_pipeline():
    jenkins = model_sequence([(s, c) for s, c in jenkins_lines()])
    github = model_sequence(workflow_lines("deploy.yml"))
    # Jenkins' API pipeline smoke-tests "$ENVIRONMENT"; the model pipeline is what follows it
    jenkins = [c for c in jenkins if '"$ENVIRONMENT"' not in c]
    assert jenkins == github, (jenkins, github)
    assert jenkins[0].startswith("mlprod train ") and "mlprod deploy \"$MODEL_BUNDLE\" --env dev" in jenkins
    promotions = [jenkins.index(f"mlprod promote --from {a} --to {b}")
                  for a, b in (("dev", "staging"), ("staging", "prod"))]
    assert promotions == sorted(promotions)
    assert jenkins[-1] == "mlprod rollback --env prod"


# ---------------------------------------------------------------------------------------------- gcloud, for form

# `gcloud run deploy`'s flags (its reference: cloud.google.com/sdk/gcloud/reference/run/deploy), plus the global
# --project and --quiet: a misspelt or invented flag fails here before it fails in a pipeline.
RUN_DEPLOY_FLAGS = {"--project", "--region", "--image", "--service-account", "--allow-unauthenticated", "--port",
                    "--cpu", "--memory", "--cpu-boost", "--concurrency", "--min-instances", "--max-instances",
                    "--timeout", "--set-env-vars", "--set-secrets", "--labels", "--quiet", "--platform"}
BOOLEAN = {"--allow-unauthenticated", "--cpu-boost", "--quiet"}


def dry_run(*args) -> list:
    r = subprocess.run(["bash", str(ROOT / "tools" / "cloudrun.sh"), *args], capture_output=True, text=True,
                       env={**os.environ, "DRY_RUN": "1", "PROJECT": "my-project", "REGION": "europe-west1"})
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_cloud_run_deploy_line_is_well_formed(env):
    argv = dry_run("deploy", env, "europe-west1-docker.pkg.dev/my-project/mlprod/mlprod-api:jenkins-7")
    assert argv[:4] == ["gcloud", "run", "deploy", f"mlprod-api-{env}"]
    flags, i = {}, 4
    while i < len(argv):
        flag = argv[i]
        assert flag in RUN_DEPLOY_FLAGS, f"unknown flag {flag}"
        if flag in BOOLEAN:
            flags[flag], i = True, i + 1
        else:
            assert i + 1 < len(argv) and not argv[i + 1].startswith("--"), f"{flag} needs a value"
            flags[flag], i = argv[i + 1], i + 2
    assert re.fullmatch(r"[a-z]+-[a-z]+\d+", flags["--region"]) and flags["--image"].endswith(":jenkins-7")
    assert re.fullmatch(r"\d+", flags["--concurrency"]) and re.fullmatch(r"\d+(Mi|Gi)", flags["--memory"])
    envs = dict(kv.split("=", 1) for kv in flags["--set-env-vars"].split(","))
    assert envs["MLPROD_ENV"] == env and envs["MLPROD_CONFIG"].startswith("/")
    from mlprod.reference import settings
    known = {s.name for s in settings()}
    assert set(envs) <= known, set(envs) - known  # every variable set is one the image reads
    secrets = dict(kv.split("=", 1) for kv in flags["--set-secrets"].split(","))
    assert secrets["MLPROD_JWT_SECRET"] == f"mlprod-jwt-secret-{env}:latest"
    assert all(re.fullmatch(r"[a-z0-9-]+:(latest|\d+)", v) for v in secrets.values())
    assert "SECRET" not in flags["--set-env-vars"]  # a secret never travels as a plain variable


def test_cloud_run_url_line_and_usage():
    assert dry_run("url", "prod") == ["gcloud", "run", "services", "describe", "mlprod-api-prod", "--project",
                                      "my-project", "--region", "europe-west1", "--format", "value(status.url)"]
    r = subprocess.run(["bash", str(ROOT / "tools" / "cloudrun.sh"), "remove", "dev"], capture_output=True, text=True,
                       env={**os.environ, "PROJECT": "p", "REGION": "r"})
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(["bash", str(ROOT / "tools" / "cloudrun.sh"), "url", "dev"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k not in ("PROJECT", "REGION")})
    assert r.returncode != 0 and "PROJECT" in r.stderr


def test_gcloud_auth_lines_are_well_formed():
    auth = sorted({c for _, _, c in all_lines() if c.startswith("gcloud auth")})
    assert auth == ['gcloud auth activate-service-account --key-file "$GOOGLE_APPLICATION_CREDENTIALS"',
                    'gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet']


# ------------------------------------------------------------------------------------------ run, as written

def serve_follows_environments() -> bool:
    "Whether this build's `mlprod serve` takes `--env` (an API that serves and follows an environment's live bundle)."
    from mlprod.reference import commands
    serve = next(c for c in commands() if c.name == "serve")
    return any(flags.startswith("--env") for flags, _, _ in serve.options)


NEEDS_SERVE_ENV = pytest.mark.skipif(
    not serve_follows_environments(),
    reason="`mlprod serve --env` (the API following an environment's live bundle, the API's hot reload) is not in "
           "this build: the Cloud Run services of the pipelines cannot be stood in for without it")


def run_line(command: str, cwd, env: dict, shell: str = "sh", timeout: int = 600):
    "Run one pipeline command as its pipeline would (Jenkins: sh; GitHub: bash), with this run's venv on PATH."
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MLPROD_")}, **env}
    full["PATH"] = VENV_BIN + os.pathsep + full["PATH"]
    return subprocess.run([shell, "-c", command], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(600)
def test_training_workflow_runs_its_papermill_line(tmp_path):
    doc = yaml.safe_load((FLOWS / "train.yml").read_text())
    line = next(s["run"] for s in doc["jobs"]["train"]["steps"] if "papermill" in s.get("run", ""))
    line = line.replace(". tools/venv.sh && ", "").strip()  # this run's venv is on PATH
    (tmp_path / "mlprod").symlink_to(ROOT / "mlprod")  # the checkout's package, where the line names the job
    r = run_line(line, tmp_path, {"DATA": "example:penguins", "TARGET": "", "TIME_BUDGET": "8"}, shell="bash")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "train.ipynb").read_text())
    assert report["metadata"]["papermill"]["parameters"]["time_budget"] == 8  # typed, as papermill -p parses it
    assert (tmp_path / "runs" / "model.bundle" / "manifest.json").exists()


@pytest.mark.timeout(300)
def test_release_workflow_builds_the_wheel(tmp_path):
    line = next(c for _, c in workflow_lines("release.yml") if c.startswith("python -m pip wheel"))
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((ROOT / f).read_bytes())
    r = run_line(line.replace("python ", f"{sys.executable} ", 1), src, {}, shell="bash")
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((src / "dist").glob("mlprod-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mlprod/jobs/train.ipynb" in names and "mlprod/api.py" in names or "mlprod/api/__init__.py" in names
    assert not any(n.startswith(("tests/", "nbs/")) for n in names)


# ------------------------------------------------------------------------------ the model pipeline, end to end

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    "A real `mlprod serve --env NAME` on loopback: the stand-in of that environment's Cloud Run service."
    def __init__(self, name: str, env: dict, log: Path):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**{k: v for k, v in os.environ.items() if not k.startswith("MLPROD_")}, **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "mlprod.cli", "serve", "--env", name, "--port",
                                      str(self.port)], env=full, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                     start_new_session=True)
        self.log = log

    def version(self, token: str) -> str | None:
        r = requests.get(f"{self.url}/v1/model", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        return r.json().get("model", {}).get("version") if r.status_code == 200 else None

    def wait(self, timeout: float = 90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if requests.get(f"{self.url}/v1/ready", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} API not ready: {self.log.read_text()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def environments(tmp_path, gcs):
    """dev, staging and prod: stores in buckets of the GCS emulator, the trusted public key in the config (as the
    pipelines' `mlprod-config` credential holds it), the private key apart (their `mlprod-signing-key`)."""
    r = run_line("mlprod env init --root envs --config mlprod.yaml", tmp_path, {})
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((tmp_path / "mlprod.yaml").read_text())
    key = tmp_path / cfg["signing"].pop("private_key_file")
    for name, env in cfg["environments"].items():
        env["store"] = f"gs://{gcs.bucket(f'pipeline-{name}')}"
    (tmp_path / "mlprod.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    secrets = {name: f"{name}-jwt-secret-of-the-api-at-least-32-bytes" for name in cfg["environments"]}
    return {"config": str(tmp_path / "mlprod.yaml"), "key": str(key), "secrets": secrets}


@NEEDS_SERVE_ENV
@pytest.mark.timeout(900)
def test_model_pipeline_runs_as_written_against_stand_ins(tmp_path, environments, trained_bundle):
    """The model pipeline's commands, in the Jenkinsfile's order (deploy.yml has the same ones), each run with `sh -c`
    as Jenkins runs it: train, sign, deploy to dev, card, check the dev API, promote to staging and check, promote to
    prod and check; then the rollback line of a failed production check."""
    from mlprod.api import make_token, settings_from_env
    work = tmp_path / "workspace"
    work.mkdir()
    (work / "tools").symlink_to(ROOT / "tools")  # the checkout's scripts, where the lines name them
    base = {"MLPROD_CONFIG": environments["config"], "MLPROD_SIGNING_KEY_FILE": environments["key"],
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "VERIFY_INTERVAL": "1"}
    # An earlier version is live everywhere, so that there is something to replace and to roll back to.
    for line in (f"mlprod sign {trained_bundle}", f"mlprod deploy {trained_bundle} --env dev",
                 "mlprod promote --from dev --to staging", "mlprod promote --from staging --to prod"):
        r = run_line(line, work, base)
        assert r.returncode == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
    previous = json.loads((trained_bundle / "manifest.json").read_text())["version"]
    apis = {name: Api(name, {**base, "MLPROD_JWT_SECRET": secret, "MLPROD_RELOAD_INTERVAL": "1"},
                      tmp_path / f"api-{name}.log") for name, secret in environments["secrets"].items()}
    tokens = {name: make_token(settings_from_env({"MLPROD_JWT_SECRET": s}), sub="test", ttl=900)
              for name, s in environments["secrets"].items()}
    try:
        for api in apis.values():
            api.wait()
        stage_env = {"Train": "dev", "Sign": "dev", "Deploy to dev": "dev", "Promote to staging": "staging",
                     "Promote to prod": "prod"}
        steps = [(s, c) for s, c in jenkins_lines() if kind(c) == "model pipeline" and '"$ENVIRONMENT"' not in c]
        assert [s for s, _ in steps][0] == "Train"
        for stage, command in steps:
            name = stage_env[stage]
            env = {**base, "DATA": "example:penguins", "TARGET": "", "TIME_BUDGET": "8",
                   "MODEL_BUNDLE": "runs/model.bundle", "MLPROD_JWT_SECRET": environments["secrets"][name],
                   "API_URL": apis[name].url}
            if command == "mlprod rollback --env prod":
                new = apis["prod"].version(tokens["prod"])
                assert new != previous  # the pipeline put the new version live in prod
            r = run_line(command, work, env)
            assert r.returncode == 0, (stage, command, r.stdout[-2000:], r.stderr[-3000:])
        assert (work / "runs" / "card.html").read_text().count("data:image/png") >= 2
        # after the rollback line, prod's API serves the earlier version again (at its next pointer check)
        end = time.monotonic() + 30
        while apis["prod"].version(tokens["prod"]) != previous and time.monotonic() < end:
            time.sleep(0.5)
        assert apis["prod"].version(tokens["prod"]) == previous
        assert apis["staging"].version(tokens["staging"]) == new  # staging keeps the new one
        history = run_line("mlprod history --env prod --json", work, base)
        moves = [json.loads(line)["action"] for line in history.stdout.splitlines()]
        assert moves[-3:] == ["promote", "promote", "rollback"], moves
    finally:
        for api in apis.values():
            api.stop()
