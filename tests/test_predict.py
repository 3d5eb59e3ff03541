"""`mlprod predict` on files and on the GCS emulator: every row answered or refused, the exit status, missing columns."""
import numpy as np
import pandas as pd
import pytest

from _bundles import messy_rows, trips_bundle
from mlprod.batch import ERROR_COLUMNS, ROW_ERROR_COLUMNS
from mlprod.cli import capture

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return trips_bundle(tmp_path_factory.mktemp("predict") / "trips.bundle")


def test_each_row_answered_or_refused_and_the_exit_status_says_so(bundle, tmp_path):
    rows = messy_rows()
    rows.to_csv(tmp_path / "rows.csv", index=False)
    status, out, err = capture("predict", bundle, tmp_path / "rows.csv", "-o", tmp_path / "p.csv")
    assert status == 3 and err.splitlines()[-1].startswith("error: rows_refused:")
    got = pd.read_csv(tmp_path / "p.csv")
    problems = pd.read_csv(tmp_path / "p.errors.csv")
    assert got["index"].tolist() == list(range(len(rows)))
    refused = got["prediction_error_code"].notna()
    expect = rows["pickup_lat"].isna() | (rows["dropoff_lat"] > 90)
    assert refused.tolist() == expect.tolist() and refused.any()
    assert got.loc[~refused, "prediction"].notna().all() and got.loc[refused, "prediction"].isna().all()
    assert list(problems.columns) == ERROR_COLUMNS and set(problems["index"]) == set(got.loc[refused, "index"])
    assert set(problems["code"]) == {"missing_field", "out_of_range"}
    assert got.loc[rows["vehicle"].eq("limousine") & ~expect, "prediction"].notna().all() # unseen: predicted as other
    assert f"{(~refused).sum():,} answered, {refused.sum():,} refused" in out
    # --allow-partial: the same files, exit 0; a clean file: no errors file (a stale one is removed)
    assert capture("predict", bundle, tmp_path / "rows.csv", "-o", tmp_path / "p.csv", "--force", "--allow-partial")[0] == 0
    rows[~expect].to_csv(tmp_path / "clean.csv", index=False)
    assert capture("predict", bundle, tmp_path / "clean.csv", "-o", tmp_path / "p.csv", "--force")[0] == 0
    assert not (tmp_path / "p.errors.csv").exists()


def test_missing_required_columns_exit_3_naming_them(bundle, tmp_path):
    messy_rows().drop(columns=["pickup_lat", "vehicle"]).to_csv(tmp_path / "short.csv", index=False)
    status, out, err = capture("predict", bundle, tmp_path / "short.csv", "-o", tmp_path / "p.csv")
    assert status == 3
    assert err.splitlines()[-1].startswith("error: missing_columns: The data lacks the required column(s) pickup_lat, vehicle")
    assert not (tmp_path / "p.csv").exists()
    messy_rows().drop(columns=["passengers"]).to_csv(tmp_path / "no_optional.csv", index=False) # it has a default
    assert capture("predict", bundle, tmp_path / "no_optional.csv", "-o", tmp_path / "q.csv", "--allow-partial")[0] == 0


def test_reads_and_writes_gcs(gcs, bundle, tmp_path):
    fs, bucket = gcs.fs(), gcs.bucket()
    rows = messy_rows(300)
    with fs.open(f"{bucket}/in/rows.csv", "w") as f: rows.to_csv(f, index=False)
    out = f"gs://{bucket}/out/preds.parquet"
    status, stdout, err = capture("predict", bundle, f"gs://{bucket}/in/rows.csv", "-o", out, "--allow-partial")
    assert status == 0, err
    fs.invalidate_cache()
    with fs.open(out.removeprefix("gs://"), "rb") as f: remote = pd.read_parquet(f)
    with fs.open(f"{bucket}/out/preds.errors.parquet", "rb") as f: problems = pd.read_parquet(f)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    assert capture("predict", bundle, tmp_path / "rows.csv", "-o", tmp_path / "local.parquet", "--allow-partial")[0] == 0
    local = pd.read_parquet(tmp_path / "local.parquet")
    pd.testing.assert_frame_equal(remote, local)
    assert len(problems) and list(problems.columns) == ERROR_COLUMNS
    assert capture("predict", bundle, f"gs://{bucket}/in/rows.csv", "-o", out)[0] == 2 # exists: --force
