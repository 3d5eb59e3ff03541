"""Small real bundles for the batch-scoring tests (predict and Spark): a model trained here, saved as `mlprod train` saves it."""
import numpy as np
import pandas as pd


def trips_bundle(path, n=2_000, unknown="encode"):
    "A HistGradientBoosting model of the city trips; `vehicle` takes unseen values as 'other' (`unknown`)."
    from sklearn.ensemble import HistGradientBoostingRegressor
    from mlprod.bundle import save_bundle
    from mlprod.data import load_example
    from mlprod.models import IntervalCalculator
    from mlprod.transforms import SpecTransformer
    ex = load_example("city_trips", n=n)
    spec = ex.infer_spec()
    spec.features["vehicle"].unknown = unknown
    fit, cal = ex.frame.iloc[: n // 2], ex.frame.iloc[n // 2:]
    t = SpecTransformer(spec).fit(fit)
    model = HistGradientBoostingRegressor(max_iter=40, random_state=0).fit(t.transform(fit), fit[ex.target])
    conf = IntervalCalculator.calibrate(cal[ex.target], model.predict(t.transform(cal)), fit[ex.target], 0.9)
    return save_bundle(str(path), spec=spec, transformer=t, model=model, confidence=conf, testset=ex.frame.head(0),
                       name="trips", metrics={})


def messy_rows(n=600, seed=1):
    "Rows to score: missing optional values (imputed), missing required ones (refused), unseen and wrong categories."
    from mlprod.data import load_example
    rows = load_example("city_trips", n=n, seed=seed).frame.drop(columns="duration_min").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    rows.loc[rng.random(n) < 0.2, "passengers"] = np.nan              # optional: imputed
    rows.loc[rng.random(n) < 0.1, "vehicle"] = "limousine"              # unseen: encoded as other
    rows.loc[rng.random(n) < 0.05, "pickup_lat"] = np.nan              # required: refused
    rows.loc[rng.random(n) < 0.03, "dropoff_lat"] = 95.0               # out of range: refused
    return rows
