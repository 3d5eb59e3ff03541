"""Security of the API on a real gunicorn on 127.0.0.1: JWT attacks made with PyJWT (and by hand where PyJWT refuses),
key rotation with two valid keys, hostile bodies sent with raw sockets and http.client, security headers, no debug
mode, nothing secret in the logs, and a dependency audit against a vulnerability list shipped in a package.

The JWT cases test_api.py already covers (alg none, expired, wrong audience/issuer, missing exp, wrong scope, HS256
signed with the RSA public key) are not repeated here; this file adds the rest of the attacks of issue 15."""
import base64
import hashlib
import hmac
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import PROD_ENV, PROD_SECRET
from mlprod.errors import ENVELOPE_CODES
from mlprod.testing import example_records
from servers import Server, free_port

pytestmark = pytest.mark.timeout(300)

AUD, ISS = PROD_ENV["MLPROD_JWT_AUDIENCE"], PROD_ENV["MLPROD_JWT_ISSUER"]


def claims(**kw):
    now = int(time.time())
    c = {"sub": "attacker", "iat": now, "exp": now + 600, "scope": "predict", "aud": AUD, "iss": ISS} | kw
    return {k: v for k, v in c.items() if v is not None}


def hs(secret=PROD_SECRET, **kw): return jwt.encode(claims(**kw), secret, algorithm="HS256")


def b64(b: bytes) -> str: return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unsigned(alg: str, **kw) -> str:
    "A token with header `alg` (e.g. none) and no signature, made by hand: PyJWT will not make it."
    return f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims(**kw)).encode())}."


def check_envelope(r, code):
    "The answer is the envelope with `code` and its documented status."
    assert r.headers["Content-Type"].startswith("application/json"), r.text[:300]
    body = r.json()
    assert (r.status_code, body["code"]) == (ENVELOPE_CODES[code].http_status, code), body
    assert {"success", "code", "message", "request_id"} <= set(body) and body["success"] is (code == "ok")
    assert "Traceback" not in r.text
    return body


def rsa_pair():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pub.decode()


# ---------------------------------------------------------------- JWT attacks (HS256 server)

@pytest.fixture(scope="module")
def record(penguins_prod_bundle): return example_records(penguins_prod_bundle, 1)[0]


def _attacks():
    now = int(time.time())
    return {
        "valid": ({"Authorization": f"Bearer {hs()}"}, "ok"),
        "alg None (capitalised)": ({"Authorization": f"Bearer {unsigned('None')}"}, "invalid_token"),
        "alg HS512 with the right secret": ({"Authorization": "Bearer " + jwt.encode(claims(), PROD_SECRET,
                                                                                        algorithm="HS512")},
                                            "invalid_token"),
        "not yet valid (nbf in 10 min)": ({"Authorization": f"Bearer {hs(nbf=now + 600)}"}, "invalid_token"),
        "issued in the future (iat in 10 min)": ({"Authorization": f"Bearer {hs(iat=now + 600)}"}, "invalid_token"),
        "expired long ago": ({"Authorization": f"Bearer {hs(exp=now - 86400)}"}, "token_expired"),
        "exp not a number": ({"Authorization": f"Bearer {hs(exp='tomorrow')}"}, "invalid_token"),
        "audience list without ours": ({"Authorization": f"Bearer {hs(aud=['a', 'b'])}"}, "invalid_token"),
        "token in X-Api-Key": ({"X-Api-Key": hs()}, "missing_token"),
        "token as Authorization: Token": ({"Authorization": f"Token {hs()}"}, "missing_token"),
        "token in a cookie": ({"Cookie": f"token={hs()}"}, "missing_token"),
        "bearer without a token": ({"Authorization": "Bearer "}, "missing_token"),
        "huge token (4 KB of claims)": ({"Authorization": f"Bearer {hs(pad='x' * 4000)[:-4]}AAAA"}, "invalid_token"),
        "huge garbage token (7 KB)": ({"Authorization": "Bearer " + "A" * 7000}, "invalid_token"),
        "header over gunicorn's 8 KB field limit": ({"Authorization": "Bearer " + "A" * 20000}, "malformed_json"),
    }


@pytest.mark.parametrize("case", list(_attacks()))
def test_jwt_attack_is_refused_with_its_code(prod_api, record, case):
    headers, code = _attacks()[case]
    check_envelope(requests.post(prod_api.url + "/v1/predict", json=record, headers=headers, timeout=10), code)


def test_token_in_the_query_string_is_not_read(prod_api, record):
    r = requests.post(prod_api.url + "/v1/predict", params={"access_token": hs(), "token": hs()}, json=record, timeout=10)
    check_envelope(r, "missing_token")


# ---------------------------------------------------------------- key rotation (RS256/ES256, two keys at once)

@pytest.fixture(scope="module")
def rotation(tmp_path_factory, penguins_prod_bundle):
    "A server whose MLPROD_JWT_PUBLIC_KEY holds two RSA public keys: the new one and the one being retired."
    new, old, retired = rsa_pair(), rsa_pair(), rsa_pair()
    port = free_port()
    s = Server([sys.executable, "-m", "mlprod.cli", "serve", penguins_prod_bundle, "--port", str(port)],
               {"MLPROD_JWT_PUBLIC_KEY": new[1] + old[1]}, port, tmp_path_factory.mktemp("rotation") / "server.log")
    yield s.wait("/v1/ready"), new, old, retired
    s.stop()


def test_two_valid_keys_at_once_and_a_rotated_out_key(rotation, record):
    server, new, old, retired = rotation
    def post(tok): return requests.post(server.url + "/v1/predict", json=record, timeout=10,
                                        headers={"Authorization": f"Bearer {tok}"})
    c = claims(aud=None, iss=None)
    check_envelope(post(jwt.encode(c, new[0], algorithm="RS256")), "ok")
    check_envelope(post(jwt.encode(c, old[0], algorithm="RS256")), "ok")  # during the rotation both verify
    check_envelope(post(jwt.encode(c, retired[0], algorithm="RS256")), "invalid_token")  # rotated out
    check_envelope(post(jwt.encode({**c, "exp": int(time.time()) - 5}, old[0], algorithm="RS256")), "token_expired")
    # HS/RS confusion against either key: HS256 keyed with the PEM text of the second public key
    head, body = b64(b'{"alg":"HS256","typ":"JWT"}'), b64(json.dumps(c).encode())
    sig = b64(hmac.new(old[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    check_envelope(post(f"{head}.{body}.{sig}"), "invalid_token")
    check_envelope(post(unsigned("none", aud=None, iss=None)), "invalid_token")


def test_keys_of_two_kinds_refuse_to_start(penguins_prod_bundle):
    "An RSA and an EC key together would need two algorithms: refused before gunicorn starts."
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROD_")}
    env["MLPROD_JWT_PUBLIC_KEY"] = rsa_pair()[1] + ec_pub
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "serve", penguins_prod_bundle, "--port", str(free_port())],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "bad_key" in r.stderr, r.stderr[-500:]


# ---------------------------------------------------------------- hostile bodies

def exchange(port: int, parts: list, timeout=10) -> bytes:
    "Send `parts` on a raw socket, then read until the server closes (it may answer before reading them all)."
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        for part in parts: s.sendall(part)
    except (BrokenPipeError, ConnectionResetError): pass  # answered and closed before reading it all
    data = b""
    while True:
        try: b = s.recv(65536)
        except ConnectionResetError: break
        if not b: break
        data += b
    s.close()
    return data


def refusal(data: bytes) -> tuple:
    "The HTTP status and envelope of a raw answer, checked: JSON, a refusal, a code of the table at its status."
    r = http.client.HTTPResponse(FakeSocket(data)); r.begin()
    payload = r.read()
    assert r.getheader("Content-Type", "").startswith("application/json"), data[:300]
    env = json.loads(payload)
    assert {"success", "code", "message", "request_id"} <= set(env) and env["success"] is False, env
    assert env["code"] in ENVELOPE_CODES and ENVELOPE_CODES[env["code"]].http_status == r.status, (r.status, env)
    assert b"Traceback" not in data
    return r.status, env


def raw(server, body: bytes, content_type="application/json") -> tuple:
    "POST `body` as it is, with a valid token: (status, envelope)."
    h = {"Host": "127.0.0.1", "Content-Type": content_type, "Authorization": f"Bearer {hs()}",
         "Content-Length": str(len(body)), "Connection": "close"}
    head = "POST /v1/predict HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return refusal(exchange(server.port, [head.encode() + body]))


class FakeSocket:
    "Bytes already received, read by http.client's response parser."
    def __init__(self, data: bytes): self.data = data
    def makefile(self, *a, **kw): return io.BytesIO(self.data)


def _hostile(record):
    rec = json.dumps(record)
    field = next(k for k, v in record.items() if isinstance(v, float))
    with_value = lambda literal: rec.replace(f'"{field}": {json.dumps(record[field])}', f'"{field}": {literal}').encode()
    return {
        "deep nesting (100 000 arrays)": (b"[" * 100_000 + b"]" * 100_000, "application/json", {"malformed_json"}),
        "deep nesting (objects)": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json", {"malformed_json"}),
        "huge number (1e999)": (with_value("1e999"), "application/json", {"invalid_input"}),
        "huge integer (5000 digits)": (with_value("9" * 5000), "application/json", {"malformed_json", "invalid_input"}),
        "NaN literal": (with_value("NaN"), "application/json", {"malformed_json", "invalid_input"}),
        "Infinity literal": (with_value("-Infinity"), "application/json", {"malformed_json", "invalid_input"}),
        "duplicate keys": (rec[:-1].encode() + f', "{field}": 1.0}}'.encode(), "application/json", {"malformed_json"}),
        "invalid UTF-8": (rec.encode()[:-1] + b', "note": "\xff\xfe"}', "application/json", {"malformed_json"}),
        "UTF-8 BOM then garbage": (b"\xef\xbb\xbf\xff", "application/json", {"malformed_json"}),
        "wrong content type": (rec.encode(), "text/plain", {"unsupported_media_type"}),
        "form content type": (b"a=1&b=2", "application/x-www-form-urlencoded", {"unsupported_media_type"}),
        "body over the limit (2 MiB)": (b'{"a": "' + b"x" * (2 << 20) + b'"}', "application/json",
                                        {"payload_too_large"}),
        "empty body": (b"", "application/json", {"malformed_json"}),
        "a JSON string, not an object": (b'"hello"', "application/json", {"invalid_input", "malformed_json"}),
    }


@pytest.mark.parametrize("case", ["deep nesting (100 000 arrays)", "deep nesting (objects)", "huge number (1e999)",
                                  "huge integer (5000 digits)", "NaN literal", "Infinity literal", "duplicate keys",
                                  "invalid UTF-8", "UTF-8 BOM then garbage", "wrong content type", "form content type",
                                  "body over the limit (2 MiB)", "empty body", "a JSON string, not an object"])
def test_hostile_body_answered_in_the_envelope(prod_api, record, case):
    body, ctype, codes = _hostile(record)[case]
    pids = sorted(prod_api.worker_pids())
    status, env = raw(prod_api, body, ctype)
    assert env["code"] in codes, env
    if case == "duplicate keys":  # the answer names the key
        assert next(k for k, v in record.items() if isinstance(v, float)) in env["message"], env
    assert sorted(prod_api.worker_pids()) == pids  # no worker died or was replaced


def test_hostile_bodies_do_not_block_others(prod_api, record):
    "Four clients send every hostile body in turn for 3 s; meanwhile a fifth is answered at normal speed."
    bodies, stop, refused = list(_hostile(record).values()), threading.Event(), []
    def attacker(k):
        while not stop.is_set():
            body, ctype, codes = bodies[k % len(bodies)]
            refused.append(raw(prod_api, body, ctype)[1]["code"] in codes); k += 1
    attackers = [threading.Thread(target=attacker, args=(k * 3,)) for k in range(4)]
    for t in attackers: t.start()
    times, s, tok, end = [], requests.Session(), hs(), time.monotonic() + 3
    try:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = s.post(prod_api.url + "/v1/predict", json=record, headers={"Authorization": f"Bearer {tok}"}, timeout=10)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    finally:
        stop.set()
        for t in attackers: t.join()
    print(f"\nwhile 4 clients sent {len(refused)} hostile bodies: {len(times)} good requests, slowest "
          f"{max(times) * 1000:.1f} ms")
    assert all(refused) and len(refused) > 20 and len(times) > 20 and max(times) < 1.0


def test_chunked_body_over_the_limit(prod_api):
    "No Content-Length: the server counts while reading and stops at the limit."
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            + hs().encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    data = exchange(prod_api.port, [head] + [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 40)  # 2.5 MiB, over 1 MiB
    status, env = refusal(data)
    assert (status, env["code"]) == (413, "payload_too_large"), env


def slow_client(port, body: bytes, seconds: float, out: list):
    "Slowloris: send a whole request one byte at a time over `seconds`, then read the answer."
    req = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
           + hs().encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    pause = seconds / len(req)
    try:
        for i in range(len(req)):
            s.sendall(req[i:i + 1]); time.sleep(pause)
        out.append(s.recv(65536))
    except OSError as e: out.append(repr(e).encode())
    finally: s.close()


def test_slow_clients_do_not_block_others(prod_api, record):
    "Two slowloris clients trickle their requests over 4 s; meanwhile other clients are answered at normal speed."
    out: list = []
    slow = [threading.Thread(target=slow_client, args=(prod_api.port, json.dumps(record).encode(), 4.0, out))
            for _ in range(2)]
    for t in slow: t.start()
    time.sleep(0.5)
    times, s, tok = [], requests.Session(), hs()
    while any(t.is_alive() for t in slow) and len(times) < 2000:
        t0 = time.perf_counter()
        r = s.post(prod_api.url + "/v1/predict", json=record, headers={"Authorization": f"Bearer {tok}"}, timeout=10)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    for t in slow: t.join()
    times.sort()
    print(f"while 2 slow clients trickled: {len(times)} requests, max {times[-1] * 1000:.1f} ms")
    assert len(times) > 20 and times[-1] < 1.0
    for answer in out:  # the slow clients get their answer too
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:200]


# ---------------------------------------------------------------- headers, debug mode, logs

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


@pytest.mark.parametrize("method,path", [("GET", "/v1/health"), ("GET", "/v1/ready"), ("POST", "/v1/predict"),
                                         ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/nope"),
                                         ("GET", "/metrics")])
def test_security_headers(prod_api, method, path):
    r = requests.request(method, prod_api.url + path, timeout=10)
    for k, v in SECURITY_HEADERS.items(): assert r.headers.get(k) == v, (path, k, r.headers)
    assert "Content-Security-Policy" in r.headers
    assert "gunicorn/" not in r.headers.get("Server", "") and "Werkzeug" not in r.headers.get("Server", "")


@pytest.fixture(scope="module")
def debug_env_server(tmp_path_factory):
    "A server started with Flask's debug variables set, on a bundle whose model fails on its first prediction."
    from mlprod.testing import example_bundle
    bundle = example_bundle("penguins", n=None, max_iter=5, broken=True)
    port = free_port()
    s = Server([sys.executable, "-m", "mlprod.cli", "serve", bundle, "--port", str(port)],
               {"MLPROD_AUTH": "off", "FLASK_DEBUG": "1", "FLASK_ENV": "development", "WERKZEUG_DEBUG_PIN": "off"},
               port, tmp_path_factory.mktemp("debug") / "server.log")
    yield s.wait("/v1/ready"), bundle
    s.stop()


def test_debug_mode_is_unreachable(debug_env_server):
    server, bundle = debug_env_server
    r = requests.post(server.url + "/v1/predict", json=example_records(bundle, 1)[0], timeout=10)
    body = check_envelope(r, "internal_error")
    assert "Error" not in body["message"] and "File " not in r.text
    for path in ("/console", "/?__debugger__=yes&cmd=resource&f=debugger.js", "/__debugger__"):
        check_envelope(requests.get(server.url + path, timeout=10), "not_found")


def test_no_secrets_tokens_or_payloads_in_logs(prod_api, record):
    "Successful and refused requests with a token and a marked payload: neither the token, the secret nor the payload "
    "reaches the server's log."
    tok = hs(sub="log-check")
    marker = "PAYLOAD-MARKER-7f3a"
    h = {"Authorization": f"Bearer {tok}", "X-Request-ID": "security-log-check"}
    requests.post(prod_api.url + "/v1/predict", json=record, headers=h, timeout=10)
    requests.post(prod_api.url + "/v1/predict", json={**record, "species_note": marker}, headers=h, timeout=10)
    requests.post(prod_api.url + "/v1/predict", json={**record, next(iter(record)): marker}, headers=h, timeout=10)
    requests.post(prod_api.url + "/v1/predict", data=f'{{"a": "{marker}",,}}', timeout=10,
                  headers={**h, "Content-Type": "application/json"})
    requests.post(prod_api.url + "/v1/predict", json=record, timeout=10,
                  headers={"Authorization": f"Bearer {tok[:-3]}xyz", "X-Request-ID": "security-log-check"})
    time.sleep(0.3)
    logs = prod_api.logs()
    lines = [l for l in prod_api.log_lines() if l.get("request_id") == "security-log-check"]
    assert len(lines) == 5, lines
    for secret in (tok, tok.split(".")[2], tok[:-3], PROD_SECRET, marker): assert secret not in logs
    assert all("payload" not in l and "authorization" not in json.dumps(l).lower() for l in lines)


# ---------------------------------------------------------------- dependency audit

def test_serving_dependencies_against_a_shipped_vulnerability_list():
    """Every distribution the serving image installs (mlprod's runtime requirements and theirs) against the
    vulnerability list of the `safety-db` package: offline, so it is as old as that package (the date is printed)."""
    import importlib.metadata as md
    import importlib.util
    from pathlib import Path
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    # The list's own module cannot be imported (it opens a relative path at import): read its file.
    folder = importlib.util.find_spec("safety_db").submodule_search_locations[0]
    db = json.loads((Path(folder) / "insecure.json").read_text())
    meta = db.pop("$meta", {})
    insecure = {canonicalize_name(k): v for k, v in db.items()}
    seen, todo = {}, [("mlprod", "")]
    while todo:  # the requirements of mlprod (no extra) and theirs, with the extras they ask for
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if (name, extra) in seen: continue
        try: dist = md.distribution(name)
        except md.PackageNotFoundError: continue
        seen[name, extra] = dist.version
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": extra}):
                todo += [(r.name, "")] + [(r.name, e) for e in r.extras]
    seen = {n: v for (n, _), v in seen.items()}
    found = {n: v for n, v in seen.items() for spec in insecure.get(n, []) if v in SpecifierSet(spec)}
    print(f"audited {len(seen)} serving distributions against safety-db {md.version('safety-db')} "
          f"({len(insecure)} packages listed, {meta})")
    assert len(seen) > 15 and {"flask", "gunicorn", "pyjwt", "werkzeug", "cryptography"} <= set(seen)
    assert not found, f"known-vulnerable versions installed: {found}"
