"""Everything one trained model's run records, computed before anything is logged.

:func:`build` evaluates a ``TrainResult`` (the test split, when asked), extracts attention for fixed
validation windows, draws the figures and collects params, tags and JSON artifacts into a plain
:class:`RunRecord`; ``regimetry.tracking.log_training_run`` then logs that record and computes
nothing. So the tracker stays a leaf (it imports neither the models nor the metrics), and a record
can be inspected or tested without an MLflow store::

    result = training.fit(splits, model_config, train_config)
    tracking.log_training_run(run_record.build(result, splits, model_config, train_config,
                                               stage="confirm", arm="mean"))
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

from regimetry import plots, records
from regimetry.scoring import evaluate_full, predict_proba

__all__ = ["ATTENTION_WINDOWS", "RunRecord", "attention_window_indices", "build"]

#: Validation windows drawn as attention heat maps per run.
ATTENTION_WINDOWS = 3


@dataclasses.dataclass
class RunRecord:
    """What one training run logs: plain values, figures and the model.

    Attributes:
        tags: run tags (``dataset``, ``data_fingerprint``, ``seed``, ``stage``, ``arm``, leakage-audit
            tags, ``attention_windows`` or ``attention_maps``); provenance (git, versions) is added
            by the tracker.
        params: the flattened configs plus split sizes (long values become artifacts when logged).
        dicts: JSON artifacts, artifact path -> JSON-able value (configs, names, confusion matrices).
        history: per-epoch metrics ``{name: [value per epoch]}``.
        metrics: the final metrics (``val/...``, ``test/...``, ``best_epoch``, ...), logged at
            ``metrics_step``.
        metrics_step: ``epochs_run``: one past the last epoch, so the final values are the latest.
        figures: artifact path -> matplotlib figure (closed by the tracker once logged).
        model: the trained Keras model (saved as ``keras/model.keras``).
        signature_example: ``(inputs, outputs)`` of two validation windows for the MLflow Keras
            flavour's signature, or ``None`` when the flavour is not logged.
        test_probs: the test probabilities scored, or ``None``.
        attention: the attention scores of the ``attention_windows`` validation windows (one array
            per block), or ``None``.
    """

    tags: dict[str, Any]
    params: dict[str, Any]
    dicts: dict[str, Any]
    history: Mapping[str, Sequence[float]]
    metrics: dict[str, float]
    metrics_step: int
    figures: dict[str, Any]
    model: Any
    signature_example: tuple[np.ndarray, np.ndarray] | None = None
    test_probs: np.ndarray | None = None
    attention: list[np.ndarray] | None = None

    def close_figures(self) -> None:
        """Close every figure of the record (the tracker does once they are logged)."""
        for fig in self.figures.values():
            plots.close(fig)


def attention_window_indices(n: int, count: int = ATTENTION_WINDOWS) -> list[int]:
    """The fixed validation windows drawn in attention heat maps: evenly spaced first..last."""
    if n <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n)).round()})


def build(result, splits, model_config, train_config, *, stage: str, arm: str, seed: int | None = None,
          full_model: bool = False, test: bool = True, attention: bool = True, figures: bool = True,
          test_probs: np.ndarray | None = None) -> RunRecord:
    """The record of one trained model: everything a report needs.

    Args:
        result: ``regimetry.training.TrainResult``.
        splits: the ``Splits`` it was trained on.
        model_config, train_config: the configs of ``result``.
        stage: ``trial``, ``confirm``, ``baseline`` or ``single``. arm: the arm's name.
        seed: defaults to ``train_config.seed``.
        full_model: also log the MLflow Keras flavour (its signature example is computed here).
        test: evaluate the test split (trials of a study pass ``False``).
        attention: draw attention heat maps of fixed validation windows.
        figures: draw the confusion-matrix and training-curve figures (the JSON confusion matrices
            are recorded regardless).
        test_probs: the model's float32 ``(len(splits.test), num_classes)`` test probabilities when
            the caller already has them (the test split is then not predicted again).
    """
    seed = train_config.seed if seed is None else seed
    data_config = splits.config
    tags = {"dataset": data_config.dataset_name, "data_fingerprint": splits.fingerprint, "seed": seed,
            "stage": stage, "arm": arm, **_audit_tags(splits.extras.get("leakage_audit"))}
    metrics, confusions, probs = _final_metrics(result, splits, test, test_probs)
    record = RunRecord(
        tags=tags, params=_params(splits, model_config, train_config),
        dicts=_dicts(splits, model_config, train_config, confusions), history=result.history,
        metrics=metrics, metrics_step=int(result.epochs_run), figures={}, model=result.model, test_probs=probs,
    )
    if figures:
        for name, cm in confusions.items():
            record.figures[f"figures/confusion_{name}.png"] = plots.confusion_matrix_figure(
                cm, splits.class_names, title=f"{name} split")
        record.figures["figures/training_curves.png"] = plots.training_curves(result.history,
                                                                              best_epoch=result.best_epoch)
    if attention:
        _add_attention(record, result.model, splits)
    if full_model:
        example = np.asarray(splits.val.X[:2], dtype=np.float32)
        record.signature_example = (example, predict_proba(result.model, example))
    return record


def _params(splits, model_config, train_config) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for cfg in (splits.config, model_config, train_config):
        params.update(cfg.flat())
    params.update({
        "data.num_features": splits.num_features, "data.num_classes": splits.num_classes,
        "data.n_train": len(splits.train), "data.n_val": len(splits.val), "data.n_test": len(splits.test),
        "data.fold": splits.fold,
    })
    return params


def _dicts(splits, model_config, train_config, confusions: Mapping[str, np.ndarray]) -> dict[str, Any]:
    dicts: dict[str, Any] = {
        "config/config.json": {"data": splits.config.to_dict(), "model": model_config.to_dict(),
                               "train": train_config.to_dict()},
        "data/feature_names.json": list(splits.feature_names),
        "data/class_names.json": list(splits.class_names),
    }
    if splits.label_thresholds is not None:
        dicts["data/label_thresholds.json"] = np.asarray(splits.label_thresholds)
    for name, cm in confusions.items():
        dicts[records.confusion_artifact(name)] = {"labels": list(splits.class_names), "rows": "true",
                                                   "columns": "predicted", "matrix": cm}
    return dicts


def _final_metrics(result, splits, test: bool, test_probs):
    """The restored model's final metrics (``val/``, ``test/`` when asked), the confusion matrices and
    the test probabilities."""
    final: dict[str, float] = {records.split_metric("val", k): v for k, v in result.val_metrics.items()}
    confusions = {"val": result.val_confusion}
    probs = None
    if test and len(splits.test):
        evaluated = evaluate_full(result.model if test_probs is None else np.asarray(test_probs),
                                  splits.test, splits.class_names)
        final.update({records.split_metric("test", k): v for k, v in evaluated.metrics.items()})
        confusions["test"] = evaluated.confusion
        probs = evaluated.probs
    final.update({
        "best_epoch": result.best_epoch, records.EPOCHS_RUN: result.epochs_run,
        "stopped_early": float(result.stopped_early), "fit_seconds": result.fit_seconds,
    })
    return final, confusions, probs


def _audit_tags(audit: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    """``leakage_flags``: the CSV columns the leakage audit flagged (``none``), when it ran."""
    if not audit:
        return {}
    flagged = [f"{a['column']} (partial R2 {a['partial_r2']:.2f})" for a in audit if a.get("flagged")]
    return {"leakage_flags": "; ".join(flagged)[:4900] if flagged else "none",
            "leakage_audited_columns": str(sum(1 for a in audit if not a.get("note")))}


def _add_attention(record: RunRecord, model, splits) -> None:
    """Attention scores and heat maps of the fixed validation windows (tag ``attention_windows``), or
    the tag ``attention_maps`` saying why there are none (e.g. a plain Keras reference model)."""
    windows = attention_window_indices(len(splits.val))
    if not windows:
        return
    # Keras is imported where a model exists, so the main process of a multi-worker run never loads it
    from regimetry.models import attention_scores

    try:
        scores = attention_scores(model, splits.val.X[windows])
    except ValueError as exc:  # not a regimetry classifier
        record.tags["attention_maps"] = f"unavailable: {exc}"[:5000]
        return
    record.attention = scores
    for j, i in enumerate(windows):
        date = splits.val.index[i]
        label = splits.class_names[int(splits.val.y[i])]
        title = f"validation window {i} ending {getattr(date, 'date', lambda: date)()} (true: {label})"
        record.figures[f"{records.ATTENTION_DIR}/window_{i}.png"] = plots.attention_heatmaps(
            [np.asarray(s) for s in scores], window=j, title=title)
    record.tags["attention_windows"] = json.dumps(windows)
