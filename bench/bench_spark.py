"""Batch scoring, in-process against local Apache Spark: the ratio at 1,000,000 rows and the growth to 10,000,000.

    python bench/bench_spark.py [--rows 1000000,10000000] [--master local[2]] [--engines in-process,spark]
                                [--record-rows 100000] [--keep DIR]

One bundle (a HistGradientBoosting model of the generated city trips, 40 rounds, interval and confidence), one
Parquet file per size (the generated trips, seeded; a few rows refused, some unseen vehicles). Each run is the
command a user types, in a fresh process, timed from start to exit:

- ``in-process``: ``mlprod predict BUNDLE rows.parquet -o out.parquet --allow-partial``;
- ``spark``: the same with ``--engine spark --master local[2]`` (JVM start-up included; the output is one file).

Printed: wall time, rows per second, the Spark/in-process ratio per size, and each engine's growth factor from the
smallest size to the largest (10x the rows: 10x the time is linear). Before that, the validation both engines run,
side by side in this process on the smallest size's rows: ``validate_frame`` (a column at a time, what
``score_frame`` uses) against ``validate_records`` (a record at a time, the API's rule and its reference) on a
slice of ``--record-rows`` rows, as rows per second and their ratio. ``--engines`` picks the engines (e.g.
``in-process`` alone for the growth to 10M on a busy machine). Peak memory is the bench's children's
ru_maxrss (for Spark, the largest of the Python driver, the JVM and the Python workers). Java 17 and pyspark needed
(the spark extra). Not part of CI; the machine is shared, so run it twice and read the ratios.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the small real bundle the Spark tests use


def make_rows(n: int, path: Path, seed: int = 0) -> None:
    "The generated city trips without the target, in chunks of a million, as one Parquet file."
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlprod.data import make_city_trips
    writer = None
    for start in range(0, n, 1_000_000):
        k = min(1_000_000, n - start)
        df = make_city_trips(k, seed=seed + start).drop(columns=["duration_min"])
        rng = np.random.default_rng(seed + start)
        df.loc[rng.random(k) < 0.01, "pickup_lat"] = np.nan
        df.loc[rng.random(k) < 0.05, "vehicle"] = "limousine"
        table = pa.Table.from_pandas(df, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def run(args: list, env: dict) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "mlprod.cli", "predict", *map(str, args)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode: return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"wall_s": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def validation(data: Path, record_rows: int) -> None:
    "Rows per second of the column-at-a-time validator and of the record validator, on the same rows."
    import pandas as pd
    from mlprod.bundle import frame_records, load_bundle
    from mlprod.spec_frame import validate_frame
    df = pd.read_parquet(data)
    spec = load_bundle(data.parent / "trips.bundle").spec
    t = time.perf_counter(); fast = validate_frame(spec, df); t_frame = time.perf_counter() - t
    part = df.head(record_rows)
    t = time.perf_counter(); ref = spec.validate_records(frame_records(part), unknown_fields="ignore")
    t_rec = time.perf_counter() - t
    same = fast.errors[fast.errors["index"] < len(part)]["code"].tolist() == [e.code for e in ref.errors]
    a, b = len(df) / t_frame, len(part) / t_rec
    print(f"validation: validate_frame {len(df):,} rows {t_frame:.2f} s ({a:,.0f} rows/s); validate_records "
          f"{len(part):,} rows {t_rec:.2f} s ({b:,.0f} rows/s); {a / b:.0f}x; same codes on the slice: {same}\n",
          flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000000,10000000", help="comma-separated sizes (default 1M and 10M)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--engines", default="in-process,spark", help="comma-separated: in-process, spark")
    ap.add_argument("--record-rows", type=int, default=100_000, help="rows the record validator checks (0: skip)")
    ap.add_argument("--keep", help="folder for the bundle, the data and the outputs (a temporary one otherwise)")
    a = ap.parse_args(argv)
    from _bundles import trips_bundle
    from mlprod.spark import _java_home
    out = Path(a.keep or tempfile.mkdtemp(prefix="bench-spark-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAVA_HOME": os.environ.get("JAVA_HOME") or (_java_home() or "")}
    bundle = trips_bundle(out / "trips.bundle", n=20_000) if not (out / "trips.bundle").exists() else out / "trips.bundle"
    sizes = [int(s) for s in a.rows.split(",")]
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPU(s), load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start; master {a.master}\n")
    results, engines = {}, a.engines.split(",")
    for n in sizes:
        data = out / f"rows_{n}.parquet"
        if not data.exists(): make_rows(n, data)
        if n == sizes[0] and a.record_rows: validation(data, a.record_rows)
        for engine, extra in (("in-process", []), ("spark", ["--engine", "spark", "--master", a.master])):
            if engine not in engines: continue
            dest = out / f"{engine}_{n}.parquet"
            results[engine, n] = r = run([bundle, data, "-o", dest, "--allow-partial", "--force", *extra], env)
            line = r.get("error") or f"{r['wall_s']:8.1f} s  {n / r['wall_s']:>10,.0f} rows/s"
            print(f"{n:>12,} rows  {engine:<11} {line}", flush=True)
    if len(engines) > 1: print(f"\n{'rows':>12}  {'spark / in-process':>20}")
    for n in sizes:
        a_, b_ = results.get(("in-process", n), {"error": ""}), results.get(("spark", n), {"error": ""})
        if "error" not in a_ and "error" not in b_: print(f"{n:>12,}  {b_['wall_s'] / a_['wall_s']:>19.2f}x")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for engine in engines:
            r0, r1 = results[engine, lo], results[engine, hi]
            if "error" not in r0 and "error" not in r1:
                print(f"{engine}: {hi / lo:.0f}x the rows took {r1['wall_s'] / r0['wall_s']:.1f}x the time")
    print(f"peak memory of the largest child process: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MiB; "
          f"load average at the end {os.getloadavg()[0]:.1f}; files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
