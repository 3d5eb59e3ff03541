"""Importing mlprod (and running a light command) loads neither TensorFlow nor any Google Cloud library."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "google.cloud", "gcsfs")

# Site start-up may already hold empty namespace packages (google_cloud_*-nspkg.pth creates `google.cloud`), so
# what counts is what importing mlprod adds.
LOADED = """
import json, sys
before = set(sys.modules)
def heavy(): return sorted(m for m in set(sys.modules) - before if any(m == h or m.startswith(h + ".") for h in {heavy!r}))
"""


def python(code: str, cwd=None) -> dict:
    "Run `code` in a fresh interpreter; it prints one JSON line last."
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-c", LOADED.format(heavy=HEAVY) + code], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=110)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_importing_mlprod_loads_no_heavy_library():
    got = python("""
import importlib.util
import pkgutil, mlprod
# every module of the package: heavy extras are imported inside the functions that need them
modules = [m.name for m in pkgutil.walk_packages(mlprod.__path__, "mlprod.") if not m.name.rsplit(".", 1)[-1].startswith("_")]
for m in modules: __import__(m)
print(json.dumps({"heavy": heavy(), "optional": modules}))
""")
    assert got["heavy"] == [], got
    assert {"mlprod.api", "mlprod.api.routes", "mlprod.remote", "mlprod.modelserver", "mlprod.bundle", "mlprod.models",
            "mlprod.select", "mlprod.explore"} <= set(got["optional"])


def test_the_cli_module_alone_stays_light():
    got = python("""
import mlprod.cli
print(json.dumps({"heavy": heavy(), "pandas": "pandas" in sys.modules, "numpy": "numpy" in sys.modules}))
""")
    assert got == {"heavy": [], "pandas": False, "numpy": False}


def test_spec_infer_and_demo_load_no_heavy_library(tmp_path):
    got = python("""
import contextlib, io
import mlprod.cli
from mlprod.data import make_city_trips
make_city_trips(300).to_csv("trips.csv", index=False)
with contextlib.redirect_stdout(io.StringIO()):
    status = [mlprod.cli.main(["spec", "infer", "trips.csv", "--target", "duration_min"]),
              mlprod.cli.main(["demo", "--example", "penguins", "--until", "transform"])]
print(json.dumps({"heavy": heavy(), "status": status}))
""", cwd=tmp_path)
    assert got == {"heavy": [], "status": [0, 0]}


def test_the_serving_modules_import_neither_pandas_nor_sklearn():
    "The API, the endpoint client and the model server load pandas and scikit-learn only where a fallback needs them."
    got = python("""
import mlprod.api, mlprod.api.routes, mlprod.api.docs, mlprod.wsgi, mlprod.remote, mlprod.modelserver, mlprod.cli_serve
print(json.dumps({"heavy": heavy(), "loaded": sorted(m for m in ("pandas", "sklearn", "scipy") if m in sys.modules)}))
""")
    assert got == {"heavy": [], "loaded": []}


def test_serving_a_scikit_learn_bundle_imports_neither_pandas_nor_sklearn():
    "Loading a bundle and answering through the API's app: the record path and the fast path, nothing heavier."
    from mlprod.testing import example_bundle, example_records
    bundle = example_bundle("city_trips", n=2000, max_iter=20)
    got = python(f"""
from mlprod.api import create_app
app = create_app({{"bundle": {str(bundle)!r}, "auth": False}}, env={{}}, background=False)
r = app.test_client().post("/v1/predict", json={example_records(bundle, 1)[0]!r})
print(json.dumps({{"code": r.get_json()["code"], "loaded": sorted(m for m in ("pandas", "sklearn", "scipy") if m in sys.modules)}}))
""")
    assert got == {"code": "ok", "loaded": []}
