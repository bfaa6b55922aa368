"""Seed ensemble vs seed mean: what averaging the confirmation seeds' probabilities would score.

An ablation scores each arm as the MEAN over its confirmation seeds of each seed's pooled balanced
accuracy (one trained model = one seed). Averaging the seeds' class probabilities first and taking
the argmax scores the ENSEMBLE of those seeds instead: the same runs, no extra training. This script
reads a finished ablation's ``summary/predictions.csv`` (``pred.<arm>`` = argmax of the
seed-averaged probabilities, written by every run) and ``summary/arms.csv`` (the seed means) from
MLflow and prints, per arm, both scores and the ensemble's paired circular block-bootstrap
difference against HAR-RV and persistence (the harness's own statistics, blocks of one label
horizon, 1,000 replicates, seed 0). It trains nothing and writes nothing.

Example::

    python benchmarks/seed_ensemble.py 03_encoding_ablation --tracking-uri sqlite:///mlruns/mlflow.db
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from regimetry import evaluation, records, tracking  # noqa: E402
from regimetry.reports.runs import load_ablation_runs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--parent-run-id", default=None, help="default: the newest FINISHED run of the experiment")
    parser.add_argument("--horizon", type=int, default=21, help="label horizon in bars = bootstrap block length")
    args = parser.parse_args()
    runs = load_ablation_runs(args.experiment, args.tracking_uri, args.parent_run_id)
    parent = runs.parent_run_id
    frame = pd.read_csv(tracking.download_artifacts(parent, records.SUMMARY_PREDICTIONS, tracking_uri=args.tracking_uri))
    arms = pd.read_csv(tracking.download_artifacts(parent, records.SUMMARY_ARMS, tracking_uri=args.tracking_uri))
    y = frame["y_true"].to_numpy(dtype=np.int64)
    num_classes = int(max(y.max(), *(frame[c].max() for c in frame if c.startswith("pred."))) + 1)
    print(f"{args.experiment}, parent run {parent}, {len(frame)} test windows, git {(runs.tag('mlflow.source.git.commit') or '?')[:7]}")
    print("| arm | seed mean (pooled) | seed ensemble (pooled) | ensemble minus HAR-RV [95 %] | "
          "ensemble minus persistence [95 %] |")
    print("|---|---|---|---|---|")
    for arm in arms["arm"]:
        pred = frame[f"pred.{arm}"].to_numpy(dtype=np.int64)
        ensemble = evaluation.seed_averaged_metric("balanced_accuracy", y, pred, num_classes)
        mean = float(arms.loc[arms["arm"] == arm, "balanced_accuracy_pooled"].iloc[0])
        cells = []
        for ref in ("har_rv", "persistence"):
            column = f"pred.{ref}"
            if column not in frame:
                cells.append("-")
                continue
            diff = evaluation.paired_block_bootstrap("balanced_accuracy", y, pred, frame[column].to_numpy(dtype=np.int64),
                                                     num_classes, block_length=args.horizon, n_boot=1000, seed=0)
            cells.append(f"{diff.estimate:+.3f} [{diff.lower:+.3f}, {diff.upper:+.3f}]")
        print(f"| {arm} | {mean:.3f} | {ensemble:.3f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
