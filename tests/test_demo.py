"""The main job: `mlprod demo` runs the whole path — data, spec, comparison, bundle, a real server, one request —
and with `--serve` leaves the server running with a token and a curl line that work when pasted into a shell."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def demo(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "mlprod.cli", "demo", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def answer(stdout: str) -> dict:
    "The JSON envelope the demo prints after sending its test record."
    marker = "sent with a token:\n"
    text = stdout[stdout.index(marker) + len(marker):]
    return json.loads(text[: text.index("\n}") + 2])


@pytest.mark.timeout(600)
def test_demo_serves_a_regression_answer_with_an_interval(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    r = demo("--example", "city_trips", "--rows", "3000", "--time-budget", "20", "-o", str(tmp_path / "out"),
             cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for step in ("data", "spec", "split", "transform", "write", "train", "bundle", "serve"):
        assert f" {step} ==" in r.stdout
    env = answer(r.stdout)
    assert env["success"] is True and env["code"] == "ok"
    p = env["prediction"]
    assert p["lower"] <= p["value"] <= p["upper"] and 0 <= p["confidence"] <= 1 and p["coverage"] == 0.9
    assert env["model"]["name"] == "city_trips"
    assert (tmp_path / "out" / "city_trips.bundle" / "manifest.json").exists()
    # the server is stopped; the demo says how to keep it, with the curl line quoted for a shell
    assert "mlprod demo --serve" in r.stdout and '-H "Authorization: Bearer $TOKEN"' in r.stdout
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary folder is gone


@pytest.mark.timeout(600)
def test_demo_serve_leaves_a_server_that_the_printed_lines_reach(tmp_path):
    "The lines the demo prints are run as a person would paste them (bash, real curl); Ctrl-C stops it all."
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "-m", "mlprod.cli", "demo", "--example", "penguins", "--time-budget", "10",
                             "--serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=tmp_path, env=env)
    out = []
    try:
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the demo ended ({proc.wait()}):\n" + "".join(out[-40:])
            out.append(line)
            if "Stop the server with Ctrl-C" in line:
                break
        lines = [ln.strip() for ln in out if ln.strip().startswith(("export TOKEN=", "curl "))]
        assert len(lines) == 2 and lines[1].startswith('curl -s -H "Authorization: Bearer $TOKEN"'), lines
        pasted = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=30)
        env_ = json.loads(pasted.stdout)
        assert env_["success"] is True and env_["model"]["name"] == "penguins", pasted.stdout + pasted.stderr
        assert set(env_["prediction"]) >= {"label", "probabilities", "confidence"}
        port = int(lines[1].rsplit(":", 1)[1].split("/")[0])
        # it keeps running: a second call a moment later still answers
        time.sleep(1)
        assert json.loads(subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True,
                                         timeout=30).stdout)["success"] is True
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with socket.socket() as s:  # the server is gone: its port is free again (connections may linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert list((tmp_path / "tmp").iterdir()) == []
