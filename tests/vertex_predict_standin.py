"""A loopback stand-in for the prediction paths of the Vertex AI REST API, as google-cloud-aiplatform's REST transport
calls them (the same `create_endpoint` / `forward` / `calls` interface as the fuller stand-in of the tuning and
registry work, which replaces this file once both are on main).

It speaks the paths the SDK uses for prediction (TOOLCHAIN.md: `GET .../endpoints/E`, `POST .../endpoints/E:predict`,
`?$alt=json;enum-encoding=int`) and forwards each predict body to the model server deployed on that endpoint — a
real `mlprod model-server` — so the API's Vertex mode is tested on the wire end to end.
"""
import json
import re
import threading
import urllib.error
import urllib.request

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

ENDPOINT = re.compile(r"/v1/(projects/[^/]+/locations/[^/]+/endpoints/[^/:]+)(:predict)?")


class VertexStandIn:
    "The stand-in server: `forward(endpoint, url)` sends an endpoint's predictions to a model server's predict URL."
    def __init__(self, project: str = "mlprod-test", location: str = "us-central1"):
        self.parent, self.deployed, self.calls = f"projects/{project}/locations/{location}", {}, []
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def create_endpoint(self, display_name: str = "endpoint") -> str:
        "A new endpoint's resource name."
        name = f"{self.parent}/endpoints/{1000 + len(self.deployed)}"
        self.deployed[name] = None
        return name

    def forward(self, endpoint: str, url: str | None): self.deployed[endpoint] = url

    @Request.application
    def app(self, request):
        m = ENDPOINT.fullmatch(request.path)
        if not m or m.group(1) not in self.deployed:
            return self._json({"error": {"code": 404, "message": f"{request.path} not found", "status": "NOT_FOUND"}}, 404)
        resource, predict = m.group(1), m.group(2)
        self.calls.append((request.method, request.path, request.get_json(silent=True)))
        if request.method == "GET" and not predict: return self._json({"name": resource})
        if request.method != "POST" or not predict: return self._json({"error": {"code": 405, "message": "no"}}, 405)
        if not self.deployed[resource]: return self._json({"error": {"code": 400, "message": "no deployed model"}}, 400)
        forward = urllib.request.Request(self.deployed[resource], data=request.get_data(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(forward, timeout=5) as r: body = json.loads(r.read())
        except (urllib.error.URLError, OSError) as e:  # the deployed model is down: what Vertex AI answers then
            return self._json({"error": {"code": 503, "message": str(e), "status": "UNAVAILABLE"}}, 503)
        return self._json({"predictions": body["predictions"], "deployedModelId": "1"})

    @staticmethod
    def _json(body, status=200): return Response(json.dumps(body), status, mimetype="application/json")

    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *exc): self.server.shutdown(); self.server.server_close()
