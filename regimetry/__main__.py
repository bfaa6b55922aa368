"""Command line: ``python -m regimetry train`` trains, evaluates and logs one configuration.

Examples::

    python -m regimetry train --set data.source=sp500 --set train.max_epochs=10
    python -m regimetry train --config configs/single_run.yaml --set model.d_model=64 \\
        --tracking-uri sqlite:///mlruns/mlflow.db

Exit codes: 0 success; 2 bad usage, configuration or input data (the message names the field or
file, no traceback); 1 an unexpected failure during training (the MLflow run ends ``FAILED``);
130 interrupted (the run ends ``KILLED``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Sequence

from regimetry import processes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SECTIONS = ("data", "model", "train")
DEFAULT_EXPERIMENT = "single_runs"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m regimetry",
        description="regimetry: Transformer market-regime classifiers with MLflow tracking.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    train = commands.add_parser(
        "train",
        help="train one configuration, evaluate on val and test, log it to MLflow",
        description=(
            "Train one configuration (defaults of regimetry.config, then --config, then --set), "
            "evaluate the restored best epoch on the validation and test splits, log everything to "
            "MLflow and print the run id and the metrics."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m regimetry train --set data.source=synthetic --set train.max_epochs=5\n"
            "  python -m regimetry train --config configs/single_run.yaml --set model.pooling=cls\n"
            "config sections: data (DataConfig), model (ModelConfig), train (TrainConfig);\n"
            "see the regimetry/config/ package for every field."
        ),
    )
    train.add_argument("--config", metavar="FILE", help="YAML file with data:/model:/train: sections")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override one field, e.g. --set model.d_model=64 (repeatable; YAML values: [5,21], true)",
    )
    train.add_argument(
        "--tracking-uri", default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    )
    train.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    train.add_argument("--run-name", default=None, help="MLflow run name")
    train.add_argument("--arm", default="single", help="'arm' tag (default single)")
    train.add_argument("--stage", default="single", help="'stage' tag (default single)")
    train.add_argument("--no-test", action="store_true", help="do not evaluate or log the test split")
    train.add_argument(
        "--quick-model", action="store_true",
        help="log only the .keras file, not the full MLflow Keras flavour (saves a few seconds)",
    )
    train.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="Keras progress output")
    return parser


def load_configs(config_file: str | None, overrides: Sequence[str]):
    """Build the three configs from an optional YAML file and ``section.field=value`` overrides.

    Returns:
        ``(DataConfig, ModelConfig, TrainConfig)``.

    Raises:
        ValueError: malformed override, unknown section or field, invalid value (naming the field).
        FileNotFoundError: ``config_file`` does not exist.
    """
    from regimetry.config import DataConfig, ModelConfig, TrainConfig, load_yaml, parse_overrides

    parsed = parse_overrides(list(overrides))
    unknown = sorted(set(parsed) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--set: unknown section(s) {unknown}; expected one of {list(SECTIONS)}")
    configs = []
    for cls in (DataConfig, ModelConfig, TrainConfig):
        values = parsed.get(cls.section, {})
        if config_file:
            document = load_yaml(config_file)
            extra = sorted(set(document) - set(SECTIONS))
            if any(s in document for s in SECTIONS) and extra:
                raise ValueError(f"{config_file}: unknown top-level key(s) {extra}; expected {list(SECTIONS)}")
            configs.append(cls.from_yaml(config_file, **values))
        else:
            configs.append(cls.from_dict(values))
    return tuple(configs)


def _format_metrics(metrics: dict[str, float]) -> str:
    lines = []
    for key in sorted(metrics):
        value = metrics[key]
        text = "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<32} {text}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    """``train`` sub-command; returns the exit code."""
    try:
        data_config, model_config, train_config = load_configs(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from regimetry import run_record, tracking, training
    from regimetry.data import prepare

    t0 = time.perf_counter()
    try:  # the data first: a bad file or feature name creates no MLflow store
        splits = prepare(data_config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: data: {exc}", file=sys.stderr)
        return 2
    prep_seconds = time.perf_counter() - t0
    try:
        uri = tracking.configure(args.tracking_uri)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"data: {data_config.dataset_name}  train {len(splits.train)} / val {len(splits.val)} / "
        f"test {len(splits.test)} windows of {splits.window_size} x {splits.num_features}  "
        f"({prep_seconds:.1f} s)", flush=True,
    )
    run_name = args.run_name or (
        f"{data_config.dataset_name}-d{model_config.d_model}-L{model_config.num_layers}-{model_config.pooling}"
    )
    with tracking.run(args.experiment, run_name=run_name, tracking_uri=uri) as active:
        print(f"run_id: {active.run_id}", flush=True)
        result = training.fit(
            splits, model_config, train_config,
            verbose=args.verbose,
            epoch_callback=_progress if args.verbose == 0 else None,
        )
        t1 = time.perf_counter()
        final = tracking.log_training_run(run_record.build(
            result, splits, model_config, train_config,
            stage=args.stage, arm=args.arm, full_model=not args.quick_model, test=not args.no_test,
        ))
        tracking.log_metrics({"time/prepare_seconds": prep_seconds, "time/logging_seconds": time.perf_counter() - t1},
                             step=result.epochs_run)
    print(
        f"\nrun_id: {active.run_id}  experiment: {args.experiment}  "
        f"best epoch {result.best_epoch} of {result.epochs_run}"
        f"{' (stopped early)' if result.stopped_early else ''}  fit {result.fit_seconds:.1f} s"
    )
    print(_format_metrics(final))
    print(f"tracking uri: {uri}\nbrowse: mlflow ui --backend-store-uri {uri}")
    return 0


def _progress(epoch: int, metrics: dict[str, float]) -> None:
    print(
        f"epoch {epoch:3d}  train/loss {metrics['train/loss']:.4f}  val/loss {metrics['val/loss']:.4f}  "
        f"val/balanced_accuracy {metrics['val/balanced_accuracy']:.4f}  ({metrics['time/epoch_seconds']:.1f} s)",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m regimetry`` and the ``regimetry`` console script."""
    args = _parser().parse_args(argv)
    processes.interrupt_on_sigterm()  # SIGTERM ends the run KILLED, as Ctrl-C does
    try:
        if args.command == "train":
            return cmd_train(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
