"""What every worker process of a run shares: the run's context, its evaluation blocks and its logging.

A :class:`WorkerContext` is pickled into every tuning and confirmation process (``spawn``), so it holds
declarations and ids only; each process prepares the data itself (:func:`evaluation_blocks`, cached
per process) and configures its console (:func:`configure_logging`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings

import numpy as np

from regimetry import data as data_mod
from regimetry import processes
from regimetry.config import DataConfig
from regimetry.data.sources import RegimetryDataWarning
from regimetry.studies import backend
from regimetry.studies.spec import Ablation, Arm, Budget, RunOptions

__all__ = ["WorkerContext", "evaluation_blocks", "apply_arm_to_splits", "arm_study", "configure_logging", "init_worker"]


@dataclasses.dataclass
class WorkerContext:
    ablation: Ablation
    options: RunOptions
    budget: Budget
    data_config: DataConfig
    arm_run_ids: dict[str, str]
    parent_run_id: str | None


def arm_study(storage, ctx: WorkerContext, arm: Arm):
    """The arm's Optuna study of this run (:func:`regimetry.studies.backend.arm_study`)."""
    return backend.arm_study(storage, ctx.ablation, arm, ctx.budget, ctx.options.seed, ctx.data_config)


def evaluation_blocks(config: DataConfig, options: RunOptions, budget: Budget) -> list:
    """The confirmation blocks: walk-forward folds on market/CSV data; on synthetic data and control
    tasks, one split per independently simulated path (``--paths``), each with its own Bayes-optimal
    ceiling.

    The first block's train/val is the tuning period.
    """
    key = (config, options.paths, options.smoke, budget.folds)
    if key not in _BLOCKS_CACHE:
        if config.source == "synthetic" or config.control_task is not None:
            n_paths = max(1, min(options.paths, budget.folds)) if options.smoke else max(1, options.paths)
            blocks = [
                dataclasses.replace(data_mod.prepare(config.replace(synthetic_seed=config.synthetic_seed + p)), fold=p)
                for p in range(n_paths)
            ]
        else:
            blocks = list(data_mod.prepare_folds(config))
        _BLOCKS_CACHE.clear()  # one configuration per process at a time
        _BLOCKS_CACHE[key] = blocks
    return _BLOCKS_CACHE[key]


_BLOCKS_CACHE: dict[tuple, list] = {}


def apply_arm_to_splits(arm: Arm, splits, seed: int):
    """Variable-length arms: NaN-pad each window to a random length (deterministic per window)."""
    if arm.min_window_fraction is None:
        return splits
    from regimetry.models import pad_windows  # Keras: loaded only by variable-length arms that need it

    window = splits.window_size
    min_len = max(1, math.ceil(arm.min_window_fraction * window))

    def pad(split, salt: int):
        rng = np.random.default_rng([seed, salt, len(split)])
        lengths = rng.integers(min_len, window + 1, size=len(split))
        return dataclasses.replace(split, X=pad_windows(split.X, lengths))

    return dataclasses.replace(splits, train=pad(splits.train, 1), val=pad(splits.val, 2), test=pad(splits.test, 3))


class _DropRetracingWarnings(logging.Filter):
    """TensorFlow warns that ``predict`` retraces when a process predicts with several models (one per
    trial or fold): expected here, and four 700-character lines per run on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_default_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our data warnings (about the user's data or options) as one ``warning: ...`` line, without the
    source file and line of the library code that raised them; other warnings as Python shows them."""
    if issubclass(category, RegimetryDataWarning):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def configure_logging() -> None:
    warnings.formatwarning = _format_warning
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend.quiet_logging()
    for noisy in ("mlflow", "alembic", "urllib3", "absl", "matplotlib", "papermill"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # nbconvert's "alternative text is missing" on figures
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropRetracingWarnings) for f in tf_logger.filters):
        tf_logger.addFilter(_DropRetracingWarnings())


def init_worker(tracking_uri: str) -> None:
    """Start-up of a spawned worker process (:func:`regimetry.processes.worker_pool`): the run's MLflow
    store, its logging, and SIGINT/SIGTERM as an orderly interrupt of the running task
    (:func:`regimetry.processes.worker_signals`)."""
    processes.worker_signals()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    configure_logging()
