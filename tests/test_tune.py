"""Local tuning as a user runs it: `mlprod tune` in a subprocess, killed with SIGKILL halfway and started again; the
training package built by `mlprod package` and run as a trial; a wrong config; the papermill job."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}

SLOW_RF = """
trainingInput:
  args: [--model=rf]
  hyperparameters:
    goal: MINIMIZE
    hyperparameterMetricTag: rmse
    maxTrials: 10
    maxParallelTrials: 2
    params:
    - {parameterName: n_estimators, type: INTEGER, minValue: 150, maxValue: 300}
    - {parameterName: max_features, type: DOUBLE, minValue: 0.3, maxValue: 1.0}
"""


def mlprod(*args, cwd, env=ENV, **kw):
    return subprocess.run([sys.executable, "-m", "mlprod.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, **kw)


@pytest.fixture(scope="module")
def trips(tmp_path_factory) -> Path:
    "1,500 generated city trips as a CSV a user would have."
    from mlprod.data import load_example
    path = tmp_path_factory.mktemp("data") / "trips.csv"
    load_example("city_trips", n=1500, seed=2).frame.to_csv(path, index=False)
    return path


def finished(db: Path) -> dict:
    "Trials of the study that ran to an end: number -> (state, params, value)."
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="mlprod-tune", storage=f"sqlite:///{db}")
    retried = {t.user_attrs.get("retry_of") for t in study.trials} - {None}
    return {t.number: (t.state.name, t.user_attrs.get("params"), t.value) for t in study.trials
            if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and t.number not in retried}


def test_sigkill_halfway_then_resume_loses_and_reruns_nothing(tmp_path, trips):
    import optuna
    from mlprod.bundle import load_bundle
    from mlprod.signing import Trust, generate_keys, key_id, load_public_key
    (tmp_path / "hp.yaml").write_text(SLOW_RF)
    target = "duration_min"
    cmd = [sys.executable, "-m", "mlprod.cli", "tune", str(trips), "--target", target, "--config", "hp.yaml", "-o", "trips.bundle"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = tmp_path / "trips.tune" / "study.db"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if proc.poll() is not None: pytest.fail(f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
            if db.exists():
                try: done = finished(db)
                except Exception: continue  # the study is being created
                if len(done) >= 3: break
        else: pytest.fail("no three trials finished in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None: proc.kill()
    before = finished(db)
    assert 3 <= len(before) < 10, before
    study = optuna.load_study(study_name="mlprod-tune", storage=f"sqlite:///{db}")
    running = {t.number: t.user_attrs.get("params") for t in study.trials if t.state.name == "RUNNING"}
    assert not (tmp_path / "trips.bundle").exists()

    private, public = generate_keys()  # a signing key configured: the tuned bundle is signed as a trained one is
    p = mlprod("tune", trips, "--target", target, "--config", "hp.yaml", "-o", "trips.bundle", cwd=tmp_path,
               env={**ENV, "MLPROD_SIGNING_KEY": private.decode()})
    assert p.returncode == 0, p.stderr[-3000:]
    assert load_bundle(tmp_path / "trips.bundle", trust=Trust.of(public)).signer == key_id(load_public_key(public))
    assert "resuming: " in p.stderr and f"{len(before)} trial(s) finished" in p.stderr, p.stderr[-2000:]
    after = finished(db)
    for n, trial in before.items(): assert after[n] == trial, n  # nothing finished was lost or changed
    assert len(after) == 10 and all(s == "COMPLETE" for s, _, _ in after.values())
    params = [json.dumps(v[1], sort_keys=True) for v in after.values()]
    assert len(set(params)) == len(params)  # no finished trial ran twice
    # what the killed run left running ran again, once, with its own parameters
    study = optuna.load_study(study_name="mlprod-tune", storage=f"sqlite:///{db}")
    retries = {t.user_attrs["retry_of"]: t for t in study.trials if "retry_of" in t.user_attrs}
    assert set(retries) == set(running) and all(retries[n].user_attrs["params"] == running[n] for n in running)
    results = pd.read_csv(tmp_path / "trips.tune" / "results.csv")
    assert len(results) == 10 and list(results.columns) == ["trial", "state", "n_estimators", "max_features", "rmse", "seconds"]
    m = json.loads((tmp_path / "trips.bundle" / "metrics.json").read_text())
    assert m["winner"] == "rf" and m["eval"]["rmse"] == pytest.approx(results.rmse.min())
    assert m["tuning"]["best_trial"] == int(results.loc[results.rmse.idxmin(), "trial"])


def test_a_trial_from_the_package_reports_the_in_process_metric(tmp_path, trips):
    from mlprod.trainjob import load_training_data, training_spec
    from mlprod.task import read_hypertune
    from mlprod.tune_trial import prepare_trials, run_trial, load_trial_model, predict_output
    p = mlprod("package", "-o", tmp_path / "dist", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    sdist = next((tmp_path / "dist").glob("mlprod-*.tar.gz"))
    with tarfile.open(sdist) as t: t.extractall(tmp_path / "pkg", filter="data")
    code = next((tmp_path / "pkg").glob("mlprod-*"))
    work = tmp_path / "trial"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(code), "AIP_MODEL_DIR": str(work / "model"), "CLOUD_ML_TRIAL_ID": "7",
           "CLOUD_ML_HP_METRIC_FILE": str(work / "output.metrics")}
    flags = ["--learning_rate=0.07", "--max_leaf_nodes=11", "--l2_regularization=0.5"]
    q = subprocess.run([sys.executable, "-m", "mlprod.task", "--data", str(trips), "--target", "duration_min", "--model", "gbm",
                        "--seed", "3", *flags], cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert q.returncode == 0, q.stderr
    out = json.loads(q.stdout.strip().splitlines()[-1])
    where = subprocess.run([sys.executable, "-c", "import mlprod; print(mlprod.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True).stdout
    assert where.startswith(str(code)), where  # the trial ran the package's code, not the checkout's
    reports = read_hypertune(work / "output.metrics", "rmse")
    assert len(reports) > 1 and reports[-1][1] == out["value"]  # intermediate reports, then the final one

    data = load_training_data(str(trips), "duration_min")
    prep = prepare_trials(data.frame, training_spec(data), "rmse", seed=3)
    here = run_trial(prep, "gbm", {"learning_rate": 0.07, "max_leaf_nodes": 11, "l2_regularization": 0.5})
    assert out["value"] == here.value and out["info"] == here.info
    saved = load_trial_model(work / "model")
    assert (predict_output(saved.estimator, prep.X_test, "regression", 0) == predict_output(here.estimator, prep.X_test, "regression", 0)).all()


BAD = {
    "trainingInput.yaml": ("""
trainingInput:
  hyperparameters:
    goal: MAXIMIZE
    hyperparameterMetricTag: rmse
    maxTrials: -1
    params:
    - {parameterName: learning_rate, type: DOUBLE, minValue: 0.3, maxValue: 0.01}
    - {parameterName: max_leaf_nodes, type: INTEGER, minValue: 0, maxValue: 64, scaleType: UNIT_LOG_SCALE}
    - {parameterName: min_samples_leaf, type: INTEGER, minValue: 40, maxValue: 20}
    - {parameterName: max_dpeth, type: DISCRETE, discreteValues: [3, 5]}
    - {parameterName: loss, type: CATEGORICAL}
""", ["maxTrials", "params[0].minValue", "params[1].minValue", "params[2].minValue", "params[3].parameterName",
      "params[4].categoricalValues", "goal"]),
    "studySpec.yaml": ("""
studySpec:
  metrics: [{metricId: rmse, goal: MINIMIZE}]
  parameters:
  - {parameterId: learning_rate, doubleValueSpec: {minValue: 0.1, maxValue: 0.1}}
  - {parameterId: max_bins, discreteValueSpec: {values: [255, 63]}}
  - {parameterId: l2_regularization, doubleValueSpec: {minValue: 0.0, maxValue: 1.0}}
  algorithm: GRID_SEARCH
parallelTrialCount: 0
""", ["studySpec.parameters[0].doubleValueSpec.minValue", "studySpec.parameters[1].discreteValueSpec.values",
      "parallelTrialCount", "studySpec.algorithm"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_config_exits_2_listing_every_problem_and_writes_nothing(tmp_path, trips, name):
    text, paths = BAD[name]
    (tmp_path / name).write_text(text)
    before = sorted(tmp_path.rglob("*"))
    p = mlprod("tune", trips, "--target", "duration_min", "--config", name, "-o", "trips.bundle", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    head = f"error: config_invalid: {name} is not valid ({len(paths)} problems): "
    assert last.startswith(head) and last.endswith("."), last
    problems = last[len(head):-1].split("; ")
    assert sorted(line.split(": ", 1)[0] for line in problems) == sorted(paths), problems
    assert sorted(tmp_path.rglob("*")) == before  # no spec, no run folder, no bundle


def test_the_job_notebook_tunes_and_keeps_its_results(tmp_path):
    import papermill as pm
    import nbformat
    from mlprod.trainjob import job_path
    from mlprod.tune_config import example_config
    (tmp_path / "hp.yaml").write_text(example_config("linear", metric="roc_auc", max_trials=3).replace("maxParallelTrials: 2", "maxParallelTrials: 1"))
    out = tmp_path / "penguins.bundle"
    pm.execute_notebook(job_path("tune"), str(tmp_path / "executed.ipynb"), kernel_name="python3", progress_bar=False,
                        cwd=str(tmp_path), parameters=dict(data_uri="example:penguins", config_uri=str(tmp_path / "hp.yaml"),
                                                           output_uri=str(out), progress="plain"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["winner"] == "linear" and m["tuning"]["trials"] == 3 and len(m["leaderboard"]) == 3
    assert (tmp_path / "penguins.tune" / "results.csv").exists()
    nb = nbformat.read(tmp_path / "executed.ipynb", 4)
    shown = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "roc_auc" in shown and "COMPLETE" in shown


def test_the_dense_network_is_tunable_trial_to_bundle(tmp_path):
    "dnn (the tf extra): a trial with parameters from its example space, its trial folder, the bundle it becomes."
    import yaml
    from mlprod.bundle import compare_expected, load_bundle
    from mlprod.data import load_example
    from mlprod.tune import bundle_selection, check_config, write_bundle
    from mlprod.tune_config import example_config, parse_tuning_config
    from mlprod.tune_trial import load_trial_model, prepare_trials, results_table, run_trial, save_trial_model
    ex = load_example("penguins")
    spec = ex.infer_spec()
    cfg = parse_tuning_config(yaml.safe_load(example_config("dnn", metric="roc_auc", max_trials=2)))
    check_config(cfg, "dnn", spec.task, len(spec.target.classes))  # every name in the example is the network's
    prep = prepare_trials(ex.frame, spec, "roc_auc", seed=0)
    params = {"learning_rate": 0.01, "dropout": 0.1, "hidden": "64", "batch_size": 64, "epochs": 40}
    trial = run_trial(prep, "dnn", params)
    assert trial.estimator.hidden == (64,) and trial.estimator.epochs == 40 and 0.9 < trial.value <= 1.0, trial
    save_trial_model(tmp_path / "trials" / "0" / "model", trial)
    best = load_trial_model(tmp_path / "trials" / "0" / "model")
    assert best.value == trial.value
    table = results_table([{"trial": 0, "state": "COMPLETE", "params": params, "value": best.value, "seconds": 1.0}],
                          list(params), "roc_auc")
    sel = bundle_selection(prep, best, table, tuning={"backend": "local", "family": "dnn", "trials": 1})
    b = load_bundle(write_bundle(sel, tmp_path / "penguins.bundle", name="penguins"))
    assert (b.metrics["winner"], b.metrics["tuning"]["params"]["hidden"]) == ("dnn", [64])
    replay = compare_expected(b, "record")
    assert replay["label_mismatches"] == 0 and replay["max_rel_diff"] < 1e-5, replay


def test_early_stopping_prunes_trials_that_fall_behind_and_only_then(tmp_path):
    "enableTrialEarlyStopping on: trials that fall behind at a report are pruned (stumps among them); off: none is."
    import optuna
    import yaml
    from mlprod.data import load_example
    from mlprod.tune_config import parse_tuning_config
    from mlprod.tune_local import tune_local
    ex = load_example("city_trips", n=600, seed=1)
    space = {"goal": "MINIMIZE", "hyperparameterMetricTag": "rmse", "maxTrials": 8, "maxParallelTrials": 1,
             "params": [{"parameterName": "max_depth", "type": "DISCRETE", "discreteValues": [1, 12]},
                        {"parameterName": "n_estimators", "type": "DISCRETE", "discreteValues": [100]},
                        {"parameterName": "max_features", "type": "DOUBLE", "minValue": 0.5, "maxValue": 1.0}]}
    states = {}
    for on in (True, False):
        hp = dict(space, enableTrialEarlyStopping=on)
        cfg = parse_tuning_config(yaml.safe_load(yaml.safe_dump({"trainingInput": {"hyperparameters": hp}})))
        run = tune_local(ex.frame, ex.infer_spec(), cfg, "rf", str(tmp_path / f"on-{on}"), progress="off")
        states[on] = run.results
    on, off = states[True], states[False]
    assert set(off.state) == {"COMPLETE"}, off
    pruned = on[on.state == "PRUNED"]
    assert len(pruned) >= 1 and (pruned.max_depth == 1).any(), on  # a forest of stumps falls behind
    best = on.loc[on[on.state == "COMPLETE"].rmse.idxmin()]
    assert best.max_depth == 12 and best.rmse == on.rmse.min(), on
    # the study agrees: the pruned trials stopped after an intermediate report, before their 100 trees
    study = optuna.load_study(study_name="mlprod-tune", storage=f"sqlite:///{tmp_path / 'on-True' / 'study.db'}")
    stopped = {t.number: t.intermediate_values for t in study.trials if t.state.name == "PRUNED"}
    assert sorted(stopped) == sorted(pruned.trial), (stopped, on)
    assert all(v and max(v) < 100 for v in stopped.values()), stopped
