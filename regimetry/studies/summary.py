"""Pure summaries of an ablation: pooled metrics, paired differences, verdicts, tables and markdown.

Nothing here trains, reads a storage or logs: :func:`summarize` turns the pooled confirmation
predictions of every arm (and the reference baselines' predictions on the same windows) into the
tables the runner logs (:mod:`regimetry.studies.confirm`) and the report reads back
(:mod:`regimetry.records` names where). :func:`control_checks` is what a correct harness must find on
a control task.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from regimetry import evaluation
from regimetry.config import ModelConfig, TrainConfig
from regimetry.data.controls import get_control
from regimetry.studies.spec import METRICS_OF_RECORD, Ablation, Budget

__all__ = ["ArmConfirmation", "summarize", "markdown", "plural", "control_checks", "predictions_frame", "ceiling_table",
           "timing"]


@dataclasses.dataclass
class ArmConfirmation:
    arm: str
    best_trial: int
    best_value: float
    model_config: ModelConfig
    train_config: TrainConfig
    # per block: y_true (n,), probs (n, seeds, classes)
    y_true: list[np.ndarray]
    probs: list[np.ndarray]
    per_run: list[dict[str, Any]]
    edge_warnings: list[str]
    fraction_pruned: float
    fraction_failed: float



def _reference_rows(baselines: list[dict[str, Any]], y_blocks: list[np.ndarray], num_classes: int,
                    block_length: int, n_boot: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Pooled and per-block scores of the reference baselines on the arms' test windows."""
    rows, per_block = [], []
    y = np.concatenate(y_blocks)
    for base in baselines:
        pred_blocks = [np.asarray(p) for p in base["per_block"]]
        pooled = np.concatenate(pred_blocks, axis=0)
        if pooled.shape[0] != y.shape[0]:
            continue
        row: dict[str, Any] = {"model": base["name"], "n_test_windows": int(y.size)}
        for metric in METRICS_OF_RECORD:
            if metric == "log_loss" and pooled.ndim == 1:
                row.update({f"{metric}_pooled": float("nan"), f"{metric}_boot_ci_low": float("nan"),
                            f"{metric}_boot_ci_high": float("nan")})
                continue
            source = pooled if metric == "log_loss" else (pooled.argmax(-1) if pooled.ndim == 2 else pooled)
            boot = evaluation.block_bootstrap_ci(metric, y, source, num_classes, block_length=block_length,
                                                 n_boot=n_boot, seed=seed)
            row.update({f"{metric}_pooled": boot.estimate, f"{metric}_boot_ci_low": boot.lower,
                        f"{metric}_boot_ci_high": boot.upper})
        rows.append(row)
        for b, (yb, pb) in enumerate(zip(y_blocks, pred_blocks)):
            hard = pb.argmax(-1) if pb.ndim == 2 else pb
            per_block.append({"arm": base["name"], "fold": b, "n_test_windows": int(yb.size), **{
                metric: (evaluation.seed_averaged_metric(metric, yb, pb, num_classes) if pb.ndim == 2 else float("nan"))
                if metric == "log_loss" else evaluation.seed_averaged_metric(metric, yb, hard, num_classes)
                for metric in METRICS_OF_RECORD}})
    return rows, per_block


def summarize(ablation: Ablation, confirmations: list[ArmConfirmation], num_classes: int, horizon: int,
              baselines: list[dict[str, Any]] | dict[str, Any] | None, stride: int = 1, n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Per-arm tables, paired differences (with minimum detectable effects) and verdicts from pooled
    confirmation predictions; the reference baselines' own scores on the same windows."""
    if isinstance(baselines, dict):
        baselines = [baselines]
    baselines = list(baselines or [])
    block_length = max(1, math.ceil(horizon / stride))
    rows, per_block_rows = [], []
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for conf in confirmations:
        y = np.concatenate(conf.y_true)
        probs = np.concatenate(conf.probs, axis=0)  # (n, seeds, classes)
        pooled[conf.arm] = (y, probs)
        rows.append(_arm_row(conf, y, probs, num_classes, block_length, n_boot, seed))
        for b, (yb, pb) in enumerate(zip(conf.y_true, conf.probs)):
            per_block_rows.append({"arm": conf.arm, "fold": b, "n_test_windows": int(yb.size), **{
                metric: evaluation.seed_averaged_metric(metric, yb, pb if metric == "log_loss" else pb.argmax(-1), num_classes)
                for metric in METRICS_OF_RECORD}})
    diff_rows = _differences(pooled, [c.arm for c in confirmations], baselines, num_classes, block_length, n_boot, seed)
    verdicts = [r["verdict"] for r in diff_rows if r["metric"] == "balanced_accuracy"]
    reference_rows, reference_blocks = _reference_rows(baselines, confirmations[0].y_true, num_classes,
                                                       block_length, n_boot, seed) if confirmations else ([], [])
    block_warnings = (evaluation.degenerate_blocks(confirmations[0].y_true, num_classes, block_length)
                      if confirmations else [])
    return {"arms": pd.DataFrame(rows), "per_fold": pd.DataFrame(per_block_rows + reference_blocks),
            "references": pd.DataFrame(reference_rows),
            "differences": pd.DataFrame(diff_rows), "verdicts": verdicts, "block_length": block_length,
            "block_warnings": block_warnings}


def _arm_row(conf: ArmConfirmation, y: np.ndarray, probs: np.ndarray, num_classes: int, block_length: int,
             n_boot: int, seed: int) -> dict[str, Any]:
    """An arm's pooled scores: mean over seeds with its interval, pooled with its block-bootstrap interval."""
    preds = probs.argmax(axis=-1)
    row: dict[str, Any] = {"arm": conf.arm, "best_trial": conf.best_trial, "best_val": conf.best_value,
                           "n_test_windows": int(y.size), "seeds": probs.shape[1],
                           "fraction_pruned": conf.fraction_pruned, "fraction_failed": conf.fraction_failed}
    for metric in METRICS_OF_RECORD:
        source = probs if metric == "log_loss" else preds
        per_seed = [evaluation.seed_averaged_metric(metric, y, source[:, s], num_classes) for s in range(probs.shape[1])]
        mean, std, ci = evaluation.mean_ci(per_seed)
        boot = evaluation.block_bootstrap_ci(metric, y, source, num_classes, block_length=block_length,
                                             n_boot=n_boot, seed=seed)
        row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_seed_ci_low": ci.lower,
                    f"{metric}_seed_ci_high": ci.upper, f"{metric}_pooled": boot.estimate,
                    f"{metric}_boot_ci_low": boot.lower, f"{metric}_boot_ci_high": boot.upper})
    row["edge_warnings"] = "; ".join(conf.edge_warnings)
    return row


def _differences(pooled: dict[str, tuple[np.ndarray, np.ndarray]], arms: list[str], baselines: list[dict[str, Any]],
                 num_classes: int, block_length: int, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Paired block-bootstrap differences of every pair of arms, then of every arm against every reference."""
    comparisons: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            comparisons.append((a, b, pooled[a][1], pooled[b][1]))
    for baseline in baselines:
        base = np.concatenate([np.asarray(p) for p in baseline["per_block"]], axis=0)
        for a in arms:
            if base.shape[0] == pooled[a][0].shape[0]:
                comparisons.append((a, baseline["name"], pooled[a][1], base))
    y_any = pooled[arms[0]][0]
    rows = []
    for a, b, pa, pb in comparisons:
        for metric in METRICS_OF_RECORD:
            if metric == "log_loss" and (pb.ndim == 1 or pa.ndim == 1):
                continue
            sa = pa if metric == "log_loss" else pa.argmax(-1)
            sb = pb if metric == "log_loss" else (pb.argmax(-1) if pb.ndim >= 2 else pb)
            diff = evaluation.paired_block_bootstrap(metric, y_any, sa, sb, num_classes, block_length=block_length,
                                                     n_boot=n_boot, seed=seed)
            rows.append({"a": a, "b": b, "metric": metric, "difference": diff.estimate,
                         "ci_low": diff.lower, "ci_high": diff.upper, "se": diff.se, "mde": diff.mde(),
                         "detected": diff.excludes_zero(), "verdict": evaluation.verdict(a, b, metric, diff)})
    return rows


def plural(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def markdown(summary: dict[str, Any], ablation: Ablation, budget: Budget) -> str:
    arms = summary["arms"]
    lines = [f"# {ablation.name}", "", f"**Question.** {ablation.question}", "",
             f"Scientific hyperparameter: {ablation.scientific}. Budget: {budget.trials_per_arm} trials per arm, "
             f"max {budget.max_epochs} epochs (early-stopping patience {budget.patience}), "
             f"{plural(budget.folds, 'fold')} x {plural(budget.seeds, 'seed')} "
             "in confirmation; "
             f"block length {summary['block_length']} windows.", "",
             "| arm | best val | balanced acc. (seed mean, 95% CI) | pooled balanced acc. [block bootstrap 95%] | "
             "macro-F1 | log loss | pruned | failed |", "|---|---|---|---|---|---|---|---|"]
    for _, r in arms.iterrows():
        # one seed has no spread to bound: say so rather than print a zero-width interval
        seed_ci = (f"[{r['balanced_accuracy_seed_ci_low']:.3f}, {r['balanced_accuracy_seed_ci_high']:.3f}]"
                   if r["seeds"] > 1 else "(1 seed: no interval)")
        lines.append(
            f"| {r['arm']} | {r['best_val']:.3f} | {r['balanced_accuracy_mean']:.3f} {seed_ci} | "
            f"{r['balanced_accuracy_pooled']:.3f} [{r['balanced_accuracy_boot_ci_low']:.3f}, "
            f"{r['balanced_accuracy_boot_ci_high']:.3f}] | {r['macro_f1_pooled']:.3f} | {r['log_loss_pooled']:.3f} | "
            f"{r['fraction_pruned']:.0%} | {r['fraction_failed']:.0%} |")
    for r in summary.get("references", pd.DataFrame()).to_dict("records"):
        log_loss = f"{r['log_loss_pooled']:.3f}" if math.isfinite(r["log_loss_pooled"]) else "-"
        lines.append(
            f"| {r['model']} (reference, same folds) | - | - | {r['balanced_accuracy_pooled']:.3f} "
            f"[{r['balanced_accuracy_boot_ci_low']:.3f}, {r['balanced_accuracy_boot_ci_high']:.3f}] | "
            f"{r['macro_f1_pooled']:.3f} | {log_loss} | - | - |")
    lines += ["", "## Verdicts (balanced accuracy, paired block bootstrap; MDE = minimum detectable effect, "
              "80 % power, two-sided 5 %)", ""]
    lines += [f"- {v}" for v in summary["verdicts"]] or ["- (no comparisons)"]
    if summary.get("block_warnings"):
        lines += ["", "## Evaluation blocks that weaken these verdicts", ""]
        lines += [f"- {w['message']}" for w in summary["block_warnings"]]
    warnings = [f"- {r['arm']}: {r['edge_warnings']}" for _, r in arms.iterrows() if r["edge_warnings"]]
    if warnings:
        lines += ["", "## Best trials on the edge of the search space", ""] + warnings
    if len(summary["per_fold"]):
        lines += ["", "## Per fold (test balanced accuracy, mean over seeds)", "",
                  summary["per_fold"].pivot(index="fold", columns="arm", values="balanced_accuracy").round(3).to_markdown()
                  if importlib.util.find_spec("tabulate") is not None else summary["per_fold"].to_string(index=False)]
    ceilings = summary.get("ceilings")
    if ceilings is not None and len(ceilings):
        table = ceilings.groupby(["arm", "path"], sort=False)[["accuracy", "ceiling_accuracy", "fraction_of_ceiling"]].mean()
        lines += ["", "## Against the Bayes-optimal ceiling (Hamilton filter with the true parameters, per path)", "",
                  table.round(3).reset_index().to_string(index=False)]
    return "\n".join(lines) + "\n"


def predictions_frame(results, confirmations: list[ArmConfirmation], references, blocks) -> pd.DataFrame:
    """One row per test window: ``timestamp``, ``fold``, ``y_true``, ``close`` (where the data has
    closes) and ``pred.<arm>`` (argmax of the seed-averaged probabilities) for every arm and reference;
    the report draws the regimes over time from it."""
    frames = []
    for b, block in enumerate(blocks):
        first = next((r for r in results if r["fold"] == b and "index" in r), None)
        if first is None or not confirmations:
            continue
        index = pd.DatetimeIndex(first["index"])
        frame = pd.DataFrame({"timestamp": index, "fold": b, "y_true": np.asarray(confirmations[0].y_true[b])})
        if "close" in block.bars.columns:
            frame["close"] = block.bars["close"].reindex(index).to_numpy()
        for conf in confirmations:
            frame[f"pred.{conf.arm}"] = np.asarray(conf.probs[b]).mean(axis=1).argmax(-1)
        for reference in references:
            pred = np.asarray(reference["per_block"][b])
            if len(pred) == len(frame):
                frame[f"pred.{reference['name']}"] = pred.argmax(-1) if pred.ndim == 2 else pred
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ceiling_table(results, blocks) -> pd.DataFrame:
    rows = []
    for r in results:
        ceiling = r.get("ceiling")
        if not ceiling:
            continue
        pred = r["probs"].argmax(-1)
        acc = float(np.mean(pred == r["y_true"]))
        rows.append({"arm": r["arm"], "path": r["fold"], "seed": r["seed"], "accuracy": acc,
                     "ceiling_accuracy": ceiling["accuracy"], "fraction_of_ceiling": acc / ceiling["accuracy"],
                     "ceiling_balanced_accuracy": ceiling["balanced_accuracy"]})
    frame = pd.DataFrame(rows)
    # results arrive in completion order (worker processes); the table must not depend on it
    return frame.sort_values(["arm", "path", "seed"], ignore_index=True) if rows else frame


def control_checks(summary: Mapping[str, Any], task: str, copy_arm: str) -> pd.DataFrame:
    """What a correct harness must find on a control, checked against a run's summary.

    One row per check (``check``, ``arm``, ``b``, ``expected``, ``estimate``, ``ci_low``,
    ``ci_high``, ``mde``, ``passed``) on pooled test balanced accuracy:

    * ``winner_above_chance``: each predicted winner's 95 % block-bootstrap interval lies above chance;
    * ``at_chance``: each arm predicted at chance has chance inside its interval;
    * ``winner_beats``: each (winner, at-chance arm) paired difference is positive with its interval
      above zero (the effect the ablation must detect);
    * ``aa_null``: the winner and its A/A copy: no detectable difference (interval covers zero); the
      MDE column then gives the smallest difference the run could have seen at 80 % power.
    """
    control = get_control(task)
    arms = summary["arms"].set_index("arm")
    diffs = summary["differences"]
    diffs = diffs[diffs["metric"] == "balanced_accuracy"] if len(diffs) else diffs
    rows = []

    def interval(arm: str) -> tuple[float, float, float]:
        r = arms.loc[arm]
        return (float(r["balanced_accuracy_pooled"]), float(r["balanced_accuracy_boot_ci_low"]),
                float(r["balanced_accuracy_boot_ci_high"]))

    def paired(a: str, b: str) -> dict[str, float] | None:
        for r in diffs.to_dict("records"):
            if (r["a"], r["b"]) == (a, b):
                return {"estimate": r["difference"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "mde": r["mde"]}
            if (r["a"], r["b"]) == (b, a):
                return {"estimate": -r["difference"], "ci_low": -r["ci_high"], "ci_high": -r["ci_low"], "mde": r["mde"]}
        return None

    present = set(arms.index)
    winners = control.winners_among([name for name in arms.index if name != copy_arm])
    for arm in winners:
        if arm not in present:
            continue
        est, lo, hi = interval(arm)
        rows.append({"check": "winner_above_chance", "arm": arm, "b": "chance", "expected": f"> {control.chance:.3f}",
                     "estimate": est, "ci_low": lo, "ci_high": hi, "mde": math.nan, "passed": lo > control.chance})
    for arm in control.at_chance:
        if arm not in present:
            continue
        est, lo, hi = interval(arm)
        rows.append({"check": "at_chance", "arm": arm, "b": "chance", "expected": f"= {control.chance:.3f}",
                     "estimate": est, "ci_low": lo, "ci_high": hi, "mde": math.nan,
                     "passed": lo <= control.chance <= hi})
    for arm in winners:
        for other in control.at_chance:
            d = paired(arm, other) if {arm, other} <= present else None
            if d is not None:
                rows.append({"check": "winner_beats", "arm": arm, "b": other, "expected": "> 0", **d,
                             "passed": d["ci_low"] > 0})
    source = copy_arm.removesuffix("_copy")  # the copy is of the first predicted winner (spec.apply_control)
    d = paired(source, copy_arm) if {source, copy_arm} <= present else None
    if d is not None:
        rows.append({"check": "aa_null", "arm": source, "b": copy_arm, "expected": "= 0", **d,
                     "passed": d["ci_low"] <= 0 <= d["ci_high"]})
    return pd.DataFrame(rows, columns=["check", "arm", "b", "expected", "estimate", "ci_low", "ci_high", "mde",
                                       "passed"])


# ================================================================================================


def timing(elapsed: float, done: int, total: int) -> str:
    """``"elapsed 3m05s, ~4m10s left"``: the time left extrapolates the mean time per finished unit."""
    def fmt(seconds: float) -> str:
        seconds = max(0, int(round(seconds)))
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

    if not math.isfinite(elapsed):
        return "elapsed -"
    left = f", ~{fmt(elapsed / done * (total - done))} left" if 0 < done < total else ""
    return f"elapsed {fmt(elapsed)}{left}"
