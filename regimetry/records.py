"""The record format of an ablation: every MLflow tag, metric key, param prefix and artifact path that
:mod:`regimetry.studies` writes and :mod:`regimetry.reports` (and the report notebooks) read back, and
the Optuna study and trial attributes the harness keeps.

Writers and readers both use these names, so a key cannot drift on one side only (a drifted key used
to show up as NaN in a report). ``tests/test_records.py`` writes an ablation's records through the
real writers into a temporary MLflow store and reads every key back through the readers here.

The per-run keys of every trial and confirmation run that a report reads (``val/<metric>``,
``test/<metric>``, ``epochs_run``, ``metrics/confusion_<split>.json``, ``attention/*.png``) are
written by :mod:`regimetry.run_record` through :func:`split_metric`, :data:`EPOCHS_RUN`,
:func:`confusion_artifact` and :data:`ATTENTION_DIR` too. Not named here: the per-run keys no reader
uses (``train/loss`` and the per-epoch history, ``best_epoch``, ``config/config.json``, the training
curves and ``data/*.json``): they appear in the MLflow UI only.

Layout of one ablation invocation (MLflow experiment = the script's stem)::

    parent run   tags stage=study, dataset, scientific, question, seed, optuna_storage, optuna_studies,
                 wall_seconds, verdicts, block_warnings[, report_error]; params budget.*, data.*;
                 artifacts ablation.json, summary/*, report/*
      arm run    tags stage=arm, arm, dataset, optuna_study, best_trial, edge_warnings; params arm.*,
                 best.model.*, best.train.*; metrics confirm/test/<metric>_<stat>,
                 confirm/mde_vs_<arm>/balanced_accuracy, fold<k>/test/<metric>, tuning/*;
                 artifact best_config.json
        trial    tags stage=trial, arm, seed, optuna_trial, optuna_study, optuna_state[, error, interrupted]
        confirm  tags stage=confirm, arm, seed, fold, confirm_key, session_run[, resumed_from];
                 artifact confirm/test_probs.npy
"""

from __future__ import annotations

import math
from typing import Any, Mapping

# ------------------------------------------------------------------------------------------------
# Tags
# ------------------------------------------------------------------------------------------------
STAGE = "stage"
STAGE_STUDY, STAGE_ARM, STAGE_TRIAL, STAGE_CONFIRM = "study", "arm", "trial", "confirm"
ARM = "arm"
SEED = "seed"
FOLD = "fold"
DATASET = "dataset"
SCIENTIFIC = "scientific"
QUESTION = "question"
OPTUNA_STORAGE = "optuna_storage"
OPTUNA_STUDIES = "optuna_studies"
OPTUNA_STUDY = "optuna_study"
OPTUNA_TRIAL = "optuna_trial"
OPTUNA_STATE = "optuna_state"
ERROR = "error"
INTERRUPTED = "interrupted"
#: A trial run handed back because a lower budget slot that its pruning compares with had to run first.
YIELDED = "yielded"
#: MLflow's own tag naming a run's parent run.
PARENT_RUN = "mlflow.parentRunId"
#: Tags of a confirmation run that let a re-run resume an interrupted confirmation (issue 14): what
#: determines the run's result (``regimetry.studies.confirm.confirm_key``), and the ablation session
#: (parent run) it belongs to; ``resumed_from`` names the session that trained it, when taken over.
CONFIRM_KEY_TAG = "confirm_key"
SESSION_TAG = "session_run"
RESUMED_FROM = "resumed_from"
BEST_TRIAL = "best_trial"
EDGE_WARNINGS = "edge_warnings"
WALL_SECONDS = "wall_seconds"
VERDICTS = "verdicts"
BLOCK_WARNINGS = "block_warnings"
REPORT_ERROR = "report_error"
CONTROL_CHECKS_PASSED = "control_checks_passed"
#: The value of a warnings tag when there is none.
NONE = "none"
#: Separator of the verdicts and block warnings joined into one tag.
TAG_SEPARATOR = " | "
#: MLflow caps tag values; the joined verdicts are cut here (the full text is ``summary/verdicts.txt``).
TAG_LIMIT = 4900

# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
TUNING_BEST_VAL = "tuning/best_val"
TUNING_FRACTION_PRUNED = "tuning/fraction_pruned"
TUNING_FRACTION_FAILED = "tuning/fraction_failed"
EPOCHS_RUN = "epochs_run"
#: Columns of a summary's arm row that describe the tuning, not the test blocks (never ``confirm/test/``).
TUNING_COLUMNS = ("best_trial", "best_val", "fraction_pruned", "fraction_failed")


def confirm_metric(column: str) -> str:
    """An arm's pooled test score: ``confirm/test/<metric>_<stat>`` (a column of the summary's arm row,
    e.g. ``balanced_accuracy_pooled``, ``macro_f1_boot_ci_low``)."""
    return f"confirm/test/{column}"


def mde_metric(other: str, metric: str = "balanced_accuracy") -> str:
    """The minimum detectable effect of an arm against ``other`` (an arm or a reference)."""
    return f"confirm/mde_vs_{other}/{metric}"


def fold_metric(fold: int, metric: str) -> str:
    """An arm's test ``metric`` on one evaluation block, mean over seeds: ``fold<k>/test/<metric>``."""
    return f"fold{fold}/test/{metric}"


def parse_fold_metric(key: str, metric: str) -> int | None:
    """The fold of a :func:`fold_metric` key for ``metric`` (``None`` for any other key)."""
    if not (key.startswith("fold") and key.endswith(f"/test/{metric}")):
        return None
    fold = key[len("fold"):].split("/", 1)[0]
    return int(fold) if fold.isdigit() else None


def reference_metric(model: str, metric: str) -> str:
    """A reference baseline's pooled test score on the arms' windows (parent run)."""
    return f"reference/{model}/test/{metric}_pooled"


def split_metric(split: str, metric: str) -> str:
    """A training run's score on one split (``val/balanced_accuracy``), written by ``tracking.log_training_run``."""
    return f"{split}/{metric}"


# ------------------------------------------------------------------------------------------------
# Params
# ------------------------------------------------------------------------------------------------
BUDGET_PARAM = "budget."
ARM_PARAM = "arm."
BEST_PARAM = "best."
#: Parent run: the run's options (``options.jobs``, ``options.smoke``).
OPTIONS_PARAM = "options."
#: Trial run: its Optuna trial number and its sampled nuisance values (``nuisance.model.d_model``).
OPTUNA_TRIAL_PARAM = "optuna.trial"
NUISANCE_PARAM = "nuisance."


def best_param(section: str, field: str) -> str:
    """The tuned configuration of an arm as a param: ``best.model.d_model``."""
    return f"{BEST_PARAM}{section}.{field}"


# ------------------------------------------------------------------------------------------------
# Artifacts
# ------------------------------------------------------------------------------------------------
ABLATION_SPEC = "ablation.json"
BEST_CONFIG = "best_config.json"
#: A confirmation run's test-block class probabilities, exactly as pooled into the summary (float32).
CONFIRM_PROBS_ARTIFACT = "confirm/test_probs.npy"
SUMMARY_MARKDOWN = "summary/summary.md"
SUMMARY_ARMS = "summary/arms.csv"
SUMMARY_PER_FOLD = "summary/per_fold.csv"
SUMMARY_DIFFERENCES = "summary/differences.csv"
SUMMARY_PREDICTIONS = "summary/predictions.csv"
SUMMARY_CLASSES = "summary/classes.json"
SUMMARY_REFERENCES = "summary/references.csv"
SUMMARY_VERDICTS = "summary/verdicts.txt"
SUMMARY_CEILINGS = "summary/ceilings.csv"
REPORT_DIR = "report"
#: ``experiments/00_positive_controls.py`` on each control's parent run: its checks, the controls report.
CONTROLS_DIR = "controls"
CONTROL_CHECKS_ARTIFACT = "controls/checks.csv"
ATTENTION_DIR = "attention"


def confusion_artifact(split: str) -> str:
    """A training run's confusion matrix (``tracking.log_training_run``)."""
    return f"metrics/confusion_{split}.json"


# ------------------------------------------------------------------------------------------------
# Optuna study and trial attributes
# ------------------------------------------------------------------------------------------------
#: Trial system attribute: the owner process (host, pid, start) that claimed the trial.
OWNER_ATTR = "regimetry_owner"
#: Study user attribute: the owner process that created the study and enqueues its budget.
CREATOR_ATTR = "regimetry_creator"
#: Study user attributes: the study's identity (data, arm, fixed settings, nuisance space) and budget.
IDENTITY_ATTR = "data"
BUDGET_ATTR = "budget"
#: Trial user attributes: the budget slot (and that the trial is one), why a trial was given back.
SLOT_ATTR = "slot"
BUDGET_SLOT_ATTR = "regimetry_budget_slot"
RETRY_OF_ATTR = "retry_of"
INTERRUPTED_ATTR = "interrupted"
STALE_ATTR = "stale"
ERROR_ATTR = "error"
MODEL_CONFIG_ATTR = "model_config"
TRAIN_CONFIG_ATTR = "train_config"
MLFLOW_RUN_ATTR = "mlflow_run_id"


# ------------------------------------------------------------------------------------------------
# Readers (rows of ``regimetry.tracking.search_runs`` frames)
# ------------------------------------------------------------------------------------------------
def tag_column(name: str) -> str:
    return f"tags.{name}"


def metric_column(key: str) -> str:
    return f"metrics.{key}"


def param_column(key: str) -> str:
    return f"params.{key}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_tag(row: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    """A tag of a run row (``default`` when absent)."""
    value = row.get(tag_column(name))
    return default if _missing(value) else str(value)


def read_metric(row: Mapping[str, Any], key: str) -> float:
    """A metric of a run row as a float (NaN when absent or not a number)."""
    try:
        return float(row.get(metric_column(key)))
    except (TypeError, ValueError):
        return float("nan")


def read_params(row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The params of a run row starting with ``prefix``, prefix removed (absent ones left out)."""
    head = param_column(prefix)
    return {str(k)[len(head):]: v for k, v in row.items() if str(k).startswith(head) and not _missing(v)}


def read_fold_metrics(row: Mapping[str, Any], metric: str) -> dict[int, float]:
    """``{fold: value}`` of the :func:`fold_metric` keys of an arm run row."""
    head = metric_column("")
    out = {}
    for key, value in row.items():
        key = str(key)
        fold = parse_fold_metric(key[len(head):], metric) if key.startswith(head) else None
        if fold is not None and not _missing(value):
            out[fold] = float(value)
    return out


def joined(values) -> str:
    """Verdicts or warnings joined into one tag value (cut at :data:`TAG_LIMIT`)."""
    return TAG_SEPARATOR.join(values)[:TAG_LIMIT]


def split_joined(value: str | None) -> list[str]:
    """The inverse of :func:`joined` (empty for a missing tag or :data:`NONE`)."""
    if not value or value == NONE:
        return []
    return [part.strip() for part in value.split(TAG_SEPARATOR) if part.strip()]
