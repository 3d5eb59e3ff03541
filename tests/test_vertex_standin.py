"""The Vertex AI stand-in itself, as other tests use it for training and tuning: google-cloud-aiplatform's CustomJob
and HyperparameterTuningJob run against it unpatched, succeed, fail with the error the test asks for, and report
trials."""
import pytest

pytestmark = pytest.mark.timeout(120)
SPEC = [{"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1,
         "container_spec": {"image_uri": "example/trainer:1", "args": ["train"]}}]


def test_custom_and_tuning_jobs_run_against_the_stand_in(vertex):
    from google.cloud import aiplatform
    from google.cloud.aiplatform import hyperparameter_tuning as hpt
    vertex.init_sdk(staging_bucket="gs://staging")
    try:
        job = aiplatform.CustomJob(display_name="ok", worker_pool_specs=SPEC)
        job.run(sync=True)
        assert job.state.name == "JOB_STATE_SUCCEEDED"
        sent = vertex.resources[job.resource_name]
        assert sent["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"] == "example/trainer:1"

        failed = {"state": "JOB_STATE_FAILED", "error": {"code": 3, "message": "no data"}}
        vertex.job_outcome = lambda kind, body: failed
        with pytest.raises(RuntimeError, match="no data"):
            aiplatform.CustomJob(display_name="fails", worker_pool_specs=SPEC).run(sync=True)

        trial = {"id": "1", "state": "SUCCEEDED", "parameters": [{"parameterId": "lr", "value": 0.01}],
                 "finalMeasurement": {"metrics": [{"metricId": "rmse", "value": 0.9}]}}
        vertex.job_outcome = lambda kind, body: {"trials": [trial]} if kind == "hyperparameterTuningJobs" else {}
        tuning = aiplatform.HyperparameterTuningJob(
            display_name="tune", custom_job=aiplatform.CustomJob(display_name="base", worker_pool_specs=SPEC),
            metric_spec={"rmse": "minimize"}, max_trial_count=2, parallel_trial_count=1,
            parameter_spec={"lr": hpt.DoubleParameterSpec(min=0.001, max=0.1, scale="log")})
        tuning.run(sync=True)
        assert [(t.id, t.parameters[0].value, t.final_measurement.metrics[0].value) for t in tuning.trials] == \
            [("1", 0.01, 0.9)]
    finally:
        vertex.job_outcome = lambda kind, body: {}
