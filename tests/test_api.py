"""The prediction API against a real gunicorn on 127.0.0.1: every envelope code, the JWT cases, limits, metrics,
logs, readiness, enrichment refresh and the docs example. Servers are started by fixtures and stopped by PID."""
import base64
import hashlib
import hmac
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jwt
import numpy as np
import pandas as pd
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mlprod.errors import ENVELOPE_CODES

pytestmark = pytest.mark.timeout(300)

SECRET = "test-api-shared-secret-long-enough-for-hs256"
OTHER_SECRET = "another-secret-that-is-also-long-enough-hs256"
AUDIENCE, ISSUER = "mlprod-tests", "https://issuer.example"


# ---------------------------------------------------------------- bundles

from mlprod.testing import example_bundle, example_records as records


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="session")
def trips_bundle(work):
    return example_bundle("city_trips", n=3000, max_iter=60, path=work / "trips.bundle")


@pytest.fixture(scope="session")
def penguins_bundle(work):
    return example_bundle("penguins", n=None, max_iter=30, path=work / "penguins.bundle")


@pytest.fixture(scope="session")
def broken_bundle(work):
    return example_bundle("penguins", n=None, max_iter=5, broken=True, path=work / "broken.bundle")


@pytest.fixture(scope="session")
def tampered_bundle(work, penguins_bundle):
    dst = work / "tampered.bundle"
    shutil.copytree(penguins_bundle, dst)
    with open(dst / "metrics.json", "ab") as f: f.write(b" ")
    return str(dst)


@pytest.fixture(scope="session")
def rsa_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return priv, pub


# ---------------------------------------------------------------- servers

from servers import Server, free_port, stop_all


@pytest.fixture(scope="session")
def start(work):
    servers = []
    def _start(bundle, env, via="serve", wait="/v1/health"):
        port = free_port()
        log = work / f"server-{port}.log"
        if via == "serve":
            args = [sys.executable, "-m", "mlprod.cli", "serve", str(bundle), "--port", str(port)]
            env = dict(env)
        else:  # gunicorn directly, as a container might run it: the bundle is only checked inside the worker
            args = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--no-control-socket",
                    "mlprod.api:create_app()"]
            env = {**env, "MLPROD_BUNDLE": str(bundle)}
        s = Server(args, env, port, log)
        servers.append(s)
        return s.wait(wait) if wait else s
    yield _start
    stop_all(servers)


HS_ENV = {"MLPROD_JWT_SECRET": SECRET, "MLPROD_JWT_AUDIENCE": AUDIENCE, "MLPROD_JWT_ISSUER": ISSUER,
          "MLPROD_MAX_INSTANCES": "5", "MLPROD_MAX_BODY_BYTES": "4096"}


@pytest.fixture(scope="session")
def trips(start, trips_bundle):
    return start(trips_bundle, HS_ENV, wait="/v1/ready")


@pytest.fixture(scope="session")
def penguins(start, penguins_bundle):
    return start(penguins_bundle, HS_ENV, wait="/v1/ready")


def token(secret=SECRET, alg="HS256", ttl=600, **claims):
    now = int(time.time())
    payload = {"sub": "tester", "iat": now, "exp": now + ttl, "scope": "predict", "aud": AUDIENCE, "iss": ISSUER} | claims
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=alg)


def b64(d) -> str: return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def auth(tok): return {"Authorization": f"Bearer {tok}"}


def post(server, body=None, headers=None, **kw):
    return requests.post(server.url + "/v1/predict", json=body, headers=headers, timeout=10, **kw)


# The statuses of the serving contract, written out here so that a change to the table itself fails a test.
STATUS = {"ok": 200, "malformed_json": 400, "missing_token": 401, "invalid_token": 401, "token_expired": 401,
          "forbidden": 403, "not_found": 404, "method_not_allowed": 405, "payload_too_large": 413,
          "unsupported_media_type": 415, "invalid_input": 422, "model_not_ready": 503, "model_unavailable": 503,
          "internal_error": 500}


def test_the_error_table_is_the_documented_one():
    assert {c: row.http_status for c, row in ENVELOPE_CODES.items()} == STATUS


def check_envelope(r, code):
    "The answer is the envelope with `code` and its documented status, as JSON."
    assert r.headers["Content-Type"].startswith("application/json"), r.text[:200]
    body = r.json()
    assert (r.status_code, body["code"]) == (STATUS[code], code), body
    assert set(body) >= {"success", "code", "message", "errors", "model", "request_id"}
    assert body["success"] is (code == "ok")
    assert "Traceback" not in r.text and "<html" not in r.text.lower()
    return body


# ---------------------------------------------------------------- success

def test_valid_record_regression(trips, trips_bundle):
    from mlprod.bundle import load_bundle
    recs = records(trips_bundle, 20)
    b = load_bundle(trips_bundle)
    expected = b.predict_records([b.spec.validate_record(r).record for r in recs])  # the batch path
    r = post(trips, recs[0], {**auth(token()), "X-Request-ID": "req-123"})
    body = check_envelope(r, "ok")
    assert body["request_id"] == "req-123" == r.headers["X-Request-ID"]
    assert body["model"] == {"name": b.name, "version": b.version} and "predictions" not in body
    p = body["prediction"]
    assert set(p) == {"value", "lower", "upper", "coverage", "confidence"}
    assert p["lower"] <= p["value"] <= p["upper"] and p["coverage"] == 0.9
    scale = float(np.std(pd.read_parquet(Path(trips_bundle) / "testset.parquet")["duration_min"]))
    got = [post(trips, rec, auth(token())).json()["prediction"] for rec in recs]
    batch = post(trips, {"instances": recs[:5]}, auth(token())).json()["predictions"]
    for g, e in zip(got + batch, expected + expected[:5]):
        for k in ("value", "lower", "upper", "confidence"):
            assert abs(g[k] - e[k]) <= 1e-9 * max(abs(e[k]), scale), (k, g, e)


def test_valid_batch_classification(penguins, penguins_bundle):
    recs = records(penguins_bundle, 3)
    body = check_envelope(post(penguins, {"instances": recs}, auth(token())), "ok")
    assert len(body["predictions"]) == 3 and "prediction" not in body
    for p in body["predictions"]:
        assert set(p) == {"label", "probabilities", "confidence"}
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-9 and p["label"] in p["probabilities"]


def test_health_ready_model_openapi(trips, trips_bundle):
    check_envelope(requests.get(trips.url + "/v1/health"), "ok")
    check_envelope(requests.get(trips.url + "/v1/ready"), "ok")
    check_envelope(requests.get(trips.url + "/v1/model"), "missing_token")
    m = check_envelope(requests.get(trips.url + "/v1/model", headers=auth(token())), "ok")["model"]
    assert m["task"] == "regression" and m["target"] == "duration_min" and "pickup_lat" in m["inputs"]["properties"]
    doc = requests.get(trips.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    rec = doc["components"]["schemas"]["Record"]
    assert rec["properties"]["vehicle"]["enum"] and rec["properties"]["pickup_lat"]["minimum"] < 40.6
    import jsonschema
    jsonschema.Draft202012Validator(rec).validate(records(trips_bundle, 1)[0])
    with pytest.raises(jsonschema.ValidationError): jsonschema.Draft202012Validator(rec).validate({"vehicle": "spaceship"})


# ---------------------------------------------------------------- every error code

def test_malformed_json(trips):
    r = requests.post(trips.url + "/v1/predict", data='{"pickup_lat": 40.7,', timeout=10,
                      headers={**auth(token()), "Content-Type": "application/json"})
    assert "line 1" in check_envelope(r, "malformed_json")["message"]


def test_unsupported_media_type(trips):
    r = requests.post(trips.url + "/v1/predict", data="pickup_lat=40.7", timeout=10,
                      headers={**auth(token()), "Content-Type": "application/x-www-form-urlencoded"})
    check_envelope(r, "unsupported_media_type")


def test_invalid_input_lists_every_error(trips, trips_bundle):
    rec = records(trips_bundle, 1)[0]
    bad = {**rec, "pickup_lat": 50.0, "vehicle": "spaceship", "colour": "red"}
    del bad["hour"]
    body = check_envelope(post(trips, bad, auth(token())), "invalid_input")
    got = {(e["field"], e["code"]) for e in body["errors"]}
    assert {("hour", "missing_field"), ("vehicle", "unknown_category"), ("colour", "unknown_field")} <= got
    assert any(e["code"] in ("out_of_range", "outside_region") for e in body["errors"])
    assert body["prediction"] is None


def test_batch_with_invalid_instance_is_refused_with_index(trips, trips_bundle):
    recs = records(trips_bundle, 3)
    recs[2] = {**recs[2], "weekday": "monday"}
    body = check_envelope(post(trips, {"instances": recs}, auth(token())), "invalid_input")
    assert [(e["index"], e["field"], e["code"]) for e in body["errors"]] == [(2, "weekday", "wrong_type")]
    assert "predictions" not in body


def test_body_too_large(trips):
    big = {"pickup_lat": 40.7, "note": "x" * 5000}
    check_envelope(post(trips, big, auth(token())), "payload_too_large")
    # a chunked body without Content-Length is stopped at the same limit
    chunks = (b'{"a": "' + b"x" * 1000 + b'",' for _ in range(10))
    r = requests.post(trips.url + "/v1/predict", data=chunks, timeout=10,
                      headers={**auth(token()), "Content-Type": "application/json"})
    check_envelope(r, "payload_too_large")


def test_too_many_instances(trips, trips_bundle):
    rec = records(trips_bundle, 1)[0]
    body = check_envelope(post(trips, {"instances": [rec] * 6}, auth(token())), "payload_too_large")
    assert "limit of 5" in body["message"]


def test_not_found_and_method_not_allowed(trips):
    check_envelope(requests.get(trips.url + "/v2/predict"), "not_found")
    check_envelope(requests.get(trips.url + "/"), "not_found")
    r = requests.delete(trips.url + "/v1/predict")
    check_envelope(r, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


def test_broken_http_is_an_envelope(trips):
    with socket.create_connection(("127.0.0.1", trips.port), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw = s.recv(65536).decode()
    head, _, body = raw.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "application/json" in head
    assert json.loads(body)["code"] == "malformed_json"


def test_model_not_ready(start, tampered_bundle):
    # gunicorn started directly (as a container would): the worker refuses the tampered bundle and says so
    s = start(tampered_bundle, {"MLPROD_AUTH": "off"}, via="gunicorn")
    check_envelope(requests.get(s.url + "/v1/health"), "ok")
    for _ in range(100):
        body = requests.get(s.url + "/v1/ready").json()
        if "could not be loaded" in body["message"]: break
        time.sleep(0.05)
    message = check_envelope(requests.get(s.url + "/v1/ready"), "model_not_ready")["message"]
    answer = check_envelope(post(s, {"x": 1}), "model_not_ready")["message"]
    assert "bundle_tampered" in message and answer == message
    # the load failure's detail (paths, the exception's text) is in the server's log, never in an answer
    detail = next(l["message"] for l in s.log_lines() if l.get("event") == "model_failed")
    assert str(tampered_bundle) in detail and str(tampered_bundle) not in message and "sha256" not in message
    assert any(line.get("event") == "auth_off" for line in s.log_lines())  # the startup log warns


def test_serve_refuses_a_tampered_bundle_before_gunicorn(tampered_bundle):
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "serve", tampered_bundle, "--port", str(free_port())],
                       env={**os.environ, "MLPROD_AUTH": "off"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and r.stderr.splitlines()[-1].startswith("error: bundle_tampered"), r.stderr
    assert "gunicorn" not in r.stderr


def test_internal_error_is_logged_not_shown(start, broken_bundle):
    s = start(broken_bundle, {"MLPROD_AUTH": "off"}, wait="/v1/ready")
    body = check_envelope(post(s, records(broken_bundle, 1)[0], {"X-Request-ID": "bug-42"}), "internal_error")
    assert "bug-42" in body["message"]
    logged = [l for l in s.log_lines() if l.get("event") == "internal_error"]
    assert logged and logged[0]["request_id"] == "bug-42" and "Traceback" in logged[0]["exception"]


# ---------------------------------------------------------------- JWT cases

@pytest.mark.parametrize("case,code", [
    ("no token", "missing_token"), ("not bearer", "missing_token"), ("garbage", "invalid_token"),
    ("wrong signature", "invalid_token"), ("expired", "token_expired"), ("alg none", "invalid_token"),
    ("no exp", "invalid_token"), ("wrong audience", "invalid_token"), ("no audience", "invalid_token"),
    ("wrong issuer", "invalid_token"), ("missing scope", "forbidden"), ("other scope", "forbidden"),
    ("RS256 token", "invalid_token"), ("valid", "ok")])
def test_jwt_cases_hs256(trips, trips_bundle, rsa_keys, case, code):
    now = int(time.time())
    tokens = {
        "no token": None, "not bearer": "Basic dGVzdDp0ZXN0", "garbage": "Bearer not-a-jwt",
        "wrong signature": token(secret=OTHER_SECRET), "expired": token(ttl=-30),
        "alg none": b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "x", "exp": now + 60, "scope": "predict",
                                                                     "aud": AUDIENCE, "iss": ISSUER}) + ".",
        "no exp": jwt.encode({"sub": "x", "scope": "predict", "aud": AUDIENCE, "iss": ISSUER}, SECRET, algorithm="HS256"),
        "wrong audience": token(aud="someone-else"), "no audience": token(aud=None), "wrong issuer": token(iss="https://evil"),
        "missing scope": token(scope=None), "other scope": token(scope="read write"),
        "RS256 token": token(secret=rsa_keys[0], alg="RS256"), "valid": token(scope="read predict")}
    t = tokens[case]
    headers = {} if t is None else {"Authorization": t if t.startswith(("Basic", "Bearer")) else f"Bearer {t}"}
    check_envelope(post(trips, records(trips_bundle, 1)[0], headers), code)


@pytest.fixture(scope="session")
def rs_server(start, penguins_bundle, rsa_keys):
    return start(penguins_bundle, {"MLPROD_JWT_PUBLIC_KEY": rsa_keys[1]}, wait="/v1/ready")


def test_jwt_rs256_and_algorithm_confusion(rs_server, penguins_bundle, rsa_keys):
    priv, pub = rsa_keys
    rec = records(penguins_bundle, 1)[0]
    now = int(time.time())
    claims = {"sub": "x", "exp": now + 60, "scope": "predict"}
    check_envelope(post(rs_server, rec, auth(jwt.encode(claims, priv, algorithm="RS256"))), "ok")
    # HS256 signed with the public key's PEM as the secret (PyJWT refuses to make it, so by hand)
    head, body = b64({"alg": "HS256", "typ": "JWT"}), b64(claims)
    sig = base64.urlsafe_b64encode(hmac.new(pub.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=")
    check_envelope(post(rs_server, rec, auth(f"{head}.{body}.{sig.decode()}")), "invalid_token")
    check_envelope(post(rs_server, rec, auth(jwt.encode(claims, SECRET, algorithm="HS256"))), "invalid_token")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    check_envelope(post(rs_server, rec, auth(jwt.encode(claims, other, algorithm="RS256"))), "invalid_token")


def test_mlprod_token_is_accepted(rs_server, penguins_bundle, rsa_keys):
    env = {**os.environ, "MLPROD_JWT_PRIVATE_KEY": rsa_keys[0]}
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "token", "--sub", "ci"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    check_envelope(post(rs_server, records(penguins_bundle, 1)[0], auth(r.stdout.splitlines()[-1])), "ok")


def test_conflicting_keys_refuse_to_start(penguins_bundle, rsa_keys):
    env = {**os.environ, "MLPROD_JWT_SECRET": SECRET, "MLPROD_JWT_PUBLIC_KEY": rsa_keys[1]}
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "serve", penguins_bundle, "--port", str(free_port())],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "conflicting_settings" in r.stderr.splitlines()[-1]


# ---------------------------------------------------------------- metrics, logs, startup, docs

def test_metrics_count_requests(start, penguins_bundle):
    s = start(penguins_bundle, {"MLPROD_JWT_SECRET": SECRET}, wait="/v1/ready")
    rec = records(penguins_bundle, 1)[0]
    good = token(aud=None, iss=None)
    for _ in range(3): post(s, rec, auth(good))
    for _ in range(2): post(s, rec)
    requests.get(s.url + "/nope")
    text = requests.get(s.url + "/metrics").text
    def value(name, **labels):
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    assert value("mlprod_requests_total", endpoint="/v1/predict", code="ok", status="200") == 3
    assert value("mlprod_requests_total", endpoint="/v1/predict", code="missing_token", status="401") == 2
    assert value("mlprod_requests_total", endpoint="other", code="not_found") == 1
    assert value("mlprod_request_duration_seconds_count", endpoint="/v1/predict") == 5
    assert value("mlprod_predicted_records_total") == 3 or "mlprod_predicted_records_total 3.0" in text


def test_access_logs_are_json_without_secrets(trips, trips_bundle):
    tok = token()
    rec = records(trips_bundle, 1)[0]
    post(trips, rec, {**auth(tok), "X-Request-ID": "log-check-1"})
    time.sleep(0.2)
    lines = [l for l in trips.log_lines() if l.get("request_id") == "log-check-1"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert (line["logger"], line["status"], line["code"], line["sub"], line["records"]) == ("mlprod.api.access", 200, "ok", "tester", 1)
    logs = trips.logs()
    assert tok not in logs and SECRET not in logs and json.dumps(rec)[:30] not in logs and "payload" not in line


def test_startup_to_first_prediction_and_no_tensorflow(start, trips_bundle):
    s = start(trips_bundle, {"MLPROD_JWT_SECRET": SECRET}, wait=None)
    rec, tok = records(trips_bundle, 1)[0], token(aud=None, iss=None)
    while True:
        try:
            r = post(s, rec, auth(tok))
            if r.status_code == 200: break
        except requests.ConnectionError: pass
        assert time.perf_counter() - s.t0 < 20 and s.proc.poll() is None, s.logs()
        time.sleep(0.01)
    seconds = time.perf_counter() - s.t0
    print(f"startup to first prediction: {seconds:.2f} s")
    assert seconds < 10  # loose here (shared CI machines); the 2 s bar is measured in bench/bench_serving.py
    for pid in [s.proc.pid, *s.worker_pids()]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "tensorflow" not in maps and "libtensorflow" not in maps, pid


def test_docs_example_is_what_the_server_returns(trips):
    page = requests.get(trips.url + "/docs").text
    assert "<script" not in page and "src=" not in page
    curl = html.unescape(re.search(r'<pre id="example-curl">(.*?)</pre>', page, re.S).group(1))
    shown = json.loads(html.unescape(re.search(r'<pre id="example-answer">(.*?)</pre>', page, re.S).group(1)))
    assert curl.startswith(f"curl -s {trips.url}/v1/predict") and "$TOKEN" in curl
    r = subprocess.run(["bash", "-c", curl], env={**os.environ, "TOKEN": token()}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == shown
    assert shown["code"] == "ok" and shown["request_id"] == "docs-example"
    for code in ENVELOPE_CODES: assert f"<code>{code}</code>" in page


def test_enrichment_refresh_on_a_live_server(start, trips_bundle, work):
    ref = work / "reference-live"
    ref.mkdir()
    points = json.loads((Path(trips_bundle) / "reference" / "points.json").read_text())
    (ref / "points.json").write_text(json.dumps(points))
    s = start(trips_bundle, {"MLPROD_AUTH": "off", "MLPROD_ENRICH_URI": str(ref), "MLPROD_ENRICH_TTL": "0.3"}, wait="/v1/ready")
    rec = {**records(trips_bundle, 1)[0], "pickup_lat": 40.6415, "pickup_lon": -73.779, "dropoff_lat": 40.6425, "dropoff_lon": -73.781}
    before = post(s, rec).json()["prediction"]["value"]
    for name in ("pickup_km_to_airport", "dropoff_km_to_airport"): points[name] = {"airport": [40.85, -73.95]}
    (ref / "points.json").write_text(json.dumps(points))
    end, after, answers = time.monotonic() + 10, before, 0
    while after == before and time.monotonic() < end:
        r = post(s, rec)
        assert r.status_code == 200  # requests keep being answered while the data is swapped
        after, answers = r.json()["prediction"]["value"], answers + 1
    assert after != before and answers >= 1
    assert any(l.get("event") == "enrichment_swapped" for l in s.log_lines())


def test_metrics_merged_over_workers(start, penguins_bundle, work):
    "With PROMETHEUS_MULTIPROC_DIR, /metrics counts the requests of every worker, whichever worker answers the scrape."
    mp = work / "prom-multiproc"
    mp.mkdir()
    port = free_port()
    s = Server([sys.executable, "-m", "mlprod.cli", "serve", penguins_bundle, "--port", str(port), "--workers", "2"],
               {"MLPROD_AUTH": "off", "PROMETHEUS_MULTIPROC_DIR": str(mp)}, port, work / f"server-{port}.log")
    try:
        s.wait("/v1/ready")
        rec = records(penguins_bundle, 1)[0]
        for _ in range(20): assert post(s, rec).status_code == 200
        for _ in range(3):  # any worker may answer: each must report the total
            text = requests.get(s.url + "/metrics").text
            line = [l for l in text.splitlines() if l.startswith("mlprod_requests_total{") and 'code="ok"' in l
                    and "/v1/predict" in l]
            assert line and float(line[0].rsplit(" ", 1)[1]) == 20, text[:2000]
    finally:
        s.stop()


def test_soft_range_warnings_and_the_batch_route(start, trips_bundle):
    "A value beyond the range the model saw is predicted with a warning and counted per feature; /v1/batch answers each."
    s = start(trips_bundle, {"MLPROD_AUTH": "off"}, wait="/v1/ready")
    rec = records(trips_bundle, 1)[0]
    body = check_envelope(post(s, {**rec, "passengers": 40}), "ok")
    assert [(w["field"], w["code"]) for w in body["warnings"]] == [("passengers", "outside_expected_range")]
    assert body["prediction"] == post(s, {**rec, "passengers": 6}).json()["prediction"]  # clipped to what it saw
    assert "warnings" not in post(s, rec).json()
    r = requests.post(s.url + "/v1/batch", json={"instances": [rec, {**rec, "vehicle": "spaceship"}, {**rec, "passengers": 40}]},
                      timeout=10)
    batch = check_envelope(r, "ok")
    assert [(x["index"], x["code"]) for x in batch["results"]] == [(0, "ok"), (1, "invalid_input"), (2, "ok")]
    assert batch["counts"] == {"ok": 2, "invalid_input": 1} and batch["errors"][0]["index"] == 1
    assert batch["results"][1]["errors"][0]["code"] == "unknown_category" and batch["results"][2]["warnings"]
    metrics = requests.get(s.url + "/metrics", timeout=5).text
    assert 'mlprod_input_warnings_total{code="outside_expected_range",feature="passengers"} 2.0' in metrics


# ---------------------------------------------------------------- issue 15: weaknesses a read of the code found

def test_invented_methods_share_one_metrics_label(trips):
    "Anyone can send `FOO /v1/predict`; each invented method must not become a Prometheus series of its own."
    verbs = [f"X{i}ZZY" for i in range(12)]
    for verb in verbs:
        r = requests.request(verb, trips.url + "/v1/predict", timeout=5)
        assert r.status_code in (400, 405) and r.json()["code"] in ("method_not_allowed", "malformed_json")
    m = requests.get(trips.url + "/metrics", timeout=5).text
    assert not any(v in m for v in verbs) and 'method="other"' in m


def test_a_duplicate_key_is_refused_naming_it(trips):
    body = '{"instances": [{"pickup_lat": 40.7, "pickup_lat": 41.9}]}'
    r = requests.post(trips.url + "/v1/predict", data=body, timeout=5,
                      headers={**auth(token()), "Content-Type": "application/json"})
    assert "'pickup_lat' appears twice" in check_envelope(r, "malformed_json")["message"]


def test_the_openapi_error_table_lists_every_code_of_a_status(trips):
    answers = requests.get(trips.url + "/openapi.json", timeout=5).json()["paths"]["/v1/predict"]["post"]["responses"]
    assert answers["401"]["x-codes"] == ["missing_token", "invalid_token", "token_expired"]
    assert answers["503"]["x-codes"] == ["model_not_ready", "model_unavailable"]


def test_clock_leeway_is_a_setting(start, penguins_bundle):
    "A token issued by a machine whose clock runs 20 s ahead: refused with no leeway, accepted with 30 s."
    ahead = int(time.time()) + 20
    tok = token(iat=ahead, nbf=ahead, exp=ahead + 600)
    rec = records(penguins_bundle, 1)[0]
    strict = start(penguins_bundle, {**HS_ENV, "MLPROD_JWT_LEEWAY": "0"}, wait="/v1/ready")
    lenient = start(penguins_bundle, {**HS_ENV, "MLPROD_JWT_LEEWAY": "30"}, wait="/v1/ready")
    check_envelope(post(strict, rec, auth(tok)), "invalid_token")
    check_envelope(post(lenient, rec, auth(tok)), "ok")


def test_a_private_key_as_the_public_key_refuses_to_start(rsa_keys, penguins_bundle):
    priv, _ = rsa_keys
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "serve", penguins_bundle, "--port", str(free_port())],
                       env={**os.environ, "MLPROD_JWT_PUBLIC_KEY": priv}, capture_output=True, text=True, timeout=60)
    last = r.stderr.splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: bad_key:") and "holds a private key" in last, r.stderr
    assert "BEGIN" not in r.stderr  # the key itself is never echoed
