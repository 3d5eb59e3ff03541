"""Tuning and training on Vertex AI, on the wire: google-cloud-aiplatform's own client (REST, `http://`, anonymous
credentials) against the loopback stand-in (`vertex` fixture), the staging bucket on the GCS emulator (`gcs`).

The stand-in plays the service's part of a job (`vertex.running_packages()`): it downloads the training package the
job names from the emulator, unpacks it, and runs its `mlprod.task` module once per trial with the arguments,
`AIP_MODEL_DIR` and hypertune metrics file Vertex AI would give it, so the package, its arguments and the metric
protocol are all exercised for real. Parameter values are drawn from the request's own `studySpec`.
"""
import json
import re
import tempfile

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.timeout(300)

CONFIG = """
trainingInput:
  hyperparameters:
    goal: MINIMIZE
    hyperparameterMetricTag: rmse
    maxTrials: 3
    maxParallelTrials: 2
    enableTrialEarlyStopping: true
    params:
    - {parameterName: learning_rate, type: DOUBLE, minValue: 0.02, maxValue: 0.3, scaleType: UNIT_LOG_SCALE}
    - {parameterName: max_leaf_nodes, type: INTEGER, minValue: 4, maxValue: 32, scaleType: UNIT_LINEAR_SCALE}
    - {parameterName: l2_regularization, type: DISCRETE, discreteValues: [0.0, 1.0]}
    - {parameterName: loss, type: CATEGORICAL, categoricalValues: [squared_error, absolute_error]}
"""


@pytest.fixture
def runner(vertex):
    "The stand-in runs each job's trials from the staged package (tests/vertex_standin.py, PackageRunner)."
    with vertex.running_packages() as r:
        yield r


@pytest.fixture
def city(tmp_path):
    from mlprod.data import load_example
    ex = load_example("city_trips", n=500, seed=1)
    return ex.frame, ex.infer_spec()


def settings(vertex, gcs, **kw):
    from mlprod.tune_vertex import VertexSettings
    return VertexSettings(project=vertex.project, region=vertex.location, staging_bucket=f"gs://{gcs.bucket()}/staging",
                          api_endpoint=vertex.url, poll_seconds=0.2, **kw)


def posted(vertex, collection: str) -> dict:
    return [b for m, p, b in vertex.calls if m == "POST" and p.endswith(f"/{collection}")][-1]


def test_one_yaml_tunes_locally_and_on_vertex_on_the_wire(vertex, gcs, runner, city, tmp_path, monkeypatch):
    "`mlprod tune` with the same file on both backends; the Vertex AI job checked on the wire, state by state."
    from google.cloud import aiplatform_v1 as v1
    from mlprod.bundle import load_bundle, compare_expected
    from mlprod.cli import capture
    from mlprod.tune_trial import load_trial_model, prepare_trials, run_trial
    frame, _ = city
    frame.to_csv(tmp_path / "trips.csv", index=False)
    (tmp_path / "hptuning_config.yaml").write_text(CONFIG)
    monkeypatch.setenv("MLPROD_VERTEX_ENDPOINT", vertex.url)
    monkeypatch.setenv("MLPROD_VERTEX_POLL", "0.2")
    common = [tmp_path / "trips.csv", "--target", "duration_min", "--config", tmp_path / "hptuning_config.yaml"]
    status, out, err = capture("tune", *common, "-o", tmp_path / "local.bundle")
    assert status == 0, err
    steps = [line for line in err.splitlines() if line.startswith("[mlprod tune] ")]  # the progress, trial by trial
    assert [line.split(" trial: ")[0] for line in steps] == [f"[mlprod tune] {i}/3" for i in (1, 2, 3)], err
    assert all(re.search(r" trial: trial \d: (rmse [0-9.]+|pruned)(; best [0-9.]+ \(trial \d\))?$", line)
               for line in steps), err
    status, out, err = capture("tune", *common, "--spec", tmp_path / "local.spec.yaml", "--backend", "vertex",
                               "--project", vertex.project, "--region", vertex.location,
                               "--staging-bucket", f"gs://{gcs.bucket()}/staging", "-o", tmp_path / "vertex.bundle")
    assert status == 0, err
    bundles = {b: load_bundle(tmp_path / f"{b}.bundle") for b in ("local", "vertex")}
    for backend, b in bundles.items():
        m = b.metrics
        assert (m["winner"], m["tuning"]["backend"], m["tuning"]["trials"]) == ("gbm", backend, 3)
        lb = pd.DataFrame(m["leaderboard"])
        assert list(lb.columns) == ["trial", "state", "learning_rate", "max_leaf_nodes", "l2_regularization", "loss", "rmse", "seconds"]
        assert m["eval"]["rmse"] == pytest.approx(lb.rmse.min(), rel=1e-12)
        replay = compare_expected(b, "record")
        assert replay["rows"] > 50 and replay["max_rel_diff"] < 1e-9
    assert bundles["local"].spec.to_yaml() == bundles["vertex"].spec.to_yaml()
    job = bundles["vertex"].metrics["tuning"]["where"]
    spec = bundles["vertex"].spec

    # the request, as the SDK put it on the wire (enums as integers, int64 as strings)
    body = posted(vertex, "hyperparameterTuningJobs")
    staged = body["trialJobSpec"]["baseOutputDirectory"]["outputUriPrefix"].rsplit("/", 1)[0]
    study = body["studySpec"]
    metric = study["metrics"][0]
    assert metric["metricId"] == "rmse" and v1.StudySpec.MetricSpec.GoalType(metric["goal"]).name == "MINIMIZE"
    params = {p["parameterId"]: p for p in study["parameters"]}
    assert params["learning_rate"]["doubleValueSpec"] == {"minValue": 0.02, "maxValue": 0.3}
    scale = v1.StudySpec.ParameterSpec.ScaleType
    assert scale(params["learning_rate"]["scaleType"]).name == "UNIT_LOG_SCALE"
    assert params["max_leaf_nodes"]["integerValueSpec"] == {"minValue": "4", "maxValue": "32"}
    assert scale(params["max_leaf_nodes"]["scaleType"]).name == "UNIT_LINEAR_SCALE"
    assert params["l2_regularization"]["discreteValueSpec"] == {"values": [0.0, 1.0]}
    assert params["loss"]["categoricalValueSpec"] == {"values": ["squared_error", "absolute_error"]}
    assert "medianAutomatedStoppingSpec" in study  # enableTrialEarlyStopping
    assert (body["maxTrialCount"], body["parallelTrialCount"]) == (3, 2)
    pool = body["trialJobSpec"]["workerPoolSpecs"][0]
    assert pool["machineSpec"]["machineType"] == "n1-standard-4" and pool["replicaCount"] == "1"
    pkg = pool["pythonPackageSpec"]
    assert pkg["pythonModule"] == "mlprod.task" and pkg["packageUris"][0].startswith(staged + "/mlprod-")
    assert pkg["packageUris"][0].endswith(".tar.gz") and gcs.fs().exists(pkg["packageUris"][0])
    args = pkg["args"]
    assert args[args.index("--data") + 1] == f"{staged}/data.parquet" and args[args.index("--model") + 1] == "gbm"
    assert args[args.index("--spec") + 1] == f"{staged}/spec.yaml" and args[args.index("--metric") + 1] == "rmse"
    assert gcs.fs().exists(f"{staged}/data.parquet") and gcs.fs().exists(f"{staged}/spec.yaml")

    # the job went through its states, each shown, and every trial ran from the package and reported its metric
    states = [s for name, s in runner.states if name == job]
    assert states[0] == "JOB_STATE_RUNNING" and states[-1] == "JOB_STATE_SUCCEEDED", states
    assert f"{job}: JOB_STATE_RUNNING" in err and f"{job}: JOB_STATE_SUCCEEDED, 3/3 trials done" in err, err
    assert job.startswith(f"projects/{vertex.project}/locations/{vertex.location}/hyperparameterTuningJobs/")
    assert len(runner.runs) == 3 and runner.code_paths[0].startswith(tempfile.gettempdir()), runner.code_paths
    reported = sorted(json.loads(r[2].strip().splitlines()[-1])["value"] for r in runner.runs)
    table = pd.DataFrame(bundles["vertex"].metrics["leaderboard"])
    assert (table.state == "COMPLETE").all() and sorted(table.rmse) == reported and (table.seconds == 7).all()
    assert table.learning_rate.between(0.02, 0.3).all() and table.max_leaf_nodes.between(4, 32).all()
    best_trial = bundles["vertex"].metrics["tuning"]["best_trial"]
    assert best_trial == table.loc[table.rmse.idxmin(), "trial"]

    # the bundle holds the best trial's model from where Vertex AI's AIP_MODEL_DIR pointed; the package computed
    # the same metric as the in-process trial with the same parameters
    best = load_trial_model(f"{staged}/output/{best_trial}/model")
    assert best.family == "gbm" and best.value == table.rmse.min()
    assert bundles["vertex"].manifest["model"]["class"] == type(best.estimator).__name__
    row = table.loc[table.rmse.idxmin()]
    again = run_trial(prepare_trials(frame, spec, "rmse", 0), "gbm",
                      {k: row[k] for k in ("learning_rate", "max_leaf_nodes", "l2_regularization", "loss")})
    assert again.value == best.value


@pytest.mark.parametrize("outcome, code, words", [
    ({"state": "JOB_STATE_FAILED", "error": {"code": 8, "message": "The following quota metrics exceed quota limits: "
                                                                   "aiplatform.googleapis.com/custom_model_training_cpus"}},
     "vertex_quota", "quota"),
    ({"state": "JOB_STATE_CANCELLED", "error": {"code": 1, "message": "CANCELED"}}, "vertex_job_cancelled", "cancelled"),
])
def test_a_job_that_does_not_succeed_is_a_clear_error_naming_the_job(vertex, gcs, city, outcome, code, words):
    from mlprod.tune_config import parse_tuning_config
    from mlprod.tune_vertex import tune_vertex, VertexJobError
    cfg = parse_tuning_config(yaml.safe_load(CONFIG.replace("maxTrials: 3", "maxTrials: 1")))
    vertex.job_outcome = lambda kind, body: outcome
    try:
        with pytest.raises(VertexJobError) as e:
            tune_vertex(*city, cfg, "gbm", settings(vertex, gcs), name="city")
    finally:
        vertex.job_outcome = lambda kind, body: {}
    name = posted_name(vertex)
    assert e.value.code == code and name in e.value.message and words in e.value.message, e.value.message


def posted_name(vertex) -> str:
    return max((k for k in vertex.of_kind("hyperparameterTuningJobs")), key=lambda k: int(k.rsplit("/", 1)[1]))


def test_a_failed_trial_is_named_in_the_error(vertex, gcs, city):
    from mlprod.tune_config import parse_tuning_config
    from mlprod.tune_vertex import tune_vertex, VertexJobError
    trials = [{"id": "1", "state": "SUCCEEDED", "parameters": [{"parameterId": "learning_rate", "value": 0.1}],
               "finalMeasurement": {"metrics": [{"metricId": "rmse", "value": 3.2}]}},
              {"id": "2", "state": "INFEASIBLE", "infeasibleReason": "The replica workerpool0-0 exited with a non-zero status of 1"}]
    vertex.job_outcome = lambda kind, body: {"state": "JOB_STATE_FAILED", "trials": trials,
                                             "error": {"code": 9, "message": "too many trials failed"}}
    cfg = parse_tuning_config(yaml.safe_load(CONFIG.replace("maxTrials: 3", "maxTrials: 2")))
    try:
        with pytest.raises(VertexJobError) as e:
            tune_vertex(*city, cfg, "gbm", settings(vertex, gcs), name="city")
    finally:
        vertex.job_outcome = lambda kind, body: {}
    msg = e.value.message
    assert e.value.code == "vertex_job_failed" and posted_name(vertex) in msg, msg
    assert "too many trials failed; trial 2 failed: The replica workerpool0-0 exited" in msg, msg


def test_train_backend_vertex_runs_one_custom_job_and_bundles_its_model(vertex, gcs, runner, city, tmp_path,
                                                                        monkeypatch):
    from mlprod.bundle import load_bundle
    from mlprod.cli import capture
    from mlprod.signing import Trust, generate_keys
    frame, _ = city
    frame.to_csv(tmp_path / "trips.csv", index=False)
    from mlprod.tune_config import example_config
    (tmp_path / "hp.yaml").write_text(example_config("rf").replace("args: [--model=rf]", "args: [--model=rf, --n_estimators=40]"))
    monkeypatch.setenv("MLPROD_VERTEX_ENDPOINT", vertex.url)
    monkeypatch.setenv("MLPROD_VERTEX_POLL", "0.2")
    private, public = generate_keys()  # a key configured: the bundle, on a bucket, is signed as mlprod train signs
    monkeypatch.setenv("MLPROD_SIGNING_KEY", private.decode())
    bucket = gcs.bucket()
    status, out, err = capture("train", tmp_path / "trips.csv", "--target", "duration_min", "--backend", "vertex",
                               "--config", tmp_path / "hp.yaml", "--project", vertex.project,
                               "--region", vertex.location, "--staging-bucket", f"gs://{bucket}/staging",
                               "--machine-type", "e2-standard-4", "-o", f"gs://{bucket}/models/trips")
    assert status == 0, err
    body = posted(vertex, "customJobs")
    pool = body["jobSpec"]["workerPoolSpecs"][0]
    assert pool["machineSpec"]["machineType"] == "e2-standard-4"
    args = pool["pythonPackageSpec"]["args"]
    assert args[args.index("--model") + 1] == "rf" and args[-1] == "--n_estimators=40" and pool["pythonPackageSpec"]["pythonModule"] == "mlprod.task"
    out = body["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"]
    job = max(vertex.of_kind("customJobs"), key=lambda k: int(k.rsplit("/", 1)[1]))
    assert [s for name, s in runner.states if name == job][-1] == "JOB_STATE_SUCCEEDED"
    assert gcs.fs().exists(f"{out}/model/model.joblib")  # where AIP_MODEL_DIR pointed the job
    b = load_bundle(f"gs://{bucket}/models/trips", trust=Trust.of(public))
    assert b.signer == next(iter(Trust.of(public).keys))
    assert (b.metrics["winner"], b.metrics["tuning"]["where"], b.manifest["model"]["class"]) == ("rf", job, "RandomForestRegressor")
    assert b.metrics["tuning"]["params"] == {"n_estimators": 40}

