"""The command line every ablation script shares: ``python experiments/0X_<name>.py [options]``.

:func:`main` parses the options (:func:`build_parser`), checks them (one line and exit 2 for a bad
one, before anything is written) and runs :func:`regimetry.studies.runner.run_ablation`. Exit codes:
0 success; 1 the run finished without a verdict or report (no COMPLETE trial, a short budget, a failed
report); 2 bad usage, configuration, arm or input data; 130 interrupted (re-run the same command to
resume).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
from typing import Any, Callable, Sequence

from regimetry import processes
from regimetry.config import CONTROL_SOURCES, SOURCES, parse_overrides
from regimetry.studies.backend import DEFAULT_STORAGE, SMOKE_STORAGE
from regimetry.studies.context import configure_logging
from regimetry.studies.runner import run_ablation
from regimetry.studies.spec import (DEFAULT_JOBS, Ablation, BudgetIncomplete, NoCompleteTrial, ReportFailed, RunOptions,
                                    control_ablation)

__all__ = ["build_parser", "main", "options_from_args"]


# An experiment script's exit collected garbage over its whole heap (pandas, MLflow, Optuna, SQLAlchemy
# objects): 1.3 s after the results were written (benchmarks/README.md, "Fifth round"). Freezing the
# heap in an exit hook leaves those objects to the operating system; a process that goes on (tests, a
# notebook calling main()) is unaffected until it exits.
atexit.register(gc.freeze)


def build_parser(ablation: Ablation) -> argparse.ArgumentParser:
    b = ablation.budget
    parser = argparse.ArgumentParser(
        prog=f"python experiments/{ablation.name}.py",
        description=f"{ablation.question} (arms: {', '.join(a.name for a in ablation.arms)})",
    )
    parser.add_argument("--dataset", choices=SOURCES + CONTROL_SOURCES, default="sp500",
                        help="data source (default sp500); control:<task> is a control task with a known winner")
    parser.add_argument("--csv", metavar="PATH", help="CSV of bars + indicators (with --dataset csv)")
    parser.add_argument("--target", help="forward_vol_regime (default on market data), true_regime, column:<name>")
    parser.add_argument("--trials", type=int, help=f"Optuna trials per arm (default {b.trials_per_arm})")
    parser.add_argument("--max-epochs", type=int, help=f"epoch cap per training run (default {b.max_epochs})")
    parser.add_argument("--patience", type=int, help="early stopping: epochs without a better validation score "
                                                     f"before a run stops (default {b.patience})")
    parser.add_argument("--seeds", type=int, help=f"confirmation seeds per fold (default {b.seeds})")
    parser.add_argument("--folds", type=int, help=f"walk-forward folds / synthetic paths (default {b.folds})")
    parser.add_argument("--paths", type=int, default=3, help="synthetic data and control tasks: independently simulated paths")
    parser.add_argument("--folds-start", metavar="DATE",
                        help="first day of the first walk-forward test block (default 2008-01-01 on market data: "
                             "hyperparameters are tuned on the period before it)")
    parser.add_argument("--storage", help=f"Optuna storage URL (default {DEFAULT_STORAGE}, {SMOKE_STORAGE} with --smoke); "
                                          "postgresql://..., mysql://..., journal:///path/file.log")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampler, training and bootstrap (default 0)")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help=f"worker processes for tuning and confirmation (default {DEFAULT_JOBS}: "
                             "small models are bound by per-step Python overhead, so one process per core pays)")
    parser.add_argument("--stage", choices=("all", "tune", "confirm"), default="all",
                        help="tune only (e.g. many machines on one storage), confirm only, or both")
    parser.add_argument("--arms", help="comma-separated subset of arms")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.FIELD=VALUE",
                        help="a data setting of regimetry.config.DataConfig, e.g. data.label_buckets=3, "
                             "data.timezone=America/New_York, data.leakage_check=error (repeatable; model and "
                             "training settings are the experiment's, fixed or tuned, so they cannot be set)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budget, for tests (1-4 minutes on 2 cores; its report goes to "
                             "reports/smoke/<experiment>/)")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the papermill report")
    return parser


def main(ablation: Ablation, argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of an experiment script. Returns the process exit code."""
    args = build_parser(ablation).parse_args(argv)

    def body() -> None:
        nonlocal ablation
        if args.dataset.startswith("control:"):
            # The control's own fixed settings, data settings, budget and A/A copy arm (declared with the
            # control in regimetry.data.controls); the same studies as experiments/00_positive_controls.py.
            ablation, _ = control_ablation(ablation, args.dataset, smoke=args.smoke)
        run_ablation(ablation, options_from_args(ablation, args))

    return run_with_exit_codes(body)


def run_with_exit_codes(body: Callable[[], object]) -> int:
    """Run an experiment script's ``body`` with logging and SIGTERM handling, mapping its outcome to the
    process exit code: 0 done; 2 a bad option or input (``ValueError``, ``FileNotFoundError``: one
    ``error:`` line); 1 the run ended without results (report failed, no COMPLETE trial, short budget);
    130 interrupted (Ctrl-C or SIGTERM; finished trials stay stored)."""
    configure_logging()
    processes.interrupt_on_sigterm()
    try:
        body()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ReportFailed, NoCompleteTrial, BudgetIncomplete) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished trials are stored; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


def options_from_args(ablation: Ablation, args: argparse.Namespace) -> RunOptions:
    """The checked :class:`RunOptions` of parsed arguments.

    Raises:
        ValueError: a bad option, in one line naming it.
    """
    if args.arms is not None and not args.arms.strip():
        raise ValueError(f"--arms: empty; name one or more of {[a.name for a in ablation.arms]} (comma-separated), "
                         "or leave the option out for all of them")
    arms = tuple(a.strip() for a in args.arms.split(",")) if args.arms else None
    for name in arms or ():
        ablation.arm(name)
    repeated = sorted({name for name in arms or () if arms.count(name) > 1})
    if repeated:
        raise ValueError(f"--arms: {', '.join(repr(n) for n in repeated)} given more than once (got {args.arms!r}); "
                         "each arm is tuned and confirmed once")
    if args.jobs < 1:
        raise ValueError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.paths < 1:
        raise ValueError(f"--paths: must be >= 1, got {args.paths}")
    if args.csv and args.dataset != "csv":
        raise ValueError(f"--csv {args.csv} is only read with --dataset csv (got --dataset {args.dataset})")
    if not 0 <= args.seed < 2 ** 32:
        raise ValueError(f"--seed: must be an integer in [0, 2**32), got {args.seed}")
    data_settings = _data_settings(args.overrides)
    options = RunOptions(
        dataset=args.dataset, csv=args.csv, target=args.target, trials=args.trials, max_epochs=args.max_epochs,
        patience=args.patience, seeds=args.seeds, folds=args.folds, storage=args.storage, tracking_uri=args.tracking_uri, seed=args.seed,
        smoke=args.smoke, report=args.report, jobs=args.jobs, stage=args.stage, arms=arms, paths=args.paths,
        folds_start=args.folds_start, data_settings=data_settings,
    )
    options.budget(ablation)
    return options


def _data_settings(items: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """``--set data.FIELD=VALUE`` items as sorted ``(field, value)`` pairs (data settings only)."""
    overrides = parse_overrides(items, section="data", option="--set")
    if set(overrides) - {"data"}:
        raise ValueError(f"--set: only data.<field> settings can be set here, got "
                         f"{sorted(set(overrides) - {'data'})}; model and training settings are the "
                         "experiment's (fixed or tuned)")
    for field in overrides.get("data", {}):
        if field in ("source", "csv_path", "target", "num_folds", "folds_start"):
            raise ValueError(f"--set data.{field}: use the option of its own (--dataset, --csv, --target, "
                             "--folds, --folds-start)")
    return tuple(sorted(overrides.get("data", {}).items()))
