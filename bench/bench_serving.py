"""Serving benchmark: mlprod's API, in-process and in front of `mlprod model-server`, against the hand-written lean
baseline and a constant-answer Flask app (the floor of the stack), in one run.

mlprod serves the model `mlprod train` picks on generated city trips (run here, or `--bundle` to reuse one), with
JWT auth, spec validation and the prediction interval on, as deployed. The lean baseline is what a team writes by
hand: Flask, a one-row pandas DataFrame and a single scikit-learn pipeline — one grouped ColumnTransformer (median
imputer + scaler over the numeric columns, one-hot over the category, the derived distances in numpy) and a
HistGradientBoostingRegressor with default parameters — fitted on the same rows and features. The floor is Flask
answering a constant after parsing the JSON body: no server can do less per request on this stack.

Every server runs one sync gunicorn worker pinned to one core (taskset; in remote mode the API and the model server
share that core); wrk runs pinned to another core, at concurrency 1 (and whatever --concurrency adds). Reported per
server: startup to the first answered prediction, requests/s, p50 and p99, the worker's RSS after the run; then the
ratios the issue sets (mlprod vs the lean baseline and vs the floor), and the model sizes side by side.

    python bench/bench_serving.py                          # trains the bundle first (about a minute)
    python bench/bench_serving.py --bundle trips.bundle    # reuse a bundle written by `mlprod train`

wrk comes from Debian: apt-get install -y wrk. The machine is shared and has two cores: run it twice (--repeat 2)
and read the load average printed with each run. Measured figures: bench/serving_results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

SECRET = "bench-serving-secret-that-is-long-enough-for-hs256"

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
"""The lean hand-written baseline: one grouped ColumnTransformer + HistGradientBoosting behind Flask."""
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

FLOOR_APP = '''
"""The floor: Flask parsing the JSON body and answering a constant."""
from flask import Flask, jsonify, request

app = Flask(__name__)

@app.post("/predict")
def predict():
    request.get_json()
    return jsonify({"prediction": 1.0})
'''

WRK_SCRIPT = '''
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
'''


# ---------------------------------------------------------------- the models

def train_bundle(path: Path, rows: int, budget: int) -> str:
    "Run `mlprod train` on generated city trips: the model it picks is the one served."
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mlprod.cli", "train", "example:city_trips", "--rows", str(rows),
                        "--time-budget", str(budget), "-o", str(path), "--force"], capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f"mlprod train failed: {r.stderr[-3000:]}")
    print(f"trained with mlprod train in {time.perf_counter() - t:.0f} s")
    return str(path)

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

def model_size(est, scale=None) -> str:
    "Rounds and trees of a boosted model (and of the interval's scale model), or its class."
    def one(e):
        if hasattr(e, "n_iter_") and hasattr(e, "_predictors"):
            return f"{type(e).__name__}: {e.n_iter_} rounds, {sum(len(i) for i in e._predictors)} trees"
        if hasattr(e, "estimators_"): return f"{type(e).__name__}: {len(e.estimators_)} trees"
        if hasattr(e, "booster_"): return f"{type(e).__name__}: {e.booster_.num_trees()} trees"
        return type(e).__name__
    scale = getattr(scale, "_get", lambda: scale)()  # the bundle loads the scale model on first use
    return one(est) + (f"; interval scale model {one(scale)}" if scale is not None else "")


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

class Server:
    "A server process pinned to one core, in its own session; stopped by its PID."
    def __init__(self, args, env, core, log):
        self.log = log
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", str(core), *args], env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "wb"), start_new_session=True)

    def worker_rss_mb(self) -> float:
        "RSS of the worker processes (the master's children), in MiB."
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        kb = sum(int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{k}/status").read_text()).group(1)) for k in kids)
        return kb / 1024

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(5)

def first_answer(url, body, headers, t0, proc, log, timeout=120.0) -> float:
    "Seconds from `t0` (the launch) to the first 200 answer."
    while True:
        if proc.poll() is not None: raise RuntimeError(f"server exited: {Path(log).read_text()[-3000:]}")
        try:
            if requests.post(url, json=body, headers=headers, timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except requests.RequestException: pass
        if time.perf_counter() - t0 > timeout: raise TimeoutError(url)
        time.sleep(0.002)

def run_wrk(url, body, headers, concurrency: int, seconds: float, core: int, work: Path) -> dict:
    auth = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    script = work / "wrk.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(json.dumps(body)), auth=auth))
    out = subprocess.run(["taskset", "-c", str(core), "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                          "--timeout", "10s", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": ms("50%"),
            "p99_ms": ms("99%"), "non_2xx": int(bad.group(1)) if bad else 0}


# ---------------------------------------------------------------- one run

def measure(args, work: Path, bundle: str, record: dict, token: str) -> list:
    "Start each server, time its first answer, run wrk at each concurrency, read its worker's RSS, stop it."
    py, core = sys.executable, args.server_core
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLPROD_", "AIP_"))}
    base |= {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    gunicorn = [py, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync", "--no-control-socket", "--chdir", str(work)]
    auth = {"Authorization": f"Bearer {token}"}
    rows = []
    for name in ("floor (constant Flask)", "lean baseline (Flask + pandas + sklearn)", "mlprod in-process", "mlprod remote"):
        port, extra = free_port(), []
        if name.startswith("floor"):
            args_, env, path, headers = gunicorn + ["--bind", f"127.0.0.1:{port}", "floor_app:app"], base, "/predict", {}
        elif name.startswith("lean"):
            args_, env, path, headers = (gunicorn + ["--bind", f"127.0.0.1:{port}", "lean_app:app"],
                                         {**base, "BENCH_LEAN": str(work / "lean.joblib")}, "/predict", {})
        else:
            env, path, headers = {**base, "MLPROD_JWT_SECRET": SECRET}, "/v1/predict", auth
            args_ = [py, "-m", "mlprod.cli", "serve", bundle, "--port", str(port), "--workers", "1"]
            if name.endswith("remote"):
                mport = free_port()
                extra.append(Server([py, "-m", "mlprod.cli", "model-server", bundle, "--port", str(mport)], base, core,
                                    work / f"model-server-{mport}.log"))
                first_answer(f"http://127.0.0.1:{mport}/predict", {"instances": [args.row]}, {}, extra[0].t0,
                             extra[0].proc, extra[0].log)
                args_ += ["--model-endpoint", f"http://127.0.0.1:{mport}"]
        server = Server(args_, env, core, work / f"server-{port}.log")
        url = f"http://127.0.0.1:{port}{path}"
        try:
            startup = first_answer(url, record, headers, server.t0, server.proc, server.log)
            answer = requests.post(url, json=record, headers=headers, timeout=5).json()
            row = {"server": name, "startup_s": startup, "answer": answer, "runs": {}}
            for c in args.concurrency:
                row["runs"][c] = run_wrk(url, record, headers, c, args.seconds, args.client_core, work)
            row["rss_mb"] = server.worker_rss_mb()
            if extra: row["endpoint_rss_mb"] = extra[0].worker_rss_mb()
            rows.append(row)
        finally:
            server.stop()
            for s in extra: s.stop()
    return rows

def report(rows: list, concurrency: list, sizes: dict):
    by = {r["server"].split(" (")[0]: r for r in rows}
    floor, lean = by["floor"], by["lean baseline"]
    print("\n| server | c | req/s | p50 ms | p99 ms | p99/p50 | non-2xx | vs lean | vs floor | startup s | worker RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for c, w in r["runs"].items():
            print(f"| {r['server']} | {c} | {w['rps']:.0f} | {w['p50_ms']:.3f} | {w['p99_ms']:.3f} | "
                  f"{w['p99_ms'] / w['p50_ms']:.1f} | {w['non_2xx']} | {w['rps'] / lean['runs'][c]['rps']:.1f}x | "
                  f"{w['rps'] / floor['runs'][c]['rps']:.0%} | {r['startup_s']:.2f} | {r['rss_mb']:.0f}"
                  + (f" (+ model server {r['endpoint_rss_mb']:.0f})" if "endpoint_rss_mb" in r else "") + " |")
    c = concurrency[0]
    for name in ("mlprod in-process", "mlprod remote"):
        w = by[name]["runs"][c]
        print(f"{name} at c={c}: {w['rps'] / lean['runs'][c]['rps']:.1f}x the lean baseline (target >= 10x), "
              f"{w['rps'] / floor['runs'][c]['rps']:.0%} of the floor (target >= 50%), p99/p50 "
              f"{w['p99_ms'] / w['p50_ms']:.1f} (target <= 3), startup {by[name]['startup_s']:.2f} s (target < 1 s), "
              f"RSS {by[name]['rss_mb']:.0f} MiB vs the lean baseline's {lean['rss_mb']:.0f} MiB")
    print(f"models: mlprod {sizes['mlprod']}; lean baseline {sizes['lean']}")


# ---------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=None, help="a bundle written by `mlprod train` (default: train one here)")
    p.add_argument("--workdir", default=None, help="where the bundle, apps and logs go (default: a temporary folder)")
    p.add_argument("--rows", type=int, default=20_000, help="city-trips rows to train on (default 20,000)")
    p.add_argument("--budget", type=int, default=60, help="mlprod train's time budget in seconds (default 60)")
    p.add_argument("--seconds", type=int, default=10, help="wrk duration per run (default 10)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    p.add_argument("--repeat", type=int, default=2, help="measure everything this many times (default 2)")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "lean_app.py").write_text(LEAN_APP)
    (work / "floor_app.py").write_text(FLOOR_APP)
    bundle = args.bundle or train_bundle(work / "city_trips.bundle", args.rows, args.budget)
    from mlprod.api import make_token, settings_from_env
    from mlprod.bundle import load_bundle
    from mlprod.testing import example_records
    import pandas as pd
    b = load_bundle(bundle)
    record = next(r for r in example_records(b, 50) if len(r) == len(b.spec.features))  # the lean frame needs every column
    clean = b.spec.validate_record(record).record
    args.row = [float(v) for v in b.fitted.transformer.transform_record(clean)]
    lean = fit_lean(work, args.rows)
    sizes = {"mlprod": model_size(b.model, getattr(b.confidence, "scale_model", None)), "lean": model_size(lean[-1])}
    token = make_token(settings_from_env({"MLPROD_JWT_SECRET": SECRET}), sub="bench", ttl=3600)
    expected = b.predict_record(clean)
    print(f"cpus {os.cpu_count()}, servers on core {args.server_core}, wrk on core {args.client_core}; workdir {work}")
    print(f"bundle {b!r}; record {json.dumps(record)}")
    results = []
    for k in range(args.repeat):
        print(f"\n## run {k + 1} of {args.repeat}: load average before {os.getloadavg()[0]:.2f}")
        rows = measure(args, work, bundle, record, token)
        for r in rows:
            if r["server"].startswith("mlprod"):
                assert r["answer"]["prediction"] == expected, (r["server"], r["answer"], expected)
        report(rows, args.concurrency, sizes)
        print(f"load average after: {os.getloadavg()[0]:.2f} (other processes on these cores skew the figures)")
        results.append([{k2: v for k2, v in r.items() if k2 != "answer"} for r in rows])
    print(f"\nboth mlprod modes answered exactly the in-process prediction: {json.dumps(expected)}")
    if args.json: Path(args.json).write_text(json.dumps({"sizes": sizes, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
