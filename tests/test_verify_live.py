"""`mlprod verify`: the prepared test set replayed through a real `mlprod serve` (gunicorn on 127.0.0.1) over HTTP."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlprod.cli import capture
from mlprod.deploy import deploy
from mlprod.registry import load_config
from penguin_bundles import penguin_bundle
from test_api import Server, free_port

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]
SECRET = "verify-live-secret-long-enough-for-hs256-signing"
API_ENV = {"MLPROD_JWT_SECRET": SECRET, "MLPROD_JWT_AUDIENCE": "mlprod-verify-tests", "MLPROD_MAX_INSTANCES": "8"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    "dev has bundle a live; two servers run: one serving dev's live copy, one serving another version (b)."
    work = tmp_path_factory.mktemp("verify")
    a, b = penguin_bundle(10), penguin_bundle(20)
    cfg = work / "mlprod.yaml"
    cfg.write_text(yaml.safe_dump({"environments": {"dev": {"store": str(work / "dev")}}}))
    live = deploy(a, load_config(cfg).env("dev"), progress="off")
    servers = []
    for bundle in (Path(work / "dev" / "bundles" / live.version), b):
        port = free_port()
        args = [sys.executable, "-m", "mlprod.cli", "serve", str(bundle), "--port", str(port)]
        servers.append(Server(args, API_ENV, port, work / f"server-{port}.log"))
    try:
        yield cfg, [s.wait("/v1/ready") for s in servers]
    finally:
        for s in servers: s.stop()


def verify(cfg, *args):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROD_")} | API_ENV | {
        "MLPROD_CONFIG": str(cfg), "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "mlprod.cli", "verify", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_verify_replays_the_test_set_through_the_running_api_and_finds_it_equal(setup):
    cfg, (same, other) = setup
    r = verify(cfg, "--env", "dev", "--url", same.url)
    assert r.returncode == 0, r.stderr
    assert "parity: all" in r.stdout and "rows equal the expected outputs" in r.stdout
    rows = int(r.stdout.split("parity: all ")[1].split()[0])
    assert rows > 8  # the whole test set, in batches the API accepts (it takes at most 8 instances)


def in_process(cfg, *args, env=API_ENV):
    "`mlprod verify *args` in this process, with `env` as the only MLPROD_* settings."
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLPROD_")}
    for k in saved: del os.environ[k]
    os.environ.update(env | {"MLPROD_CONFIG": str(cfg)})
    try: return capture("verify", *args)
    finally:
        for k in [k for k in os.environ if k.startswith("MLPROD_")]: del os.environ[k]
        os.environ.update(saved)


def test_verify_reports_every_answer_that_differs(setup):
    cfg, (same, other) = setup
    status, out, err = in_process(cfg, "--env", "dev", "--url", other.url)
    assert status == 4 and err.strip().splitlines()[-1].startswith("error: gate_failed:")
    assert "it serves" in err and "rows differ from the expected outputs" in err
    assert out.count('"row"') == 10  # the first failing rows, one JSON object a line


def test_verify_without_a_token_or_a_server_says_so(setup):
    cfg, (same, other) = setup
    status, out, err = in_process(cfg, "--env", "dev", "--url", same.url, env={})
    assert status == 2 and "missing_token" in err
    status, out, err = in_process(cfg, "--env", "dev", "--url", f"http://127.0.0.1:{free_port()}")
    assert status == 1 and "endpoint_unavailable" in err.strip().splitlines()[-1]
