"""Execute the report notebooks (``notebooks/*.ipynb``) with papermill into ``reports/`` (ipynb + HTML).

Kernel: notebooks always run in the *current* interpreter (``sys.executable``), whatever kernel the
notebook's metadata names: the kernel manager given to papermill/nbclient resolves every kernel name
to ipykernel's spec for this interpreter. Parameters are injected by papermill's Python translator
(strings with quotes, backslashes and ``=``, ints, floats, bools, ``None``, lists and dicts keep their
types; tuples become lists). URLs with a password reach the kernel through an environment variable, so
the password is never written into the executed notebook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import unquote

import numpy as np
import yaml

from regimetry import records, tracking
from regimetry.config import DataConfig, has_password
from regimetry.data import prepare
from regimetry.reports.runs import _SECRET_ENV, load_ablation_runs
from regimetry.studies import backend

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
ABLATION_NOTEBOOK = "ablation_report.ipynb"
DATA_NOTEBOOK = "data_report.ipynb"
#: Metrics an ablation logs (``regimetry.studies.METRICS_OF_RECORD``); higher is better except log loss.
REPORT_METRICS = ("balanced_accuracy", "macro_f1", "log_loss")


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
    # Jupyter's kernel machinery: loaded only when a notebook runs (papermill's own dependencies).
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
    import papermill  # heavy (nbclient, jupyter): loaded only when a notebook runs
    from papermill.exceptions import PapermillExecutionError

    source = Path(notebook)
    if not source.is_file():
        raise FileNotFoundError(f"report notebook not found: {source}")
    params = _checked_parameters(source, parameters or {}, papermill.inspect_notebook(str(source)))
    out_dir = Path(output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or source.stem
    out_nb, out_html = out_dir / f"{stem}.ipynb", out_dir / f"{stem}.html"
    try:
        papermill.execute_notebook(
            str(source), str(out_nb), parameters=params, kernel_name="python3", language="python",
            progress_bar=False, cwd=str(out_dir), execution_timeout=timeout,
            kernel_manager_class=_kernel_manager_class(),
            # The notebooks only read (runs, studies, data) and papermill has saved every output by
            # the end: kill the kernel instead of a graceful shutdown (~1.3 s of its atexit teardown).
            shutdown_kernel="immediate",
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


def _checked_parameters(source: Path, parameters: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` as papermill renders them faithfully (:func:`_plain`), each declared by the notebook."""
    params = {}
    for key, value in parameters.items():
        try:
            params[str(key)] = _plain(value)
        except TypeError as exc:
            raise TypeError(f"{source.name}: parameter {key!r}: {exc}") from None
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"{source.name}: unknown parameter(s) {unknown}; the notebook's parameters cell "
                         f"declares {sorted(declared)}")
    return params


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(text))


def _to_html(notebook: Path, html: Path, quiet: bool = False) -> None:
    """nbconvert's HTML exporter (images are embedded as base64 by the exporter)."""
    from nbconvert import HTMLExporter  # heavy (jinja2, bleach): loaded only when a report is written

    try:
        # code stays in the executed .ipynb; the HTML reads like a paper (outputs only)
        body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                               exclude_output_prompt=True).from_filename(str(notebook))
    except Exception:  # noqa: BLE001 - a failed conversion of a failed notebook must not hide its error
        if quiet:
            return
        raise
    html.write_text(body, encoding="utf-8")


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


def render_ablation_report(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    storage: str | None = None,
    parent_run_id: str | None = None,
    metric: str = "balanced_accuracy",
    output_dir: str | os.PathLike | None = None,
    log_to_parent: bool = True,
    timeout: float = 600.0,
) -> ReportPaths:
    """Render ``notebooks/ablation_report.ipynb`` for one ablation into ``<output_dir>/<experiment>/``.

    Args:
        experiment: MLflow experiment name (the ablation's name, by convention the script's stem, e.g. ``03_encoding_ablation``).
        tracking_uri: MLflow store (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns/mlflow.db``).
        storage: Optuna storage URL of the arms' studies (default: the parent run's
            ``optuna_storage`` tag unless it was redacted, else ``sqlite:///mlruns/optuna.db``).
            URLs with a password (tracking URI or storage) reach the kernel through an environment
            variable, so the password is never written into the executed notebook or its artifact.
        parent_run_id: the ``stage=study`` run to report (default: the latest FINISHED one of the experiment).
        metric: metric of record shown in the tables, one of ``balanced_accuracy``, ``macro_f1``,
            ``log_loss``.
        output_dir: root of the reports (relative paths against the current directory); default ``reports``,
            or ``reports/smoke`` for a ``--smoke`` run, so that re-rendering one never replaces a full run's report.
        log_to_parent: log both files as artifacts ``report/ablation_report.{ipynb,html}`` of the parent
            run (by explicit run id, so it works while the parent run is still active).
        timeout: seconds allowed per cell.

    Returns:
        :class:`ReportPaths` (``ablation_report.ipynb`` and ``ablation_report.html``).

    Raises:
        ValueError: an unknown metric, a ``storage`` that does not exist or cannot be opened, a missing
            tracking store, an experiment without ablation runs
            or an unknown ``parent_run_id`` (naming the experiment and the tracking URI).
        ReportError: a cell of the notebook failed (partial notebook kept, see :func:`render_notebook`).
    """
    if metric not in REPORT_METRICS:
        raise ValueError(f"metric: expected one of {list(REPORT_METRICS)}, got {metric!r}")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    runs = load_ablation_runs(experiment, uri, parent_run_id)  # fails fast with a clear message
    parent_id = runs.parent_run_id
    if output_dir is None:
        smoke = str(records.read_params(runs.parent, records.OPTIONS_PARAM).get("smoke", "")).lower() == "true"
        output_dir = "reports/smoke" if smoke else "reports"
    if storage:  # the user's --storage: refuse a bad or missing one before rendering (exit 2 in the CLI)
        backend.resolve_storage(_absolute_url(storage), read_only=True)
    else:
        # The parent's optuna_storage tag as the run wrote it: a relative sqlite/journal path means the
        # user's current directory, not the output directory papermill runs the kernel in.
        tagged = runs.tag(records.OPTUNA_STORAGE)
        storage = tagged if tagged and "***" not in tagged else None
    with _passwords_through_env({"tracking_uri": uri, "storage": _absolute_url(storage)}) as values:
        paths = render_notebook(
            NOTEBOOK_DIR / ABLATION_NOTEBOOK, Path(output_dir) / experiment,
            {"experiment": experiment, **values, "parent_run_id": parent_id, "metric": metric},
            timeout=timeout,
        )
    if log_to_parent:
        tracking.configure(uri)
        for path in (paths.notebook, paths.html):
            tracking.log_artifact(path, records.REPORT_DIR, run_id=parent_id)
    return paths


@contextlib.contextmanager
def _passwords_through_env(values: dict[str, str | None]) -> Iterator[dict[str, str | None]]:
    """The report's URL parameters with every URL holding a password replaced by ``"$<variable>"`` and
    put into that environment variable for the kernel (never written into the notebook or its MLflow
    artifact); the variables are restored afterwards."""
    saved = {name: os.environ.get(name) for name in _SECRET_ENV.values()}
    values = dict(values)
    for key, value in values.items():
        if has_password(value):
            os.environ[_SECRET_ENV[key]] = value
            values[key] = "$" + _SECRET_ENV[key]
    try:
        yield values
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    paths = render_data_report(data_config, Path(output_dir) / experiment, name="data_report")
    if parent_run_id is not None:
        for path in (paths.notebook, paths.html):
            tracking.log_artifact(path, records.REPORT_DIR, run_id=parent_run_id)
    return paths


def experiment_data_report_or_error(experiment: str, data_config, parent_run_id: str) -> str | None:
    """:func:`render_experiment_data_report` for an experiment script's last step: returns ``None`` on
    success, else an error message for the script to exit with (its runs stay FINISHED; the parent run
    gets a ``report_error`` tag)."""
    try:
        paths = render_experiment_data_report(experiment, data_config, parent_run_id=parent_run_id)
        print(f"report: {paths.html}", flush=True)
        return None
    except (ReportError, ValueError) as exc:
        tracking.set_tags({records.REPORT_ERROR: str(exc)[:4000]}, run_id=parent_run_id)
        return f"error: the report failed to render: {exc}"


def data_config_from(value: DataConfig | Mapping[str, Any] | str | os.PathLike) -> DataConfig:
    """A validated ``DataConfig`` from a config, a mapping, a YAML file path or YAML text.

    A mapping or document with a ``data:`` section uses that section.

    Raises:
        FileNotFoundError: a path ending in ``.yaml``/``.yml`` that does not exist.
        ValueError: YAML that does not parse or is not a mapping, or an invalid field.
    """
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
