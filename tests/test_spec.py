"""The input contract end to end, on a file shaped like the public census data that surprised a new user: a CSV
written with its index, `?` placeholders, a category that moves a 24% positive rate to 45%, an integer 0/1 target —
through inference, training, `mlprod predict`, validation, the spec file and the serving path's imports."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from mlprod.spec import FeatureSpec, infer_spec

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


def mlprod(*args, cwd=None):
    "Run the `mlprod` command in a subprocess: the completed process."
    return subprocess.run([sys.executable, "-m", "mlprod.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=240)


def census_frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    "Rows like the census file: `?` in a number and in a category (after a comma and a space), a 0/1 target at 76/24."
    rng = np.random.default_rng(seed)
    job = rng.choice(["manager", "clerk", "driver"], n, p=[0.3, 0.4, 0.3])
    age = rng.integers(18, 80, n)
    hours = rng.integers(10, 60, n)
    income = (rng.random(n) < np.where(job == "manager", 0.45, 0.15)).astype(int)
    df = pd.DataFrame({"age": age.astype(str), "job": np.char.add(" ", job), "hours": hours,
                       "union": rng.choice([1, 2], n), "income": income})
    df.loc[rng.random(n) < 0.07, "age"] = "?"
    df.loc[rng.random(n) < 0.05, "job"] = " ?"
    return df


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    "The frame, written to CSV the way a notebook often does: shuffled, a tenth left out, the index kept."
    tmp = tmp_path_factory.mktemp("census")
    df = census_frame()
    df.sample(frac=0.9, random_state=1).to_csv(tmp / "census.csv")  # index=True: row numbers with gaps
    return tmp


@pytest.fixture(scope="module")
def spec(census):
    r = mlprod("spec", "infer", census / "census.csv", "--target", "income", "-o", census / "census.spec.yaml", cwd=census)
    assert r.returncode == 0, r.stderr
    return FeatureSpec.load(census / "census.spec.yaml")


@pytest.fixture(scope="module")
def bundle(census, spec):
    "A bundle trained on the raw CSV (placeholders and all) with the inferred spec."
    from mlprod.bundle import load_bundle
    from mlprod.select import train_and_select
    raw = pd.read_csv(census / "census.csv")
    sel = train_and_select(raw, spec, candidates="linear", time_budget=30, seed=0, progress="off")
    sel.save_bundle(census / "census.bundle", name="census")
    return load_bundle(census / "census.bundle")


def test_a_csv_written_with_its_index_loses_the_row_numbers_with_the_reason(census, spec):
    assert "Unnamed: 0" in pd.read_csv(census / "census.csv").columns
    assert spec.drop["Unnamed: 0"].startswith("row numbers: the index a DataFrame wrote")
    # the same numbers under another name are found by their shape: unique, with gaps after the shuffle
    df = pd.read_csv(census / "census.csv").rename(columns={"Unnamed: 0": "row"})
    assert infer_spec(df, "income").drop["row"].startswith("row numbers: unique whole numbers filling 9")


def test_placeholders_are_read_as_missing_in_inference_explore_training_predict_and_validation(census, spec, bundle):
    from mlprod.spec_infer import normalize_frame
    from mlprod.transforms import SpecTransformer
    raw = pd.read_csv(census / "census.csv")
    share = (raw["age"] == "?").mean()
    # inference: `?` is recorded, `age` is a number (not a category with a `?` level), `job` lost its spaces
    assert spec.missing_values == ["?"] and spec["age"].type == "integer" and not spec["age"].required
    assert f"{share:.1%} missing" in spec["age"].note
    assert set(spec["job"].categories) == {"clerk", "driver", "manager"}
    # what explore reads: the real share of missing cells, not 0.0%
    assert normalize_frame(raw)["age"].isna().mean() == pytest.approx(share)
    # training: a `?` is exactly a missing value to the fitted preprocessing
    clean = raw.assign(age=pd.to_numeric(raw["age"], errors="coerce"), job=raw["job"].str.strip().replace("?", np.nan))
    t = SpecTransformer(spec).fit(raw)
    np.testing.assert_array_equal(t.transform(raw), t.transform(clean))
    np.testing.assert_array_equal(t.transform(raw), SpecTransformer(spec).fit(clean).transform(clean))
    # validation (the API): a placeholder is missing — the default for an optional field, an error for a required one
    rec = {"age": "?", "job": " ? ", "hours": 40, "union": 1}
    v = spec.validate_record(rec)
    assert v.ok and v.record["age"] == spec["age"].default and v.record["job"] == spec["job"].default
    assert [e.code for e in spec.validate_record({**rec, "hours": "?"}).errors] == ["missing_field"]
    # mlprod predict: rows with `?` are predicted like the same rows with missing values, none refused
    scored = bundle.predict_frame(raw.head(300))
    assert "prediction_error" not in scored and scored["prediction"].notna().all()
    pd.testing.assert_frame_equal(scored, bundle.predict_frame(clean.head(300)))


def test_the_category_that_lifts_24_to_45_percent_has_power(census):
    from mlprod.signals import feature_signals
    df = census_frame()
    assert df["income"].mean() == pytest.approx(0.24, abs=0.02)
    sig = feature_signals(pd.read_csv(census / "census.csv"), "income", "classification")
    assert sig.loc["job", "power"] > 0.2 and sig.loc["job", "statistic"] == "roc_auc"
    assert sig.loc["job", "power"] == sig["power"].max()


def test_a_value_past_the_expected_range_is_predicted_with_a_warning_and_a_hard_limit_refuses(spec, bundle):
    lo, hi = spec["hours"].expect
    rec = {"age": 40, "job": "clerk", "hours": hi, "union": 2}
    past = round(hi + 0.2 * (hi - lo))  # 20% of the range beyond the inferred bound
    v = spec.validate_record({**rec, "hours": past})
    assert v.ok and v.record["hours"] == hi
    assert [w.to_dict() for w in v.warnings] == [{"field": "hours", "code": "outside_expected_range", "message":
        f"'hours': {past} is above the expected range [{lo}, {hi}] the model was trained on; predicted with {hi}"}]
    assert bundle.predict_record(v.record) == bundle.predict_record(spec.validate_record(rec).record)
    scored = bundle.predict_frame(pd.DataFrame([{**rec, "hours": past}]))
    assert "prediction_error" not in scored and scored["prediction"].notna().all()
    # a hard limit (a count is never negative) refuses, in validation and in mlprod predict
    assert spec["hours"].min == 0
    bad = spec.validate_record({**rec, "hours": -3})
    assert [(e.field, e.code) for e in bad.errors] == [("hours", "out_of_range")]
    assert "hours" in bundle.predict_frame(pd.DataFrame([{**rec, "hours": -3}]))["prediction_error"].iloc[0]


def test_integer_classes_stay_integers_in_the_spec_the_prediction_and_the_csv(census, spec, bundle):
    assert spec.target.classes == [0, 1] and "classes: [0, 1]" in (census / "census.spec.yaml").read_text()
    assert spec["union"].type == "category" and sorted(spec["union"].categories) == ["1", "2"]  # a code, not a quantity
    pred = bundle.predict_record(spec.validate_record({"age": 50, "job": "manager", "hours": 45, "union": 1}).record)
    assert type(pred["label"]) is int and set(pred["probabilities"]) == {"0", "1"}
    assert json.loads(json.dumps(pred))["label"] in (0, 1)
    r = mlprod("predict", census / "census.bundle", census / "census.csv", "-o", census / "scored.csv")
    assert r.returncode == 0, r.stderr
    scored = pd.read_csv(census / "scored.csv")
    assert set(scored["prediction"].unique()) <= {0, 1} and scored["prediction"].dtype.kind == "i"
    assert {"proba_0", "proba_1"} <= set(scored.columns)


def test_the_json_schema_accepts_null_exactly_where_validation_does(spec):
    schema = spec.json_schema()
    full = {"age": 40, "job": "clerk", "hours": 30, "union": 1}
    for name, f in spec.features.items():
        rec = {**full, name: None}
        valid = spec.validate_record(rec).ok
        assert valid == (not f.required), name
        try: jsonschema.validate(rec, schema); in_schema = True
        except jsonschema.ValidationError: in_schema = False
        assert in_schema == valid, name
    jsonschema.validate({**full, "hours": 10_000}, schema)  # past the expected range: accepted (and clipped)
    with pytest.raises(jsonschema.ValidationError): jsonschema.validate({**full, "hours": -1}, schema)


def test_spec_check_lists_every_problem_with_its_path(spec, census, tmp_path):
    ok = mlprod("spec", "check", census / "census.spec.yaml")
    assert ok.returncode == 0 and "a valid spec" in ok.stdout and "classes 0, 1" in ok.stdout
    d = spec.to_dict()
    d["features"]["hours"].update(clip=[90, 10], default="forty")
    d["features"]["job"]["categories"] = "clerk"
    d["location"] = [{"lat": "age", "lon": "hours", "region": {"min_lat": 50}}]
    d["derived"] = [{"kind": "distance", "name": "km", "lat": "age", "lon": "hours", "points": {"x": [1]}}]
    import yaml
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    r = mlprod("spec", "check", tmp_path / "bad.yaml")
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        "  features.job.categories: must be a list of values (text or numbers)",
        "  features.hours.clip: must be [low, high] with low <= high",
        "  features.hours.default: expected a number, got the string 'forty'",
        "  location[0].region: must be {min_lat, max_lat, min_lon, max_lon}, all numbers",
        "  derived[0].points: must be {name: [lat, lon]} with the latitude within ±90 and the longitude within ±180",
        f"error: spec_invalid: {tmp_path / 'bad.yaml'} is not a valid spec: 5 problems, listed above."]
    # training refuses the same file with the same code, before any work
    r = mlprod("train", census / "census.csv", "--spec", tmp_path / "bad.yaml", "-o", tmp_path / "b.bundle", cwd=tmp_path)
    assert r.returncode == 3 and r.stderr.splitlines()[-1].startswith("error: spec_invalid: ")


def test_the_serving_path_imports_neither_pandas_nor_scikit_learn():
    code = ("import sys, mlprod.record, mlprod.spec\n"
            "spec = mlprod.spec.FeatureSpec.from_yaml('target: {name: y, task: regression}\\nfeatures: {x: {type: number}}')\n"
            "spec.validate_record({'x': 1})\n"
            "print(sorted(m for m in ('pandas', 'sklearn', 'scipy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    # -X importtime names every module imported: none of them is pandas or scikit-learn
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mlprod.record"], capture_output=True, text=True,
                       env=ENV, timeout=60)
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "mlprod.record" in imported and not {m for m in imported if m.split(".")[0] in ("pandas", "sklearn")}
