"""The serving image, really built and run with podman: a bundle mounted, a bundle read from gs:// (the GCS
emulator), a bundle baked in; a prediction with a token each time; stopped by name.

How it runs here (no Docker engine, no public registry): podman with a private configuration and storage under
`.cache/podman` (or `$MLPROD_PODMAN_CACHE`), kept between runs so that the base image and the dependency layer are
built once. The base stands in for `python:3.11-slim`: Debian bookworm made with `debootstrap --variant=minbase`
plus Python 3.11 and its venv module, documentation and locales removed as the slim images do, then imported with
`podman import`. pip inside the build reaches the registry through this machine's TLS set-up, so the CA file that
`/etc/pip.conf` names is mounted into the build (`--build-arg PIP_CERT`); the image keeps no trace of it.

Build time, image size and cold start (container start to the first prediction) go to `reports/image.json`, which
`tools/test.sh` prints at the end.
"""
import configparser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MLPROD_PODMAN_CACHE") or ROOT / ".cache" / "podman")
BASE = "localhost/python:3.11-bookworm"
IMAGE = "localhost/mlprod-api:test"
SECRET = "image-test-secret-that-is-long-enough-for-hs256"
REPORT = ROOT / "reports" / "image.json"
# Each test may be the one that builds the base and the image (the session fixture `image`): 6.3 min here with a load
# average of 17 on 2 cores (base 186 s, build 192 s); the build alone 141 s in an earlier run with the base cached.
# A test that has not finished in 20 minutes has hung; the whole module took 8.3 min at that load.
IMAGE_TEST_TIMEOUT = 1200
# Issue 14's targets for the default image (scikit-learn, gs:// bundles): container start to the first prediction
# under 3 s (asserted on the median of three cold starts: 0.82-1.0 s here, so a noisy machine has room), and the
# image under 400 MB (recorded beside its size in reports/image.json, not asserted: 506 MB on 2026-12-01, see
# tools/image_venv.py for what is left in it).
COLD_START_TARGET_S = 3.0
SIZE_TARGET_MB = 400
MISSING = [t for t in ("podman", "debootstrap") if not shutil.which(t)]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: `bash .ci/run` installs them "
                       "(apt-get install podman buildah runc fuse-overlayfs uidmap slirp4netns debootstrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="building the base with debootstrap and podman's private storage "
                       "need root here: run as root, or in CI (`bash .ci/run`)"),
]


def report(**figures):
    "Merge figures into reports/image.json."
    REPORT.parent.mkdir(exist_ok=True)
    old = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    REPORT.write_text(json.dumps({**old, **figures}, indent=2) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Podman:
    "podman with this test's private configuration and storage."
    def __init__(self, home: Path):
        home.mkdir(parents=True, exist_ok=True)
        (home / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{home}/graph"\nrunroot = "{home}/run"\n')
        self.home = home
        self.env = {**os.environ, "CONTAINERS_CONF": str(home / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(home / "storage.conf")}

    def __call__(self, *args, check=True, timeout=120, **kw):
        r = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
        return r

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def image_id(self, image: str) -> str | None:
        return self("image", "inspect", "--format", "{{.Id}}", image).stdout.strip() if self.exists(image) else None


def apt_mirror() -> str:
    "The Debian archive this machine's apt uses (debootstrap fetches the base from it)."
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = f.read_text(errors="replace") if f.is_file() else ""
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(r"^deb\s+(\S+/debian)/?\s", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def pip_ca_file() -> str | None:
    "The CA bundle pip is told to trust (PIP_CERT or /etc/pip.conf), which the build's pip needs too."
    if os.environ.get("PIP_CERT"):
        return os.environ["PIP_CERT"]
    cfg = configparser.ConfigParser()
    cfg.read("/etc/pip.conf")
    return cfg.get("global", "cert", fallback=None)


def make_base(podman: Podman) -> None:
    "The stand-in for python:3.11-slim: Debian minbase + Python 3.11 + venv, without docs and locales."
    with tempfile.TemporaryDirectory(dir=podman.home) as tmp:
        rootfs = Path(tmp) / "rootfs"
        r = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                            "bookworm", str(rootfs), apt_mirror()], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/info", "usr/share/locale"):
            for p in (rootfs / junk).glob("*"):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", BASE, stdin=tar.stdout, timeout=300)
        tar.wait()


def build(podman: Podman, context: Path, tag: str, *extra) -> float:
    "podman build of the repository's Dockerfile in `context`; returns the seconds it took."
    ca = pip_ca_file()
    tls = ["--build-arg", "PIP_CERT=/run/host-ca.crt", "--volume", f"{ca}:/run/host-ca.crt:ro"] if ca else []
    t0 = time.monotonic()
    podman("build", "--format", "docker", "-f", str(ROOT / "Dockerfile"), "-t", tag, "--build-arg", f"BASE={BASE}",
           *tls, *extra, str(context), timeout=900)
    return time.monotonic() - t0


@pytest.fixture(scope="session")
def podman():
    return Podman(CACHE)


@pytest.fixture(scope="session")
def image(podman):
    """The image built from the repository as the pipelines build it (`docker build -t IMAGE .`), once a session.
    The previous build of the same tag is removed afterwards, so the cache keeps one copy of its large layer."""
    t0 = time.monotonic()
    if not podman.exists(BASE):
        make_base(podman)
    base_s = time.monotonic() - t0
    old = podman.image_id(IMAGE)
    build_s = build(podman, ROOT, IMAGE)
    new = podman.image_id(IMAGE)
    if old and old != new:
        podman("rmi", old, check=False)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    base = int(podman("image", "inspect", "--format", "{{.Size}}", BASE).stdout)
    report(image=IMAGE, size_mb=round(size / 1e6), size_target_mb=SIZE_TARGET_MB, base_mb=round(base / 1e6),
           build_s=round(build_s, 1), base_s=round(base_s, 1))
    return IMAGE


class Container:
    "A container of the image, on the host network (it listens on 127.0.0.1:PORT), stopped by its name."
    def __init__(self, podman: Podman, image: str, env: dict, volumes=()):
        self.podman, self.name, self.port = podman, f"mlprod-test-{uuid.uuid4().hex[:8]}", free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["run", "-d", "--name", self.name, "--network", "host", "-e", f"PORT={self.port}"]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        for v in volumes:
            args += ["-v", v]
        self.t0 = time.monotonic()
        podman(*args, image)

    def first_prediction(self, record: dict, token: str, timeout: float = 60) -> tuple:
        "Post `record` until the model answers; (the envelope, seconds since the container was started)."
        end = self.t0 + timeout
        while time.monotonic() < end:
            try:
                r = requests.post(f"{self.url}/v1/predict", json=record, timeout=2,
                                  headers={"Authorization": f"Bearer {token}"})
                if r.json().get("code") != "model_not_ready":  # 503 while the model loads
                    return r.json(), time.monotonic() - self.t0
            except requests.ConnectionError:
                if self.state() != "running":
                    raise AssertionError(f"the container stopped:\n{self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"no answer within {timeout} s:\n{self.logs()}")

    def state(self) -> str:
        return self.podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()

    def logs(self) -> str:
        r = self.podman("logs", self.name, check=False)
        return r.stdout[-4000:] + r.stderr[-4000:]

    def stop(self) -> tuple:
        "Stop by name (SIGTERM, 10 s grace as Cloud Run gives); (exit code, seconds it took)."
        t0 = time.monotonic()
        if self.podman("stop", "-t", "10", self.name, check=False).returncode != 0:
            return None, 0.0  # already stopped and removed
        took = time.monotonic() - t0
        code = self.podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip()
        self.podman("rm", "-f", self.name, check=False)
        return int(code), took


@pytest.fixture
def container(podman):
    "Start containers of an image; each is stopped and removed by name at the end of the test."
    started = []
    def start(image, env, volumes=()):
        started.append(Container(podman, image, env, volumes))
        return started[-1]
    yield start
    for c in started:
        c.stop()
    assert not podman("ps", "-a", "--filter", "name=mlprod-test-", "--format", "{{.Names}}").stdout.strip()


from test_pipelines import environments  # noqa: E402,F401  (the fixture: stores on the emulator, keys, config)


def a_record(bundle_dir) -> dict:
    from mlprod.bundle import frame_records, load_bundle
    b = load_bundle(bundle_dir)
    row = frame_records(b.testset().head(1))[0]
    return {k: v for k, v in row.items() if k in b.spec.features and v is not None}


def a_token() -> str:
    from mlprod.api import make_token, settings_from_env
    return make_token(settings_from_env({"MLPROD_JWT_SECRET": SECRET}), sub="image-test", ttl=600)


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_image_is_small_runs_as_a_user_and_checks_its_health(image, podman):
    cfg = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert cfg["User"] == "10001"
    assert "PORT=8080" in cfg["Env"] and any(e.startswith("GUNICORN_THREADS=") for e in cfg["Env"])
    health = json.loads(podman("image", "inspect", image).stdout)[0]["Healthcheck"]
    assert health["Test"][0] == "CMD" and "/v1/health" in health["Test"][-1]
    # TensorFlow only in the tf variant; the Vertex AI SDK only in the gcp variant; no pip left to install things.
    r = podman("run", "--rm", "--entrypoint", "python", image, "-c",
               "import importlib.util as u; print([m for m in ('tensorflow', 'google.cloud.aiplatform', 'pip', "
               "'gcsfs', 'sklearn') if u.find_spec(m.split('.')[0]) and (m != 'google.cloud.aiplatform' "
               "or u.find_spec(m))])")
    assert r.stdout.strip() == "['gcsfs', 'sklearn']", r.stdout + r.stderr


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_image_serves_a_mounted_bundle_with_a_token_and_stops_gracefully(image, podman, container, trained_bundle):
    colds = []
    for _ in range(3):  # cold start, three times: this shared 2-core machine is noisy
        c = container(image, {"MLPROD_JWT_SECRET": SECRET, "MLPROD_BUNDLE": "/bundle"},
                      [f"{trained_bundle}:/bundle:ro"])
        answer, cold = c.first_prediction(a_record(trained_bundle), a_token())
        assert answer["success"] is True and answer["code"] == "ok", answer
        assert answer["model"]["name"] == "penguins" and "label" in answer["prediction"]
        colds.append(round(cold, 2))
        if len(colds) < 3:
            c.stop()
    report(cold_start_s=sorted(colds), cold_start_target_s=COLD_START_TARGET_S)
    assert sorted(colds)[1] < COLD_START_TARGET_S, f"cold start to the first prediction: {sorted(colds)} s"
    # the token is checked: none is 401 missing_token
    r = requests.post(f"{c.url}/v1/predict", json=a_record(trained_bundle), timeout=5)
    assert (r.status_code, r.json()["code"]) == (401, "missing_token")
    assert podman("healthcheck", "run", c.name, check=False).returncode == 0, c.logs()
    assert podman("exec", c.name, "id", "-u").stdout.strip() == "10001"
    code, took = c.stop()
    assert code == 0 and took < 10, (code, took)


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_image_reads_a_gs_bundle_from_the_emulator(image, container, trained_bundle, gcs):
    bucket = gcs.bucket("image")
    gcs.fs().put(str(trained_bundle), f"{bucket}/models/penguins.bundle", recursive=True)
    c = container(image, {"MLPROD_JWT_SECRET": SECRET, "MLPROD_BUNDLE": f"gs://{bucket}/models/penguins.bundle",
                          "STORAGE_EMULATOR_HOST": gcs.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"})
    answer, cold = c.first_prediction(a_record(trained_bundle), a_token())
    assert answer["success"] is True and answer["model"]["name"] == "penguins", answer
    report(gs_cold_start_s=round(cold, 2))  # container start to the first prediction, the bundle read from gs://


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_image_refuses_to_start_without_a_key(image, podman, trained_bundle):
    r = podman("run", "--rm", "-v", f"{trained_bundle}:/bundle:ro", "-e", "MLPROD_BUNDLE=/bundle", image, check=False,
               timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "missing_key" in r.stderr.splitlines()[-1]


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_baked_bundle_needs_no_storage(image, podman, container, trained_bundle, tmp_path):
    "`--target baked --build-arg BUNDLE=...`: same layers as the image (from the cache) plus the bundle."
    context = tmp_path / "context"
    context.mkdir()
    for name in ("settings.ini", "setup.py", "README.md", "constraints.txt", ".dockerignore"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "mlprod", context / "mlprod", ignore=shutil.ignore_patterns("__pycache__"))
    (context / "tools").mkdir()
    shutil.copy2(ROOT / "tools" / "image_venv.py", context / "tools")
    shutil.copytree(trained_bundle, context / "model.bundle")
    tag = "localhost/mlprod-api:test-baked"
    seconds = build(podman, context, tag, "--target", "baked", "--build-arg", "BUNDLE=model.bundle")
    try:
        c = container(tag, {"MLPROD_JWT_SECRET": SECRET})
        answer, _ = c.first_prediction(a_record(trained_bundle), a_token())
        assert answer["success"] is True, answer
        report(baked_build_s=round(seconds, 1))
    finally:
        for s in podman("ps", "-a", "--filter", f"ancestor={tag}", "--format", "{{.Names}}").stdout.split():
            podman("rm", "-f", s, check=False)
        podman("rmi", "-f", tag, check=False)


@pytest.mark.skipif(not __import__("test_pipelines").serve_follows_environments(),
                    reason="`mlprod serve --env` (the API following an environment's live bundle) is not in this "
                           "build")
@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_image_follows_an_environment_as_on_cloud_run(image, container, trained_bundle, environments, tmp_path):
    """Cloud Run's set-up (service.yaml): MLPROD_ENV names the environment, its config is a mounted file (from Secret
    Manager there) with the trusted key inline, the store is a bucket (the emulator). Then the API pipeline's smoke
    test, the very line of the Jenkinsfile, passes against the container."""
    import yaml
    from test_pipelines import jenkins_lines, run_line
    base = {"MLPROD_CONFIG": environments["config"], "MLPROD_SIGNING_KEY_FILE": environments["key"]}
    for line in (f"mlprod sign {trained_bundle}", f"mlprod deploy {trained_bundle} --env dev"):
        r = run_line(line, tmp_path, base)
        assert r.returncode == 0, r.stderr[-3000:]
    cfg = yaml.safe_load(Path(environments["config"]).read_text())
    pub = Path(environments["config"]).parent / cfg["signing"]["public_key"]
    cfg["signing"]["public_key"] = pub.read_text()  # inline: the mounted file stands alone
    mounted = tmp_path / "mlprod.yaml"
    mounted.write_text(yaml.safe_dump(cfg, sort_keys=False))
    mounted.chmod(0o644)
    secret = environments["secrets"]["dev"]
    c = container(image, {"MLPROD_ENV": "dev", "MLPROD_CONFIG": "/etc/mlprod/mlprod.yaml",
                          "MLPROD_JWT_SECRET": secret, "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"],
                          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}, [f"{mounted}:/etc/mlprod/mlprod.yaml:ro"])
    from mlprod.api import make_token, settings_from_env
    token = make_token(settings_from_env({"MLPROD_JWT_SECRET": secret}), sub="image-test", ttl=600)
    answer, _ = c.first_prediction(a_record(trained_bundle), token)
    live = json.loads((trained_bundle / "manifest.json").read_text())["version"]
    assert answer["success"] is True and answer["model"]["version"] == live, answer
    smoke = next(cmd for stage, cmd in jenkins_lines() if stage == "Smoke test" and "verify_live" in cmd)
    r = run_line(smoke, ROOT, {**base, "ENVIRONMENT": "dev", "API_URL": c.url, "MLPROD_JWT_SECRET": secret})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"serves {live}" in r.stdout or live in r.stdout
