"""The serving topologies on loopback, with real gunicorn processes started here and stopped by PID: the API in front
of `mlprod model-server` (plain HTTP and through the Vertex AI stand-in), the endpoint killed mid-load and coming
back, and hot reload of an environment's live bundle under load (two switches, and SIGHUP)."""
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from mlprod.bundle import load_bundle
from mlprod.testing import example_bundle, example_records, publish_live as publish
from servers import Server, free_port, stop_all

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def work(tmp_path_factory): return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def trips(work): return example_bundle("city_trips", n=3000, max_iter=40, path=work / "trips.bundle")


@pytest.fixture(scope="module")
def penguins(work): return example_bundle("penguins", n=None, max_iter=20, path=work / "penguins.bundle")


@pytest.fixture(scope="module")
def start(work):
    "Start `mlprod <command> ...` on a free port; every server is stopped at the end of the module."
    servers = []
    def _start(command, bundle, env=None, port=None, wait="/v1/ready", *extra):
        port = port or free_port()
        args = [sys.executable, "-m", "mlprod.cli", command, *([str(bundle)] if bundle else []), "--port", str(port), *extra]
        s = Server(args, env or {}, port, work / f"{command}-{port}-{len(servers)}.log")
        servers.append(s)
        return s.wait(wait) if wait else s
    yield _start
    stop_all(servers)


def post(server, body, path="/v1/predict", timeout=10):
    return requests.post(server.url + path, json=body, timeout=timeout)


def in_process(bundle_path, recs):
    b = load_bundle(bundle_path)
    return [b.predict_record(b.spec.validate_record(r).record) for r in recs]


# ---------------------------------------------------------------- remote mode

REMOTE = {"MLPROD_AUTH": "off", "MLPROD_BREAKER_FAILURES": "3", "MLPROD_BREAKER_RESET": "1",
          "MLPROD_ENDPOINT_TIMEOUT": "2"}


@pytest.mark.parametrize("which", ["trips", "penguins"])
def test_remote_mode_equals_in_process(start, which, request):
    bundle = request.getfixturevalue(which)
    model = start("model-server", bundle, wait="/health")
    api = start("serve", bundle, REMOTE, None, "/v1/ready", "--model-endpoint", model.url)
    recs = example_records(bundle, 12)
    expected = in_process(bundle, recs)
    got = [post(api, r).json() for r in recs]
    assert [g["prediction"] for g in got] == expected  # JSON carries the floats exactly: equal, not just close
    assert {g["model"]["version"] for g in got} == {load_bundle(bundle).version}
    batch = post(api, {"instances": recs + [{"nope": 1}]}, "/v1/batch").json()
    assert [r["code"] for r in batch["results"]] == ["ok"] * 12 + ["invalid_input"]
    assert [r["prediction"] for r in batch["results"][:12]] == expected
    doc = requests.get(api.url + "/v1/model", timeout=5).json()["model"]
    assert (doc["topology"], doc["endpoint"]["target"], doc["endpoint"]["breaker"]) == ("remote", model.url, "closed")


def test_vertex_endpoint_through_the_sdk(start, vertex, trips):
    "The API reaches a Vertex AI endpoint by resource name through google-cloud-aiplatform's REST client."
    model = start("model-server", trips, wait="/health")
    resource = vertex.create_endpoint("trips")
    vertex.forward(resource, model.url + "/predict")
    api = start("serve", trips, {**REMOTE, "MLPROD_VERTEX_API_ENDPOINT": vertex.url}, None, "/v1/ready",
                "--model-endpoint", resource)
    recs = example_records(trips, 5)
    got = [post(api, r, timeout=30).json() for r in recs]
    assert [g.get("prediction") for g in got] == in_process(trips, recs), got[0]
    method, path, body = vertex.calls[-1]  # what the SDK sent: the transformed row, not the client's record
    n_features = len(load_bundle(trips).fitted.transformer.get_feature_names_out())
    assert (method, path, [len(row) for row in body["instances"]]) == ("POST", f"{resource}:predict", [n_features])


def load(server, body, seconds, threads=2, path="/v1/predict", stop=None):
    "POST `body` from `threads` threads for at most `seconds`: a list of (thread, t, status, json, ms) per answer."
    out, t0 = [], time.monotonic()
    def run(k):
        s = requests.Session()
        while time.monotonic() - t0 < seconds and not (stop and stop.is_set()):
            a = time.perf_counter()
            try: r = s.post(server.url + path, json=body, timeout=10); status, js = r.status_code, r.json()
            except (requests.RequestException, ValueError) as e: status, js = -1, {"error": repr(e)}
            out.append((k, time.monotonic() - t0, status, js, (time.perf_counter() - a) * 1000))
    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts: t.start()
    return ts, out


def test_endpoint_killed_mid_load_then_recovers(start, trips):
    model_port = free_port()
    model = start("model-server", trips, None, model_port, "/health")
    api = start("serve", trips, REMOTE, None, "/v1/ready", "--model-endpoint", model.url)
    rec = example_records(trips, 1)[0]
    ts, out = load(api, rec, seconds=3)
    time.sleep(1.0)
    model.stop(signal.SIGKILL)  # the endpoint dies mid-load: no goodbye
    for t in ts: t.join()
    assert {s for _, _, s, _, _ in out} == {200, 503}
    failed = [js for _, _, s, js, _ in out if s == 503]
    assert all(js["code"] == "model_unavailable" and js["success"] is False and js["prediction"] is None for js in failed)
    opened = [ms for _, _, s, js, ms in out if s == 503 and "circuit breaker is open" in js["message"]]
    served = [l["ms"] for l in api.log_lines() if l.get("code") == "model_unavailable"]  # the server's own timing
    p99, p99_client = float(np.percentile(served, 99)), float(np.percentile(opened, 99))
    print(f"503s: {len(failed)}, {len(opened)} with the breaker open; p99 {p99:.2f} ms in the server, "
          f"{p99_client:.2f} ms at the client (load average {os.getloadavg()[0]:.1f}), of {len(out)} answers")
    assert len(opened) >= 10 and p99 < 50
    start("model-server", trips, None, model_port, "/health")  # the endpoint comes back on the same port
    stop = threading.Event()
    ts, out = load(api, rec, seconds=10, stop=stop)
    end = time.monotonic() + 10
    while not [s for _, _, s, _, _ in out[-5:] if s == 200] and time.monotonic() < end: time.sleep(0.05)
    stop.set()
    for t in ts: t.join()
    assert {s for _, _, s, _, _ in out} <= {200, 503} and out[-1][2] == 200, "the API did not recover by itself"
    m = requests.get(api.url + "/metrics", timeout=5).text
    assert 'mlprod_remote_calls_total{result="open"}' in m and 'code="model_unavailable"' in m


# ---------------------------------------------------------------- hot reload

@pytest.fixture(scope="module")
def versions(work):
    "Three versions of one model (different rounds): three different predictions for the same record."
    return [example_bundle("penguins", n=None, max_iter=k, path=work / f"penguins-{k}.bundle") for k in (10, 20, 30)]


@pytest.fixture()
def store(work, request):
    root = work / f"store-{request.node.name}"
    root.mkdir()
    (root / "mlprod.yaml").write_text(f"environments:\n  dev:\n    store: {root / 'dev'}\n")
    return root


def test_hot_reload_under_load_two_switches(start, store, versions):
    "`mlprod deploy` (gate and all) moves dev's pointer twice while two clients predict: nothing fails, nothing mixes."
    from mlprod.deploy import deploy
    from mlprod.registry import load_config
    dev = load_config(store / "mlprod.yaml").env("dev")
    v = [deploy(versions[0], dev, progress="off").version]
    env = {"MLPROD_AUTH": "off", "MLPROD_CONFIG": str(store / "mlprod.yaml"), "MLPROD_RELOAD_INTERVAL": "0.2"}
    api = start("serve", None, env, None, "/v1/ready", "--env", "dev")
    rec = example_records(versions[0], 1)[0]
    expected = {load_bundle(p).version: in_process(p, [rec])[0] for p in versions}
    assert len({json.dumps(p) for p in expected.values()}) == 3  # the versions answer differently
    stop = threading.Event()
    ts, out = load(api, rec, seconds=60, stop=stop)
    def served(version, timeout=20):  # wait until some answer came from `version`
        end = time.monotonic() + timeout
        while not any((js.get("model") or {}).get("version") == version for *_, js, _ in out[-20:]):
            assert time.monotonic() < end, f"{version} never served"
            time.sleep(0.05)
    time.sleep(0.5)
    for bundle in versions[1:]:
        v.append(deploy(bundle, dev, progress="off").version)
        served(v[-1])
        time.sleep(0.3)
    stop.set()
    for t in ts: t.join()
    statuses = [s for _, _, s, _, _ in out]
    assert statuses.count(200) == len(out) > 50, {s for s in statuses}  # zero failed requests
    seen = [js["model"]["version"] for _, _, _, js, _ in out]
    assert set(seen) == set(v), (set(seen), v)
    for _, _, _, js, _ in out:  # each answer names the version that computed it
        assert js["prediction"] == expected[js["model"]["version"]]
    for k in (0, 1):  # per client, versions only move forward
        order = [v.index(js["model"]["version"]) for kk, _, _, js, _ in out if kk == k]
        assert order == sorted(order)
    doc = requests.get(api.url + "/v1/model", timeout=5).json()["model"]
    assert (doc["version"], doc["source"], doc["env"]) == (v[2], "env:dev", "dev") and doc["loaded_at"]
    ledger = [json.loads(l) for l in (store / "dev" / "ledger.jsonl").read_text().splitlines()]
    assert (doc["live"]["move"], doc["live"]["action"]) == (ledger[-1]["id"], "deploy")  # the pointer's own move
    assert [l["model"]["version"] for l in api.log_lines() if l.get("event") == "model_swapped"] == v[1:]


def test_sighup_and_a_refused_bundle(start, store, versions):
    v1 = publish(store / "dev", versions[0])
    env = {"MLPROD_AUTH": "off", "MLPROD_CONFIG": str(store / "mlprod.yaml"), "MLPROD_RELOAD_INTERVAL": "3600"}
    api = start("serve", None, env, None, "/v1/ready", "--env", "dev", "--workers", "2")
    rec = example_records(versions[0], 1)[0]
    def versions_served(n=12): return {post(api, rec).json()["model"]["version"] for _ in range(n)}
    end = time.monotonic() + 10  # /v1/ready answered from one worker; the other takes a moment more under load
    while [post(api, rec).status_code for _ in range(12)] != [200] * 12 and time.monotonic() < end: time.sleep(0.05)
    assert versions_served() == {v1}
    v2 = publish(store / "dev", versions[1])
    time.sleep(0.3)
    assert versions_served() == {v1}  # not checked yet: the interval is an hour
    api.send(signal.SIGHUP)  # to the master: passed on to both workers, which keep their connections
    end = time.monotonic() + 10
    while versions_served() != {v2} and time.monotonic() < end: time.sleep(0.05)
    assert versions_served(20) == {v2}
    # a tampered bundle behind the pointer: refused with a log line, v2 keeps serving
    bad = store / "dev" / "bundles" / "20990101T000000Z-0badc0de"
    shutil.copytree(store / "dev" / "bundles" / v2, bad)
    (bad / "metrics.json").write_text('{"tampered": true}')
    (store / "dev" / "LIVE").write_text(json.dumps({"version": bad.name}))
    api.send(signal.SIGHUP)
    end = time.monotonic() + 10
    while not [l for l in api.log_lines() if l.get("event") == "model_refused"] and time.monotonic() < end:
        time.sleep(0.05)
    refused = [l for l in api.log_lines() if l.get("event") == "model_refused"]
    assert refused and refused[0]["code"] == "bundle_tampered" and f"still serving {v2}" in refused[0]["message"]
    assert versions_served(20) == {v2}
    assert len(api.worker_pids()) == 2  # SIGHUP did not restart the workers


# ---------------------------------------------------------------- one rule for a batch (issue 17)

def test_the_batch_route_and_mlprod_predict_follow_one_rule(start, work):
    "Each record answered or refused with its codes, the same records and codes as `mlprod predict`, same numbers."
    import pandas as pd
    from _bundles import messy_rows, trips_bundle
    from mlprod.bundle import frame_records
    from mlprod.cli import capture
    bundle = trips_bundle(work / "messy-trips.bundle", n=1000)
    rows = messy_rows(120)
    rows.to_parquet(work / "messy.parquet")
    status, _, err = capture("predict", bundle, work / "messy.parquet", "-o", work / "messy-out.parquet", "--allow-partial")
    assert status == 0, err
    cli, cli_errors = pd.read_parquet(work / "messy-out.parquet"), pd.read_parquet(work / "messy-out.errors.parquet")
    api = start("serve", bundle, {"MLPROD_AUTH": "off"})
    body = post(api, {"instances": frame_records(rows)}, "/v1/batch").json()
    assert body["success"] and body["code"] == "ok" and body["model"]["version"] == load_bundle(bundle).version
    refused = cli["prediction_error_code"].notna()
    assert 0 < refused.sum() < len(rows)  # both kinds are there
    assert [r["code"] == "ok" for r in body["results"]] == (~refused).tolist()
    assert body["counts"] == {"ok": int((~refused).sum()), "invalid_input": int(refused.sum())}
    got_errors = sorted((r["index"], e["field"], e["code"]) for r in body["results"] for e in r.get("errors", []))
    assert got_errors == sorted(cli_errors[["index", "field", "code"]].itertuples(index=False, name=None))
    for r, (_, row) in zip(body["results"], cli.iterrows()):
        if r["code"] != "ok": continue
        p = r["prediction"]
        assert (p["value"], p["lower"], p["upper"]) == pytest.approx(
            (row["prediction"], row["prediction_lower"], row["prediction_upper"]), rel=1e-9)


def test_integer_class_labels_stay_integers_in_the_envelope(start, work):
    "A 0/1 target answers `label: 1`, not `\"1\"`: in-process and remote, one record, `instances` and /v1/batch."
    from _bundles import binary_bundle
    bundle = binary_bundle(work / "adelie.bundle")
    b = load_bundle(bundle)
    assert b.spec.target.classes == [0, 1]
    from mlprod.bundle import frame_records
    from mlprod.data import load_example
    recs = [{k: v for k, v in r.items() if k in b.spec.features and v is not None}
            for r in frame_records(load_example("penguins").frame.head(6))]
    model = start("model-server", bundle, wait="/health")
    servers = [start("serve", bundle, {"MLPROD_AUTH": "off"}),
               start("serve", bundle, REMOTE, None, "/v1/ready", "--model-endpoint", model.url)]
    for api in servers:
        labels = [post(api, r).json()["prediction"]["label"] for r in recs]
        labels += [p["label"] for p in post(api, {"instances": recs}).json()["predictions"]]
        labels += [x["prediction"]["label"] for x in post(api, {"instances": recs}, "/v1/batch").json()["results"]]
        assert {type(x) for x in labels} == {int} and set(labels) <= {0, 1} and len(labels) == 18
        assert labels[:6] == [p["label"] for p in in_process(bundle, recs)]


def test_following_a_store_in_a_bucket(start, gcs, work, versions):
    "An environment whose store is gs://: the API loads the live bundle from the bucket and follows its pointer."
    prefix = f"gs://{gcs.bucket()}/dev"
    config = work / "gcs-mlprod.yaml"
    config.write_text(f"environments:\n  dev:\n    store: {prefix}\n")
    v1 = publish(prefix, versions[0])
    env = {"MLPROD_AUTH": "off", "MLPROD_CONFIG": str(config), "MLPROD_RELOAD_INTERVAL": "3600"}
    api = start("serve", None, env, None, "/v1/ready", "--env", "dev")
    rec = example_records(versions[0], 1)[0]
    assert post(api, rec).json()["model"]["version"] == v1
    v2 = publish(prefix, versions[1])
    api.send(signal.SIGHUP)
    end = time.monotonic() + 20
    while post(api, rec).json()["model"]["version"] != v2: assert time.monotonic() < end; time.sleep(0.1)
    doc = requests.get(api.url + "/v1/model", timeout=5).json()["model"]
    assert (doc["version"], doc["live"]["action"]) == (v2, "deploy")
