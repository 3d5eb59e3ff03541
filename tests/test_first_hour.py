"""Issue 17, the first hour, from a user's seat: the commands as a newcomer runs them (subprocesses, files in a
folder) on two small public datasets that scikit-learn ships — diabetes (a regression target that is never below
25, a two-valued `sex` code) and breast cancer (a 0/1 target) — and on generated rows where a check needs a known
answer. Each test is one finding of the issue; the notebooks test the pieces."""
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.timeout(400)

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
CHATTER = ("Executing Cell", "Kernel is running", "absl", "papermill", "/tmp", "Trial ", "Warning", "Traceback")
RESULT_LINES = ("winner ", "eval ", "WARNING: ", "note: ")


def mlprod(*args, cwd, env=None, timeout=300):
    "Run the `mlprod` command as a user does (stdin closed, output not a terminal): (status, stdout, stderr)."
    p = subprocess.run([sys.executable, "-m", "mlprod.cli", *map(str, args)], capture_output=True, text=True,
                       env=env or ENV, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def sklearn_csv(name: str, folder: Path) -> Path:
    "A dataset scikit-learn ships (nothing downloaded), written as the CSV a user would have."
    from sklearn import datasets
    loader = {"diabetes": lambda: datasets.load_diabetes(as_frame=True, scaled=False),
              "cancer": lambda: datasets.load_breast_cancer(as_frame=True)}[name]
    path = folder / f"{name}.csv"
    loader().frame.to_csv(path, index=False)
    return path


def train(folder: Path, data: str, *args):
    "`mlprod train DATA --target target` into models/, the way the README runs it: (stdout, stderr, bundle)."
    status, out, err = mlprod("train", data, "--target", "target", *args, "-o", "models/m.bundle", cwd=folder)
    assert status == 0, err[-3000:]
    from mlprod.bundle import load_bundle
    return out, err, load_bundle(str(folder / "models" / "m.bundle"))


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diabetes")
    sklearn_csv("diabetes", tmp)
    return tmp, *train(tmp, "diabetes.csv", "--models", "linear,lgbm", "--deterministic", "--trials", "4",
                      "--time-budget", "20")


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cancer")
    sklearn_csv("cancer", tmp)
    return tmp, *train(tmp, "cancer.csv", "--models", "linear", "--deterministic", "--time-budget", "10")


def scored(folder: Path, data: str) -> pd.DataFrame:
    "`mlprod predict` of the bundle in models/ on DATA, read back from the CSV it writes."
    status, out, err = mlprod("predict", "models/m.bundle", data, "-o", "scored.csv", "--force", cwd=folder)
    assert status == 0, err[-2000:]
    return pd.read_csv(folder / "scored.csv")


# `mlprod train` on a small file: a few lines, no library chatter, ending with the leaderboard and the result
def test_train_prints_a_few_lines_ending_with_the_ranked_leaderboard(diabetes):
    folder, out, err, bundle = diabetes
    text = err + out
    assert len(text.splitlines()) <= 40, text
    for chatter in CHATTER: assert chatter not in text, chatter
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "model"])
    # after the table, only the result: the winner's test figures, its eval figure, warnings and notes
    rows = [line for line in lines[header + 1:] if not line.startswith(RESULT_LINES)]
    assert rows and len(rows) == len(bundle.metrics["leaderboard"]), lines
    assert all(not line.startswith(RESULT_LINES) for line in lines[header + 1:header + 1 + len(rows)])
    assert rows[0].split()[:2] == ["1", bundle.metrics["winner"]]  # the winner is the row its figures rank first
    cv = pd.DataFrame(bundle.metrics["leaderboard"]).get("cv_rmse", pd.Series(dtype=float)).notna().any()
    assert ("cv_rmse" in lines[header]) == cv and lines[header + len(rows) + 1].startswith("winner ")
    assert str(folder) not in text  # no temporary or absolute path of the run


# Intervals: never below what the target can be; a confidence that varies where the uncertainty does, or says why not
def test_intervals_stay_above_the_targets_floor_in_the_predicted_csv(diabetes):
    folder, out, err, bundle = diabetes
    y = pd.read_csv(folder / "diabetes.csv")["target"]
    assert y.min() == 25  # the data says the target is never negative
    got = scored(folder, "diabetes.csv")
    assert got["prediction"].notna().all() and (got["prediction_lower"] >= 0).all(), got.prediction_lower.min()
    assert (got["prediction_upper"] > got["prediction_lower"]).all()
    assert (bundle.testset()["expected_lower"] >= 0).all()


def test_one_confidence_for_every_row_is_explained(diabetes):
    folder, out, err, bundle = diabetes
    conf = bundle.metrics["confidence"]
    said = [line for line in out.splitlines() if line.startswith("note: one interval width for every row")]
    got = scored(folder, "diabetes.csv")
    inside = got.loc[got["prediction_lower"] > 0, "prediction_confidence"].round(9)  # intervals the floor did not cut
    assert len(inside) > 100
    if conf["has_scale_model"]:
        assert not said and inside.nunique() > 1, inside.describe()
    else:  # one width: the confidence is the same wherever an interval does not meet the floor, and a note says why
        assert len(said) == 1 and inside.nunique() == 1, out


def test_confidence_varies_by_row_where_the_noise_does(tmp_path):
    "400 rows whose noise grows with `size`: a width per row, so the confidence differs from row to row."
    r = np.random.default_rng(1)
    size = r.uniform(1, 10, 400)
    df = pd.DataFrame({"size": size, "other": r.normal(size=400), "target": 3 * size + r.normal(0, 0.2 * size ** 2)})
    df.to_csv(tmp_path / "h.csv", index=False)
    out, err, bundle = train(tmp_path, "h.csv", "--models", "linear", "--deterministic", "--time-budget", "10")
    assert bundle.metrics["confidence"]["has_scale_model"], bundle.metrics["confidence"]
    assert "one interval width" not in out and "disagree" not in out  # nothing shifted, nothing said
    conf = scored(tmp_path, "h.csv").set_index(df["size"])["prediction_confidence"].sort_index()
    # σ(x) is a boosted tree: piecewise constant, so a few dozen values; surer where the noise is small
    assert conf.nunique() > 20 and conf.iloc[:100].mean() > conf.iloc[-100:].mean() + 0.2, conf.describe()


def test_eval_and_test_disagreeing_is_said_on_the_screen_and_in_the_report(tmp_path):
    from mlprod.data import split_frame
    r = np.random.default_rng(4)
    df = pd.DataFrame({"x": r.uniform(0, 10, 600), "k": r.choice(["a", "b"], 600)})
    df["target"] = 2 * df.x + (df.k == "b") * 3 + r.normal(0, 1, 600)
    test_rows = split_frame(df, "target", "regression", (0.7, 0.15, 0.15), 0).test.index  # the split train makes
    df.loc[test_rows, "target"] += 15  # the test rows are no longer like the others
    df.to_csv(tmp_path / "shifted.csv", index=False)
    out, err, bundle = train(tmp_path, "shifted.csv", "--models", "linear", "--deterministic", "--time-budget", "10")
    assert any(line.startswith("note: eval and test disagree beyond noise") for line in out.splitlines()), out
    report = json.loads((tmp_path / "models" / "m.bundle" / "report.ipynb").read_text())
    shown = "".join("".join(o.get("text", "")) for c in report["cells"] for o in c.get("outputs", []))
    assert "eval and test disagree beyond noise" in shown  # (test_confidence_varies_by_row...: no shift, no note)


# Types: integer classes stay integers; a 0/1 target is classes, not a boolean; a two-valued number is a category
def test_a_0_1_target_stays_integer_classes_end_to_end(cancer):
    folder, out, err, bundle = cancer
    assert bundle.spec.target.classes == [0, 1]
    assert "classes: [0, 1]" in (folder / "models" / "m.spec.yaml").read_text()
    record = pd.read_csv(folder / "cancer.csv").drop(columns="target").iloc[0].to_dict()
    answer = bundle.predict_record(bundle.spec.validate_record(record).record)
    assert type(answer["label"]) is int and json.loads(json.dumps(answer))["label"] in (0, 1)
    got = scored(folder, "cancer.csv")
    assert got["prediction"].dtype.kind == "i" and set(got["prediction"]) <= {0, 1}
    assert {"proba_0", "proba_1"} <= set(got.columns)
    truth = pd.read_csv(folder / "cancer.csv")["target"]
    assert (got["prediction"] == truth).mean() > 0.9


def test_a_leak_warning_only_when_every_development_row_says_so(cancer):
    "The cancer data is this predictable (ROC AUC near 0.997): a few eval rows all right is no reason to cry leak."
    folder, out, err, bundle = cancer
    m = bundle.metrics
    near = m["eval"]["source"] == "out_of_fold" and m["eval"]["roc_auc"] >= 0.999
    assert ("NEAR-PERFECT" in out) == near and bool(m["warnings"]) == near, (m["eval"], out)
    winner = pd.DataFrame(m["leaderboard"]).set_index("model").loc[m["winner"]]
    assert (winner["warning"] != "") == near


def test_a_two_valued_number_is_offered_as_a_category(diabetes):
    folder, out, err, bundle = diabetes
    assert sorted(pd.read_csv(folder / "diabetes.csv")["sex"].unique()) == [1.0, 2.0]
    sex = bundle.spec["sex"]
    assert sex.type == "category" and "a code, not a quantity" in sex.note
    record = pd.read_csv(folder / "diabetes.csv").drop(columns="target").iloc[0].to_dict()
    a, b = (bundle.spec.validate_record({**record, "sex": v}) for v in (1, 2))  # integers, as a client sends them
    assert a.ok and b.ok and bundle.predict_record(a.record)["value"] != bundle.predict_record(b.record)["value"]
    refused = bundle.spec.validate_record({**record, "sex": 3})
    assert [(e.field, e.code) for e in refused.errors] == [("sex", "unknown_category")]


# Exploration: one spec named after the data, the 0/1 target not called boolean, suggestions that change something,
# a snippet that runs as shown, "strong predictor" kept for what stands out
@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    sklearn_csv("cancer", tmp)
    status, out, err = mlprod("explore", "cancer.csv", "--target", "target", "-o", "report.html", "--sample", "300",
                              cwd=tmp)
    assert status == 0, err[-2000:]
    return tmp, (tmp / "report.html").read_text(encoding="utf-8")


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<img [^>]*>", "", page))))


def test_explore_writes_one_spec_named_after_the_data(explored):
    folder, page = explored
    assert sorted(p.name for p in folder.glob("*.spec.yaml")) == ["cancer.spec.yaml"]


def test_explore_calls_a_0_1_target_classes_not_boolean(explored):
    folder, page = explored
    row = re.search(r"<tr><td><b>target</b></td>(.*?)</tr>", page, re.S)
    assert row, "no row for the target in the columns table"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[:2] == ["category", "target"], cells
    report = _text(page).split("The spec these suggestions apply to")[0]  # the spec's comment lists every type
    assert "Suggestions" in report and "boolean" not in report


def test_explore_suggests_a_log_only_where_it_changes_the_spread(explored):
    """Each suggested log(1 + x) at least halves the column's skew, measured here on the data itself; no other column
    that a log would even out as much is left without the suggestion."""
    folder, page = explored
    df = pd.read_csv(folder / "cancer.csv")
    logged = re.findall(r"Suggestion\('([^']+)', 'log', True", html.unescape(page))
    assert logged, "the cancer data has skewed columns a log evens out"
    for col in logged:
        before, after = df[col].skew(), np.log1p(df[col]).skew()
        assert abs(after) <= before / 2, (col, before, after)
    for col in set(df.columns) - set(logged) - {"target"}:
        before, after = df[col].skew(), np.log1p(df[col]).skew()
        assert not (before > 1 and abs(after) <= min(1.0, before / 2) and df[col].min() >= 0
                    and df[col].nunique() > 12), (col, before, after)


def test_explore_snippet_runs_as_shown_in_the_folder(explored):
    folder, page = explored
    program = html.unescape(re.search(r"<pre><code>(from mlprod.explore import Suggestion.*?)</code></pre>", page,
                                      re.S).group(1))
    before = (folder / "cancer.spec.yaml").read_text()
    ran = subprocess.run([sys.executable, "-c", program], cwd=folder, capture_output=True, text=True, timeout=120,
                         env=ENV)
    assert ran.returncode == 0, ran.stderr
    after = (folder / "cancer.spec.yaml").read_text()
    assert after != before and "log: true" in after
    from mlprod.spec import FeatureSpec
    assert FeatureSpec.load(str(folder / "cancer.spec.yaml")).target.classes == [0, 1]


def test_strong_predictor_is_kept_for_what_stands_out():
    "Thirty informative columns of the cancer data: none is flagged; one column computed from the target is."
    from sklearn.datasets import load_breast_cancer
    from mlprod.profile import profile
    df = load_breast_cancer(as_frame=True).frame
    plain = profile(df, "target", sample=2_000)
    assert (plain.power.drop("target") > 0.5).sum() >= 10  # many informative columns...
    assert plain.flagged("strong_predictor", "leak") == []  # ...and none of them is unusual
    r = np.random.default_rng(0)
    near = df.assign(code=df["target"] * 2 + r.normal(0, 0.05, len(df)))  # almost the label itself
    assert profile(near, "target", sample=2_000).flagged("strong_predictor", "leak") == ["code"]


# The first serve: the settings it needs are in --help; a short secret fails before anything is printed
def test_serve_help_lists_the_first_run_settings(tmp_path):
    status, out, err = mlprod("serve", "--help", cwd=tmp_path)
    assert status == 0
    for needed in ("MLPROD_JWT_SECRET", "32", "MLPROD_AUTH=off", "mlprod token", "Authorization: Bearer"):
        assert needed in out, needed


def test_token_with_a_short_secret_prints_nothing_but_the_error(tmp_path):
    status, out, err = mlprod("token", cwd=tmp_path, env=dict(ENV, MLPROD_JWT_SECRET="too-short"))
    assert (status, out) == (2, "")
    assert err.splitlines() == [err.strip()] and err.startswith("error: bad_key: ") and "32 bytes" in err
    status, out, err = mlprod("token", cwd=tmp_path, env=dict(ENV, MLPROD_JWT_SECRET="x" * 40))
    assert status == 0 and len(out.splitlines()) == 1 and out.count(".") == 2  # the token, alone on stdout
