"""Log one trained model's run from its record, save the model, load it back.

``log_training_run`` logs a :class:`regimetry.run_record.RunRecord` (built by
``regimetry.run_record.build`` from a ``TrainResult``) and computes nothing: the evaluation, the
attention extraction and the figures happen before the call.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import Model, infer_signature

from regimetry.tracking.log import git_info, log_artifact, log_dict, log_figure, log_history, log_metrics, \
    log_params, set_tags, version_tags
from regimetry.tracking.store import _client, _retry, _run_id, configure


def log_training_run(record, *, run_id: str | None = None) -> dict[str, float]:
    """Log one trained model's record into the active run (or ``run_id``): everything a report needs.

    Logs the record's tags plus the provenance (``git_sha``, ``git_dirty``, ``version.<package>``),
    its params (the flattened ``DataConfig``/``ModelConfig``/``TrainConfig`` plus split sizes; long
    values as artifacts), its JSON artifacts (``config/config.json``, ``data/*.json``,
    ``metrics/confusion_<split>.json``), the per-epoch history (step = epoch), the final metrics
    (``val/<metric>``, ``test/<metric>``, ``best_epoch``, ``epochs_run``, ``stopped_early``,
    ``fit_seconds``) at step ``record.metrics_step``, its figures (``figures/confusion_<split>.png``,
    ``figures/training_curves.png``, ``attention/window_<i>.png``; every figure is closed, also on
    failure) and the model (``keras/model.keras``; plus the MLflow Keras flavour with signature and
    input example under the name ``model`` when the record carries a ``signature_example``).

    Args:
        record: a :class:`regimetry.run_record.RunRecord`.
        run_id: the run to log into (default: the active run).

    Returns:
        The final metrics logged (``record.metrics``).
    """
    run_id = _run_id(run_id)
    try:
        set_tags({**git_info(), **version_tags(), **record.tags}, run_id=run_id)
        log_params(record.params, run_id=run_id)
        for artifact_file, data in record.dicts.items():
            log_dict(data, artifact_file, run_id=run_id)
        log_history(record.history, run_id=run_id)
        log_metrics(record.metrics, step=record.metrics_step, run_id=run_id)
        for artifact_file, fig in record.figures.items():
            log_figure(fig, artifact_file, run_id=run_id)
    finally:
        record.close_figures()
    _log_model(record.model, run_id, signature_example=record.signature_example)
    return record.metrics


def _log_model(model, run_id: str, *, signature_example) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        log_artifact(path, "keras", run_id=run_id)
    tags = {"model_keras": "keras/model.keras"}
    if signature_example is not None:
        tags["model_uri"] = _log_keras_flavor(model, run_id, *signature_example)
    set_tags(tags, run_id=run_id)


def _log_keras_flavor(model, run_id: str, example, outputs) -> str:
    """Log the MLflow Keras flavour (MLmodel, signature, input example) under ``model``; its URI."""
    # Keras only here: MLflow validates the input example with model.predict() and its default
    # progress bar, which is kept out of the experiment's output.
    import keras

    signature = infer_signature(example, outputs)
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in ("tensorflow", "keras", "numpy")]
    current = mlflow.active_run()
    activate = current is None or current.info.run_id != run_id
    interactive = keras.utils.is_interactive_logging_enabled()
    keras.utils.disable_interactive_logging()
    try:
        with (mlflow.start_run(run_id=run_id, nested=current is not None) if activate else contextlib.nullcontext()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = _retry(lambda: Model.log(
                    artifact_path=None, name="model", flavor=_KERAS_FLAVOR, flavor_name="mlflow.keras",
                    model=model, signature=signature, input_example=example, pip_requirements=requirements,
                ))
    finally:
        if interactive:
            keras.utils.enable_interactive_logging()
    return info.model_uri


def _save_keras_flavor(path: str, **kwargs: Any) -> None:
    # MLflow 3.17.2's keras flavour writes the input example into ``path`` before creating it
    # (FileNotFoundError .../input_example.json); create the directory first. mlflow.keras imports Keras.
    from mlflow import keras as mlflow_keras

    os.makedirs(path, exist_ok=True)
    mlflow_keras.save_model(path=path, **kwargs)


_KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_flavor)


def load_model(ref: str, *, tracking_uri: str | None = None):
    """Load a logged model with its custom layers.

    Args:
        ref: a run id (loads the MLflow flavour if the run logged one, else ``keras/model.keras``),
            or a model URI (``runs:/<id>/model``, ``models:/<id>``) for ``mlflow.keras.load_model``.

    Raises:
        ValueError: the run has no logged model.
    """
    # Keras (and the project's layers, which register themselves with it on import; mlflow.keras imports
    # Keras too) only when a model is loaded: the reports and the harness import this package without it.
    import keras
    from mlflow import keras as mlflow_keras

    import regimetry.layers  # noqa: F401  (registers the custom layers)

    configure(tracking_uri)
    if "://" in ref or ref.startswith("models:/") or ref.startswith("runs:/"):
        return mlflow_keras.load_model(ref)
    run_info = _retry(lambda: _client().get_run(ref))
    model_uri = run_info.data.tags.get("model_uri")
    if model_uri:
        return mlflow_keras.load_model(model_uri)
    artifact = run_info.data.tags.get("model_keras")
    if not artifact:
        raise ValueError(f"run {ref} has no logged model (no 'model_keras' or 'model_uri' tag)")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=ref, artifact_path=artifact, dst_path=tmp)
        return keras.models.load_model(local)
