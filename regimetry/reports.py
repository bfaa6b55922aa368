"""Report notebooks: execute ``notebooks/*.ipynb`` with papermill into ``reports/`` (ipynb + HTML).

Reports read what experiments stored and never train (cookiecutter-data-science: notebooks
communicate, modules repeat). Two notebooks, each with a cell tagged ``parameters``:

- ``notebooks/ablation_report.ipynb``: one ablation (an MLflow parent run with ``stage=study``, its
  arm runs, trial runs and confirmation runs, and the arms' Optuna studies). Rendered by
  :func:`render_ablation_report`, which ``regimetry.studies.run_ablation`` calls at the end of a run.
- ``notebooks/data_report.ipynb``: one :class:`~regimetry.config.DataConfig` (source, features, leakage
  audit of a CSV's user columns, label distribution per split, regime timeline, label transition matrix). Rendered by
  :func:`render_data_report`.

The loading and table-building code lives here (``load_ablation_runs``, ``arm_summary``, ...), so the
notebooks stay short and the logic is tested. This module never imports ``mlflow`` (queries go through
``regimetry.tracking``) nor ``optuna`` (studies go through ``regimetry.studies``).

Kernel: notebooks always run in the *current* interpreter (``sys.executable``), whatever kernel the
notebook's metadata names: the kernel manager given to papermill/nbclient resolves every kernel name
to ipykernel's spec for this interpreter. Parameters are injected by papermill's Python translator
(strings with quotes, backslashes and ``=``, ints, floats, bools, ``None``, lists and dicts keep their
types; tuples become lists).

Command line::

    python -m regimetry.reports 03_encoding_ablation [--tracking-uri URI] [--storage URL]
        [--parent-run-id ID] [--metric balanced_accuracy] [--output-dir reports] [--no-log]
    python -m regimetry.reports --data-config configs/single_run.yaml [--output-dir reports]

Exit codes: 0 success; 1 the report failed (unknown experiment, no runs, a failing cell: the message
names the cell's error and the partially executed notebook is kept); 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import io
import json
import math
import os
import warnings
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from regimetry.config import DataConfig, has_password, redact_url

__all__ = [
    "NOTEBOOK_DIR",
    "ReportError",
    "ReportPaths",
    "AblationRuns",
    "render_notebook",
    "render_ablation_report",
    "render_data_report",
    "load_ablation_runs",
    "protocol",
    "arm_summary",
    "seed_results",
    "fold_results",
    "differences",
    "verdict_lines",
    "tuning_warnings",
    "trial_frames",
    "importances",
    "best_model_run",
    "attention_images",
    "pooled_confusion",
    "confirmation_histories",
    "environment",
    "seed_strip_figure",
    "optimization_history_figure",
    "importances_figure",
    "histories_figure",
    "label_distribution",
    "transition_matrix",
    "leakage_audit_table",
    "data_config_from",
    "show",
    "main",
]

#: Directory of the report notebooks (``<repository>/notebooks``).
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
ABLATION_NOTEBOOK = "ablation_report.ipynb"
DATA_NOTEBOOK = "data_report.ipynb"
#: Metrics an ablation logs (``regimetry.studies.METRICS_OF_RECORD``); higher is better except log loss.
REPORT_METRICS = ("balanced_accuracy", "macro_f1", "log_loss")
_VERSION_PACKAGES = ("tensorflow", "keras", "mlflow", "optuna", "pandas", "numpy", "scikit-learn", "papermill")


class ReportError(RuntimeError):
    """A report could not be rendered.

    Attributes:
        notebook: path of the (partially) executed notebook kept for debugging, or ``None``.
    """

    def __init__(self, message: str, notebook: Path | None = None) -> None:
        super().__init__(message)
        self.notebook = notebook


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """Where a rendered report was written.

    Attributes:
        notebook: the executed notebook (``.ipynb``, outputs included).
        html: its HTML rendering (images embedded, no code cells hidden).
    """

    notebook: Path
    html: Path


# ================================================================================================
# Execution
# ================================================================================================
def _kernel_manager_class():
    """An nbclient kernel manager whose every kernel name resolves to this interpreter's ipykernel.

    papermill passes the kernel name on to nbclient, which asks jupyter_client's
    ``KernelSpecManager``; a notebook naming ``python3`` would then start whatever ``python3``
    kernelspec comes first on the Jupyter path (possibly another environment's). Here the spec is
    always ``ipykernel.kernelspec.get_kernel_dict()``, i.e. ``[sys.executable, -m, ipykernel_launcher,
    -f, {connection_file}]``.
    """
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class CurrentInterpreterSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:  # noqa: ARG002 - any name
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())

        def find_kernel_specs(self) -> dict[str, str]:
            return {"python3": RESOURCES}

    class CurrentInterpreterKernelManager(AsyncKernelManager):
        def _kernel_spec_manager_default(self):
            return CurrentInterpreterSpecs(data_dir=self.data_dir)

        @default("transport")
        def _ipc_transport(self):
            # Unix sockets beside the connection file rather than TCP on 127.0.0.1: private to this
            # user, and ipykernel no longer prints "Kernel is running over TCP without encryption"
            # into every experiment's console.
            return "ipc"

    return CurrentInterpreterKernelManager


def _plain(value: Any) -> Any:
    """Parameters as types papermill's Python translator renders faithfully (tuples -> lists, ...)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"report parameter value {value!r}: expected str, int, float, bool, None, list or dict, "
                    f"got {type(value).__name__}")


def render_notebook(
    notebook: str | os.PathLike,
    output_dir: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    timeout: float = 600.0,
) -> ReportPaths:
    """Execute a parameterized notebook with papermill and convert the result to HTML.

    Args:
        notebook: the input notebook (it needs a cell tagged ``parameters``; papermill inserts an
            ``injected-parameters`` cell after it).
        output_dir: directory of the outputs (created).
        parameters: values for the notebook's parameters (str, int, float, bool, None, lists, dicts;
            tuples are passed as lists, ``Path`` as str).
        name: file stem of the outputs (default: the input notebook's stem).
        timeout: seconds allowed per cell.

    Returns:
        :class:`ReportPaths` of ``<output_dir>/<name>.ipynb`` and ``<output_dir>/<name>.html``.

    Raises:
        FileNotFoundError: the notebook does not exist.
        TypeError: a parameter of another type (naming it).
        ValueError: a parameter the notebook's ``parameters`` cell does not declare (naming it).
        ReportError: a cell raised; the message names the cell and its error (type, message and the
            last lines of the traceback) and the partially executed notebook (and its HTML) is kept.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = Path(notebook)
    if not source.is_file():
        raise FileNotFoundError(f"report notebook not found: {source}")
    params = {}
    for key, value in (parameters or {}).items():
        try:
            params[str(key)] = _plain(value)
        except TypeError as exc:
            raise TypeError(f"{source.name}: parameter {key!r}: {exc}") from None
    declared = papermill.inspect_notebook(str(source))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"{source.name}: unknown parameter(s) {unknown}; the notebook's parameters cell "
                         f"declares {sorted(declared)}")
    out_dir = Path(output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or source.stem
    out_nb, out_html = out_dir / f"{stem}.ipynb", out_dir / f"{stem}.html"
    try:
        papermill.execute_notebook(
            str(source), str(out_nb), parameters=params, kernel_name="python3", language="python",
            progress_bar=False, cwd=str(out_dir), execution_timeout=timeout,
            kernel_manager_class=_kernel_manager_class(),
        )
    except PapermillExecutionError as exc:
        _to_html(out_nb, out_html, quiet=True)
        tail = "\n".join(_strip_ansi(line) for line in (exc.traceback or [])[-6:])
        raise ReportError(
            f"{source.name} failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
            f"{exc.ename}: {_strip_ansi(exc.evalue)}\n{tail}\n"
            f"partially executed notebook kept at {out_nb}",
            notebook=out_nb,
        ) from None
    _to_html(out_nb, out_html)
    return ReportPaths(out_nb, out_html)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(text))


def _to_html(notebook: Path, html: Path, quiet: bool = False) -> None:
    """nbconvert's HTML exporter (images are embedded as base64 by the exporter)."""
    from nbconvert import HTMLExporter

    try:
        # code stays in the executed .ipynb; the HTML reads like a paper (outputs only)
        body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                               exclude_output_prompt=True).from_filename(str(notebook))
    except Exception:  # noqa: BLE001 - a failed conversion of a failed notebook must not hide its error
        if quiet:
            return
        raise
    html.write_text(body, encoding="utf-8")


def _status_text(status: Any) -> str:
    if status == "RUNNING":  # the harness renders its report before it closes its parent run
        return "running while this report was rendered: the run renders its own report, then closes"
    return str(status)


def _absolute_url(url: str | None) -> str | None:
    """SQLite / journal-file URLs with a relative path made absolute (the kernel runs elsewhere).

    ``sqlite:///rel.db`` is relative and ``sqlite:////abs.db`` absolute (SQLAlchemy); ``journal:///abs.log``
    is absolute and ``journal:rel.log`` relative (``regimetry.studies.resolve_storage``).
    """
    if not url:
        return url
    if url.startswith("sqlite:///"):
        path, _, query = url[len("sqlite:///"):].partition("?")
        if path and path != ":memory:" and not os.path.isabs(unquote(path)):
            return "sqlite:///" + os.path.abspath(unquote(path)) + (f"?{query}" if query else "")
    elif url.startswith("journal:") and not url.startswith("journal:///"):
        return "journal://" + os.path.abspath(url[len("journal:"):].lstrip("/"))
    return url


_SECRET_ENV = {"tracking_uri": "REGIMETRY_REPORT_TRACKING_URI", "storage": "REGIMETRY_REPORT_STORAGE"}


def _from_env(value: str | None) -> str | None:
    """``"$NAME"`` -> the environment variable ``NAME`` (how URLs with passwords reach the kernel without
    being written into the executed notebook); any other value unchanged."""
    if isinstance(value, str) and value.startswith("$") and len(value) > 1:
        return os.environ.get(value[1:]) or None
    return value


def render_ablation_report(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    storage: str | None = None,
    parent_run_id: str | None = None,
    metric: str = "balanced_accuracy",
    output_dir: str | os.PathLike = "reports",
    log_to_parent: bool = True,
    timeout: float = 600.0,
) -> ReportPaths:
    """Render ``notebooks/ablation_report.ipynb`` for one ablation into ``<output_dir>/<experiment>/``.

    Args:
        experiment: MLflow experiment name (the script's stem, e.g. ``03_encoding_ablation``).
        tracking_uri: MLflow store (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns/mlflow.db``).
        storage: Optuna storage URL of the arms' studies (default: the parent run's
            ``optuna_storage`` tag unless it was redacted, else ``sqlite:///mlruns/optuna.db``).
            URLs with a password (tracking URI or storage) reach the kernel through an environment
            variable, so the password is never written into the executed notebook or its artifact.
        parent_run_id: the ``stage=study`` run to report (default: the latest FINISHED one of the experiment).
        metric: metric of record shown in the tables, one of ``balanced_accuracy``, ``macro_f1``,
            ``log_loss``.
        output_dir: root of the reports (relative paths against the current directory).
        log_to_parent: log both files as artifacts ``report/ablation_report.{ipynb,html}`` of the parent
            run (by explicit run id, so it works while the parent run is still active).
        timeout: seconds allowed per cell.

    Returns:
        :class:`ReportPaths` (``ablation_report.ipynb`` and ``ablation_report.html``).

    Raises:
        ValueError: an unknown metric, a missing tracking store, an experiment without ablation runs
            or an unknown ``parent_run_id`` (naming the experiment and the tracking URI).
        ReportError: a cell of the notebook failed (partial notebook kept, see :func:`render_notebook`).
    """
    from regimetry import tracking

    if metric not in REPORT_METRICS:
        raise ValueError(f"metric: expected one of {list(REPORT_METRICS)}, got {metric!r}")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    runs = load_ablation_runs(experiment, uri, parent_run_id)  # fails fast with a clear message
    parent_id = runs.parent_run_id
    values = {"tracking_uri": uri, "storage": _absolute_url(storage)}
    saved = {name: os.environ.get(name) for name in _SECRET_ENV.values()}
    for key, value in values.items():
        if has_password(value):  # never write a password into the notebook (or its MLflow artifact)
            os.environ[_SECRET_ENV[key]] = value
            values[key] = "$" + _SECRET_ENV[key]
    try:
        paths = render_notebook(
            NOTEBOOK_DIR / ABLATION_NOTEBOOK, Path(output_dir) / experiment,
            {"experiment": experiment, **values, "parent_run_id": parent_id, "metric": metric},
            timeout=timeout,
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if log_to_parent:
        tracking.configure(uri)
        for path in (paths.notebook, paths.html):
            tracking.log_artifact(path, "report", run_id=parent_id)
    return paths


def render_data_report(
    data_config: DataConfig | Mapping[str, Any] | str | os.PathLike,
    output_dir: str | os.PathLike = "reports/data",
    *,
    name: str | None = None,
    timeout: float = 600.0,
) -> ReportPaths:
    """Render ``notebooks/data_report.ipynb`` for one data configuration.

    Args:
        data_config: a ``DataConfig``, a mapping of its fields, a YAML file (its ``data:`` section or
            the whole file) or YAML text.
        output_dir: directory of the outputs.
        name: file stem (default ``data_report_<dataset>``, e.g. ``data_report_sp500``).
        timeout: seconds allowed per cell.

    Raises:
        ValueError: an invalid configuration (naming the field), before any notebook runs.
        FileNotFoundError: ``data_config`` names a missing YAML file.
        ReportError: a cell failed (partial notebook kept).
    """
    config = data_config_from(data_config)
    # The data must prepare before any notebook runs: a missing or bad CSV gets its one-line error
    # (ValueError / FileNotFoundError naming the file, column or row) and no half-written report.
    # Warnings are the notebook's to show (they would print twice).
    from regimetry.data import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(config)
    stem = name or "data_report_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in config.dataset_name)
    values = config.to_dict()
    if values.get("csv_path"):
        values["csv_path"] = os.path.abspath(values["csv_path"])
    return render_notebook(NOTEBOOK_DIR / DATA_NOTEBOOK, output_dir, {"data_config": values}, name=stem,
                           timeout=timeout)


def render_experiment_data_report(
    experiment: str,
    data_config: DataConfig | Mapping[str, Any],
    *,
    parent_run_id: str | None = None,
    output_dir: str | os.PathLike = "reports",
) -> ReportPaths:
    """The report of a non-ablation experiment (``01_baselines``, ``02_regime_discovery``): the data
    report of its data configuration, written to ``<output_dir>/<experiment>/`` and logged under
    ``report/`` of the experiment's parent run (when ``parent_run_id`` is given).

    Raises:
        ReportError: a cell failed (the partial notebook is kept).
    """
    from regimetry import tracking

    paths = render_data_report(data_config, Path(output_dir) / experiment, name="data_report")
    if parent_run_id is not None:
        for path in (paths.notebook, paths.html):
            tracking.log_artifact(path, "report", run_id=parent_run_id)
    return paths


def experiment_data_report_or_error(experiment: str, data_config, parent_run_id: str) -> str | None:
    """:func:`render_experiment_data_report` for an experiment script's last step: returns ``None`` on
    success, else an error message for the script to exit with (its runs stay FINISHED; the parent run
    gets a ``report_error`` tag)."""
    from regimetry import tracking

    try:
        paths = render_experiment_data_report(experiment, data_config, parent_run_id=parent_run_id)
        print(f"report: {paths.html}", flush=True)
        return None
    except (ReportError, ValueError) as exc:
        tracking.set_tags({"report_error": str(exc)[:4000]}, run_id=parent_run_id)
        return f"error: the report failed to render: {exc}"


def data_config_from(value: DataConfig | Mapping[str, Any] | str | os.PathLike) -> DataConfig:
    """A validated ``DataConfig`` from a config, a mapping, a YAML file path or YAML text.

    A mapping or document with a ``data:`` section uses that section.

    Raises:
        FileNotFoundError: a path ending in ``.yaml``/``.yml`` that does not exist.
        ValueError: YAML that does not parse or is not a mapping, or an invalid field.
    """
    import yaml

    if isinstance(value, DataConfig):
        return value
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        if isinstance(value, os.PathLike) or (
            "\n" not in text and (text.endswith((".yaml", ".yml")) or Path(text).is_file())
        ):
            return DataConfig.from_yaml(text)
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"data_config: not valid YAML: {exc}") from None
        if not isinstance(document, Mapping):
            raise ValueError(f"data_config: expected a YAML mapping of DataConfig fields, got {document!r}")
        value = document
    if not isinstance(value, Mapping):
        raise ValueError(f"data_config: expected a DataConfig, a mapping, a YAML file or YAML text, got "
                         f"{type(value).__name__}")
    section = value.get("data") if isinstance(value.get("data"), Mapping) else value
    return DataConfig.from_dict(dict(section))


# ================================================================================================
# Reading an ablation from MLflow
# ================================================================================================
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
        value = self.parent.get(f"tags.{name}")
        return default if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

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
    from regimetry import tracking

    download = getattr(tracking, "download_artifacts", None)
    if download is None:
        return None
    try:
        return Path(download(run_id, path, tracking_uri=tracking_uri))
    except Exception:  # noqa: BLE001 - a missing artifact is shown as "not available"
        return None


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
    from regimetry import tracking

    uri = tracking.resolve_tracking_uri(_from_env(tracking_uri))
    where = f"experiment {experiment!r} at tracking URI {redact_url(uri)}"
    if _sqlite_missing(uri):
        raise ValueError(f"no MLflow store at {uri} (the SQLite file does not exist), so no runs of {where}")
    parents = tracking.search_runs(experiment, "tags.stage = 'study'", order_by=["attribute.start_time DESC"],
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
    children = tracking.search_runs(experiment, "tags.stage = 'arm'", order_by=["attribute.start_time ASC"],
                                    tracking_uri=uri)
    key = "tags.mlflow.parentRunId"
    arms = children[children[key] == parent["run_id"]] if key in children else children.iloc[0:0]
    arms = arms.drop_duplicates("tags.arm", keep="last").set_index("tags.arm", drop=False) if len(arms) else arms
    arms.index.name = "arm"
    arm_ids = list(arms["run_id"]) if len(arms) else []
    below = {}
    for stage in ("trial", "confirm"):
        frame = tracking.search_runs(experiment, f"tags.stage = '{stage}'", order_by=["attribute.start_time ASC"],
                                     tracking_uri=uri)
        below[stage] = (frame[frame[key].isin(arm_ids)] if key in frame else frame.iloc[0:0]).reset_index(drop=True)
    return AblationRuns(experiment, uri, parent, arms, below["trial"], below["confirm"])


def _num(row: pd.Series | Mapping, key: str) -> float:
    value = row.get(key) if hasattr(row, "get") else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value


def protocol(runs: AblationRuns) -> dict[str, Any]:
    """The question and protocol of the ablation as stored on the parent run.

    Returns:
        ``{"overview": DataFrame(item, value), "arms": DataFrame(arm, overrides), "nuisance":
        DataFrame | None, "fixed": dict, "budget": dict}`` (``ablation.json`` and ``budget.*`` params).
    """
    p = runs.parent
    budget = {k[len("params.budget."):]: v for k, v in p.items() if str(k).startswith("params.budget.") and
              v is not None and not (isinstance(v, float) and math.isnan(v))}
    studies = runs.tag("optuna_studies")
    overview = [
        ("experiment", runs.experiment),
        ("question", runs.tag("question", "not recorded")),
        ("scientific hyperparameter", runs.tag("scientific", "not recorded")),
        ("arms", ", ".join(runs.arm_names) or "none recorded"),
        ("dataset", runs.tag("dataset", "not recorded")),
        ("budget", ", ".join(f"{k}={v}" for k, v in budget.items()) or "not recorded"),
        ("seed", runs.tag("seed", "not recorded")),
        ("parent run", f"{runs.parent_run_id} ({_status_text(p.get('status'))}, started {p.get('start_time')})"),
        ("wall time (s)", runs.tag("wall_seconds", "not recorded")),
        ("Optuna studies", ", ".join(json.loads(studies)) if studies else "not recorded"),
        ("Optuna storage", runs.tag("optuna_storage", "not recorded")),
        ("tracking URI", redact_url(runs.tracking_uri)),
    ]
    spec = runs.json(runs.parent_run_id, "ablation.json") or {}
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
    prefix = f"metrics.confirm/test/{metric}"
    for arm, row in runs.arms.iterrows():
        confirms = runs.confirms[runs.confirms["tags.arm"] == arm] if len(runs.confirms) else runs.confirms
        rows.append({
            "arm": arm,
            "best_trial": row.get("tags.best_trial"),
            "best_val": _num(row, "metrics.tuning/best_val"),
            "confirm_runs": int((confirms["status"] == "FINISHED").sum()) if len(confirms) else 0,
            "mean": _num(row, f"{prefix}_mean"),
            "seed_ci_low": _num(row, f"{prefix}_seed_ci_low"),
            "seed_ci_high": _num(row, f"{prefix}_seed_ci_high"),
            "pooled": _num(row, f"{prefix}_pooled"),
            "boot_ci_low": _num(row, f"{prefix}_boot_ci_low"),
            "boot_ci_high": _num(row, f"{prefix}_boot_ci_high"),
            "fraction_pruned": _num(row, "metrics.tuning/fraction_pruned"),
            "fraction_failed": _num(row, "metrics.tuning/fraction_failed"),
            "edge_warnings": "" if row.get("tags.edge_warnings") in (None, "none") or
                             (isinstance(row.get("tags.edge_warnings"), float)) else str(row.get("tags.edge_warnings")),
        })
    return pd.DataFrame(rows, columns=["arm", "best_trial", "best_val", "confirm_runs", "mean", "seed_ci_low",
                                       "seed_ci_high", "pooled", "boot_ci_low", "boot_ci_high",
                                       "fraction_pruned", "fraction_failed", "edge_warnings"])


def seed_results(runs: AblationRuns, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Test (and validation) ``metric`` of every confirmation run: columns ``arm``, ``fold``, ``seed``,
    ``test``, ``val``, ``run_id``; empty when no confirmation run logged it."""
    c = runs.confirms
    column = f"metrics.test/{metric}"
    if c.empty or column not in c:
        return pd.DataFrame(columns=["arm", "fold", "seed", "test", "val", "run_id"])
    val_col = f"metrics.val/{metric}"
    out = pd.DataFrame({
        "arm": c["tags.arm"], "fold": pd.to_numeric(c.get("tags.fold"), errors="coerce"),
        "seed": pd.to_numeric(c.get("tags.seed"), errors="coerce"), "test": pd.to_numeric(c[column], errors="coerce"),
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
        values = {}
        for key, value in row.items():
            key = str(key)
            if key.startswith("metrics.fold") and key.endswith(f"/test/{metric}"):
                fold = key[len("metrics.fold"):].split("/", 1)[0]
                if fold.isdigit() and value is not None and not pd.isna(value):
                    values[int(fold)] = float(value)
        series = {f"fold {k}": values[k] for k in sorted(values)}
        pooled = _num(row, f"metrics.confirm/test/{metric}_pooled")
        if not math.isnan(pooled):
            series["pooled"] = pooled
        columns[arm] = series
    # the references (HAR-RV, persistence) on the same windows, refitted per fold
    per_fold = runs.csv(runs.parent_run_id, "summary/per_fold.csv")
    references = runs.csv(runs.parent_run_id, "summary/references.csv")
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


def regimes_over_time_figure(runs: AblationRuns, arm: str):
    """Price with the true regime shaded, and the true vs the arm's predicted regime over every test
    block (``summary/predictions.csv`` of the parent run); ``None`` when the run did not log it."""
    from regimetry import plots

    frame = runs.csv(runs.parent_run_id, "summary/predictions.csv")
    if frame is None or f"pred.{arm}" not in frame:
        return None
    frame = frame.sort_values("timestamp").drop_duplicates("timestamp")
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True, format="mixed"))
    classes = (runs.json(runs.parent_run_id, "summary/classes.json") or {}).get("class_names")
    price = pd.Series(frame["close"].to_numpy(), index=index) if "close" in frame else None
    return plots.regime_timeline(index, frame["y_true"].to_numpy(int), frame[f"pred.{arm}"].to_numpy(int),
                                 price=price, class_names=classes,
                                 title=f"{arm}: true regime (shaded, black) and predicted regime (orange), test blocks")


def controls_figure(checks: pd.DataFrame):
    """Forest plot of the controls' paired comparisons (``winner_beats`` and ``aa_null`` rows of
    00's ``checks.csv``): estimate and 95 % interval per comparison, zero marked, failed checks red;
    ``None`` when there is none."""
    from matplotlib.figure import Figure

    rows = checks[checks["check"].isin(["winner_beats", "aa_null"])].reset_index(drop=True)
    if rows.empty:
        return None
    fig = Figure(figsize=(7.5, 0.35 * len(rows) + 1.0), layout="constrained")
    ax = fig.subplots()
    for i, r in rows.iterrows():
        color = "tab:blue" if bool(r["passed"]) else "tab:red"
        ax.errorbar(r["estimate"], i, xerr=[[r["estimate"] - r["ci_low"]], [r["ci_high"] - r["estimate"]]],
                    fmt="o" if r["check"] == "winner_beats" else "s", color=color, capsize=3)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r.control}: {r.arm} - {r.b}" for r in rows.itertuples()], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference of pooled balanced accuracy [95 %] (circles: winner - at-chance arm; "
                  "squares: A/A)", fontsize=8)
    return fig


def render_controls_report(checks_csv: str | os.PathLike, output_dir: str | os.PathLike,
                           timeout: int = 600) -> ReportPaths:
    """Execute ``notebooks/controls_report.ipynb`` on 00's ``checks.csv`` into ``output_dir``.

    Raises:
        FileNotFoundError: no ``checks_csv``.
        ReportError: a cell failed (the partial notebook is kept).
    """
    path = Path(checks_csv).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"controls report: no checks table at {path}")
    return render_notebook(NOTEBOOK_DIR / "controls_report.ipynb", output_dir, {"checks_csv": str(path)},
                           name="controls_report", timeout=timeout)


def fold_figure(folds: pd.DataFrame | None, metric: str = "balanced_accuracy"):
    """Grouped bars: the test ``metric`` per fold (and pooled) for every arm, references hatched grey,
    legend outside the data. ``folds`` from :func:`fold_results`; ``None`` when there is nothing."""
    from matplotlib.figure import Figure

    if folds is None or folds.empty:
        return None
    names = list(folds.columns)
    fig = Figure(figsize=(1.2 + 1.1 * len(folds.index) * max(1, len(names)) / 4, 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    colors = iter(matplotlib_colors(sum(1 for n in names if not n.endswith("(reference)"))))
    for j, name in enumerate(names):
        reference = name.endswith("(reference)")
        ax.bar([i + (j - (len(names) - 1) / 2) * width for i in range(len(folds.index))], folds[name].to_numpy(),
               width=width, label=name, color="0.75" if reference else next(colors),
               hatch="//" if reference else None, edgecolor="0.35" if reference else None)
    ax.set_xticks(range(len(folds.index)), list(folds.index))
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def matplotlib_colors(n: int) -> list:
    """``n`` distinct colours (tab10, then tab20) so that arms never share one."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def differences(runs: AblationRuns, metric: str = "balanced_accuracy") -> pd.DataFrame | None:
    """Paired block-bootstrap differences between arms (and against the baseline) for ``metric``
    (``summary/differences.csv``: ``a``, ``b``, ``difference``, ``ci_low``, ``ci_high``, ``verdict``);
    ``None`` when the run has no summary."""
    frame = runs.csv(runs.parent_run_id, "summary/differences.csv")
    if frame is None:
        return None
    if "metric" in frame:
        frame = frame[frame["metric"] == metric].drop(columns="metric")
    return frame.reset_index(drop=True)


def verdict_lines(runs: AblationRuns) -> list[str]:
    """The verdict lines (``summary/verdicts.txt``, else the parent's ``verdicts`` tag); may be empty."""
    text = runs.text(runs.parent_run_id, "summary/verdicts.txt")
    if text is None:
        text = (runs.tag("verdicts") or "").replace(" | ", "\n")
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
            trials = runs.trials[runs.trials["tags.arm"] == arm] if len(runs.trials) else runs.trials
            states = trials["tags.optuna_state"].value_counts().to_dict() if "tags.optuna_state" in trials else {}
            out.append(f"{arm}: no tuning result recorded (trial states: {states or 'none'})")
    return out


def trial_frames(runs: AblationRuns, storage: str | None = None) -> dict[str, pd.DataFrame | str]:
    """Optuna trials of every arm's study (``regimetry.studies.study_trials_frame``).

    Study names come from the arm runs' ``optuna_study`` tag (else ``<experiment>/<arm>``); the storage
    is ``storage``, else the parent's ``optuna_storage`` tag (unless redacted), else the default.

    Returns:
        ``{arm: DataFrame}``, or ``{arm: "not available: <reason>"}`` for a study that cannot be read.
    """
    from regimetry import studies

    url = _storage_url(runs, storage)
    out: dict[str, pd.DataFrame | str] = {}
    for arm, row in runs.arms.iterrows():
        name = row.get("tags.optuna_study")
        name = name if isinstance(name, str) and name else f"{runs.experiment}/{arm}"
        try:
            out[arm] = studies.study_trials_frame(name, url)
        except Exception as exc:  # noqa: BLE001 - an unreadable storage is reported, not fatal
            out[arm] = f"not available: {type(exc).__name__}: {exc}"
    return out


def importances(runs: AblationRuns, storage: str | None = None) -> dict[str, dict[str, float] | str]:
    """fANOVA parameter importances per arm (``regimetry.studies.param_importances``), or a
    ``"not available: ..."`` string per arm."""
    from regimetry import studies

    url = _storage_url(runs, storage)
    out: dict[str, dict[str, float] | str] = {}
    for arm, row in runs.arms.iterrows():
        name = row.get("tags.optuna_study")
        name = name if isinstance(name, str) and name else f"{runs.experiment}/{arm}"
        try:
            values = studies.param_importances(name, url)
        except Exception as exc:  # noqa: BLE001
            out[arm] = f"not available: {type(exc).__name__}: {exc}"
            continue
        out[arm] = values if values else "not available (fewer than two COMPLETE trials with different values)"
    return out


def _storage_url(runs: AblationRuns, storage: str | None) -> str | None:
    storage = _from_env(storage)
    if storage:
        return storage
    tagged = runs.tag("optuna_storage")
    return tagged if tagged and "***" not in tagged else None


def best_model_run(runs: AblationRuns, arm: str, metric: str = "balanced_accuracy") -> str | None:
    """The confirmation run of ``arm`` with the best *validation* ``metric`` (never chosen on test),
    or ``None`` when the arm has no finished confirmation run."""
    c = runs.confirms
    if c.empty:
        return None
    c = c[(c["tags.arm"] == arm) & (c["status"] == "FINISHED")]
    if c.empty:
        return None
    column = f"metrics.val/{metric}"
    if column in c and c[column].notna().any():
        values = pd.to_numeric(c[column], errors="coerce")
        best = values.idxmin() if metric == "log_loss" else values.idxmax()
        return str(c.loc[best, "run_id"])
    return str(c.iloc[0]["run_id"])


def attention_images(runs: AblationRuns, run_id: str) -> list[Path]:
    """Local paths of the attention heat maps (``attention/*.png``) a run logged; may be empty."""
    from regimetry import tracking

    try:
        names = tracking.list_artifacts(run_id, "attention", tracking_uri=runs.tracking_uri)
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
    for run_id in c[(c["tags.arm"] == arm) & (c["status"] == "FINISHED")]["run_id"]:
        data = runs.json(run_id, f"metrics/confusion_{split}.json")
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
    from regimetry import tracking

    out = {}
    c = runs.confirms
    if c.empty:
        return out
    for _, row in c[c["tags.arm"] == arm].iterrows():
        epochs_run = _num(row, "metrics.epochs_run")
        series = {}
        for key in keys:
            points = tracking.get_metric_history(row["run_id"], key, tracking_uri=runs.tracking_uri)
            if not math.isnan(epochs_run):
                points = [(s, v) for s, v in points if s < epochs_run]
            if points:
                series[key] = points
        if series:
            out[f"fold {row.get('tags.fold')} seed {row.get('tags.seed')}"] = series
    return out


def environment(runs: AblationRuns) -> pd.DataFrame:
    """Library versions and git commit: as logged by the runs (``version.*``, ``git_sha`` tags of the
    confirmation / trial runs) next to those of the interpreter rendering the report."""
    from regimetry import tracking

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


# ================================================================================================
# Figures (object-oriented matplotlib, as in regimetry.plots)
# ================================================================================================
def seed_strip_figure(seeds: pd.DataFrame, summary: pd.DataFrame, metric: str = "balanced_accuracy"):
    """Strip plot of every confirmation run's test ``metric`` per arm (one dot per fold x seed, colour =
    fold) with the seed mean and its 95 % interval from ``summary`` (:func:`arm_summary`).

    Returns:
        ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    arms = list(summary["arm"])
    fig = Figure(figsize=(1.6 * max(len(arms), 2) + 2, 3.4), layout="constrained")
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    folds = sorted(seeds["fold"].dropna().unique()) if len(seeds) else []
    for i, arm in enumerate(arms):
        s = seeds[seeds["arm"] == arm]
        for j, fold in enumerate(folds):
            f = s[s["fold"] == fold]
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(f)), f["test"], s=18, color=f"C{j % 10}",
                       label=f"fold {int(fold)}", alpha=0.8)
        row = summary[summary["arm"] == arm].iloc[0]
        if not math.isnan(row["mean"]):
            low, high = row["seed_ci_low"], row["seed_ci_high"]
            yerr = None if math.isnan(low) else [[row["mean"] - low], [high - row["mean"]]]
            ax.errorbar(i + 0.3, row["mean"], yerr=yerr, fmt="D", color="black", capsize=4,
                        label="mean, 95% CI" if i == 0 else None)
    ax.set_xticks(range(len(arms)), arms, rotation=20)
    ax.set_ylabel(f"test {metric}")
    ax.set_title("confirmation runs (one dot per fold and seed)")
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    return fig


def optimization_history_figure(frames: Mapping[str, pd.DataFrame | str], direction: str = "maximize"):
    """Optimization history per arm: every COMPLETE trial's value (dots), pruned/failed trials marked
    at the bottom, and the best value so far (line). ``frames`` from :func:`trial_frames`.

    Returns:
        ``matplotlib.figure.Figure``, or ``None`` when no arm has a readable study.
    """
    from matplotlib.figure import Figure

    from matplotlib.ticker import MaxNLocator

    usable = {a: f for a, f in frames.items() if isinstance(f, pd.DataFrame) and len(f)}
    if not usable:
        return None
    fig = Figure(figsize=(3.2 * len(usable) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, len(usable), squeeze=False)[0]
    for ax, (arm, frame) in zip(axes, usable.items()):
        states = frame["state"].astype(str)
        done = frame[states == "COMPLETE"].sort_values("number")
        ax.scatter(done["number"], done["value"], s=16, label="complete")
        if len(done):
            best = done["value"].cummax() if direction == "maximize" else done["value"].cummin()
            ax.step(done["number"], best, where="post", color="black", lw=1, label="best so far")
            floor = float(done["value"].min())
        else:
            floor = 0.0
        for state, marker in (("PRUNED", "v"), ("FAIL", "x")):
            sub = frame[states == state]
            if len(sub):
                ax.scatter(sub["number"], [floor] * len(sub), marker=marker, color="grey",
                           label=f"{state.lower()} ({len(sub)})")
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("validation objective")
    return fig


def importances_figure(values: Mapping[str, Mapping[str, float] | str]):
    """Horizontal bars of fANOVA importances, one panel per arm with a result; ``None`` if none has."""
    from matplotlib.figure import Figure

    usable = {a: v for a, v in values.items() if isinstance(v, Mapping) and v}
    if not usable:
        return None
    names = sorted({k for v in usable.values() for k in v})
    fig = Figure(figsize=(3.0 * len(usable) + 1.5, 0.3 * len(names) + 1.2), layout="constrained")
    axes = fig.subplots(1, len(usable), squeeze=False, sharey=True)[0]
    for ax, (arm, imp) in zip(axes, usable.items()):
        ax.barh(range(len(names)), [imp.get(n, 0.0) for n in names])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("importance (fANOVA)")
        ax.grid(alpha=0.3, axis="x")
    return fig


def histories_figure(histories: Mapping[str, Mapping[str, list[tuple[int, float]]]], title: str | None = None):
    """Training curves of several runs: one panel per metric, one line per run; ``None`` if empty."""
    from matplotlib.figure import Figure

    from matplotlib.ticker import MaxNLocator

    keys = list(dict.fromkeys(k for h in histories.values() for k in h))
    if not keys:
        return None
    fig = Figure(figsize=(3.3 * len(keys) + 2.2, 2.8), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colors = dict(zip(histories, matplotlib_colors(len(histories))))  # one colour per run, never reused
    for ax, key in zip(axes, keys):
        for label, series in histories.items():
            if key in series:
                steps, values = zip(*series[key])
                ax.plot(steps, values, marker=".", lw=1, label=label, color=colors[label])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=6, frameon=False)  # never over the curves
    if title:
        fig.suptitle(title)
    return fig


def show(fig) -> Any:
    """Display a Figure (or an image file path) as a PNG in a notebook, whatever matplotlib backend
    the kernel uses; the PNG is embedded in the notebook and so in its HTML."""
    from IPython.display import Image, display

    if isinstance(fig, (str, os.PathLike)):
        return display(Image(filename=str(fig)))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    from regimetry.plots import close

    close(fig)
    return display(Image(data=buffer.getvalue()))


# ================================================================================================
# Data report helpers
# ================================================================================================
def label_distribution(splits) -> pd.DataFrame:
    """Windows per regime and split: rows = class names, columns = ``train/val/test`` counts and shares.

    Args:
        splits: ``regimetry.data.types.Splits``.
    """
    k = splits.num_classes
    data = {}
    for name in ("train", "val", "test"):
        y = getattr(splits, name).y
        counts = np.bincount(y, minlength=k)[:k] if len(y) else np.zeros(k, dtype=int)
        data[f"{name} windows"] = counts
        data[f"{name} share"] = counts / counts.sum() if counts.sum() else np.full(k, np.nan)
    return pd.DataFrame(data, index=pd.Index(list(splits.class_names), name="regime"))


def leakage_audit_table(splits) -> pd.DataFrame | None:
    """The leakage audit of every user input column of a CSV source, as one table.

    Uses the audit ``regimetry.data.prepare`` stored in ``splits.extras["leakage_audit"]``; with
    ``DataConfig.leakage_check="off"`` (nothing stored) it reloads the CSV and runs the same audit
    (:func:`regimetry.data.audit.audit_source`) on the same rows. Either way only bars up to the last
    training sample's bar are used (the audit never sees a validation or test bar).

    Args:
        splits: ``regimetry.data.types.Splits`` from ``prepare``.

    Returns:
        ``None`` for a non-CSV source (the audit applies to user columns only); otherwise one row per
        input column of the CSV (numeric and boolean in file order, then categorical) with columns
        ``column``, ``kind``, ``partial R2 (future | past)`` (0..1, NaN when not audited),
        ``R2 of the past`` (0..1), ``noise level`` (``3 L / rows``, what a causal column scores
        by chance), ``rows`` (complete training rows used), ``leads/lags L`` (bars), ``flagged``
        (``"yes"`` / ``"no"``) and ``note`` (why a column was not audited, empty otherwise).
    """
    config = splits.config
    if config.source != "csv":
        return None
    kinds = dict(splits.extras.get("input_kinds") or {})  # built-in features (numeric) and user columns
    stored = splits.extras.get("leakage_audit")
    if stored is None:
        from regimetry.data import audit, load_source

        source = load_source(config)
        kinds.update(source.kinds)
        stored = [dataclasses.asdict(a) for a in
                  audit.audit_source(source, int(splits.train.positions[-1]) + 1, config.horizon)]
    by_column = {a["column"]: a for a in stored}
    # user columns: the audited (numeric, boolean) ones, then the categorical ones (never a built-in feature)
    columns = list(by_column) + [c for c, kind in kinds.items() if kind == "categorical" and c not in by_column]
    rows = []
    for column in columns:
        kind = kinds.get(column, "constant (dropped)")
        a = by_column.get(column)
        if a is None:
            rows.append({"column": column, "kind": kind, "partial R2 (future | past)": np.nan,
                         "R2 of the past": np.nan, "noise level": np.nan, "rows": np.nan, "leads/lags L": np.nan,
                         "flagged": "no", "note": ("not audited: categorical (its one-hot codes are not one "
                                                   "series)" if kind == "categorical" else "not audited")})
            continue
        lags, used = int(a["lags"]), int(a["rows"])
        rows.append({"column": column, "kind": kind, "partial R2 (future | past)": a["partial_r2"],
                     "R2 of the past": a["r2_past"],
                     "noise level": 3 * lags / used if lags and used else np.nan,
                     "rows": used, "leads/lags L": lags, "flagged": "yes" if a["flagged"] else "no",
                     "note": f"not audited: {a['note']}" if a.get("note") else ""})
    return pd.DataFrame(rows, columns=["column", "kind", "partial R2 (future | past)", "R2 of the past",
                                       "noise level", "rows", "leads/lags L", "flagged", "note"])


def transition_matrix(y: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Empirical transition matrix of a label sequence: row = regime at t, column = regime at t + 1
    (the next window), each row normalised to 1 (NaN for a regime never left from), plus the expected
    duration ``1 / (1 - p_ii)`` in windows (Hamilton, 1994, ch. 22: the mean sojourn of a Markov chain).

    Args:
        y: int ``(n,)`` labels in time order (one split, so no jump across an embargo).
        class_names: ``k`` names.

    Raises:
        ValueError: a label outside ``0..k-1``.
    """
    y = np.asarray(y, dtype=np.int64)
    k = len(class_names)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"transition_matrix: labels must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
    counts = np.zeros((k, k), dtype=np.int64)
    if y.size > 1:
        np.add.at(counts, (y[:-1], y[1:]), 1)
    totals = counts.sum(axis=1, keepdims=True)
    probs = np.divide(counts, totals, out=np.full((k, k), np.nan), where=totals > 0)
    frame = pd.DataFrame(probs, index=pd.Index(list(class_names), name="from \\ to"), columns=list(class_names))
    stay = np.diag(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        duration = np.where(stay < 1, 1.0 / (1.0 - stay), np.inf)
    frame["expected duration (windows)"] = np.where(np.isnan(stay), np.nan, duration)
    frame["transitions"] = totals[:, 0]
    return frame


# ================================================================================================
# Command line
# ================================================================================================
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
    parser.add_argument("--output-dir", default="reports", help="root directory of the reports (default reports)")
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
            paths = render_data_report(args.data_config, Path(args.output_dir) / "data")
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


if __name__ == "__main__":
    sys.exit(main())
