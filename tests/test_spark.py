"""Apache Spark, locally (pyspark from PyPI, Java 17 from Debian), ONE session for the whole test run on 127.0.0.1
with its UI off: scoring equals in-process scoring, the Spark profile equals the pandas profile, CSV/Parquet on disk
and on the GCS emulator.

Skipped, with the reason, when pyspark or Java is missing (`pip install 'mlprod[spark]'`; `apt-get install
openjdk-17-jre-headless`, which .ci/run does).

Spark costs time here, not rows: the JVM's start and each job's planning dominate, so the data is the smallest that
still shows each claim, every test (and the `mlprod predict --engine spark` runs, which join the running session)
shares the one session fixture."""
import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from _bundles import messy_rows, trips_bundle
from mlprod.cli import capture

pytestmark = pytest.mark.timeout(600)


_TEST_CONF = {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"}


@pytest.fixture(scope="session")
def spark():
    from mlprod.spark import _java_home, spark_session
    if importlib.util.find_spec("pyspark") is None: pytest.skip("pyspark is not installed: pip install 'mlprod[spark]'")
    if _java_home() is None: pytest.skip("Java 17 is not installed: apt-get install openjdk-17-jre-headless (and set JAVA_HOME)")
    session = spark_session("local[2]", conf=_TEST_CONF)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return trips_bundle(tmp_path_factory.mktemp("spark") / "trips.bundle")


def read_output(path):
    "A file, or a folder of part files, as one frame in `index` order."
    p = str(path)
    if os.path.isdir(p):
        parts = sorted(f for f in os.listdir(p) if f.startswith("part-"))
        read = pd.read_parquet if ".parquet" in p else pd.read_csv
        frame = pd.concat([read(os.path.join(p, f)) for f in parts], ignore_index=True)
    else: frame = pd.read_parquet(p) if p.endswith(".parquet") else pd.read_csv(p)
    return frame.sort_values("index").reset_index(drop=True)


def test_spark_scoring_equals_in_process(spark, bundle, tmp_path):
    "Missing values, unseen categories and refused rows: the same columns, rows, codes and numbers (1e-9 of the scale)."
    rows = messy_rows(400)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    assert capture("predict", bundle, tmp_path / "rows.csv", "-o", tmp_path / "local.csv", "--allow-partial")[0] == 0
    status, out, err = capture("predict", bundle, tmp_path / "rows.csv", "-o", tmp_path / "spark.csv",
                               "--engine", "spark", "--master", "local[2]")
    assert status == 3 and err.splitlines()[-1].startswith("error: rows_refused:"), err
    assert capture("predict", bundle, tmp_path / "rows.csv", "-o", f"{tmp_path}/parts.parquet/", "--engine", "spark",
                   "--allow-partial")[0] == 0
    local, one_file, parts = (read_output(tmp_path / n) for n in ("local.csv", "spark.csv", "parts.parquet"))
    for got in (one_file, parts):
        assert list(got.columns) == list(local.columns) and got["index"].tolist() == list(range(len(rows)))
        assert got["prediction_error_code"].fillna("").tolist() == local["prediction_error_code"].fillna("").tolist()
        num = [c for c in local.columns if c.startswith("prediction") and c not in ("prediction_error_code", "prediction_error")]
        a, b = got[num].to_numpy(float), local[num].to_numpy(float)
        assert np.array_equal(np.isnan(a), np.isnan(b))
        scale = max(1.0, float(np.nanstd(b[:, 0])))
        assert np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), scale)) <= 1e-9
    errs_local = pd.read_csv(tmp_path / "local.errors.csv").sort_values(["index", "field"]).reset_index(drop=True)
    errs_spark = read_output(tmp_path / "spark.errors.csv").sort_values(["index", "field"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(errs_spark, errs_local)
    assert local["prediction"].notna().sum() > 0.8 * len(rows)


def test_spark_reads_and_writes_gcs(spark, bundle, gcs, tmp_path):
    fs, bucket = gcs.fs(), gcs.bucket()
    rows = messy_rows(200)
    with fs.open(f"{bucket}/rows.parquet", "wb") as f: rows.to_parquet(f, index=False)
    status, out, err = capture("predict", bundle, f"gs://{bucket}/rows.parquet", "-o", f"gs://{bucket}/out/p.parquet",
                               "--engine", "spark", "--allow-partial")
    assert status == 0, err
    fs.invalidate_cache()
    with fs.open(f"{bucket}/out/p.parquet", "rb") as f: remote = pd.read_parquet(f).sort_values("index").reset_index(drop=True)
    assert fs.exists(f"{bucket}/out/p.errors.parquet")
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    assert capture("predict", bundle, tmp_path / "rows.parquet", "-o", tmp_path / "local.parquet", "--allow-partial")[0] == 0
    local = pd.read_parquet(tmp_path / "local.parquet")
    pd.testing.assert_frame_equal(remote[["index", "prediction_error_code"]], local[["index", "prediction_error_code"]],
                                  check_dtype=False)
    assert np.allclose(remote["prediction"], local["prediction"], rtol=1e-9, equal_nan=True)


def test_spark_profile_equals_pandas_profile(spark, tmp_path):
    "Counts exactly; quartiles exact elements below 10,000 rows; the same flags, notes, skews and powers."
    from mlprod.profile import messy_frame, profile
    from mlprod.spark import profile as spark_profile, read_table
    messy = messy_frame(1_200)
    messy["kind"] = messy["kind"].astype(object)
    messy.to_parquet(tmp_path / "messy.parquet", index=False)
    pdf = pd.read_parquet(tmp_path / "messy.parquet")
    sp, pp = spark_profile(read_table(spark, str(tmp_path / "messy.parquet")), "fare_usd"), profile(pdf, "fare_usd")
    exact = ["type", "role", "missing", "unique", "min", "max", "top", "has_time"]
    assert sp.table[exact].astype(str).to_dict() == pp.table[exact].astype(str).to_dict()
    assert sp.flags.to_dict("records") == pp.flags.to_dict("records")
    assert (sp.n_rows, sp.duplicate_rows, sp.notes, sp.task) == (pp.n_rows, pp.duplicate_rows, pp.notes, pp.task)
    assert np.allclose(sp.table["skew"].astype(float), pp.table["skew"].astype(float), rtol=1e-9, equal_nan=True)
    assert np.allclose(sp.power.astype(float), pp.power.astype(float), rtol=1e-12, equal_nan=True)
    for c in sp.table.index[sp.table["type"].isin(["number", "integer", "latitude", "longitude"])]:
        x = pd.to_numeric(pdf[c], errors="coerce").dropna().to_numpy()
        exact_q = [float(np.quantile(x, q, method="inverted_cdf")) for q in (0.25, 0.5, 0.75)]
        assert sp.table.loc[c, ["q1", "median", "q3"]].tolist() == exact_q, c
        lo, hi = sp.table.loc[c, "q1"] - 1.5 * (sp.table.loc[c, "q3"] - sp.table.loc[c, "q1"]), sp.table.loc[c, "q3"] + 1.5 * (sp.table.loc[c, "q3"] - sp.table.loc[c, "q1"])
        assert sp.table.loc[c, "outliers"] == ((x < lo) | (x > hi)).sum(), c


def test_spark_quartiles_within_the_stated_rank_error(spark):
    "Above 10,000 rows the quartiles are approximate: each one's rank within n / 10,000 of the exact quantile's."
    from mlprod.spark import SparkColumns
    x = np.random.default_rng(0).lognormal(0, 1, 30_000)
    cols = SparkColumns(spark.createDataFrame(pd.DataFrame({"x": x})))
    st = cols.stats({"x": "number"})["x"]
    xs, n = np.sort(x), len(x)
    for q, v in ((0.25, st["q1"]), (0.5, st["median"]), (0.75, st["q3"])):
        rank = np.searchsorted(xs, v, side="right")
        assert abs(rank - q * n) <= n / 10_000 + 1, (q, rank, q * n)
    assert (st["missing"], st["unique"], st["min"], st["max"]) == (0, n, xs[0], xs[-1])


def test_spark_report(spark, tmp_path):
    from mlprod.profile import messy_frame
    from mlprod.spark import explore_report
    sdf = spark.createDataFrame(messy_frame(800).drop(columns=["when", "empty"]))
    path = explore_report(sdf, "fare_usd", path=tmp_path / "r.html", progress=False, sample=500, title="Spark")
    text = open(path, encoding="utf-8").read()
    assert text.count("data:image/png;base64,") >= 6 and "800 rows" in text and "Could not draw" not in text
