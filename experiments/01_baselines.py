"""01 - Classical regime baselines on the transformers' splits, windows and metrics.

Question:
    How well do classical regime models classify the regime - the forward realized-volatility regime
    on real data, the true hidden regime on synthetic data - and what is the ceiling on synthetic
    data? These are the numbers every encoder arm has to beat.

What it runs:
    Every applicable baseline of ``regimetry.baselines.BASELINES`` (climatology, persistence,
    HAR-RV, GARCH(1,1)-t, forward-filtered Gaussian HMM, logistic regression and gradient boosting
    on flattened windows and, on synthetic data with the true-regime target, the Bayes filter with
    the true parameters). Every baseline is fitted on the training period only; its one
    hyperparameter, if any, is chosen on validation balanced accuracy from a small fixed grid.

    Evaluation ``walk_forward`` (default on real data): the expanding walk-forward folds of
    ``regimetry.data.prepare_folds`` (test blocks covering ``DataConfig.folds_start`` .. the end),
    every baseline refitted per fold on that fold's training period; metrics per fold
    (``fold{k}/val/...``, ``fold{k}/test/...``) and pooled over the concatenated test (and
    validation) blocks (``test/...``, ``val/...``), with a 95 % circular block-bootstrap interval
    of the pooled test metrics (``regimetry.evaluation.block_bootstrap_ci``, block = horizon).
    Evaluation ``single`` (default on synthetic data): the one train/val/test split of
    ``regimetry.data.prepare``; metrics ``val/...``, ``test/...`` and the same interval.

    Scientific hyperparameter: the baseline (``arm``). Nuisance: ``C`` (HAR-RV, logistic) and the
    boosting learning rate, tuned on validation inside every fold. Fixed: the data config (window
    30, horizon 21, 3 classes at training tertiles, the default features of ``DataConfig``; on
    synthetic data the returns-only features ``log_return, abs_return``, because the simulator's
    range and volume columns depend on the current regime directly and would let window models
    see more than the returns-only Bayes filter that defines the ceiling), seeds.

Tracking (MLflow, experiment ``01_baselines``):
    a parent run per invocation (tags ``stage=baseline_session``, ``dataset``, ``evaluation``) with
    a summary table artifact; a child run per baseline with tags ``stage=baseline``, ``dataset``,
    ``arm=<baseline>``, ``seed``, ``evaluation``, ``git_sha``; params = the flattened data config
    plus the baseline's settings and chosen hyperparameters (``fold{k}.<name>`` in walk-forward);
    metrics as above plus ``time/fit_seconds``; artifacts: the confusion matrix figure and the test
    predictions (``predictions/test.csv``: timestamp, fold, y, pred, probabilities) for paired
    comparisons with the encoders.

Reproduce:
    python experiments/01_baselines.py                        # S&P 500, walk-forward, all baselines
    python experiments/01_baselines.py --evaluation single    # the default single split
    python experiments/01_baselines.py --dataset synthetic    # with the Bayes-filter ceiling
    python experiments/01_baselines.py --smoke --dataset synthetic --tracking-uri sqlite:///tmp/m.db
    Browse: mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db
"""

from __future__ import annotations

import argparse
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from regimetry import baselines as B
from regimetry import plots, reports, tracking
from regimetry.config import SYNTHETIC_FEATURES, DataConfig, add_data_arguments, check_data_arguments
from regimetry.data import prepare, prepare_folds
from regimetry.evaluation import block_bootstrap_ci, paired_block_bootstrap, verdict
from regimetry.training import metrics_from_probs

EXPERIMENT = Path(__file__).stem
log = logging.getLogger(EXPERIMENT)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, seed_help="seed of the stochastic fits and the bootstrap",
                       smoke_help="tiny and fast (< 1 minute): short data, few folds")
    parser.add_argument("--evaluation", choices=("auto", "walk_forward", "single"), default="auto",
                        help="auto = walk_forward on real data, single on synthetic data")
    parser.add_argument("--baselines", default=None, help="comma-separated subset (default: every applicable one)")
    parser.add_argument("--num-folds", type=int, default=None, help="walk-forward folds (default DataConfig.num_folds)")
    parser.add_argument("--n-boot", type=int, default=1000, help="block-bootstrap replicates for the intervals")
    args = parser.parse_args(argv)
    check_data_arguments(parser, args)
    if args.baselines:
        unknown = sorted(set(args.baselines.split(",")) - set(B.BASELINES))
        if unknown:
            parser.error(f"--baselines: unknown {unknown}; valid: {sorted(B.BASELINES)}")
    return args


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig of an invocation (smoke: a short path / a few years, two folds)."""
    values: dict[str, Any] = {"source": args.dataset, "target": args.target}
    if args.dataset == "csv":
        values["csv_path"] = args.csv
    if args.num_folds is not None:
        values["num_folds"] = args.num_folds
    if args.dataset == "synthetic":
        # Returns-only inputs: the simulator's range and volume depend on the current regime
        # directly, so with them a window model can beat the returns-only Hamilton filter and the
        # "ceiling" would not be one.
        values["features"] = SYNTHETIC_FEATURES
    if args.smoke:
        values["num_folds"] = 2
        if args.dataset == "synthetic":
            values["synthetic_bars"] = 2000
        elif args.dataset in ("sp500", "nasdaq"):
            values.update(start="2006-01-01", end="2012-12-31", folds_start="2010-01-01")
    values["synthetic_seed"] = args.seed
    return DataConfig.from_dict(values)


def evaluation_mode(args: argparse.Namespace) -> str:
    if args.evaluation != "auto":
        return args.evaluation
    return "single" if args.dataset == "synthetic" else "walk_forward"


def _bootstrap_metrics(y: np.ndarray, result_pred: np.ndarray, result_probs: np.ndarray | None, k: int,
                       block: int, n_boot: int, seed: int, prefix: str) -> dict[str, float]:
    """95 % circular block-bootstrap intervals of the pooled test metrics (regimetry.evaluation)."""
    out: dict[str, float] = {}
    if len(y) < 2:
        return out
    for metric in ("balanced_accuracy", "macro_f1", "accuracy", "log_loss"):
        if metric == "log_loss" and result_probs is None:
            continue
        preds = result_probs if metric == "log_loss" else result_pred
        ci = block_bootstrap_ci(metric, y, preds, k, block_length=block, n_boot=n_boot, seed=seed)
        out[f"{prefix}{metric}_ci_low"] = ci.lower
        out[f"{prefix}{metric}_ci_high"] = ci.upper
    return out


def _predictions_csv(index, fold: Sequence[int], y, pred, probs, class_names) -> str:
    frame = pd.DataFrame({"timestamp": pd.DatetimeIndex(index), "fold": fold, "y": y, "pred": pred})
    if probs is not None:
        for c, name in enumerate(class_names):
            frame[f"p_{name}"] = probs[:, c]
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def evaluate_baseline(name: str, folds: list, seed: int) -> dict[str, Any]:
    """Run one baseline on every fold (or the single split) and pool its val/test predictions."""
    per_fold: list[B.BaselineResult] = [B.run_baseline(name, sp, seed=seed) for sp in folds]
    class_names = list(folds[0].class_names)
    pooled: dict[str, Any] = {"results": per_fold}
    for split in ("val", "test"):
        y = np.concatenate([getattr(sp, split).y for sp in folds])
        pred = np.concatenate([getattr(r, f"{split}_pred") for r in per_fold])
        has_probs = all(getattr(r, f"{split}_probs") is not None for r in per_fold)
        probs = np.concatenate([getattr(r, f"{split}_probs") for r in per_fold]) if has_probs else None
        ev = metrics_from_probs(y, probs, class_names) if probs is not None else metrics_from_probs(
            y, None, class_names, y_pred=pred)
        pooled[split] = {"y": y, "pred": pred, "probs": probs, "eval": ev,
                         "index": np.concatenate([getattr(sp, split).index.to_numpy() for sp in folds]),
                         "fold": np.concatenate([np.full(len(getattr(sp, split)), sp.fold if sp.fold is not None else -1)
                                                 for sp in folds])}
    return pooled


class Session(NamedTuple):
    """What every baseline of one invocation shares: the data, its folds and the evaluation settings."""

    args: argparse.Namespace
    config: DataConfig
    mode: str
    folds: list
    block: int
    n_boot: int
    tags: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return self.folds[0].num_classes


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the experiment; returns ``{baseline: {metric: value}}`` of the pooled test metrics."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
    t0 = time.perf_counter()
    session = _session(args)
    names = args.baselines.split(",") if args.baselines else B.applicable_baselines(session.folds[0])
    summary: dict[str, dict[str, float]] = {}
    rows = []
    test_preds: dict[str, np.ndarray] = {}
    config, mode = session.config, session.mode
    with tracking.run(EXPERIMENT, run_name=f"{config.dataset_name}-{mode}", tracking_uri=args.tracking_uri,
                      tags={"stage": "baseline_session", **session.tags, **tracking.version_tags()}) as parent:
        parent.log_params({**config.flat(), "evaluation": mode, "baselines": ",".join(names),
                           "num_folds_run": len(session.folds), "bootstrap.block_length": session.block,
                           "bootstrap.n_boot": session.n_boot})
        for name in names:
            t1 = time.perf_counter()
            metrics, test = run_baseline(session, name)
            test_preds[name], y_test = test["pred"], test["y"]
            summary[name] = {key: metrics[f"test/{key}"] for key in ("balanced_accuracy", "macro_f1", "log_loss", "accuracy")}
            rows.append(_summary_row(name, summary[name], metrics, t1))
        table = pd.DataFrame(rows)
        tracking.log_text(table.to_csv(index=False, float_format="%.4f"), "summary.csv")
        differences = _paired_differences(test_preds, y_test, session.num_classes, session.block, session.n_boot,
                                          args.seed)
        if len(differences):
            tracking.log_text(differences.to_csv(index=False, float_format="%.4f"), "differences.csv")
            tracking.set_tags({"verdicts": " | ".join(differences["verdict"])[:4900]})
        parent.log_metrics({f"{r['baseline']}/test/balanced_accuracy": r["test/balanced_accuracy"] for r in rows})
        parent.log_metrics({"time/total_seconds": time.perf_counter() - t0})
        report_error = _report(args, config, parent.run_id)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(differences):
        print("\nPaired differences (test balanced accuracy, paired block bootstrap; MDE = minimum detectable "
              "effect, 80 % power, two-sided 5 %):")
        print("\n".join(f"- {v}" for v in differences["verdict"]))
    if report_error:
        raise SystemExit(report_error)
    return summary


def _session(args: argparse.Namespace) -> Session:
    config = data_config(args)
    mode = evaluation_mode(args)
    t0 = time.perf_counter()
    folds = prepare_folds(config) if mode == "walk_forward" else [prepare(config)]
    log.info("%s: %d fold(s) prepared in %.1fs", config.dataset_name, len(folds), time.perf_counter() - t0)
    tags = {"dataset": config.dataset_name, "evaluation": mode, "seed": args.seed, **tracking.git_info()}
    return Session(args, config, mode, list(folds), block=max(1, config.horizon // config.stride),
                   n_boot=100 if args.smoke else args.n_boot, tags=tags)


def run_baseline(session: Session, name: str) -> tuple[dict[str, float], dict[str, Any]]:
    """One baseline on every fold as one MLflow run: ``(metrics, pooled test predictions)``."""
    folds, mode, args = session.folds, session.mode, session.args
    with tracking.run(EXPERIMENT, run_name=name,
                      tags={"stage": "baseline", "arm": name, "fingerprint": folds[0].fingerprint,
                            **session.tags}) as child:
        pooled = evaluate_baseline(name, folds, args.seed)
        results: list[B.BaselineResult] = pooled["results"]
        params: dict[str, Any] = {**session.config.flat(), "baseline": name,
                                  "description": B.BASELINES[name].description}
        metrics: dict[str, float] = {}
        for sp, res in zip(folds, results):
            prefix = f"fold{sp.fold}/" if mode == "walk_forward" else ""
            if mode == "walk_forward":
                metrics.update(B.result_metrics(res, prefix=prefix))
                params.update({f"fold{sp.fold}.{key}": v for key, v in res.params.items()})
                params[f"fold{sp.fold}.period"] = f"{sp.test.index[0].date()}..{sp.test.index[-1].date()}"
            else:
                params.update(res.params)
        for split in ("val", "test"):
            metrics.update({f"{split}/{key}": float(v) for key, v in pooled[split]["eval"].metrics.items()})
        metrics["time/fit_seconds"] = float(sum(r.fit_seconds for r in results))
        test = pooled["test"]
        metrics.update(_bootstrap_metrics(test["y"], test["pred"], test["probs"], session.num_classes, session.block,
                                          session.n_boot, args.seed, "test/"))
        child.log_params(params)
        child.log_metrics(metrics)
        tracking.log_figure(
            plots.confusion_matrix_figure(test["eval"].confusion, folds[0].class_names, title=f"{name}: test ({mode})"),
            "figures/confusion_test.png")
        tracking.log_text(_predictions_csv(test["index"], test["fold"], test["y"], test["pred"],
                                           test["probs"], folds[0].class_names), "predictions/test.csv")
    return metrics, test


def _summary_row(name: str, scores: dict[str, float], metrics: dict[str, float], started: float) -> dict[str, Any]:
    ci = (metrics.get("test/balanced_accuracy_ci_low", np.nan), metrics.get("test/balanced_accuracy_ci_high", np.nan))
    log.info("%-18s test balanced acc %.3f [%.3f, %.3f]  macro-F1 %.3f  log loss %.3f  (%.1fs)", name,
             scores["balanced_accuracy"], ci[0], ci[1], scores["macro_f1"], scores["log_loss"],
             time.perf_counter() - started)
    return {"baseline": name, **{f"test/{m}": v for m, v in scores.items()},
            "test/balanced_accuracy_ci": f"[{ci[0]:.3f}, {ci[1]:.3f}]",
            "val/balanced_accuracy": metrics["val/balanced_accuracy"],
            "seconds": round(time.perf_counter() - started, 1)}


def _paired_differences(preds: dict[str, np.ndarray], y: np.ndarray, k: int, block: int, n_boot: int,
                        seed: int) -> pd.DataFrame:
    """Every baseline against the references HAR-RV and persistence on the same test windows: paired
    block-bootstrap difference of balanced accuracy with its 95 % interval, standard error, minimum
    detectable effect (80 % power) and verdict line (``regimetry.evaluation``)."""
    rows = []
    for reference in ("har_rv", "persistence"):
        if reference not in preds:
            continue
        for name, pred in preds.items():
            if name == reference or (reference == "persistence" and name == "har_rv"):
                continue
            diff = paired_block_bootstrap("balanced_accuracy", y, pred, preds[reference], k, block_length=block,
                                          n_boot=n_boot, seed=seed)
            rows.append({"a": name, "b": reference, "metric": "balanced_accuracy", "difference": diff.estimate,
                         "ci_low": diff.lower, "ci_high": diff.upper, "se": diff.se, "mde": diff.mde(),
                         "detected": diff.excludes_zero(),
                         "verdict": verdict(name, reference, "balanced_accuracy", diff)})
    return pd.DataFrame(rows)


def _report(args, config, parent_run_id: str) -> str | None:
    return reports.experiment_data_report_or_error(EXPERIMENT, config, parent_run_id) if args.report else None


if __name__ == "__main__":
    main()
