"""A small Vertex AI stand-in: a loopback HTTP server that speaks the REST paths google-cloud-aiplatform uses.

Point the SDK at it with the REST transport and an explicit `http://` endpoint (anything else tries TLS or
gRPC and retries for a minute and more before failing):

    aiplatform.init(project=..., location=..., api_endpoint=standin.url, api_transport="rest",
                    credentials=AnonymousCredentials())

What it keeps, in memory, per resource name (`projects/P/locations/L/<collection>/<id>`):

- `models` (`models:upload`, GET), `endpoints` (create, GET, PATCH traffic split, `:deployModel`,
  `:undeployModel`, `:predict`), `customJobs` and `hyperparameterTuningJobs` (create, GET, `:cancel`), and
  `operations` (every long-running call answers a finished operation, so the SDK's `.result()` returns at once).
- Prediction: `:predict` goes to the deployed model with the largest traffic share. By default it answers as
  mlprod's model server does (mlprod's remote model protocol): it loads `model.joblib` from the model's
  `artifactUri` on the GCS emulator and answers `{"predictions": [...]}` — a number per instance for a regressor, the
  class probabilities for a classifier. `standin.forward(endpoint_id, url)` sends an endpoint's predictions to a real
  server instead (e.g. `mlprod model-server`; an endpoint with nothing deployed predicts too once forwarded, and
  the server being down answers 503 UNAVAILABLE), and `standin.fail_predict(endpoint_id, status)` makes it fail.
- Jobs: a created job is `JOB_STATE_SUCCEEDED` on its first GET unless `standin.job_outcome` (a function of the
  job's body returning the fields to merge, e.g. `{"state": "JOB_STATE_FAILED", "error": {...}}`) says otherwise.
- `standin.calls`: every request as (method, path, JSON body), for tests that assert what the SDK sent.

Bodies are camelCase; enums go out as names (the SDK reads both); int64 fields as strings.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
_PARENT = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"


class VertexStandIn:
    "The running stand-in: its `url`, the resources it holds and the calls it received."

    def __init__(self, project: str = "mlprod-test", location: str = "us-central1"):
        self.project, self.location = project, location
        self.resources: dict = {}  # resource name -> JSON object
        self.calls: list = []  # (method, path, body)
        self.job_outcome = lambda kind, body: {}
        self._forward: dict = {}  # endpoint name -> URL
        self._fail: dict = {}  # endpoint name -> HTTP status
        self._models: dict = {}  # artifactUri -> loaded estimator
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ---- life cycle
    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()

    # ---- helpers for tests
    @property
    def parent(self) -> str: return f"projects/{self.project}/locations/{self.location}"

    def init_sdk(self, **kw):
        "Point google-cloud-aiplatform at this stand-in (REST, anonymous credentials)."
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import aiplatform
        aiplatform.init(project=self.project, location=self.location, api_endpoint=self.url, api_transport="rest",
                        credentials=AnonymousCredentials(), **kw)

    def create_endpoint(self, display_name: str = "endpoint") -> str:
        "Create an empty endpoint directly; return its resource name."
        name = self._new("endpoints", {"displayName": display_name, "deployedModels": [], "trafficSplit": {}},
                         self.parent)
        return name

    def forward(self, endpoint: str, url: str | None):
        "Send `endpoint`'s predictions to `url` (POST {instances}) instead of loading the model; None stops it."
        self._forward[self._full(endpoint, "endpoints")] = url

    def fail_predict(self, endpoint: str, status: int | None = 503):
        "Make `endpoint`'s predictions fail with HTTP `status` (None: answer again)."
        self._fail[self._full(endpoint, "endpoints")] = status

    def of_kind(self, collection: str) -> dict:
        "The resources of one collection (models, endpoints, customJobs, ...), by name."
        return {k: v for k, v in self.resources.items() if f"/{collection}/" in k}

    # ---- internals
    def _full(self, name: str, collection: str) -> str:
        return name if name.startswith("projects/") else f"{self.parent}/{collection}/{name}"

    def _new(self, collection: str, body: dict, parent: str) -> str:
        with self._lock:
            name = f"{parent}/{collection}/{next(self._ids)}"
            self.resources[name] = dict(body, name=name, createTime="2026-01-01T00:00:00Z")
        return name

    def _operation(self, parent: str, response: dict | None, kind: str, response_type: str | None = None) -> dict:
        "A finished long-running operation of `kind` (UploadModel, DeployModel, ...) holding `response`."
        op = {"name": f"{parent}/operations/{next(self._ids)}", "done": True,
              "metadata": {"@type": _TYPE + kind + "OperationMetadata", "genericMetadata": {}},
              "response": dict(response or {}, **{"@type": _TYPE + (response_type or kind + "Response")})}
        self.resources[op["name"]] = op
        return op

    def _predict(self, endpoint: dict, instances: list):
        name = endpoint["name"]
        if self._fail.get(name):
            return self._fail[name], {"error": {"code": self._fail[name], "message": "unavailable"}}
        split = endpoint.get("trafficSplit") or {}
        if not split and not self._forward.get(name):
            return 400, {"error": {"code": 9, "message": "the endpoint has no deployed model"}}
        deployed = max(split, key=lambda k: (split[k], k)) if split else "1"
        if self._forward.get(name):
            req = urllib.request.Request(self._forward[name], data=json.dumps({"instances": instances}).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r: answer = json.loads(r.read())
            except urllib.error.HTTPError as e:  # the model server refused the instances: passed on
                return e.code, {"error": {"code": e.code, "message": e.read().decode(errors="replace")}}
            except OSError as e:  # the deployed model is down: what Vertex AI answers then
                return 503, {"error": {"code": 503, "message": str(e), "status": "UNAVAILABLE"}}
        else:
            model = next(m for m in endpoint["deployedModels"] if m["id"] == deployed)
            answer = {"predictions": self._model_predict(self.resources[model["model"]], instances)}
        return 200, dict(answer, deployedModelId=deployed)

    def _model_predict(self, model: dict, instances: list) -> list:
        est = self._load(model["artifactUri"])
        import numpy as np
        X = np.asarray(instances, dtype=np.float64)
        if hasattr(est, "predict_proba"): return est.predict_proba(X).tolist()
        return [float(v) for v in est.predict(X)]

    def _load(self, artifact_uri: str):
        "The estimator in `artifact_uri`/model.joblib, read from the GCS emulator (cached per URI)."
        if artifact_uri not in self._models:
            import io
            import joblib
            from google.cloud import storage
            bucket, _, prefix = artifact_uri[len("gs://"):].partition("/")
            blob = storage.Client().bucket(bucket).blob(f"{prefix.rstrip('/')}/model.joblib")
            self._models[artifact_uri] = joblib.load(io.BytesIO(blob.download_as_bytes()))
        return self._models[artifact_uri]

    # ---- the routes: (method, regex) -> function(match, body) -> (status, JSON)
    def route(self, method: str, path: str, body: dict):
        for m, pattern, fn in _ROUTES:
            match = re.fullmatch(pattern, path) if m == method else None
            if match: return fn(self, match, body)
        return _not_found(f"the stand-in has no route {method} {path}")


def _not_found(message: str) -> tuple:
    return 404, {"error": {"code": 404, "message": message, "status": "NOT_FOUND"}}


def _get(self, match, body):
    res = self.resources.get(match["name"].split("@")[0])  # models/1@2 names version 2 of model 1
    if res is None: return _not_found(f"{match['name']} not found")
    if "/customJobs/" in match["name"] or "/hyperparameterTuningJobs/" in match["name"]:
        if res.get("state") in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
            kind = "customJobs" if "/customJobs/" in match["name"] else "hyperparameterTuningJobs"
            res.update({"state": "JOB_STATE_SUCCEEDED", "endTime": "2026-01-01T00:00:01Z"}, **self.job_outcome(kind, res))
    return 200, res


def _upload_model(self, match, body):
    parent = f"projects/{match['project']}/locations/{match['location']}"
    model = dict(body.get("model", {}))
    model.setdefault("versionId", "1")
    model.setdefault("supportedDeploymentResourcesTypes", ["DEDICATED_RESOURCES", "SHARED_RESOURCES"])
    name = self._new("models", model, parent)
    return 200, self._operation(parent, {"model": name, "modelVersionId": "1"}, "UploadModel")


def _create_endpoint(self, match, body):
    parent = f"projects/{match['project']}/locations/{match['location']}"
    name = self._new("endpoints", dict(body, deployedModels=[], trafficSplit={}), parent)
    return 200, self._operation(parent, self.resources[name], "CreateEndpoint", "Endpoint")


def _set_traffic(endpoint: dict, split: dict | None, new_id: str | None = None):
    if split:
        # "0" names the model being deployed; a new split replaces the old one
        endpoint["trafficSplit"] = {(new_id if k == "0" else k): int(v) for k, v in split.items()
                                    if int(v) or k != "0"}


def _deploy(self, match, body):
    endpoint = self.resources[match["name"]]
    deployed = dict(body["deployedModel"], id=str(next(self._ids)))
    deployed["model"], _, version = deployed["model"].partition("@")
    deployed["modelVersionId"] = version or "1"
    if deployed["model"] not in self.resources: return _not_found(f"{deployed['model']} not found")
    endpoint["deployedModels"].append(deployed)
    _set_traffic(endpoint, body.get("trafficSplit"), deployed["id"])
    parent = match["name"].split("/endpoints/")[0]
    return 200, self._operation(parent, {"deployedModel": deployed}, "DeployModel")


def _undeploy(self, match, body):
    endpoint = self.resources[match["name"]]
    endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != body["deployedModelId"]]
    if body.get("trafficSplit"): _set_traffic(endpoint, body["trafficSplit"])
    else: endpoint["trafficSplit"].pop(body["deployedModelId"], None)
    parent = match["name"].split("/endpoints/")[0]
    return 200, self._operation(parent, {}, "UndeployModel")


def _patch_endpoint(self, match, body):
    endpoint = self.resources[match["name"]]
    for k, v in body.items():
        if k == "trafficSplit": _set_traffic(endpoint, v)
        elif k not in ("name", "deployedModels"): endpoint[k] = v
    return 200, endpoint


def _predict(self, match, body):
    endpoint = self.resources.get(match["name"])
    if endpoint is None: return _not_found(f"{match['name']} not found")
    return self._predict(endpoint, body.get("instances", []))


def _create_job(kind):
    def create(self, match, body):
        parent = f"projects/{match['project']}/locations/{match['location']}"
        name = self._new(kind, dict(body, state="JOB_STATE_PENDING"), parent)
        return 200, self.resources[name]
    return create


def _cancel_job(self, match, body):
    self.resources[match["name"]]["state"] = "JOB_STATE_CANCELLED"
    return 200, {}


_NAME = _PARENT + r"/(?:models|endpoints|operations|customJobs|hyperparameterTuningJobs)/[^/:]+"
_ROUTES = [
    ("POST", _PARENT + r"/models:upload", _upload_model),
    ("POST", _PARENT + r"/endpoints", _create_endpoint),
    ("POST", r"(?P<name>" + _PARENT + r"/endpoints/[^/:]+):deployModel", _deploy),
    ("POST", r"(?P<name>" + _PARENT + r"/endpoints/[^/:]+):undeployModel", _undeploy),
    ("POST", r"(?P<name>" + _PARENT + r"/endpoints/[^/:]+):predict", _predict),
    ("PATCH", r"(?P<name>" + _PARENT + r"/endpoints/[^/:]+)", _patch_endpoint),
    ("POST", _PARENT + r"/customJobs", _create_job("customJobs")),
    ("POST", _PARENT + r"/hyperparameterTuningJobs", _create_job("hyperparameterTuningJobs")),
    ("POST", r"(?P<name>" + _PARENT + r"/(?:customJobs|hyperparameterTuningJobs)/[^/:]+):cancel", _cancel_job),
    ("GET", r"(?P<name>" + _NAME + ")", _get),
]


def _handler(standin: VertexStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args): pass

        def _answer(self):
            path = urllib.parse.unquote(self.path.split("?")[0])
            if path.startswith("/v1/"): path = path[len("/v1/"):]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try: body = json.loads(raw) if raw else {}
            except ValueError: body = {}
            standin.calls.append((self.command, path, body))
            try: status, answer = standin.route(self.command, path, body)
            except Exception as e:  # a bug in the stand-in or a bad request: answer it, never hang the SDK
                status, answer = 500, {"error": {"code": 500, "message": f"{type(e).__name__}: {e}"}}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer
    return Handler
