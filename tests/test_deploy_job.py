"""The deployment job notebook run by papermill, as CI runs it: the executed notebook is the record."""
import json

import nbformat
import pytest
import yaml

from mlprod.trainjob import job_path
from mlprod.store import open_store
from penguin_bundles import penguin_bundle

pytestmark = pytest.mark.timeout(300)


def run_job(out, **params):
    import papermill as pm
    return pm.execute_notebook(job_path("deploy"), str(out), parameters=params, kernel_name="python3",
                               progress_bar=False)


def text_of(nb) -> str:
    "Everything the executed notebook shows: streams, results and errors."
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts += [o.get("text", ""), json.dumps(o.get("data", {})), o.get("evalue", "")]
    return "\n".join(parts)


def test_the_deploy_job_deploys_promotes_and_records_a_refusal(tmp_path):
    import papermill as pm
    a = penguin_bundle(10)
    cfg = tmp_path / "mlprod.yaml"
    cfg.write_text(yaml.safe_dump({"environments": {"dev": {"store": str(tmp_path / "dev")},
                                                    "prod": {"store": str(tmp_path / "prod"),
                                                             "gate": {"metric": "accuracy", "threshold": 1.01}}}}))
    run_job(tmp_path / "deploy-dev.ipynb", bundle_uri=str(a), env="dev", config=str(cfg))
    record = text_of(nbformat.read(tmp_path / "deploy-dev.ipynb", as_version=4))
    version = open_store(str(tmp_path / "dev")).live()["version"]
    assert f"{version} is live in dev" in record and "[copy to dev] 1/" in record

    with pytest.raises(pm.PapermillExecutionError) as e:  # prod's threshold cannot be met: refused, and the job fails
        run_job(tmp_path / "promote-prod.ipynb", promote_from="dev", env="prod", config=str(cfg))
    assert "gate_failed" in repr(e.value) or "failed the gate" in str(e.value)
    record = text_of(nbformat.read(tmp_path / "promote-prod.ipynb", as_version=4))
    assert "failed the gate of prod" in record and "worse than the threshold 1.01" in record
    assert open_store(str(tmp_path / "prod")).live() is None
    assert open_store(str(tmp_path / "prod")).ledger()[-1]["code"] == "gate_failed"
