"""The metrics of record: score class probabilities (or hard predictions) on a whole split.

Computed with scikit-learn on a whole split at once (never averaged over batches): ``accuracy``,
``balanced_accuracy`` (mean per-class recall over the classes present in ``y_true``), ``macro_f1``
(over all ``num_classes`` labels), ``log_loss`` (natural log, with ``labels=range(num_classes)`` so
that a class missing from a split still counts) and ``recall/<class_name>`` (NaN for a class with no
windows in the split). The confusion matrix is ``(num_classes, num_classes)`` with rows = true class,
columns = predicted class. Used by training (per-epoch validation), the study harness and the
baselines alike; imports no Keras (a model is only called through its ``predict``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from regimetry.data.types import SplitData

__all__ = ["EvalResult", "evaluate", "evaluate_full", "metrics_from_probs", "predict_proba"]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Everything computed when scoring one split.

    Attributes:
        metrics: scalar metrics ``accuracy, balanced_accuracy, macro_f1, log_loss,
            recall/<class_name>`` (floats; see the module docstring).
        confusion: int64 ``(num_classes, num_classes)``, rows = true, columns = predicted.
        y_pred: int64 ``(n,)`` predicted classes.
        probs: float64 ``(n, num_classes)`` class probabilities, or ``None`` for hard predictions.
    """

    metrics: dict[str, float]
    confusion: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray | None


def _check_inputs(y_true: np.ndarray, probs: np.ndarray | None, y_pred: np.ndarray | None, k: int):
    y_true = np.asarray(y_true)
    if y_true.ndim != 1:
        raise ValueError(f"y_true: expected a 1-D array of class ids, got shape {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("y_true: empty split, nothing to evaluate")
    if k < 2:
        raise ValueError(f"class_names: need at least 2 classes, got {k}")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true: expected integer class ids, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"y_true: class ids must lie in [0, {k - 1}], got range [{y_true.min()}, {y_true.max()}]")
    if (probs is None) == (y_pred is None):
        raise ValueError("metrics_from_probs: give exactly one of probs=... or y_pred=...")
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(y_true), k):
            raise ValueError(
                f"probs: expected shape (n={len(y_true)}, num_classes={k}), got {probs.shape}"
            )
        if not np.all(np.isfinite(probs)) or probs.min() < 0:
            raise ValueError("probs: contains NaN, inf or negative values")
        sums = probs.sum(axis=1, keepdims=True)
        if np.any(sums <= 0):
            raise ValueError("probs: a row sums to zero")
        probs = probs / sums  # float32 softmax rows sum to 1 only within ~1e-7
        y_pred = probs.argmax(axis=1)
    else:
        y_pred = np.asarray(y_pred)
        if y_pred.shape != y_true.shape:
            raise ValueError(f"y_pred: expected shape {y_true.shape}, got {y_pred.shape}")
        if not np.issubdtype(y_pred.dtype, np.integer) or y_pred.min() < 0 or y_pred.max() >= k:
            raise ValueError(f"y_pred: expected integer class ids in [0, {k - 1}]")
    return y_true.astype(np.int64), probs, y_pred.astype(np.int64)


def metrics_from_probs(
    y_true: np.ndarray,
    probs: np.ndarray | None,
    class_names: Sequence[str],
    *,
    y_pred: np.ndarray | None = None,
) -> EvalResult:
    """Metrics of record from probabilities or from hard predictions (for baselines too).

    Args:
        y_true: int ``(n,)`` true class ids in ``[0, num_classes)``.
        probs: float ``(n, num_classes)`` class probabilities (rows are renormalised to sum to 1),
            or ``None`` when only hard predictions exist.
        class_names: the ``num_classes`` class names (index = class id); used in ``recall/<name>``.
        y_pred: int ``(n,)`` hard predictions; only with ``probs=None``. Then ``log_loss`` is NaN
            (a hard prediction has no likelihood), every other metric is computed as usual.

    Returns:
        ``EvalResult`` (``.metrics`` dict of floats, ``.confusion``, ``.y_pred``, ``.probs``).

    Raises:
        ValueError: wrong shapes, class ids out of range, NaN / negative probabilities, an empty
            split, or both / neither of ``probs`` and ``y_pred``.
    """
    k = len(class_names)
    y_true, probs, y_pred = _check_inputs(y_true, probs, y_pred, k)
    labels = list(range(k))
    with warnings.catch_warnings():
        # A class absent from y_true (e.g. the high-vol class in a calm test period) is expected.
        warnings.simplefilter("ignore", UserWarning)
        out: dict[str, float] = {
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "log_loss": float(skm.log_loss(y_true, probs, labels=labels)) if probs is not None else math.nan,
        }
        recalls = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    for name, value in zip(class_names, recalls):
        out[f"recall/{name}"] = float(value)
    confusion = skm.confusion_matrix(y_true, y_pred, labels=labels).astype(np.int64)
    return EvalResult(metrics=out, confusion=confusion, y_pred=y_pred, probs=probs)


def predict_proba(model: Any, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities of a softmax classifier, in inference mode (dropout off).

    Args:
        model: a ``keras.Model`` whose output is ``(batch, num_classes)`` probabilities.
        X: float ``(n, window_size, n_features)`` windows.
        batch_size: windows per forward pass (memory only; the result does not depend on it).

    Returns:
        float32 ``(n, num_classes)``.

    Raises:
        ValueError: ``X`` is not 3-D or does not match the model's input shape.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"X: expected (n, window_size, n_features), got shape {X.shape}")
    expected = tuple(getattr(model, "input_shape", (None,) * 3) or (None,) * 3)
    if len(expected) == 3 and any(e is not None and e != a for e, a in zip(expected[1:], X.shape[1:])):
        raise ValueError(f"X: windows of shape {X.shape[1:]} do not fit the model's input {expected[1:]}")
    if len(X) == 0:
        n_out = int(model.output_shape[-1])
        return np.zeros((0, n_out), dtype=np.float32)
    # predict_on_batch per chunk, not model.predict: the same traced function and the same numbers, without
    # predict()'s per-call data pipeline and callbacks (~60 ms a call, run after every epoch) and its
    # first-call trace per input length (benchmarks/README.md).
    step = max(1, int(batch_size))
    chunks = [np.asarray(model.predict_on_batch(X[i:i + step]), dtype=np.float32) for i in range(0, len(X), step)]
    return np.concatenate(chunks)


def evaluate_full(
    model_or_probs: Any,
    split: SplitData,
    class_names: Sequence[str],
    *,
    batch_size: int = 1024,
) -> EvalResult:
    """Score a model (or precomputed probabilities) on one split: metrics, confusion, predictions.

    Args:
        model_or_probs: a ``keras.Model`` or a float array ``(len(split), num_classes)``.
        split: the ``SplitData`` to score (``.X`` is only read for a model).
        class_names: the regime names, index = class id.
        batch_size: inference batch size for a model.

    Raises:
        ValueError: see ``metrics_from_probs`` and ``predict_proba``.
    """
    if isinstance(model_or_probs, np.ndarray):
        probs = model_or_probs
    else:
        probs = predict_proba(model_or_probs, split.X, batch_size=batch_size)
    return metrics_from_probs(split.y, probs, class_names)


def evaluate(
    model_or_probs: Any,
    split: SplitData,
    class_names: Sequence[str],
    *,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Scalar metrics of record on one split (``evaluate_full(...).metrics``).

    For the confusion matrix use ``evaluate_full(...).confusion``.
    """
    return evaluate_full(model_or_probs, split, class_names, batch_size=batch_size).metrics
