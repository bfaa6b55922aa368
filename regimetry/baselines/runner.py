"""Run baselines on a ``Splits``: fit and predict (one BLAS thread), check the outputs' shapes, score
validation and test with the metrics of record."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from regimetry.baselines.models import BASELINES
from regimetry.data.types import Splits
from regimetry.scoring import metrics_from_probs

__all__ = ["BaselineResult", "applicable_baselines", "result_metrics", "run_baseline", "run_baselines"]

log = logging.getLogger("regimetry.baselines")


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """Predictions and metrics of one baseline on one ``Splits``.

    Attributes:
        name: registry name of the baseline.
        val_probs / test_probs: float64 ``(n_val, num_classes)`` / ``(n_test, num_classes)`` class
            probabilities aligned with ``splits.val.y`` / ``splits.test.y``; ``None`` for baselines
            that give hard predictions only (persistence, GARCH).
        val_pred / test_pred: int64 ``(n_val,)`` / ``(n_test,)`` predicted class ids (the argmax of
            the probabilities where there are probabilities).
        val_metrics / test_metrics: the scalar metrics of record
            (``regimetry.training.metrics_from_probs``: accuracy, balanced_accuracy, macro_f1,
            log_loss - NaN for hard predictions - and recall/<class>); ``{}`` for an empty split.
        fit_seconds: wall time of fitting and predicting, in seconds.
        params: the settings in force, including the hyperparameter chosen on validation.
        val_confusion / test_confusion: int64 ``(num_classes, num_classes)`` confusion matrices
            (rows = true, columns = predicted), ``None`` for an empty split.
    """

    name: str
    val_probs: np.ndarray | None
    val_pred: np.ndarray
    test_probs: np.ndarray | None
    test_pred: np.ndarray
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    fit_seconds: float
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    val_confusion: np.ndarray | None = None
    test_confusion: np.ndarray | None = None

    def probs_or_pred(self, split: str) -> np.ndarray:
        """``val_probs``/``test_probs`` where there are probabilities, else the hard predictions."""
        probs = getattr(self, f"{split}_probs")
        return probs if probs is not None else getattr(self, f"{split}_pred")


def _evaluate(y: np.ndarray, probs: np.ndarray | None, pred: np.ndarray, class_names: list[str]):
    """The metrics of record (an ``EvalResult``), or ``None`` for an empty split."""
    if len(y) == 0:
        return None
    if probs is not None:
        return metrics_from_probs(y, probs, class_names)
    return metrics_from_probs(y, None, class_names, y_pred=pred)


def run_baseline(name: str, splits: Splits, seed: int = 0) -> BaselineResult:
    """Fit one baseline on ``splits.train`` (choosing any hyperparameter on ``splits.val``) and
    predict the validation and test windows.

    Args:
        name: a key of ``BASELINES``.
        splits: prepared data (``regimetry.data.prepare`` or one fold of ``prepare_folds``).
        seed: seeds the stochastic fits (EM initialisation, boosting, solvers).

    Returns:
        :class:`BaselineResult` with probabilities/predictions aligned with ``splits.val.y`` and
        ``splits.test.y`` and the metrics of record for both.

    Raises:
        KeyError: unknown ``name`` (listing the valid names).
        ValueError: the baseline does not apply to this data (the reason is given), or the data
            lacks what it needs (e.g. too little history before the first window).
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; valid names: {sorted(BASELINES)}")
    baseline = BASELINES[name]
    reason = baseline.applicable(splits)
    if reason is not None:
        raise ValueError(f"baseline {name!r} does not apply: {reason}")
    if len(splits.train) == 0:
        raise ValueError(f"baseline {name!r}: the training split is empty")
    t0 = time.perf_counter()
    # One BLAS/OpenMP thread: these fits are small, and on a small shared CPU multithreaded BLAS and
    # OpenMP spin-waiting made them 5-50x slower (measured on 2 cores under load: logistic
    # regression on S&P 500 flattened windows 41.7 s -> 2.5 s, boosting on 1500 x 42 6.9 s -> 1.4 s).
    with threadpool_limits(limits=1):
        out = baseline.fit_predict(splits, seed)
    seconds = time.perf_counter() - t0
    for split, values in (("val", out.val), ("test", out.test)):
        n = len(getattr(splits, split))
        expected = (n, splits.num_classes) if out.probabilistic else (n,)
        if np.shape(values) != expected:  # an internal bug, not a user error: fail loudly
            raise RuntimeError(f"baseline {name!r}: {split} output has shape {np.shape(values)}, expected {expected}")
    if out.probabilistic:
        val_probs, test_probs = out.val, out.test
        val_pred, test_pred = val_probs.argmax(axis=1), test_probs.argmax(axis=1)
    else:
        val_probs = test_probs = None
        val_pred, test_pred = out.val, out.test
    val_pred = np.asarray(val_pred, dtype=np.int64)
    test_pred = np.asarray(test_pred, dtype=np.int64)
    names = list(splits.class_names)
    val_eval = _evaluate(splits.val.y, val_probs, val_pred, names)
    test_eval = _evaluate(splits.test.y, test_probs, test_pred, names)
    return BaselineResult(
        name=name,
        val_probs=val_probs,
        val_pred=val_pred,
        test_probs=test_probs,
        test_pred=test_pred,
        val_metrics=dict(val_eval.metrics) if val_eval else {},
        test_metrics=dict(test_eval.metrics) if test_eval else {},
        fit_seconds=seconds,
        params=dict(out.params),
        val_confusion=val_eval.confusion if val_eval else None,
        test_confusion=test_eval.confusion if test_eval else None,
    )


def result_metrics(result: BaselineResult, prefix: str = "") -> dict[str, float]:
    """Flat metrics for tracking: ``{prefix + "val/<metric>": v, prefix + "test/<metric>": v,
    prefix + "time/fit_seconds": s}`` (NaN kept: log loss of hard predictions is NaN)."""
    out = {f"{prefix}val/{k}": float(v) for k, v in result.val_metrics.items()}
    out.update({f"{prefix}test/{k}": float(v) for k, v in result.test_metrics.items()})
    out[f"{prefix}time/fit_seconds"] = float(result.fit_seconds)
    return out


def applicable_baselines(splits: Splits) -> list[str]:
    """Names of the registered baselines that apply to ``splits`` (in registry order)."""
    return [n for n, b in BASELINES.items() if b.applicable(splits) is None]


def run_baselines(splits: Splits, names: Sequence[str] | None = None, seed: int = 0) -> dict[str, BaselineResult]:
    """Run several baselines on the same ``splits``.

    Args:
        splits: prepared data.
        names: baselines to run; ``None`` runs every applicable one (inapplicable ones are skipped
            with a log message; a name given explicitly that does not apply raises).
        seed: passed to every baseline.

    Returns:
        ``{name: BaselineResult}`` in the order run.

    Raises:
        KeyError / ValueError: as :func:`run_baseline`.
    """
    chosen = applicable_baselines(splits) if names is None else list(names)
    if names is None:
        skipped = sorted(set(BASELINES) - set(chosen))
        if skipped:
            log.info("baselines skipped (not applicable): %s", skipped)
    return {name: run_baseline(name, splits, seed=seed) for name in chosen}
