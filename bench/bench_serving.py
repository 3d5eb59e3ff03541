"""Serving benchmark: mlprod's API against the hand-written Flask + pandas baseline and MLflow's scoring server.

One run, one bundle, one record. Every server gets one worker pinned to one core (taskset); wrk runs pinned to
another core, at concurrency 1 and 8. The same fitted pipeline is served by all three: the bundle's SpecTransformer
(a ColumnTransformer inside) + HistGradientBoostingRegressor with default parameters, trained on generated city
trips (mlprod.data.make_city_trips). mlprod runs with JWT auth and spec validation on, as deployed. A second,
leaner hand-written baseline — one grouped ColumnTransformer (median imputer + scaler over the numeric columns,
one-hot over the category) with the derived features in numpy, fitted on the same rows and features — shows how
much of the gap comes from the bundle's per-column preprocessing rather than from the one-row DataFrame path.

    python bench/bench_serving.py                         # mlprod and the baseline
    python bench/bench_serving.py --mlflow-python PY      # also MLflow (PY: a Python with mlflow installed, see below)

MLflow 3 would downgrade gunicorn and pyarrow in the project's environment, so it lives in its own virtualenv with
the same numpy / pandas / scikit-learn versions, and reaches mlprod's code through a .pth file:
    python3.11 -m venv /tmp/mlflow-venv
    /tmp/mlflow-venv/bin/pip install mlflow==3.17.2 numpy==2.4.6 pandas==3.1.1 scikit-learn==1.9.1 scipy==1.17.1 \
        joblib==1.6.0 pyyaml fsspec pyjwt prometheus-client
    echo "$PWD" > "$(/tmp/mlflow-venv/bin/python -c 'import site; print(site.getsitepackages()[0])')/mlprod-src.pth"
wrk comes from Debian: apt-get install -y wrk.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import requests

SECRET = "bench-serving-secret-that-is-long-enough-for-hs256"

BASELINE_APP = '''
"""The baseline a team writes by hand: Flask, a one-row pandas DataFrame, the scikit-learn pipeline."""
import joblib, os
import pandas as pd
from flask import Flask, jsonify, request
from sklearn.pipeline import make_pipeline

BUNDLE = os.environ["BENCH_BUNDLE"]
pipeline = make_pipeline(joblib.load(f"{BUNDLE}/preprocess/transformer.joblib"), joblib.load(f"{BUNDLE}/model/model.joblib"))
app = Flask(__name__)

@app.post("/predict")
def predict():
    record = request.get_json()
    value = pipeline.predict(pd.DataFrame([record]))[0]
    return jsonify({"prediction": float(value)})
'''

LEAN_FEATURES = '''
"""Derived features written by hand with numpy on the frame: the trip's length and each end's distance to two points."""
import numpy as np

POINTS = {"centre": (40.754, -73.984), "airport": (40.641, -73.778)}

def km(lat1, lon1, lat2, lon2):
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.minimum(a, 1.0)))

def add_trip_features(df):
    df = df.copy()
    df["rain"] = df["rain"].astype(float)
    df["trip_km"] = km(df["pickup_lat"], df["pickup_lon"], df["dropoff_lat"], df["dropoff_lon"])
    for end in ("pickup", "dropoff"):
        for name, (lat, lon) in POINTS.items():
            df[f"{end}_km_to_{name}"] = km(df[f"{end}_lat"], df[f"{end}_lon"], lat, lon)
    return df
'''

LEAN_APP = '''
"""A leaner hand-written baseline: one grouped ColumnTransformer (its own fit, same features) + HistGradientBoosting."""
import joblib, os
import pandas as pd
from flask import Flask, jsonify, request

pipeline = joblib.load(os.environ["BENCH_LEAN"])
app = Flask(__name__)

@app.post("/predict")
def predict():
    value = pipeline.predict(pd.DataFrame([request.get_json()]))[0]
    return jsonify({"prediction": float(value)})
'''

def fit_lean(work: Path, rows: int):
    "The lean baseline's pipeline, fitted on the same training rows and features; saved with joblib."
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
    from mlprod.data import load_example, split_frame
    (work / "lean_features.py").write_text(LEAN_FEATURES)
    (work / "baseline_lean_app.py").write_text(LEAN_APP)
    sys.path.insert(0, str(work))
    import lean_features
    ex = load_example("city_trips", n=rows)
    sp = split_frame(ex.frame, ex.target, ex.task, seed=0)
    num = ["pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon", "hour", "weekday", "passengers", "rain", "trip_km",
           "pickup_km_to_centre", "pickup_km_to_airport", "dropoff_km_to_centre", "dropoff_km_to_airport"]
    pipe = make_pipeline(FunctionTransformer(lean_features.add_trip_features),
                         ColumnTransformer([("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
                                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["vehicle"])]),
                         HistGradientBoostingRegressor())
    pipe.fit(sp.train.drop(columns=[ex.target, "trip_id"]), sp.train[ex.target])
    joblib.dump(pipe, work / "lean.joblib")
    return pipe

MLFLOW_SAVE = '''
import joblib, sys, mlflow.sklearn
from sklearn.pipeline import make_pipeline
bundle, out = sys.argv[1], sys.argv[2]
pipeline = make_pipeline(joblib.load(f"{bundle}/preprocess/transformer.joblib"), joblib.load(f"{bundle}/model/model.joblib"))
mlflow.sklearn.save_model(pipeline, out, skops_trusted_types=[  # our own file: trust the types skops asks about
    "builtins.frozenset", "numpy.dtype", "mlprod.spec.Derived", "mlprod.spec.Feature", "mlprod.spec.FeatureSpec",
    "mlprod.spec.Location", "mlprod.spec.Target", "mlprod.transforms.SpecTransformer", "mlprod.transforms.Clipper",
    "mlprod.transforms.Log1p", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"])
'''

WRK_SCRIPT = '''
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
'''


# ---------------------------------------------------------------- the bundle and the record

def build_bundle(path: Path, rows: int) -> str:
    "City trips, SpecTransformer + HistGradientBoostingRegressor (default parameters), saved as a bundle."
    from sklearn.ensemble import HistGradientBoostingRegressor
    from mlprod.bundle import expected_columns, frame_records, save_bundle
    from mlprod.data import load_example, split_frame
    from mlprod.models import FittedModel, IntervalCalculator
    from mlprod.transforms import SpecTransformer
    ex = load_example("city_trips", n=rows)
    spec = ex.infer_spec()
    sp = split_frame(ex.frame, ex.target, ex.task, seed=0)
    t = SpecTransformer(spec).fit(sp.train)
    model = HistGradientBoostingRegressor().fit(t.transform(sp.train), sp.train[ex.target])
    conf = IntervalCalculator.calibrate(sp.eval[ex.target], model.predict(t.transform(sp.eval)), sp.train[ex.target], 0.9)
    fitted = FittedModel(spec, t, model, conf)
    test = sp.test[list(spec.features)].reset_index(drop=True)
    checked = [spec.validate_record(r, unknown_fields="ignore") for r in frame_records(test)]
    keep = [i for i, c in enumerate(checked) if c.ok]
    preds = fitted.predict_records([checked[i].record for i in keep])
    testset = pd.concat([test.iloc[keep].reset_index(drop=True), sp.test[[ex.target]].iloc[keep].reset_index(drop=True),
                         expected_columns(preds, "regression")], axis=1)
    return save_bundle(path, spec=spec, transformer=t, model=model, confidence=conf, testset=testset, name="city_trips",
                       metrics={"test_rows": len(keep), "target_scale": float(sp.train[ex.target].std())}, force=True)


def bench_records(bundle, n: int = 200) -> list:
    "Test-set records with every input present (the baseline's one-row frame needs every column)."
    from mlprod.bundle import load_bundle
    b = load_bundle(bundle)
    ts = b.testset()[list(b.spec.features)].dropna()
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for _, row in ts.head(n).iterrows()]


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    "A server process pinned to one core; stopped by its PID."
    def __init__(self, name, args, env, port, core, predict_path, headers, wrap, unwrap, log):
        self.name, self.port, self.url = name, port, f"http://127.0.0.1:{port}"
        self.predict_url, self.headers, self.wrap, self.unwrap = self.url + predict_path, headers, wrap, unwrap
        self.log = log
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", str(core), *args], env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "wb"), start_new_session=True)
        self.startup = None

    def predict(self, record):
        r = requests.post(self.predict_url, data=json.dumps(self.wrap(record)), timeout=30,
                          headers={"Content-Type": "application/json", **self.headers})
        r.raise_for_status()
        return self.unwrap(r.json())

    def wait_first_prediction(self, record, timeout=120.0) -> float:
        "Seconds from start to the first answered prediction."
        while True:
            if self.proc.poll() is not None: raise RuntimeError(f"{self.name} exited: {Path(self.log).read_text()[-3000:]}")
            try:
                self.predict(record)
                self.startup = time.perf_counter() - self.t0
                return self.startup
            except (requests.ConnectionError, requests.HTTPError): pass
            if time.perf_counter() - self.t0 > timeout: raise TimeoutError(self.name)
            time.sleep(0.005)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the session holds the server and its workers (by PID)
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(5)


def servers_to_run(args, bundle, work: Path, record, lean_batch) -> list:
    py = sys.executable
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    base_env = {k: v for k, v in base_env.items() if not k.startswith("MLPROD_")}
    specs = []
    (work / "baseline_app.py").write_text(BASELINE_APP)
    specs.append(("baseline (Flask + pandas + sklearn)",
                  [py, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync", "--no-control-socket",
                   "--chdir", str(work), "--bind", "127.0.0.1:{port}", "baseline_app:app"],
                  {**base_env, "BENCH_BUNDLE": str(bundle)}, "/predict", {}, lambda r: r, lambda b: b["prediction"], None))
    specs.append(("lean baseline (own grouped fit)",
                  [py, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync", "--no-control-socket",
                   "--chdir", str(work), "--bind", "127.0.0.1:{port}", "baseline_lean_app:app"],
                  {**base_env, "BENCH_LEAN": str(work / "lean.joblib")}, "/predict", {}, lambda r: r,
                  lambda b: b["prediction"], lean_batch))
    if args.mlflow_python:
        model_dir = work / "mlflow-model"
        if model_dir.exists(): shutil.rmtree(model_dir)
        r = subprocess.run([args.mlflow_python, "-c", MLFLOW_SAVE, str(bundle), str(model_dir)],
                           env={**base_env, "MLFLOW_TRACKING_URI": f"file://{work}/mlruns"}, capture_output=True, text=True)
        if r.returncode: raise RuntimeError(f"saving the MLflow model failed: {r.stderr[-3000:]}")
        mlflow_bin = str(Path(args.mlflow_python).parent / "mlflow")
        specs.append(("MLflow scoring server",
                      [mlflow_bin, "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1",
                       "-p", "{port}", "-w", "1"],
                      {**base_env, "MLFLOW_TRACKING_URI": f"file://{work}/mlruns",
                       "PATH": f"{Path(args.mlflow_python).parent}:{base_env.get('PATH', '')}"}, "/invocations", {},
                      lambda r: {"dataframe_records": [r]}, lambda b: b["predictions"][0], None))
    token_env = {**base_env, "MLPROD_JWT_SECRET": SECRET}
    specs.append(("mlprod (JWT + validation)",
                  [py, "-m", "mlprod.cli", "serve", str(bundle), "--port", "{port}", "--workers", "1"],
                  token_env, "/v1/predict", "TOKEN", lambda r: r, lambda b: b["prediction"]["value"], None))
    return specs


# ---------------------------------------------------------------- wrk

def run_wrk(server: Server, record, concurrency: int, seconds: float, core: int, work: Path) -> dict:
    auth = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in server.headers.items())
    script = work / f"wrk-{server.port}.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(json.dumps(server.wrap(record))), auth=auth))
    out = subprocess.run(["taskset", "-c", str(core), "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                          "--timeout", "10s", "-s", str(script), server.predict_url],
                         capture_output=True, text=True, check=True).stdout
    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%"), "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else None, "raw": out}


# ---------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=None, help="where the bundle and logs go (default: a temporary folder)")
    p.add_argument("--rows", type=int, default=10_000, help="city-trips rows to train on (default 10,000)")
    p.add_argument("--seconds", type=int, default=10, help="wrk duration per run (default 10)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--mlflow-python", default=None, help="a Python with mlflow installed (see the module docs)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)

    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, server on core {args.server_core}, "
          f"wrk on core {args.client_core}; workdir {work}")
    t = time.perf_counter()
    bundle = build_bundle(work / "city_trips.bundle", args.rows)
    from mlprod.api import make_token, settings_from_env
    from mlprod.bundle import load_bundle
    b = load_bundle(bundle)
    print(f"bundle: {b!r} ({time.perf_counter() - t:.1f} s to train and save); model {b.model.get_params()['max_iter']} iterations "
          f"x {b.model.n_iter_} trees, {len(b.spec.features)} inputs -> {len(b.fitted.transformer.get_feature_names_out())} features")
    recs = bench_records(bundle)
    record = recs[0]
    batch = [p["value"] for p in b.predict_records([b.spec.validate_record(r).record for r in recs])]  # the batch path
    scale = float(b.metrics["target_scale"])
    token = make_token(settings_from_env({"MLPROD_JWT_SECRET": SECRET}), sub="bench", ttl=3600)
    print(f"record: {json.dumps(record)}")

    lean = fit_lean(work, args.rows)
    lean_batch = [float(v) for v in lean.predict(pd.DataFrame(recs))]
    results = []
    for name, cmd, env, path, headers, wrap, unwrap, expected in servers_to_run(args, bundle, work, record, lean_batch):
        port = free_port()
        headers = {"Authorization": f"Bearer {token}"} if headers == "TOKEN" else headers
        s = Server(name, [c.replace("{port}", str(port)) for c in cmd], env, port, args.server_core, path, headers,
                   wrap, unwrap, work / f"server-{port}.log")
        try:
            startup = s.wait_first_prediction(record)
            got = [s.predict(r) for r in recs]
            rel = max(abs(g - e) / max(abs(e), scale) for g, e in zip(got, expected or batch))
            row = {"server": name, "startup_s": round(startup, 3), "max_rel_diff_vs_batch": rel, "runs": {}}
            for c in args.concurrency:
                s.predict(record)  # warm
                w = run_wrk(s, record, c, args.seconds, args.client_core, work)
                row["runs"][c] = {k: v for k, v in w.items() if k != "raw"}
                print(f"  {name:38s} c={c}: {w['rps']:8.1f} req/s  p50 {w['p50_ms']:7.3f} ms  p99 {w['p99_ms']:7.3f} ms"
                      f"  non-2xx {w['non_2xx']}{'  ' + w['socket_errors'] if w['socket_errors'] else ''}")
            print(f"  {name:38s} startup to first prediction {startup:.2f} s; max rel diff vs batch path {rel:.2e} over {len(recs)} records")
            results.append(row)
        finally:
            s.stop()

    base = results[0]
    leanrow = results[1]
    print("\n| server | concurrency | req/s | p50 ms | p99 ms | vs baseline | vs lean baseline | startup s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        for c, w in row["runs"].items():
            ratio, lratio = w["rps"] / base["runs"][c]["rps"], w["rps"] / leanrow["runs"][c]["rps"]
            print(f"| {row['server']} | {c} | {w['rps']:.0f} | {w['p50_ms']:.3f} | {w['p99_ms']:.3f} | {ratio:.2f}x | {lratio:.2f}x | {row['startup_s']:.2f} |")
    mlprod = results[-1]
    ratio1 = mlprod["runs"][args.concurrency[0]]["rps"] / base["runs"][args.concurrency[0]]["rps"]
    print(f"\nmlprod / baseline throughput at c={args.concurrency[0]}: {ratio1:.2f}x (target >= 6x); "
          f"predictions equal to the batch path: max rel diff {mlprod['max_rel_diff_vs_batch']:.1e} (target < 1e-9); "
          f"mlprod startup to first prediction {mlprod['startup_s']:.2f} s (target < 2 s)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes on these cores skew the figures)")
    if args.json: Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
