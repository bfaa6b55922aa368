"""Read one ablation back from MLflow (and its arms' Optuna studies) as tables for the report.

Every key read here is named in :mod:`regimetry.records`, which the harness writes with. Nothing here
trains or writes; the Optuna studies are read through :mod:`regimetry.studies.backend` (the one optuna
importer), never through the runner.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from regimetry import records, tracking
from regimetry.config import redact_url
from regimetry.studies import backend

_ARM = records.tag_column(records.ARM)
_VERSION_PACKAGES = ("tensorflow", "keras", "mlflow", "optuna", "pandas", "numpy", "scikit-learn", "papermill")


_SECRET_ENV = {"tracking_uri": "REGIMETRY_REPORT_TRACKING_URI", "storage": "REGIMETRY_REPORT_STORAGE"}


def _from_env(value: str | None) -> str | None:
    """``"$NAME"`` -> the environment variable ``NAME`` (how URLs with passwords reach the kernel without
    being written into the executed notebook); any other value unchanged."""
    if isinstance(value, str) and value.startswith("$") and len(value) > 1:
        return os.environ.get(value[1:]) or None
    return value


def _status_text(status: Any) -> str:
    if status == "RUNNING":  # the harness renders its report before it closes its parent run
        return "running while this report was rendered: the run renders its own report, then closes"
    return str(status)


@dataclasses.dataclass
class AblationRuns:
    """Every MLflow run of one ablation invocation, as ``regimetry.tracking.search_runs`` frames.

    Attributes:
        experiment, tracking_uri: where they were read.
        parent: the ``stage=study`` run (a row: ``run_id``, ``status``, ``tags.*``, ``params.*``, ...).
        arms: one row per arm run (``stage=arm``), index = arm name, in creation order.
        trials: trial runs (``stage=trial``) under those arms.
        confirms: confirmation runs (``stage=confirm``) under those arms.
    """

    experiment: str
    tracking_uri: str
    parent: pd.Series
    arms: pd.DataFrame
    trials: pd.DataFrame
    confirms: pd.DataFrame

    @property
    def parent_run_id(self) -> str:
        return str(self.parent["run_id"])

    @property
    def arm_names(self) -> list[str]:
        return list(self.arms.index)

    def tag(self, name: str, default: str | None = None) -> str | None:
        """A tag of the parent run (``None``/``default`` when absent)."""
        return records.read_tag(self.parent, name, default)

    def artifact(self, run_id: str, path: str) -> Path | None:
        """Local path of an artifact file of one of these runs, or ``None`` when it does not exist.

        Reads ``file://`` artifact stores in place; other stores need
        ``regimetry.tracking.download_artifacts`` (used when it exists).
        """
        frames = [self.parent.to_frame().T, self.arms, self.trials, self.confirms]
        row = None
        for frame in frames:
            if "run_id" in frame and (frame["run_id"] == run_id).any():
                row = frame[frame["run_id"] == run_id].iloc[0]
                break
        if row is None:
            raise ValueError(f"run {run_id} is not part of ablation {self.experiment!r} "
                             f"(parent run {self.parent_run_id})")
        return _artifact_path(str(row.get("artifact_uri", "")), run_id, path, self.tracking_uri)

    def text(self, run_id: str, path: str) -> str | None:
        local = self.artifact(run_id, path)
        return local.read_text(encoding="utf-8") if local is not None else None

    def csv(self, run_id: str, path: str) -> pd.DataFrame | None:
        local = self.artifact(run_id, path)
        if local is None:
            return None
        try:
            return pd.read_csv(local)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def json(self, run_id: str, path: str) -> Any:
        local = self.artifact(run_id, path)
        return json.loads(local.read_text(encoding="utf-8")) if local is not None else None


def _artifact_path(artifact_uri: str, run_id: str, path: str, tracking_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("file", "") and artifact_uri:
        local = Path(unquote(parsed.path)) / path
        return local if local.is_file() else None
    download = getattr(tracking, "download_artifacts", None)
    if download is None:
        return None
    try:
        return Path(download(run_id, path, tracking_uri=tracking_uri))
    except Exception:  # noqa: BLE001 - a missing artifact is shown as "not available"
        return None


def _stage_filter(stage: str) -> str:
    return f"{records.tag_column(records.STAGE)} = '{stage}'"


def _sqlite_missing(uri: str) -> bool:
    if not uri.startswith("sqlite:///"):
        return False
    path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return bool(path) and path != ":memory:" and not Path(path).is_file()


def load_ablation_runs(experiment: str, tracking_uri: str | None = None,
                       parent_run_id: str | None = None) -> AblationRuns:
    """Load the runs of one ablation invocation (see ``regimetry.studies.run_ablation``).

    Args:
        experiment: MLflow experiment name.
        tracking_uri: MLflow store (default as in ``regimetry.tracking.resolve_tracking_uri``).
        parent_run_id: the ``stage=study`` run; ``None`` picks the latest FINISHED one (by start time),
            so a crashed or still running invocation is never reported by default.

    Raises:
        ValueError: a SQLite store file that does not exist, an experiment with no FINISHED ``stage=study``
            run (when ``parent_run_id`` is None), or a ``parent_run_id`` that is not such a run of the experiment; the message names
            the experiment and the tracking URI.
    """
    uri = tracking.resolve_tracking_uri(_from_env(tracking_uri))
    where = f"experiment {experiment!r} at tracking URI {redact_url(uri)}"
    if _sqlite_missing(uri):
        raise ValueError(f"no MLflow store at {uri} (the SQLite file does not exist), so no runs of {where}")
    parents = tracking.search_runs(experiment, _stage_filter(records.STAGE_STUDY), order_by=["attribute.start_time DESC"],
                                   tracking_uri=uri)
    if parents.empty:
        raise ValueError(f"no ablation runs (tag stage=study) in {where}; check the experiment name "
                         f"(the script's stem, e.g. 03_encoding_ablation) and --tracking-uri")
    if parent_run_id:
        chosen = parents[parents["run_id"] == parent_run_id]
        if chosen.empty:
            raise ValueError(f"parent run {parent_run_id!r} is not an ablation run (tag stage=study) of {where}; "
                             f"latest ones: {list(parents['run_id'][:5])}")
        parent = chosen.iloc[0]
    else:
        finished = parents[parents["status"] == "FINISHED"]
        if finished.empty:
            latest = ", ".join(f"{r} ({st})" for r, st in zip(parents["run_id"][:5], parents["status"][:5]))
            raise ValueError(f"no FINISHED ablation run (tag stage=study) in {where}, only unfinished or failed "
                             f"ones: {latest}; finish the run (re-run the same command) or pass its parent run id")
        parent = finished.iloc[0]
    children = tracking.search_runs(experiment, _stage_filter(records.STAGE_ARM), order_by=["attribute.start_time ASC"],
                                    tracking_uri=uri)
    key = records.tag_column(records.PARENT_RUN)
    arms = children[children[key] == parent["run_id"]] if key in children else children.iloc[0:0]
    arms = arms.drop_duplicates(_ARM, keep="last").set_index(_ARM, drop=False) if len(arms) else arms
    arms.index.name = "arm"
    arm_ids = list(arms["run_id"]) if len(arms) else []
    below = {}
    for stage in (records.STAGE_TRIAL, records.STAGE_CONFIRM):
        frame = tracking.search_runs(experiment, _stage_filter(stage), order_by=["attribute.start_time ASC"],
                                     tracking_uri=uri)
        below[stage] = (frame[frame[key].isin(arm_ids)] if key in frame else frame.iloc[0:0]).reset_index(drop=True)
    return AblationRuns(experiment, uri, parent, arms, below[records.STAGE_TRIAL], below[records.STAGE_CONFIRM])


def protocol(runs: AblationRuns) -> dict[str, Any]:
    """The question and protocol of the ablation as stored on the parent run.

    Returns:
        ``{"overview": DataFrame(item, value), "arms": DataFrame(arm, overrides), "nuisance":
        DataFrame | None, "fixed": dict, "budget": dict}`` (``ablation.json`` and ``budget.*`` params).
    """
    p = runs.parent
    budget = records.read_params(p, records.BUDGET_PARAM)
    studies = runs.tag(records.OPTUNA_STUDIES)
    overview = [
        ("experiment", runs.experiment),
        ("question", runs.tag(records.QUESTION, "not recorded")),
        ("scientific hyperparameter", runs.tag(records.SCIENTIFIC, "not recorded")),
        ("arms", ", ".join(runs.arm_names) or "none recorded"),
        ("dataset", runs.tag(records.DATASET, "not recorded")),
        ("budget", ", ".join(f"{k}={v}" for k, v in budget.items()) or "not recorded"),
        ("seed", runs.tag(records.SEED, "not recorded")),
        ("parent run", f"{runs.parent_run_id} ({_status_text(p.get('status'))}, started {p.get('start_time')})"),
        ("wall time (s)", runs.tag(records.WALL_SECONDS, "not recorded")),
        ("Optuna studies", ", ".join(json.loads(studies)) if studies else "not recorded"),
        ("Optuna storage", runs.tag(records.OPTUNA_STORAGE, "not recorded")),
        ("tracking URI", redact_url(runs.tracking_uri)),
    ]
    spec = runs.json(runs.parent_run_id, records.ABLATION_SPEC) or {}
    arms = pd.DataFrame([{"arm": a.get("name"), "overrides": json.dumps(a.get("overrides", {})),
                          "min_window_fraction": a.get("min_window_fraction")} for a in spec.get("arms", [])])
    nuisance = pd.DataFrame(spec["nuisance"]) if spec.get("nuisance") else None
    return {"overview": pd.DataFrame(overview, columns=["item", "value"]), "arms": arms,
            "nuisance": nuisance, "fixed": dict(spec.get("fixed", {})), "budget": budget}


def arm_summary(runs: AblationRuns, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """One row per arm: tuning result and confirmation result on the test period(s).

    Columns: ``arm``, ``best_trial``, ``best_val`` (the tuning study's best validation value),
    ``confirm_runs`` (finished confirmation runs), ``mean``, ``seed_ci_low``, ``seed_ci_high`` (mean
    over seeds with its 95 % t-interval), ``pooled``, ``boot_ci_low``, ``boot_ci_high`` (pooled test
    predictions with the 95 % circular block-bootstrap interval), ``fraction_pruned``,
    ``fraction_failed``, ``edge_warnings``. Values the run did not log are NaN / empty (for example
    an arm whose trials all failed).
    """
    rows = []
    for arm, row in runs.arms.iterrows():
        confirms = runs.confirms[runs.confirms[_ARM] == arm] if len(runs.confirms) else runs.confirms

        def score(stat: str) -> float:
            return records.read_metric(row, records.confirm_metric(f"{metric}_{stat}"))

        rows.append({
            "arm": arm,
            "best_trial": row.get(records.tag_column(records.BEST_TRIAL)),
            "best_val": records.read_metric(row, records.TUNING_BEST_VAL),
            "confirm_runs": int((confirms["status"] == "FINISHED").sum()) if len(confirms) else 0,
            "mean": score("mean"), "seed_ci_low": score("seed_ci_low"), "seed_ci_high": score("seed_ci_high"),
            "pooled": score("pooled"), "boot_ci_low": score("boot_ci_low"), "boot_ci_high": score("boot_ci_high"),
            "fraction_pruned": records.read_metric(row, records.TUNING_FRACTION_PRUNED),
            "fraction_failed": records.read_metric(row, records.TUNING_FRACTION_FAILED),
            "edge_warnings": "" if (warn := records.read_tag(row, records.EDGE_WARNINGS)) in (None, records.NONE)
            else warn,
        })
    return pd.DataFrame(rows, columns=["arm", "best_trial", "best_val", "confirm_runs", "mean", "seed_ci_low",
                                       "seed_ci_high", "pooled", "boot_ci_low", "boot_ci_high",
                                       "fraction_pruned", "fraction_failed", "edge_warnings"])


def seed_results(runs: AblationRuns, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Test (and validation) ``metric`` of every confirmation run: columns ``arm``, ``fold``, ``seed``,
    ``test``, ``val``, ``run_id``; empty when no confirmation run logged it."""
    c = runs.confirms
    column = records.metric_column(records.split_metric("test", metric))
    if c.empty or column not in c:
        return pd.DataFrame(columns=["arm", "fold", "seed", "test", "val", "run_id"])
    val_col = records.metric_column(records.split_metric("val", metric))
    out = pd.DataFrame({
        "arm": c[_ARM], "fold": pd.to_numeric(c.get(records.tag_column(records.FOLD)), errors="coerce"),
        "seed": pd.to_numeric(c.get(records.tag_column(records.SEED)), errors="coerce"), "test": pd.to_numeric(c[column], errors="coerce"),
        "val": pd.to_numeric(c[val_col], errors="coerce") if val_col in c else np.nan, "run_id": c["run_id"],
    }).dropna(subset=["test"])
    order = {a: i for i, a in enumerate(runs.arm_names)}
    return out.sort_values(["arm", "fold", "seed"], key=lambda s: s.map(order) if s.name == "arm" else s) \
              .reset_index(drop=True)


def fold_results(runs: AblationRuns, metric: str = "balanced_accuracy") -> pd.DataFrame | None:
    """Walk-forward results: rows = ``fold 0..k-1`` then ``pooled``, columns = arms (test ``metric``,
    mean over seeds per fold; pooled = all test blocks together). ``None`` when nothing was logged."""
    columns = {}
    for arm, row in runs.arms.iterrows():
        values = records.read_fold_metrics(row, metric)
        series = {f"fold {k}": values[k] for k in sorted(values)}
        pooled = records.read_metric(row, records.confirm_metric(f"{metric}_pooled"))
        if not math.isnan(pooled):
            series["pooled"] = pooled
        columns[arm] = series
    # the references (HAR-RV, persistence) on the same windows, refitted per fold
    per_fold = runs.csv(runs.parent_run_id, records.SUMMARY_PER_FOLD)
    references = runs.csv(runs.parent_run_id, records.SUMMARY_REFERENCES)
    if per_fold is not None and {"arm", "fold", metric} <= set(per_fold.columns):
        for name in [a for a in per_fold["arm"].unique() if a not in columns]:
            rows = per_fold[per_fold["arm"] == name]
            series = {f"fold {int(f)}": float(v) for f, v in zip(rows["fold"], rows[metric]) if pd.notna(v)}
            if references is not None and "model" in references and f"{metric}_pooled" in references:
                pooled = references.loc[references["model"] == name, f"{metric}_pooled"]
                if len(pooled) and pd.notna(pooled.iloc[0]):
                    series["pooled"] = float(pooled.iloc[0])
            if series:
                columns[f"{name} (reference)"] = series
    frame = pd.DataFrame(columns)
    if frame.empty:
        return None
    order = sorted((i for i in frame.index if i != "pooled"), key=lambda s: int(s.split()[1]))
    return frame.reindex(order + (["pooled"] if "pooled" in frame.index else []))


def differences(runs: AblationRuns, metric: str = "balanced_accuracy") -> pd.DataFrame | None:
    """Paired block-bootstrap differences between arms (and against the baseline) for ``metric``
    (``summary/differences.csv``: ``a``, ``b``, ``difference``, ``ci_low``, ``ci_high``, ``verdict``);
    ``None`` when the run has no summary."""
    frame = runs.csv(runs.parent_run_id, records.SUMMARY_DIFFERENCES)
    if frame is None:
        return None
    if "metric" in frame:
        frame = frame[frame["metric"] == metric].drop(columns="metric")
    return frame.reset_index(drop=True)


def verdict_lines(runs: AblationRuns) -> list[str]:
    """The verdict lines (``summary/verdicts.txt``, else the parent's ``verdicts`` tag); may be empty."""
    text = runs.text(runs.parent_run_id, records.SUMMARY_VERDICTS)
    if text is None:
        text = "\n".join(records.split_joined(runs.tag(records.VERDICTS)))
    return [line.strip() for line in text.splitlines() if line.strip()]


def tuning_warnings(runs: AblationRuns, max_pruned: float = 0.5, max_failed: float = 0.0) -> list[str]:
    """Warnings about the tuning of every arm.

    Flags a best trial on the edge of the search space (the optimum may lie outside it), a fraction of
    pruned trials above ``max_pruned``, a fraction of failed trials above ``max_failed``, and arms
    without a tuning result (no COMPLETE trial recorded).
    """
    out = []
    for _, row in arm_summary(runs).iterrows():
        arm = row["arm"]
        if row["edge_warnings"]:
            out.append(f"{arm}: best trial on the edge of the search space: {row['edge_warnings']}")
        if row["fraction_pruned"] > max_pruned:
            out.append(f"{arm}: {row['fraction_pruned']:.0%} of trials were pruned (> {max_pruned:.0%})")
        if row["fraction_failed"] > max_failed:
            out.append(f"{arm}: {row['fraction_failed']:.0%} of trials failed (> {max_failed:.0%})")
        if math.isnan(row["best_val"]):
            trials = runs.trials[runs.trials[_ARM] == arm] if len(runs.trials) else runs.trials
            state = records.tag_column(records.OPTUNA_STATE)
            states = trials[state].value_counts().to_dict() if state in trials else {}
            out.append(f"{arm}: no tuning result recorded (trial states: {states or 'none'})")
    return out


def trial_frames(runs: AblationRuns, storage: str | None = None) -> dict[str, pd.DataFrame | str]:
    """Optuna trials of every arm's study (``regimetry.studies.backend.study_trials_frame``).

    Study names come from the arm runs' ``optuna_study`` tag (else ``<experiment>/<arm>``); the storage
    is ``storage``, else the parent's ``optuna_storage`` tag (unless redacted), else the default.

    Returns:
        ``{arm: DataFrame}``, or ``{arm: "not available: <reason>"}`` for a study that cannot be read.
    """
    url = _storage_url(runs, storage)
    out: dict[str, pd.DataFrame | str] = {}
    for arm, row in runs.arms.iterrows():
        name = row.get(records.tag_column(records.OPTUNA_STUDY))
        name = name if isinstance(name, str) and name else f"{runs.experiment}/{arm}"
        try:
            out[arm] = backend.study_trials_frame(name, url)
        except Exception as exc:  # noqa: BLE001 - an unreadable storage is reported, not fatal
            out[arm] = f"not available: {type(exc).__name__}: {exc}"
    return out


def importances(runs: AblationRuns, storage: str | None = None) -> dict[str, dict[str, float] | str]:
    """fANOVA parameter importances per arm (``regimetry.studies.backend.param_importances``), or a
    ``"not available: ..."`` string per arm."""
    url = _storage_url(runs, storage)
    out: dict[str, dict[str, float] | str] = {}
    for arm, row in runs.arms.iterrows():
        name = row.get(records.tag_column(records.OPTUNA_STUDY))
        name = name if isinstance(name, str) and name else f"{runs.experiment}/{arm}"
        try:
            values = backend.param_importances(name, url)
        except Exception as exc:  # noqa: BLE001
            out[arm] = f"not available: {type(exc).__name__}: {exc}"
            continue
        out[arm] = values if values else "not available (fewer than two COMPLETE trials with different values)"
    return out


def _storage_url(runs: AblationRuns, storage: str | None) -> str | None:
    storage = _from_env(storage)
    if storage:
        return storage
    tagged = runs.tag(records.OPTUNA_STORAGE)
    return tagged if tagged and "***" not in tagged else None


def best_model_run(runs: AblationRuns, arm: str, metric: str = "balanced_accuracy") -> str | None:
    """The confirmation run of ``arm`` with the best *validation* ``metric`` (never chosen on test),
    or ``None`` when the arm has no finished confirmation run."""
    c = runs.confirms
    if c.empty:
        return None
    c = c[(c[_ARM] == arm) & (c["status"] == "FINISHED")]
    if c.empty:
        return None
    column = records.metric_column(records.split_metric("val", metric))
    if column in c and c[column].notna().any():
        values = pd.to_numeric(c[column], errors="coerce")
        best = values.idxmin() if metric == "log_loss" else values.idxmax()
        return str(c.loc[best, "run_id"])
    return str(c.iloc[0]["run_id"])


def attention_images(runs: AblationRuns, run_id: str) -> list[Path]:
    """Local paths of the attention heat maps (``attention/*.png``) a run logged; may be empty."""
    try:
        names = tracking.list_artifacts(run_id, records.ATTENTION_DIR, tracking_uri=runs.tracking_uri)
    except Exception:  # noqa: BLE001 - no such directory
        return []
    paths = [runs.artifact(run_id, n) for n in names if n.endswith(".png")]
    return [p for p in paths if p is not None]


def pooled_confusion(runs: AblationRuns, arm: str, split: str = "test") -> tuple[np.ndarray, list[str], int] | None:
    """Confusion matrix of ``arm`` summed over its confirmation runs (every fold and seed).

    Reads ``metrics/confusion_<split>.json`` of every finished confirmation run.

    Returns:
        ``(counts (k, k) int64, class names, runs summed)`` with rows = true class, or ``None``.
    """
    total, labels, used = None, None, 0
    c = runs.confirms
    if c.empty:
        return None
    for run_id in c[(c[_ARM] == arm) & (c["status"] == "FINISHED")]["run_id"]:
        data = runs.json(run_id, records.confusion_artifact(split))
        if not data:
            continue
        matrix = np.asarray(data["matrix"], dtype=np.int64)
        if total is None:
            total, labels = matrix, list(data["labels"])
        elif matrix.shape == total.shape:
            total = total + matrix
        else:
            continue
        used += 1
    return None if total is None else (total, labels, used)


def confirmation_histories(runs: AblationRuns, arm: str,
                           keys: Sequence[str] = ("train/loss", "val/loss", "val/balanced_accuracy")
                           ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per-epoch metrics of every confirmation run of ``arm``: ``{"fold f seed s": {key: [(epoch, value)]}}``.

    The final ``val/...`` value logged after training (at step ``epochs_run``) is dropped, so the
    curves hold the per-epoch history only.
    """
    out = {}
    c = runs.confirms
    if c.empty:
        return out
    for _, row in c[c[_ARM] == arm].iterrows():
        epochs_run = records.read_metric(row, records.EPOCHS_RUN)
        series = {}
        for key in keys:
            points = tracking.get_metric_history(row["run_id"], key, tracking_uri=runs.tracking_uri)
            if not math.isnan(epochs_run):
                points = [(s, v) for s, v in points if s < epochs_run]
            if points:
                series[key] = points
        if series:
            out[f"fold {row.get(records.tag_column(records.FOLD))} seed {row.get(records.tag_column(records.SEED))}"] = series
    return out


def environment(runs: AblationRuns) -> pd.DataFrame:
    """Library versions and git commit: as logged by the runs (``version.*``, ``git_sha`` tags of the
    confirmation / trial runs) next to those of the interpreter rendering the report."""
    logged: dict[str, str] = {}
    for frame in (runs.confirms, runs.trials, runs.parent.to_frame().T):
        for column in frame.columns:
            column = str(column)
            if column.startswith("tags.version.") or column in ("tags.git_sha", "tags.git_dirty"):
                values = sorted({str(v) for v in frame[column].dropna()})
                if values and column[5:] not in logged:
                    logged[column[5:]] = ", ".join(values)
    now = {**{f"version.{p}": _version(p) for p in _VERSION_PACKAGES}, **tracking.git_info(),
           "python": sys.version.split()[0]}
    keys = list(dict.fromkeys(list(logged) + list(now)))
    return pd.DataFrame({"item": keys, "logged by the runs": [logged.get(k, "not recorded") for k in keys],
                         "rendering this report": [now.get(k, "") for k in keys]})


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
