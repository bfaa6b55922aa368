"""``python -m regimetry.reports``: render an ablation report from stored runs, or a data report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from regimetry.reports.render import REPORT_METRICS, ReportError, render_ablation_report, render_data_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m regimetry.reports",
        description="Render an ablation report from stored MLflow runs and Optuna studies (never trains), "
                    "or a data report from a data configuration.",
    )
    parser.add_argument("experiment", nargs="?", help="MLflow experiment name, e.g. 03_encoding_ablation")
    parser.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--storage", help="Optuna storage URL (default: the parent run's optuna_storage tag)")
    parser.add_argument("--parent-run-id", help="the stage=study run to report (default: the latest)")
    parser.add_argument("--metric", default="balanced_accuracy", choices=REPORT_METRICS)
    parser.add_argument("--output-dir", help="root directory of the reports (default reports; reports/smoke for a "
                                             "--smoke run's report)")
    parser.add_argument("--no-log", dest="log", action="store_false",
                        help="do not log the rendered report as artifacts of the parent run")
    parser.add_argument("--data-config", metavar="FILE", help="render the data report of this YAML DataConfig")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 1 report failed, 2 usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.experiment is None) == (args.data_config is None):
        parser.print_usage(sys.stderr)
        print("error: give an experiment name or --data-config FILE (one of the two)", file=sys.stderr)
        return 2
    try:
        if args.data_config:
            paths = render_data_report(args.data_config, Path(args.output_dir or "reports") / "data")
        else:
            paths = render_ablation_report(
                args.experiment, tracking_uri=args.tracking_uri, storage=args.storage,
                parent_run_id=args.parent_run_id, metric=args.metric, output_dir=args.output_dir,
                log_to_parent=args.log)
    except ReportError as exc:
        print(f"error: report failed: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:  # bad input (experiment, store, parent id): usage error
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report written: {paths.notebook}\n                {paths.html}")
    return 0
