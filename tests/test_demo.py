"""The main job: `mlprod demo` runs the whole path — data, spec, comparison, bundle, a real server, one request."""
import json
import subprocess
import sys

import pytest


def demo(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mlprod.cli", "demo", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def answer(stdout: str) -> dict:
    "The JSON envelope the demo prints after its curl line."
    text = stdout[stdout.index("/v1/predict\n") + len("/v1/predict\n"):]
    return json.loads(text[: text.index("\n}") + 2])


@pytest.mark.timeout(600)
def test_demo_serves_a_regression_answer_with_an_interval(tmp_path):
    r = demo("--example", "city_trips", "--rows", "3000", "--time-budget", "20", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for step in ("data", "spec", "split", "transform", "write", "train", "bundle", "serve"):
        assert f" {step} ==" in r.stdout
    env = answer(r.stdout)
    assert env["success"] is True and env["code"] == "ok"
    p = env["prediction"]
    assert p["lower"] <= p["value"] <= p["upper"] and 0 <= p["confidence"] <= 1 and p["coverage"] == 0.9
    assert env["model"]["name"] == "city_trips"
    assert (tmp_path / "out" / "city_trips.bundle" / "manifest.json").exists()


@pytest.mark.timeout(600)
def test_demo_serves_class_probabilities(tmp_path):
    r = demo("--example", "penguins", "--time-budget", "15", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    p = answer(r.stdout)["prediction"]
    assert p["label"] in p["probabilities"] and abs(sum(p["probabilities"].values()) - 1) < 1e-6
