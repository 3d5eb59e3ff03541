"""Environments, signed bundles and deployment behind the test-set gate, on a local folder AND on the GCS emulator
(gcsfs and google-cloud-storage unpatched): kills during the copy, racing deploys, tampered and unsigned bundles, a
failing gate, promotion and rollback — each checked against the pointer and the ledger the store really holds."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlprod.bundle import load_bundle, sign_bundle, write_manifest
from mlprod.cli import capture
from mlprod.deploy import deploy
from mlprod.errors import BundleError
from mlprod.registry import load_config
from mlprod.signing import SIGNATURE_FILE, generate_keys
from mlprod.store import open_store
from penguin_bundles import copy_of

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- bundles, keys, configs

@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="session")
def keys(work):
    "The trusted key pair (files, as `mlprod env init` writes them) and another one nobody trusts."
    (work / "keys").mkdir()
    private, public = generate_keys()
    (work / "keys" / "signing.key").write_bytes(private)
    (work / "keys" / "signing.pub").write_bytes(public)
    return {"private": work / "keys" / "signing.key", "public": work / "keys" / "signing.pub",
            "other_private": generate_keys()[0]}


@pytest.fixture(scope="session")
def bundles(work, keys):
    "Three signed penguin bundles of different versions (real models, about a second each)."
    out = {}
    for name, rounds in (("a", 10), ("b", 20), ("c", 30)):
        out[name] = copy_of(rounds, work / f"{name}.bundle")
        sign_bundle(out[name], keys["private"])
    assert len({load_bundle(p).version for p in out.values()}) == 3
    return out


def version(path) -> str: return json.loads((Path(path) / "manifest.json").read_text())["version"]


@pytest.fixture(params=["local", "gcs"])
def config(request, tmp_path, keys):
    "An mlprod.yaml with dev, staging and prod stores — local folders, or prefixes of a fresh emulator bucket."
    if request.param == "gcs":
        bucket = request.getfixturevalue("gcs").bucket()
        stores = {n: f"gs://{bucket}/{n}" for n in ("dev", "staging", "prod")}
    else: stores = {n: str(tmp_path / "stores" / n) for n in ("dev", "staging", "prod")}
    doc = {"signing": {"public_key": str(keys["public"]), "private_key_file": str(keys["private"])},
           "environments": {n: {"store": s} for n, s in stores.items()}}
    doc["environments"]["prod"]["gate"] = {"metric": "roc_auc", "threshold": 0.9}
    path = tmp_path / "mlprod.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def store(config, env="dev"):
    return open_store(load_config(config).env(env).store, env)


def mlprod_env(config) -> dict:
    return {**os.environ, "MLPROD_CONFIG": str(config),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def spawn(config, *args) -> subprocess.Popen:
    "`mlprod *args` in its own process (python -m mlprod.cli), stderr piped line by line."
    return subprocess.Popen([sys.executable, "-m", "mlprod.cli", *map(str, args)], env=mlprod_env(config),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


def cli(config, *args) -> tuple:
    "`mlprod *args` in this process: (status, stdout, stderr)."
    os.environ["MLPROD_CONFIG"] = str(config)
    try: return capture(*args)
    finally: del os.environ["MLPROD_CONFIG"]


def error_code(stderr: str) -> str: return stderr.strip().splitlines()[-1].split(":")[1].strip()


# ---------------------------------------------------------------- the workflow

def test_deploy_promote_rollback_move_the_pointer_and_the_ledger_records_each_move(config, bundles):
    a, b = version(bundles["a"]), version(bundles["b"])
    status, out, err = cli(config, "deploy", bundles["a"], "--env", "dev", "--progress", "plain")
    assert status == 0, err
    assert f"is live in dev (previous: none)" in out and "gate passed" in out
    assert "[copy to dev] 1/" in err  # plain progress lines when stderr is not a terminal
    assert cli(config, "promote", "--from", "dev", "--to", "staging", "--progress", "off")[0] == 0
    assert cli(config, "deploy", bundles["b"], "--env", "staging", "--progress", "off")[0] == 0
    assert store(config, "staging").live()["version"] == b

    status, out, err = cli(config, "rollback", "--env", "staging")  # one command
    assert status == 0, err
    live = store(config, "staging").live()
    assert (live["version"], live["action"], live["previous"]) == (a, "rollback", b)
    moves = [(e["action"], e["version"], e["previous"]) for e in store(config, "staging").ledger()]
    assert moves == [("promote", a, None), ("deploy", b, a), ("rollback", a, b)]
    promoted = store(config, "staging").ledger()[0]
    assert promoted["source"] == {"env": "dev", "version": a} and promoted["gate"]["passed"] is True
    trusted = list(load_config(config).env("staging").trust.keys)
    assert promoted["signer"] == live["signer"] == trusted[0]

    # what is live is a verified, signed copy in the environment's own store
    copy = load_bundle(store(config, "staging").bundle_uri(a), trust=load_config(config).env("staging").trust)
    assert copy.signer == live["signer"] and copy.version == a

    out = cli(config, "status")[1]
    assert a in out and "rollback" in out
    hist = cli(config, "history", "--env", "staging")[1]
    assert hist.count("gate passed") == 2 and "rollback" in hist


def test_a_bundle_failing_the_gate_is_refused_with_the_failing_rows(config, bundles, keys, tmp_path):
    drifted = tmp_path / "drifted.bundle"
    shutil.copytree(bundles["b"], drifted)
    ts = pd.read_parquet(drifted / "testset.parquet")
    ts.loc[[2, 7], "expected_confidence"] += 0.05  # the deployed copy will not give these
    ts.to_parquet(drifted / "testset.parquet", index=False)
    write_manifest(drifted)
    sign_bundle(drifted, keys["private"])
    assert cli(config, "deploy", bundles["a"], "--env", "dev", "--progress", "off")[0] == 0
    before = store(config).live()

    status, out, err = cli(config, "deploy", drifted, "--env", "dev", "--progress", "off")
    assert (status, error_code(err)) == (4, "gate_failed")
    assert "2 of" in err and "row 2: confidence" in err and "row 7: confidence" in err
    assert store(config).live() == before
    refused = store(config).ledger()[-1]
    assert (refused["action"], refused["code"], refused["attempted"]) == ("refused", "gate_failed", "deploy")
    assert refused["gate"]["failed_rows"] == {"batch": 2, "record": 2} and refused["live"] == version(bundles["a"])

    # the threshold: prod asks roc_auc >= 0.9 and gets it; an impossible one refuses
    assert cli(config, "deploy", bundles["a"], "--env", "prod", "--progress", "off")[0] == 0
    strict = load_config(config).env("prod")
    strict.gate.threshold = 1.01
    with pytest.raises(BundleError) as e: deploy(bundles["b"], strict, progress="off")
    assert e.value.code == "gate_failed" and "worse than the threshold 1.01" in e.value.message
    assert store(config, "prod").live()["version"] == version(bundles["a"])


# ---------------------------------------------------------------- signatures

def test_bundles_changed_after_signing_or_signed_by_an_unknown_key_are_refused(config, bundles, keys, tmp_path):
    def variant(name, change):
        p = tmp_path / name
        shutil.copytree(bundles["c"], p)
        change(p)
        return p
    def edit_manifest(p):
        m = json.loads((p / "manifest.json").read_text()); m["name"] = "impostor"
        (p / "manifest.json").write_text(json.dumps(m))
    def swap_model_and_rehash(p):  # replace a pickle and re-hash the manifest, keeping the old signature
        sig = (p / SIGNATURE_FILE).read_bytes()
        shutil.copyfile(bundles["a"] / "model" / "model.joblib", p / "model" / "model.joblib")
        write_manifest(p); (p / SIGNATURE_FILE).write_bytes(sig)
    cases = {
        "manifest-edited": (variant("m", edit_manifest), "signature_invalid"),
        "pickle-swapped": (variant("p", swap_model_and_rehash), "signature_invalid"),
        "unknown-key": (variant("k", lambda p: sign_bundle(p, keys["other_private"])), "signature_invalid"),
        "unsigned": (variant("u", lambda p: (p / SIGNATURE_FILE).unlink()), "signature_invalid"),
        "file-changed": (variant("f", lambda p: open(p / "metrics.json", "ab").write(b" ")), "bundle_tampered"),
    }
    assert cli(config, "deploy", bundles["a"], "--env", "dev", "--progress", "off")[0] == 0
    before, n = store(config).live(), len(store(config).ledger())
    for name, (path, code) in cases.items():
        status, out, err = cli(config, "deploy", path, "--env", "dev", "--progress", "off")
        assert (name, status, error_code(err)) == (name, 4, code), err
        assert store(config).live() == before, name
    refused = store(config).ledger()[n:]
    assert [(e["action"], e["code"]) for e in refused] == [("refused", c) for _, c in cases.values()]
    assert "not trusted here" in refused[2]["reason"] and "not signed" in refused[3]["reason"]
    # signatures are refused before a byte is copied, a changed file during the copy: only a is in the store
    c = version(bundles["c"])
    with pytest.raises(BundleError) as e: load_bundle(store(config).bundle_uri(c))
    assert e.value.code == "bundle_incomplete"


# ---------------------------------------------------------------- kills and races

def _kill_after_line(proc, prefix: str) -> bool:
    "Read the child's stderr until a line starts with `prefix`, then SIGKILL it; True when the line came."
    for line in proc.stderr:
        if line.startswith(prefix):
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return True
    proc.wait(30)
    return False


def _partial(st, v) -> bool:
    "Did a killed copy leave part of the bundle in the store (files, but not a complete copy)?"
    if st.uri.startswith("gs://"):
        import gcsfs
        fs = gcsfs.GCSFileSystem(skip_instance_cache=True)
        names = fs.find(f"{st.uri[5:]}/bundles/{v}")
        return bool(names) and not any(n.endswith(f"{v}/manifest.json") for n in names)
    return any(p.name.startswith(f".partial-{v}-") for p in (Path(st.uri) / "bundles").iterdir())


def upload(gcs, folder: Path) -> str:
    "Copy a bundle folder to a fresh bucket on the emulator; return its gs:// URL."
    fs, bucket = gcs.fs(), gcs.bucket("bundles")
    for p in sorted(folder.rglob("*")):
        if p.is_file(): fs.put_file(str(p), f"{bucket}/{folder.name}/{p.relative_to(folder).as_posix()}")
    return f"gs://{bucket}/{folder.name}"


def test_a_deploy_killed_during_its_copy_leaves_pointer_and_ledger_consistent_and_the_retry_succeeds(
        config, bundles, gcs):
    "Killed after the first, a middle and the second-to-last file (different points on each kind of store)."
    assert cli(config, "deploy", bundles["a"], "--env", "dev", "--progress", "off")[0] == 0
    st, b = store(config), version(bundles["b"])
    source = upload(gcs, bundles["b"])  # read over HTTP, file by file: the copy takes long enough to be cut
    before_live, before_ledger = st.live(), st.ledger()
    n = len(json.loads((bundles["b"] / "manifest.json").read_text())["hashes"]) + 2
    partial = []
    for k in ((1, n - 2) if "gs://" in st.uri else (n // 2, n - 1)):
        proc = spawn(config, "deploy", source, "--env", "dev", "--progress", "plain")
        assert _kill_after_line(proc, f"[copy to dev] {k}/{n} "), proc.stderr
        assert proc.returncode == -signal.SIGKILL
        assert (st.live(), st.ledger()) == (before_live, before_ledger), f"killed after file {k}"
        partial.append(_partial(st, b))
        try: assert load_bundle(st.bundle_uri(b)).version == b  # a copy that is there at all is complete
        except BundleError as e: assert e.code == "bundle_incomplete"
    assert any(partial), "no kill landed inside the copy"

    move = deploy(source, load_config(config).env("dev"), progress="off")  # the retry
    assert st.live()["version"] == b and st.ledger() == before_ledger + [move.entry]
    assert load_bundle(st.bundle_uri(b)).version == b
    assert not _partial(st, b)


def test_two_deploys_racing_for_one_environment_one_switches_the_other_gets_a_conflict(config, bundles):
    assert cli(config, "deploy", bundles["a"], "--env", "dev", "--progress", "off")[0] == 0
    st = store(config)
    slow = spawn(config, "deploy", bundles["b"], "--env", "dev", "--progress", "plain")
    for line in slow.stderr:  # it has read LIVE and started copying: hold it there
        if line.startswith("[copy to dev] 1/"):
            slow.send_signal(signal.SIGSTOP)
            break
    try: fast = cli(config, "deploy", bundles["c"], "--env", "dev", "--progress", "off")
    finally: slow.send_signal(signal.SIGCONT)
    _, rest = slow.communicate(timeout=120)
    assert fast[0] == 0, fast[2]
    assert (slow.returncode, error_code(rest)) == (5, "deploy_conflict"), rest
    assert "retry" in rest.strip().splitlines()[-1]
    assert st.live()["version"] == version(bundles["c"])
    tail = st.ledger()[-2:]
    moves = [(e["action"], e["version"]) for e in tail]
    assert moves == [("deploy", version(bundles["c"])), ("refused", version(bundles["b"]))]
    assert tail[1]["code"] == "deploy_conflict" and tail[1]["live"] == version(bundles["a"])


def test_a_second_deploy_of_the_same_version_reuses_the_copy_and_a_damaged_copy_is_replaced(config, bundles):
    env = load_config(config).env("dev")
    first = deploy(bundles["a"], env, progress="off")
    st = store(config)
    if not st.uri.startswith("gs://"):  # damage the local copy: the next deploy copies it again before gating
        with open(Path(st.bundle_uri(first.version)) / "metrics.json", "ab") as f: f.write(b" ")
    again = deploy(bundles["a"], env, progress="off")
    assert (again.version, again.entry["previous"]) == (first.version, first.version)
    assert load_bundle(st.bundle_uri(first.version)).version == first.version


# ---------------------------------------------------------------- config and keys

def test_env_init_writes_a_working_config_and_a_private_key_only_its_owner_reads(tmp_path, bundles):
    cfg = tmp_path / "mlprod.yaml"
    status, out, err = capture("env", "init", "--root", tmp_path / "deploy", "--config", cfg)
    assert status == 0, err
    key = tmp_path / "deploy" / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    stores = [Path(e.store) for e in load_config(cfg).environments.values()]
    assert [s.name for s in stores] == ["dev", "staging", "prod"] and all(key.parent not in s.parents for s in stores)
    local = tmp_path / "b.bundle"
    shutil.copytree(bundles["a"], local)
    (local / SIGNATURE_FILE).unlink()
    assert cli(cfg, "deploy", local, "--env", "dev", "--progress", "off")[0] == 4  # signatures required
    assert cli(cfg, "sign", local)[0] == 0
    assert cli(cfg, "deploy", local, "--env", "dev", "--progress", "off")[0] == 0
    assert capture("env", "init", "--root", tmp_path / "deploy", "--config", cfg)[0] == 2  # no overwrite


def test_a_broken_config_lists_every_problem_and_exits_2(tmp_path):
    cfg = tmp_path / "mlprod.yaml"
    cfg.write_text("environments:\n  dev: {gate: {treshold: 1}}\n  prod: {store: p, gate: {tolerance: 0}}\n")
    status, out, err = cli(cfg, "status")
    assert (status, error_code(err)) == (2, "config_invalid")
    for problem in ("environments.dev.store: is required", "environments.dev.gate.treshold: unknown key",
                    "environments.prod.gate.tolerance: must be a number above 0"):
        assert problem in err
    missing = cli(tmp_path / "none.yaml", "status")
    assert (missing[0], error_code(missing[2])) == (2, "no_config")
