"""Property-based tests of the HTTP API from its own /openapi.json (schemathesis, on hypothesis), against the
production-configured gunicorn of tests/conftest.py: valid and invalid requests for every documented operation,
with and without a token. Every answer must be below 500, in the envelope (the JSON routes), with a code from the
documented error table at its documented status, and must conform to the documented response schema.

Bounded: `MLPROD_FUZZ_EXAMPLES` examples per operation (default 60), no deadline, no shrinking-phase surprises."""
import collections
import os
import time
import zlib

import jwt
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                               response_schema_conformance, status_code_conformance)

from conftest import PROD_ENV, PROD_SECRET

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("MLPROD_FUZZ_EXAMPLES", 60))
SEEN: collections.Counter = collections.Counter()
NOT_ENVELOPES = {"/metrics", "/docs", "/openapi.json"}  # text, HTML and the document itself


@pytest.fixture(scope="module")
def api_schema(prod_api):
    "The API's own document, loaded by schemathesis."
    return schemathesis.openapi.from_url(prod_api.url + "/openapi.json")


@pytest.fixture(scope="module")
def documented(prod_api):
    "The error table the API documents: code → HTTP status."
    doc = requests.get(prod_api.url + "/openapi.json", timeout=10).json()
    yield {row["code"]: row["status"] for row in doc["x-error-codes"]}
    print(f"\nfuzz: {sum(SEEN.values())} requests; by operation and answer: "
          + ", ".join(f"{k[0]} {k[1]} {k[2]}={n}" for k, n in sorted(SEEN.items())))


def bearer():
    now = int(time.time())
    return jwt.encode({"sub": "fuzz", "iat": now, "exp": now + 3600, "scope": "predict",
                       "aud": PROD_ENV["MLPROD_JWT_AUDIENCE"], "iss": PROD_ENV["MLPROD_JWT_ISSUER"]},
                      PROD_SECRET, algorithm="HS256")


# The operations of the document (test_fuzz_covers_every_documented_operation checks the list). schemathesis'
# pytest integration (`from_fixture`) fails on pytest 9, so each operation's strategy is run with hypothesis here.
OPERATIONS = [("POST", "/v1/predict"), ("POST", "/v1/batch"), ("GET", "/v1/health"), ("GET", "/v1/ready"),
              ("GET", "/v1/model"), ("GET", "/metrics")]


def test_fuzz_covers_every_documented_operation(api_schema):
    documented_ops = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert documented_ops == set(OPERATIONS)


# Negative cases (schemathesis breaks the documented schema on purpose) exist only for operations with inputs.
RUNS = [(m, p, "positive") for m, p in OPERATIONS] + [(m, p, "negative") for m, p in OPERATIONS[:2] + [OPERATIONS[4]]]


@pytest.mark.parametrize("method,path,mode", RUNS)
def test_fuzz_from_openapi(api_schema, documented, method, path, mode):
    strategy = api_schema[path][method].as_strategy(generation_mode=schemathesis.GenerationMode(mode))

    @given(strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), database=None)
    def run(case): check_answer(case, documented)
    run()


def check_answer(case, documented):
    headers = dict(case.headers or {})
    # one case in four without a token (or with the generated one): the refusals are envelopes too
    if zlib.crc32(repr(case.body).encode()) % 4: headers["Authorization"] = f"Bearer {bearer()}"
    r = case.call(headers=headers, timeout=30)
    path = case.operation.path
    if path in NOT_ENVELOPES:
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        SEEN[path, case.method, r.status_code] += 1
        return
    assert r.headers.get("content-type", [""])[0].startswith("application/json"), (r.status_code, r.text[:300])
    body = r.json()
    assert {"success", "code", "message", "request_id"} <= set(body), body
    assert body["code"] in documented and documented[body["code"]] == r.status_code, (r.status_code, body)
    assert body["success"] is (body["code"] == "ok") and "Traceback" not in r.text
    SEEN[path, case.method, body["code"]] += 1
    case.validate_response(r, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                      response_schema_conformance])
