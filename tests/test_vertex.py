"""Deploying to an environment served by a Vertex AI endpoint: google-cloud-aiplatform unpatched against the loopback
stand-in (tests/vertex_standin.py), artifacts on the GCS emulator. The stand-in's endpoint really predicts: it loads
the uploaded model from the emulator, or forwards to a server the test starts."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlprod.bundle import load_bundle
from mlprod.deploy import deploy, history, rollback
from mlprod.errors import BundleError, ModelUnavailable
from mlprod.registry import parse_config
from mlprod.store import open_store
from penguin_bundles import penguin_bundle

pytestmark = pytest.mark.timeout(240)
CONTAINER = "europe-docker.pkg.dev/acme/mlprod/model-server:1"


@pytest.fixture(scope="module")
def two_bundles():
    return [penguin_bundle(10), penguin_bundle(20)]


@pytest.fixture
def prod(gcs, vertex):
    "A prod environment: a store on a fresh emulator bucket, served by a fresh stand-in endpoint."
    endpoint = vertex.create_endpoint("trips-prod")
    cfg = parse_config({"environments": {"prod": {
        "store": f"gs://{gcs.bucket()}/prod",
        "endpoint": {"project": vertex.project, "location": vertex.location, "endpoint": endpoint.rsplit("/", 1)[1],
                     "serving_container": CONTAINER, "api_endpoint": vertex.url}}}})
    return cfg.env("prod"), endpoint


def split(vertex, endpoint) -> dict:
    "Which deployed models get traffic (a model missing from the map, or at 0, gets none)."
    return {k: v for k, v in vertex.resources[endpoint]["trafficSplit"].items() if v}


def deployed(vertex, endpoint) -> dict:
    "deployed model id -> the model's artifact URI"
    return {d["id"]: vertex.resources[d["model"]]["artifactUri"] for d in vertex.resources[endpoint]["deployedModels"]}


def test_deploy_uploads_the_copy_gates_on_the_endpoint_and_rollback_routes_traffic_back(prod, vertex, two_bundles):
    env, endpoint = prod
    a, b = two_bundles
    first = deploy(a, env, progress="off")
    va, store = first.version, open_store(env.store, "prod")
    model = vertex.resources[first.entry["endpoint"]["model"]]
    assert model["artifactUri"] == f"{env.store}/bundles/{va}/model"
    assert model["containerSpec"]["imageUri"] == CONTAINER
    id_a = first.entry["endpoint"]["deployed_model_id"]
    assert split(vertex, endpoint) == {id_a: 100}
    rows = len(load_bundle(a).testset())
    predicted = sum(len(body["instances"]) for m, path, body in vertex.calls if path == f"{endpoint}:predict")
    assert predicted == rows  # the gate's predictions came from the endpoint
    assert first.entry["gate"]["failed_rows"] == {"endpoint": 0}
    assert store.live()["endpoint"]["deployed_model_id"] == id_a

    second = deploy(b, env, progress="off")
    models = len(vertex.of_kind("models"))
    id_b = second.entry["endpoint"]["deployed_model_id"]
    assert split(vertex, endpoint) == {id_b: 100} and set(deployed(vertex, endpoint)) == {id_a, id_b}
    back = rollback(env)
    assert (back.version, store.live()["version"]) == (va, va)
    assert split(vertex, endpoint) == {id_a: 100}  # the old deployed model again: no new upload
    assert len(vertex.of_kind("models")) == models
    moves = [(e["action"], e["version"]) for e in history(env)]
    assert moves == [("deploy", va), ("deploy", second.version), ("rollback", va)]


class WrongModel(BaseHTTPRequestHandler):
    "A model server that answers every instance with the first class, certain of it."
    def log_message(self, *args): pass

    def do_POST(self):
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"])
        body = json.dumps({"predictions": [[1.0, 0.0, 0.0]] * n}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)


def test_an_endpoint_that_predicts_otherwise_or_not_at_all_is_refused_and_the_release_withdrawn(
        prod, vertex, two_bundles):
    env, endpoint = prod
    a, b = two_bundles
    first = deploy(a, env, progress="off")
    id_a, store = first.entry["endpoint"]["deployed_model_id"], open_store(env.store, "prod")
    server = ThreadingHTTPServer(("127.0.0.1", 0), WrongModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vertex.forward(endpoint, f"http://127.0.0.1:{server.server_address[1]}/predict")
        with pytest.raises(BundleError) as e: deploy(b, env, progress="off")
    finally:
        vertex.forward(endpoint, None)
        server.shutdown(); server.server_close()
    assert e.value.code == "gate_failed" and "endpoint path" in e.value.message
    assert split(vertex, endpoint) == {id_a: 100} and list(deployed(vertex, endpoint)) == [id_a]  # withdrawn
    assert store.live()["version"] == first.version

    vertex.fail_predict(endpoint, 503)
    try:
        with pytest.raises(ModelUnavailable) as e: deploy(b, env, progress="off")
    finally: vertex.fail_predict(endpoint, None)
    assert e.value.code == "endpoint_unavailable" and e.value.exit_status == 1
    assert split(vertex, endpoint) == {id_a: 100} and list(deployed(vertex, endpoint)) == [id_a]
    refused = [(x["code"], x["version"]) for x in history(env) if x["action"] == "refused"]
    assert refused == [("gate_failed", load_bundle(b).version), ("endpoint_unavailable", load_bundle(b).version)]


def test_an_environment_with_an_endpoint_needs_a_bucket_store():
    from mlprod.errors import UsageError
    with pytest.raises(UsageError) as e:
        parse_config({"environments": {"prod": {"store": "stores/prod", "endpoint": {
            "project": "p", "location": "l", "endpoint": "1", "serving_container": CONTAINER}}}})
    assert "environments.prod.store: must be a gs:// bucket" in e.value.message
