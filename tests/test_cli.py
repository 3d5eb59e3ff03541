"""`mlprod` as a user runs it: the installed console script in a subprocess, on a CSV it has never seen."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlprod.spec import FeatureSpec

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


def mlprod_command() -> list:
    "The console script next to this Python, or `python -m mlprod.cli` when the project is not installed."
    exe = shutil.which("mlprod", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "mlprod.cli"]


def mlprod(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([*mlprod_command(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=110)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


@pytest.fixture
def deliveries(tmp_path) -> Path:
    "A messy CSV: an ID, a date, a lat/lng pair, a number column with stray text, missing values, rare categories."
    rng = np.random.default_rng(7)
    n = 400
    weight = [f"{w:.2f}" for w in rng.gamma(2.0, 3.0, n)]
    for i in (5, 77, 301): weight[i] = "unknown"
    for i in range(0, n, 25): weight[i] = ""
    items = rng.integers(1, 9, n).astype(float)
    items[rng.random(n) < 0.08] = np.nan
    channel = rng.choice(["web", "app", "phone"], n, p=[0.6, 0.37, 0.03])
    channel[[10, 200]] = "fax"
    lat, lng = rng.uniform(52.30, 52.42, n), rng.uniform(4.75, 5.02, n)
    lat[[3, 9]] = np.nan
    frame = pd.DataFrame({
        "order_id": [f"ORD-{100_000 + i}" for i in rng.permutation(n)],
        "created": pd.date_range("2024-03-01", periods=n, freq="7h").strftime("%Y-%m-%d %H:%M"),
        "store_lat": lat.round(5), "store_lng": lng.round(5), "weight_kg": weight, "items": items,
        "channel": channel, "express": rng.choice(["yes", "no"], n), "country": "NL"})
    frame["delivery_minutes"] = (20 + 3 * items.clip(1, 8) + rng.normal(0, 5, n)).round(1)
    folder = tmp_path / "incoming"
    folder.mkdir()
    path = folder / "deliveries.csv"
    frame.to_csv(path, index=False)
    return path


def test_spec_infer_writes_a_spec_a_person_would_accept(deliveries, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    r = mlprod("spec", "infer", deliveries, "--target", "delivery_minutes", cwd=work)
    assert r.returncode == 0, r.stderr
    out = work / "deliveries.spec.yaml" # <data stem>.spec.yaml in the current folder
    assert r.stdout.startswith("wrote deliveries.spec.yaml")
    spec = FeatureSpec.load(out)
    assert spec.target.name == "delivery_minutes" and spec.task == "regression"
    assert {n: f.type for n, f in spec.features.items()} == {
        "created": "datetime", "store_lat": "latitude", "store_lng": "longitude", "weight_kg": "number",
        "items": "integer", "channel": "category", "express": "boolean"}
    assert set(spec.drop) == {"order_id", "country"}
    assert "ID-like" in spec.drop["order_id"] and "constant" in spec.drop["country"]
    assert [(g.lat, g.lon) for g in spec.location] == [("store_lat", "store_lng")]
    assert spec.location[0].region is None  # a region is a hard limit a person declares; inference writes expectations
    lo, hi = spec["store_lat"].expect
    assert lo <= 52.30 and hi >= 52.42 and lo > 52.0
    assert "non-numeric" in spec["weight_kg"].note and not spec["weight_kg"].required
    assert not spec["items"].required and spec["items"].default in range(1, 9)
    assert set(spec["channel"].categories) == {"web", "app", "phone", "fax"} and "rare" in spec["channel"].note
    assert not spec["store_lat"].required # two missing coordinates
    for column in ("created", "store_lat", "weight_kg", "channel", "order_id"):
        assert column in r.stdout # the summary table names every column


def test_spec_infer_never_overwrites_without_force(deliveries, tmp_path):
    out = tmp_path / "spec.yaml"
    assert mlprod("spec", "infer", deliveries, "--target", "delivery_minutes", "-o", out, cwd=tmp_path).returncode == 0
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    r = mlprod("spec", "infer", deliveries, "--target", "channel", "-o", out, cwd=tmp_path)
    assert r.returncode == 2
    assert last_line(r.stderr).startswith("error: file_exists:") and "--force" in last_line(r.stderr)
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    r = mlprod("spec", "infer", deliveries, "--target", "channel", "-o", out, "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert FeatureSpec.load(out).target.classes == ["app", "fax", "phone", "web"]


@pytest.mark.parametrize("case, code", [("wrong_target", "unknown_target"), ("empty_file", "empty_data"),
                                        ("header_only", "empty_data"), ("single_class", "single_class")])
def test_bad_data_exits_3_naming_the_code(deliveries, tmp_path, case, code):
    data, target = deliveries, "delivery_minutes"
    if case == "wrong_target": target = "delivery_time"
    elif case == "empty_file": data = tmp_path / "empty.csv"; data.write_text("")
    elif case == "header_only": data = tmp_path / "header.csv"; data.write_text("a,b,delivery_minutes\n")
    else: target = "country"
    out = tmp_path / "never.yaml"
    r = mlprod("spec", "infer", data, "--target", target, "-o", out, cwd=tmp_path)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert last_line(r.stderr).startswith(f"error: {code}: "), r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_usage_errors_exit_2(deliveries, tmp_path):
    r = mlprod("spec", "infer", deliveries, cwd=tmp_path) # no --target
    assert r.returncode == 2 and last_line(r.stderr).startswith("error: usage_error:") and "--target" in last_line(r.stderr)
    r = mlprod("spec", "infer", tmp_path / "missing.csv", "--target", "y", cwd=tmp_path)
    assert r.returncode == 2 and last_line(r.stderr).startswith("error: file_not_found:")
    r = mlprod(cwd=tmp_path)
    assert r.returncode == 2 and last_line(r.stderr).startswith("error: no_command:")
    r = mlprod("--help", cwd=tmp_path)
    assert r.returncode == 0 and "spec" in r.stdout and "demo" in r.stdout


def test_demo_flights_writes_a_spec_with_its_lookup_table(tmp_path):
    r = mlprod("demo", "--example", "flights", "--rows", "2000", "-o", tmp_path / "demo", "--until", "write", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "== 4/5 transform ==" in r.stdout and "route_km" in r.stdout
    spec = FeatureSpec.load(tmp_path / "demo" / "flights.spec.yaml")
    assert {"JFK", "LGA", "EWR"} <= set(spec.tables["airports"]["faa"])
    assert "dep_delay" in spec.drop and "dep_delay" not in spec.features
    data = pd.read_csv(tmp_path / "demo" / "flights.csv")
    assert len(data) == 2000 and data["arr_delay"].notna().all()
