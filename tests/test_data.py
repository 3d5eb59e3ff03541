"""`mlprod.data.read_table` on the wire: a real HTTP server and the fake-gcs-server emulator, both on loopback."""
import os

# gcsfs asks a bucket's type over gRPC with TLS first, which hangs 60 s against an emulator; this must be set before
# gcsfs is imported.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import functools
import gzip
import http.server
import io
import socket
import threading

import pandas as pd
import pytest

from mlprod.data import read_table
from mlprod.errors import DataError, StorageError, UsageError

pytestmark = pytest.mark.timeout(60)
FRAME = pd.DataFrame({"pickup_lat": [40.71, 40.75, None], "vehicle": ["cab", "van", "cab"], "fare": [12.5, 30.0, 8.25]})


def csv_bytes(df=FRAME) -> bytes:
    return df.to_csv(index=False).encode()


def parquet_bytes(df=FRAME) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    "A folder served by http.server on 127.0.0.1 in a thread; yields its base URL."
    root = tmp_path_factory.mktemp("www")
    (root / "trips.csv").write_bytes(csv_bytes())
    (root / "trips.csv.gz").write_bytes(gzip.compress(csv_bytes()))
    (root / "trips.parquet").write_bytes(parquet_bytes())
    (root / "empty.csv").write_bytes(b"")
    (root / "garbage.parquet").write_bytes(b"definitely not parquet")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.mark.parametrize("name", ["trips.csv", "trips.csv.gz", "trips.parquet"])
def test_reads_over_http(http_root, name):
    pd.testing.assert_frame_equal(read_table(f"{http_root}/{name}"), FRAME)


def test_http_failures_have_codes(http_root):
    with pytest.raises(UsageError) as e: read_table(f"{http_root}/missing.csv")
    assert e.value.code == "file_not_found"
    with pytest.raises(DataError) as e: read_table(f"{http_root}/empty.csv")
    assert e.value.code == "empty_data"
    with pytest.raises(DataError) as e: read_table(f"{http_root}/garbage.parquet")
    assert e.value.code == "unreadable_data"


def test_a_server_that_is_not_there_is_a_storage_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageError) as e: read_table(f"http://127.0.0.1:{port}/trips.csv")
    assert e.value.code == "storage_error" and "Could not reach" in e.value.message


@pytest.fixture(scope="module")
def gcs_bucket(gcs):
    "A bucket on the session's GCS emulator holding the test tables."
    fs, bucket = gcs.fs(), gcs.bucket()
    fs.pipe(f"{bucket}/data/trips.csv", csv_bytes())
    fs.pipe(f"{bucket}/data/trips.csv.gz", gzip.compress(csv_bytes()))
    fs.pipe(f"{bucket}/data/trips.parquet", parquet_bytes())
    fs.pipe(f"{bucket}/data/empty.csv", b"")
    yield f"gs://{bucket}/data"


@pytest.mark.parametrize("name", ["trips.csv", "trips.csv.gz", "trips.parquet"])
def test_reads_from_gcs(gcs_bucket, name):
    got = read_table(f"{gcs_bucket}/{name}", storage_options={"token": "anon"})
    pd.testing.assert_frame_equal(got, FRAME)


def test_gcs_failures_have_codes(gcs_bucket):
    with pytest.raises(UsageError) as e: read_table(f"{gcs_bucket}/missing.csv", storage_options={"token": "anon"})
    assert e.value.code == "file_not_found"
    with pytest.raises(UsageError) as e: read_table("gs://no-such-bucket/trips.csv", storage_options={"token": "anon"})
    assert e.value.code == "file_not_found"
    with pytest.raises(DataError) as e: read_table(f"{gcs_bucket}/empty.csv", storage_options={"token": "anon"})
    assert e.value.code == "empty_data"
