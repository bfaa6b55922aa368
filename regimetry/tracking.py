"""MLflow tracking for regimetry: the only module that imports ``mlflow``.

Store: the tracking URI is, by precedence, an explicit argument (``--tracking-uri``), then the
``MLFLOW_TRACKING_URI`` environment variable, then ``sqlite:///mlruns/mlflow.db`` (MLflow 3 no longer
accepts a bare ``./mlruns`` file store). No server is needed; browse with
``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.

Artifacts: with a SQLite store MLflow 3.17's client puts artifacts of new experiments under
``./mlruns/<experiment_id>`` relative to the *current directory* (not the database's), and
``mlflow server`` defaults to ``./mlartifacts``. So every experiment is created here with an explicit
``artifact_location`` = ``<directory of the .db>/artifacts/<experiment name>`` (an absolute
``file://`` URI): the artifacts always sit next to the database, whatever the working directory.

Concurrency: several processes may log into one SQLite file. MLflow sets ``PRAGMA busy_timeout =
20000`` on every session; on top of that every write here is retried with back-off when SQLite still
reports a lock, and the first creation of the database (schema migrations) happens under an
inter-process file lock (``<db>.lock``) so that two processes never migrate the same file at once.

Runs: ``with run(experiment, run_name=..., tags=..., parent_run_id=None) as active:`` starts a run
(nested under the active one, or under ``parent_run_id``) and always ends it: ``FINISHED`` on normal
exit, ``FAILED`` when the body raises an ``Exception``, ``KILLED`` on ``KeyboardInterrupt`` /
``SystemExit``, or whatever the body set with ``active.set_status(...)`` (which wins).

Models: every ``log_training_run`` saves the trained Keras model as a native ``.keras`` file under the
run's ``keras/model.keras`` artifact (about 0.1 s). The full MLflow Keras flavour (MLmodel, signature,
input example, environment) costs seconds per model (see ``benchmarks/README.md``), so it is logged
only on request (``full_model=True``: confirmation runs and the CLI). ``load_model`` loads either.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from regimetry import processes
from regimetry.config import mask_password, one_line, redact_url

__all__ = [
    "OWNER_TAG",
    "browse_hint",
    "end_orphaned_runs",
    "extend_end_time",
    "DEFAULT_TRACKING_URI",
    "ActiveRun",
    "artifact_root_for",
    "configure",
    "get_experiment_id",
    "git_info",
    "load_model",
    "log_artifact",
    "log_dict",
    "log_figure",
    "log_history",
    "log_metrics",
    "log_params",
    "log_text",
    "log_training_run",
    "resolve_tracking_uri",
    "run",
    "search_runs",
    "set_tags",
]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
#: Param values longer than this go to a JSON artifact ``params/<key>.json`` instead.
LONG_PARAM_CHARS = 250
#: Experiment tags: the kind MLflow 3 records for a model-training experiment. MLflow 3.17's UI reads
#: it only without its GenAI / model-training toggle; with the toggle (the default) a fresh browser
#: opens the GenAI overview, and ``#/experiments/<id>/runs?workflowType=machine_learning`` opens the
#: runs table (checked in headless Chromium; README "Then look at the results").
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
#: Tag on every run: JSON ``{"host", "pid", "start"}`` of the process that opened it.
OWNER_TAG = "regimetry.owner"
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_STATUSES = ("FINISHED", "FAILED", "KILLED")
_VERSION_PACKAGES = ("tensorflow", "keras", "mlflow", "optuna", "pandas", "numpy", "scikit-learn")
_ATTENTION_WINDOWS = 3

_configured: dict[str, str] = {}


# ------------------------------------------------------------------------------------------------
# Store
# ------------------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI in force: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else the default.

    A relative SQLite path (``sqlite:///mlruns/mlflow.db``) is made absolute against the current
    directory, so that child processes and later ``chdir`` calls use the same file.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if chosen.startswith("sqlite:///"):
        path = unquote(chosen[len("sqlite:///"):])
        if path and path != ":memory:" and not os.path.isabs(path):
            chosen = "sqlite:///" + os.path.abspath(path)
    return chosen


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
        return Path(path) if path and path != ":memory:" else None
    return None


def artifact_root_for(uri: str) -> str | None:
    """Artifact root used for new experiments of a store: ``<db dir>/artifacts`` for SQLite,
    the store directory for ``file:`` stores, ``None`` (the server decides) otherwise."""
    db = _sqlite_path(uri)
    if db is not None:
        return (db.parent / "artifacts").resolve().as_uri()
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path)).resolve().as_uri()
    return None


def configure(tracking_uri: str | None = None) -> str:
    """Resolve the tracking URI, create the store if needed and point MLflow at it.

    Creates the SQLite file's directory (``mlruns/``) and the schema on first use, under an
    inter-process lock. Idempotent and cheap after the first call per URI.

    Returns:
        The resolved URI.

    Raises:
        ValueError: the store cannot be opened or created: a SQLite path that is a directory, an
            existing file that is not a SQLite database, a directory that cannot be created (a path
            under a file, no permission), or a store MLflow refuses; the message names the URI and
            nothing is written beside a file that is not a store.
    """
    uri = resolve_tracking_uri(tracking_uri)
    option = "--tracking-uri" if tracking_uri or not os.environ.get("MLFLOW_TRACKING_URI") else "MLFLOW_TRACKING_URI"
    if "://" not in uri or uri.startswith("file:"):
        # MLflow 3 refuses a plain directory store with a long deprecation text; say what works instead.
        raise ValueError(f"{option} {redact_url(uri)!r}: a plain directory or file: store is not supported by "
                         "MLflow 3; use a database, e.g. sqlite:///mlruns/mlflow.db, or a server http://host:5000")
    mlflow.set_tracking_uri(uri)
    if uri in _configured:
        return uri
    db = _sqlite_path(uri)
    shown = redact_url(uri)
    if db is not None:
        if db.is_dir():
            raise ValueError(f"{option} {shown!r}: {db} is a directory; expected a SQLite file path "
                             "(sqlite:///mlruns/mlflow.db)")
        if db.is_file() and db.stat().st_size > 0:
            with open(db, "rb") as handle:
                if handle.read(16) != b"SQLite format 3\x00":
                    raise ValueError(f"{option} {shown!r}: {db} exists and is not a SQLite database; "
                                     "point it at a new or an existing MLflow store")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{option} {shown!r}: cannot create the directory {db.parent}: "
                             f"{exc.strerror or exc}") from None
    try:
        if db is not None:
            with _file_lock(db.with_name(db.name + ".lock")):
                MlflowClient(uri).search_experiments(max_results=1)
        else:
            with _quick_http_check():
                _retry(lambda: MlflowClient(uri).search_experiments(max_results=1))
    except ImportError as exc:
        raise ValueError(f"{option} {shown!r}: the database driver is not installed ({mask_password(one_line(exc), uri)}); for "
                         "postgresql:// install psycopg 3: pip install 'psycopg[binary]'") from None
    except (MlflowException, OSError) as exc:
        raise ValueError(f"{option} {shown!r}: the MLflow store cannot be opened: {mask_password(one_line(exc), uri)}") from None
    _configured[uri] = uri
    return uri


@contextlib.contextmanager
def _quick_http_check() -> Iterator[None]:
    """While checking a tracking server: 2 retries of at most 10 s each instead of MLflow's defaults
    (7 retries with back-off, 120 s timeout: an unreachable server took minutes to report anything)."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})  # a user's own setting wins
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _retry(fn, *, attempts: int = 8, first_delay: float = 0.2):
    """Call ``fn()``; on an SQLite lock error wait (0.2 s, doubling, jittered) and retry."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlalchemy OperationalError or MlflowException wrapping it
            if attempt == attempts - 1 or not _is_lock_error(exc):
                raise
            time.sleep(delay * (1.0 + 0.5 * np.random.default_rng().random()))
            delay = min(delay * 2.0, 10.0)
    raise AssertionError("unreachable")


def _client() -> MlflowClient:
    return MlflowClient(mlflow.get_tracking_uri())


def get_experiment_id(name: str, tracking_uri: str | None = None) -> str:
    """Id of experiment ``name``, creating it (artifacts next to the store) if missing.

    Safe when several processes create the same experiment at once.

    Raises:
        ValueError: an empty name, or an experiment of that name that was deleted.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"experiment: expected a non-empty name, got {name!r}")
    uri = configure(tracking_uri)
    client = MlflowClient(uri)
    experiment = _retry(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        root = artifact_root_for(uri)
        location = f"{root}/{name}" if root else None
        try:
            return _retry(lambda: client.create_experiment(name, artifact_location=location, tags=dict(EXPERIMENT_TAGS)))
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "unique" not in str(exc).lower():
                raise
            experiment = _retry(lambda: client.get_experiment_by_name(name))
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"experiment {name!r} was deleted; restore it (mlflow experiments restore) or pick another name"
        )
    for key, value in EXPERIMENT_TAGS.items():  # experiments made before the tag existed
        if experiment.tags.get(key) is None:
            _retry(lambda k=key, v=value: client.set_experiment_tag(experiment.experiment_id, k, v))
    return experiment.experiment_id


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------
class ActiveRun:
    """Handle on a run opened by ``run()``.

    Attributes:
        run_id, experiment_id, parent_run_id: identifiers.
        status: the final status requested with ``set_status`` (``None`` = decided on exit).
    """

    def __init__(self, run_id: str, experiment_id: str, parent_run_id: str | None) -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.status: str | None = None

    def set_status(self, status: str, **tags: Any) -> None:
        """Choose the final status (``FINISHED``, ``FAILED`` or ``KILLED``) and set extra tags.

        Raises:
            ValueError: an unknown status.
        """
        status = str(status).upper()
        if status not in _STATUSES:
            raise ValueError(f"set_status: expected one of {list(_STATUSES)}, got {status!r}")
        self.status = status
        if tags:
            set_tags(tags, run_id=self.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        log_params(params, run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        log_metrics(metrics, step=step, run_id=self.run_id)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        set_tags(tags, run_id=self.run_id)

    def __repr__(self) -> str:
        return f"ActiveRun(run_id={self.run_id!r}, experiment_id={self.experiment_id!r})"


@contextlib.contextmanager
def run(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    *,
    tracking_uri: str | None = None,
) -> Iterator[ActiveRun]:
    """Open an MLflow run that always ends with a final status.

    Args:
        experiment: experiment name (created if missing, see ``get_experiment_id``).
        run_name: display name.
        tags: run tags (values stringified).
        parent_run_id: make this a child of that run (e.g. a trial of a study in another
            process). ``None`` nests under the currently active run, if any.
        tracking_uri: store override (else ``$MLFLOW_TRACKING_URI`` or the default).

    Yields:
        ``ActiveRun``; it is also MLflow's active run inside the block, so the ``log_*`` helpers
        of this module default to it.

    The run ends ``FINISHED`` on normal exit, ``FAILED`` if the body raises an ``Exception``,
    ``KILLED`` on ``KeyboardInterrupt``/``SystemExit``; ``active.set_status(...)`` overrides these.
    Exceptions are re-raised unchanged.
    """
    experiment_id = get_experiment_id(experiment, tracking_uri)
    clean_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    # who opened the run: a later process on this host ends it KILLED if this one dies (end_orphaned_runs)
    clean_tags.setdefault(OWNER_TAG, json.dumps(processes.owner()))
    current = mlflow.active_run()
    if parent_run_id is not None and (current is None or current.info.run_id != parent_run_id):
        # A parent that is not the active run (another process's run): create the run with the
        # parent tag ourselves, then activate it.
        from mlflow.tracking.context import registry as context_registry
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        run_tags = dict(clean_tags, **{MLFLOW_PARENT_RUN_ID: parent_run_id})
        if run_name:
            run_tags[MLFLOW_RUN_NAME] = run_name
        created = _retry(lambda: _client().create_run(
            experiment_id, tags=context_registry.resolve_tags(run_tags), run_name=run_name
        ))
        started = _retry(lambda: mlflow.start_run(run_id=created.info.run_id, nested=True))
    else:
        started = _retry(lambda: mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, nested=current is not None,
            tags=clean_tags or None,
        ))
        parent_run_id = current.info.run_id if current is not None else None
    active = ActiveRun(started.info.run_id, experiment_id, parent_run_id)
    status = "FINISHED"
    try:
        yield active
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        _end_run(active.run_id, active.status or status)


def browse_hint(experiment_id: str, tracking_uri: str | None = None) -> str:
    """The command and address that open an experiment's runs table in ``mlflow ui``.

    MLflow 3.17's UI opens a fresh browser on its GenAI overview whatever the experiment's kind tag;
    the ``workflowType=machine_learning`` query opens the training runs (see ``EXPERIMENT_TAGS``).
    The URI is shown with any password masked.
    """
    uri = redact_url(tracking_uri or mlflow.get_tracking_uri())
    return (f"mlflow ui --backend-store-uri {uri}  then open "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning")


def _end_run(run_id: str, status: str) -> None:
    current = mlflow.active_run()
    if current is not None and current.info.run_id == run_id:
        _retry(lambda: mlflow.end_run(status=status))
    else:  # the body left another run active on top of ours: terminate ours directly
        _retry(lambda: _client().set_terminated(run_id, status))


def _run_id(run_id: str | None) -> str:
    if run_id is not None:
        return run_id
    current = mlflow.active_run()
    if current is None:
        raise RuntimeError("no active MLflow run: use `with tracking.run(...)` or pass run_id=")
    return current.info.run_id


# ------------------------------------------------------------------------------------------------
# Logging helpers (default to the active run)
# ------------------------------------------------------------------------------------------------
def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log params in batches of 100; values longer than ``LONG_PARAM_CHARS`` never crash: the
    full value goes to the artifact ``params/<key>.json`` and the param records a pointer with the
    value's length and SHA-256 prefix.

    Params are immutable, as in MLflow: re-logging a key with the same value is a no-op (nothing is
    rewritten); a different value raises before anything of the call is written, so a stored long
    value's artifact is never overwritten.

    Raises:
        ValueError: a key already logged on the run with another value (naming the key and both values).
    """
    run_id = _run_id(run_id)
    texts: dict[str, str] = {}
    long_values: dict[str, tuple[str, Any]] = {}
    for key, value in params.items():
        text = _param_value(value)
        if len(text) > LONG_PARAM_CHARS:
            artifact = f"params/{_safe_name(key)}.json"
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            long_values[str(key)] = (artifact, value if isinstance(value, (list, tuple, dict)) else text)
            text = f"<{len(text)} chars, sha256 {digest}, see artifact {artifact}>"
        texts[str(key)] = text
    client = _client()
    stored = _retry(lambda: client.get_run(run_id)).data.params
    changed = [k for k, t in texts.items() if k in stored and stored[k] != t]
    if changed:
        k = changed[0]
        raise ValueError(f"param {k!r} of run {run_id} is already {stored[k][:200]!r}; refusing to change it to "
                         f"{texts[k][:200]!r} (params are immutable: start a new run)")
    new = {k: t for k, t in texts.items() if k not in stored}
    for key in new:
        if key in long_values:
            artifact, value = long_values[key]
            log_dict({"key": key, "value": value}, artifact, run_id=run_id)
    short = [Param(k, t) for k, t in new.items()]
    for i in range(0, len(short), _MAX_PARAMS_PER_BATCH):
        chunk = short[i:i + _MAX_PARAMS_PER_BATCH]
        _retry(lambda: client.log_batch(run_id, params=chunk, synchronous=True))


def log_metrics(metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None) -> None:
    """Log scalar metrics (NaN allowed) at ``step`` (default 0) in one batch."""
    run_id = _run_id(run_id)
    now = int(time.time() * 1000)
    entries = [Metric(str(k), float(v), now, int(step or 0)) for k, v in metrics.items()]
    _log_metric_entries(run_id, entries)


def _log_metric_entries(run_id: str, entries: Sequence[Metric]) -> None:
    client = _client()
    for i in range(0, len(entries), _MAX_METRICS_PER_BATCH):
        chunk = list(entries[i:i + _MAX_METRICS_PER_BATCH])
        _retry(lambda: client.log_batch(run_id, metrics=chunk, synchronous=True))


def log_history(history: Mapping[str, Sequence[float]], run_id: str | None = None) -> None:
    """Log per-epoch metrics ``{name: [value per epoch]}`` with ``step = epoch`` (0-based)."""
    run_id = _run_id(run_id)
    now = int(time.time() * 1000)
    entries = [Metric(str(k), float(v), now, step) for k, values in history.items() for step, v in enumerate(values)]
    _log_metric_entries(run_id, entries)


def set_tags(tags: Mapping[str, Any], run_id: str | None = None) -> None:
    """Set run tags (values stringified)."""
    run_id = _run_id(run_id)
    entries = [RunTag(str(k), str(v)) for k, v in tags.items()]
    client = _client()
    for i in range(0, len(entries), _MAX_PARAMS_PER_BATCH):
        chunk = entries[i:i + _MAX_PARAMS_PER_BATCH]
        _retry(lambda: client.log_batch(run_id, tags=chunk, synchronous=True))


def log_dict(data: Any, artifact_file: str, run_id: str | None = None) -> None:
    """Log a JSON (``.json``) or YAML (``.yaml``/``.yml``) artifact."""
    _retry(lambda: _client().log_dict(_run_id(run_id), _jsonable(data), artifact_file))


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    """Log a text artifact."""
    _retry(lambda: _client().log_text(_run_id(run_id), text, artifact_file))


def log_figure(fig, artifact_file: str, run_id: str | None = None, *, dpi: int = 90) -> None:
    """Log a matplotlib figure as an image artifact and close it (always, even on failure)."""
    from regimetry.plots import close

    try:
        _retry(lambda: _client().log_figure(_run_id(run_id), fig, artifact_file, save_kwargs={"dpi": dpi}))
    finally:
        close(fig)


def log_artifact(local_path: str | os.PathLike, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Copy a local file into the run's artifacts (under ``artifact_path``)."""
    if not Path(local_path).exists():
        raise FileNotFoundError(f"log_artifact: {local_path} does not exist")
    _retry(lambda: _client().log_artifact(_run_id(run_id), str(local_path), artifact_path))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    return value


# ------------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------------
def git_info(path: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"git_sha": <HEAD or "unknown">, "git_dirty": "true"|"false"|"unknown"}`` of the repository
    holding ``path`` (default: this package)."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"git_sha": sha, "git_dirty": "true" if status.strip() else "false"}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": "unknown"}


def version_tags() -> dict[str, str]:
    """``{"version.<package>": version}`` for the main libraries (without importing them)."""
    out = {}
    for package in _VERSION_PACKAGES:
        try:
            out[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[f"version.{package}"] = "not installed"
    return out


# ------------------------------------------------------------------------------------------------
# One trained model, everything promised
# ------------------------------------------------------------------------------------------------
def attention_window_indices(n: int, count: int = _ATTENTION_WINDOWS) -> list[int]:
    """The fixed validation windows drawn in attention heat maps: evenly spaced first..last."""
    if n <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n)).round()})


def log_training_run(
    result,
    splits,
    model_config,
    train_config,
    *,
    stage: str,
    arm: str,
    seed: int | None = None,
    full_model: bool = False,
    test: bool = True,
    run_id: str | None = None,
    attention: bool = True,
    figures: bool = True,
    test_probs: np.ndarray | None = None,
) -> dict[str, float]:
    """Log one trained model into the active run (or ``run_id``): everything a report needs.

    Logs params (the flattened ``DataConfig``/``ModelConfig``/``TrainConfig`` plus split sizes;
    long values as artifacts), tags (``git_sha``, ``git_dirty``, ``dataset``, ``data_fingerprint``,
    ``version.<package>``, ``seed``, ``stage``, ``arm``), the per-epoch history (step = epoch),
    the final metrics of the restored model on validation (and test when ``test``) as
    ``val/<metric>`` / ``test/<metric>`` at step ``epochs_run`` (one past the last epoch, so that
    they are the runs' latest values), ``best_epoch``, ``epochs_run``, ``stopped_early``,
    ``fit_seconds``, the model (``keras/model.keras``; plus the MLflow Keras flavour with signature
    and input example under the name ``model`` when ``full_model``), attention heat maps of every
    block for fixed validation windows (``attention/window_<i>.png``), confusion matrices
    (``figures/confusion_<split>.png`` and ``metrics/confusion_<split>.json``), training curves
    (``figures/training_curves.png``), the resolved config (``config/config.json``) and the
    feature / class names (``data/*.json``).

    Args:
        result: ``regimetry.training.TrainResult``.
        splits: the ``Splits`` it was trained on.
        model_config, train_config: the configs of ``result``.
        stage: ``trial``, ``confirm``, ``baseline`` or ``single``. arm: the arm's name.
        seed: defaults to ``train_config.seed``.
        full_model: also log the MLflow Keras flavour (slower, see module docstring).
        test: evaluate and log the test split (trials of a study pass ``False``).
        attention: draw attention heat maps (needs ``regimetry.models.attention_scores``).
        figures: draw the confusion-matrix and training-curve figures (the JSON confusion
            matrices are logged regardless).
        test_probs: the model's float32 ``(len(splits.test), num_classes)`` test probabilities when
            the caller already has them (the test split is then not predicted again).

    Returns:
        The final metrics logged (``val/...`` and ``test/...``).
    """
    from regimetry import plots, training

    run_id = _run_id(run_id)
    seed = train_config.seed if seed is None else seed
    data_config = splits.config
    set_tags({
        **git_info(), **version_tags(),
        "dataset": data_config.dataset_name, "data_fingerprint": splits.fingerprint,
        "seed": seed, "stage": stage, "arm": arm,
        **_audit_tags(splits.extras.get("leakage_audit")),
    }, run_id=run_id)
    params: dict[str, Any] = {}
    for cfg in (data_config, model_config, train_config):
        params.update(cfg.flat())
    params.update({
        "data.num_features": splits.num_features, "data.num_classes": splits.num_classes,
        "data.n_train": len(splits.train), "data.n_val": len(splits.val), "data.n_test": len(splits.test),
        "data.fold": splits.fold,
    })
    log_params(params, run_id=run_id)
    log_dict({"data": data_config.to_dict(), "model": model_config.to_dict(), "train": train_config.to_dict()},
             "config/config.json", run_id=run_id)
    log_dict(list(splits.feature_names), "data/feature_names.json", run_id=run_id)
    log_dict(list(splits.class_names), "data/class_names.json", run_id=run_id)
    if splits.label_thresholds is not None:
        log_dict(np.asarray(splits.label_thresholds), "data/label_thresholds.json", run_id=run_id)

    log_history(result.history, run_id=run_id)
    final_step = int(result.epochs_run)
    final: dict[str, float] = {f"val/{k}": v for k, v in result.val_metrics.items()}
    confusions = {"val": result.val_confusion}
    if test and len(splits.test):
        evaluated = training.evaluate_full(result.model if test_probs is None else np.asarray(test_probs),
                                           splits.test, splits.class_names)
        final.update({f"test/{k}": v for k, v in evaluated.metrics.items()})
        confusions["test"] = evaluated.confusion
    final.update({
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "stopped_early": float(result.stopped_early), "fit_seconds": result.fit_seconds,
    })
    log_metrics(final, step=final_step, run_id=run_id)
    for name, cm in confusions.items():
        log_dict({"labels": list(splits.class_names), "rows": "true", "columns": "predicted", "matrix": cm},
                 f"metrics/confusion_{name}.json", run_id=run_id)
        if figures:
            log_figure(plots.confusion_matrix_figure(cm, splits.class_names, title=f"{name} split"),
                       f"figures/confusion_{name}.png", run_id=run_id)
    if figures:
        log_figure(plots.training_curves(result.history, best_epoch=result.best_epoch),
                   "figures/training_curves.png", run_id=run_id)
    if attention:
        _log_attention(result.model, splits, run_id)
    _log_model(result.model, splits, run_id, full_model=full_model)
    return final


def _audit_tags(audit: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    """``leakage_flags``: the CSV columns the leakage audit flagged (``none``), when it ran."""
    if not audit:
        return {}
    flagged = [f"{a['column']} (partial R2 {a['partial_r2']:.2f})" for a in audit if a.get("flagged")]
    return {"leakage_flags": "; ".join(flagged)[:4900] if flagged else "none",
            "leakage_audited_columns": str(sum(1 for a in audit if not a.get("note")))}


def _log_attention(model, splits, run_id: str) -> None:
    try:
        from regimetry.models import attention_scores
    except ImportError:
        set_tags({"attention_maps": "unavailable (regimetry.models.attention_scores missing)"}, run_id=run_id)
        return
    from regimetry import plots

    windows = attention_window_indices(len(splits.val))
    if not windows:
        return
    try:
        scores = attention_scores(model, splits.val.X[windows])
    except ValueError as exc:  # not a regimetry classifier (e.g. a plain Keras reference model)
        set_tags({"attention_maps": f"unavailable: {exc}"[:5000]}, run_id=run_id)
        return
    for j, i in enumerate(windows):
        date = splits.val.index[i]
        label = splits.class_names[int(splits.val.y[i])]
        title = f"validation window {i} ending {getattr(date, 'date', lambda: date)()} (true: {label})"
        log_figure(plots.attention_heatmaps([np.asarray(s) for s in scores], window=j, title=title),
                   f"attention/window_{i}.png", run_id=run_id)
    set_tags({"attention_windows": json.dumps(windows)}, run_id=run_id)


def _log_model(model, splits, run_id: str, *, full_model: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        log_artifact(path, "keras", run_id=run_id)
    tags = {"model_keras": "keras/model.keras"}
    if full_model:
        from mlflow.models import Model, infer_signature

        from regimetry import training

        example = np.asarray(splits.val.X[:2], dtype=np.float32)
        signature = infer_signature(example, training.predict_proba(model, example))
        requirements = [f"{p}=={importlib.metadata.version(p)}" for p in ("tensorflow", "keras", "numpy")]
        current = mlflow.active_run()
        activate = current is None or current.info.run_id != run_id
        import keras

        # MLflow validates the input example with model.predict() and its default progress bar;
        # keep that out of the experiment's output.
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
        tags["model_uri"] = info.model_uri
    set_tags(tags, run_id=run_id)


def _save_keras_flavor(path: str, **kwargs: Any) -> None:
    # MLflow 3.17.2's keras flavour writes the input example into ``path`` before creating it
    # (FileNotFoundError .../input_example.json); create the directory first.
    from mlflow import keras as mlflow_keras

    os.makedirs(path, exist_ok=True)
    mlflow_keras.save_model(path=path, **kwargs)


_KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_flavor)


def _register_custom_objects() -> None:
    try:  # registers the project's serializable layers with Keras
        import regimetry.models  # noqa: F401
    except ImportError:
        pass


def load_model(ref: str, *, tracking_uri: str | None = None):
    """Load a logged model with its custom layers.

    Args:
        ref: a run id (loads the MLflow flavour if the run logged one, else ``keras/model.keras``),
            or a model URI (``runs:/<id>/model``, ``models:/<id>``) for ``mlflow.keras.load_model``.

    Raises:
        ValueError: the run has no logged model.
    """
    import keras

    configure(tracking_uri)
    _register_custom_objects()
    if "://" in ref or ref.startswith("models:/") or ref.startswith("runs:/"):
        from mlflow import keras as mlflow_keras

        return mlflow_keras.load_model(ref)
    run_info = _retry(lambda: _client().get_run(ref))
    model_uri = run_info.data.tags.get("model_uri")
    if model_uri:
        from mlflow import keras as mlflow_keras

        return mlflow_keras.load_model(model_uri)
    artifact = run_info.data.tags.get("model_keras")
    if not artifact:
        raise ValueError(f"run {ref} has no logged model (no 'model_keras' or 'model_uri' tag)")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=ref, artifact_path=artifact, dst_path=tmp)
        return keras.models.load_model(local)


# ------------------------------------------------------------------------------------------------
# Queries
# ------------------------------------------------------------------------------------------------
def search_runs(
    experiment: str | Sequence[str],
    filter_string: str = "",
    *,
    order_by: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    include_deleted: bool = False,
):
    """Runs of one or more experiments as a ``pandas.DataFrame`` (one row per run).

    Columns: ``run_id``, ``experiment_id``, ``status``, ``start_time``, ``end_time``,
    ``metrics.<name>`` (latest value), ``params.<name>``, ``tags.<name>``. A missing experiment
    gives an empty frame.

    Args:
        filter_string: MLflow search syntax, e.g. ``"tags.stage = 'confirm' and metrics.`val/balanced_accuracy` > 0.4"``.
    """
    import pandas as pd

    configure(tracking_uri)
    names = [experiment] if isinstance(experiment, str) else list(experiment)
    view = mlflow.entities.ViewType.ALL if include_deleted else mlflow.entities.ViewType.ACTIVE_ONLY
    client = _client()
    ids = [e.experiment_id for e in (_retry(lambda n=n: client.get_experiment_by_name(n)) for n in names) if e]
    if not ids:
        return pd.DataFrame(columns=["run_id", "experiment_id", "status"])
    return _retry(lambda: mlflow.search_runs(
        experiment_ids=ids, filter_string=filter_string, run_view_type=view,
        order_by=list(order_by) if order_by else None, output_format="pandas",
    ))


def extend_end_time(run_id: str) -> None:
    """Move a finished run's end time to now, keeping its status: a parent that was closed as soon as
    it was created (an ablation's arm run) then shows the duration of the work under it."""
    client = _client()
    status = _retry(lambda: client.get_run(run_id)).info.status
    _retry(lambda: client.set_terminated(run_id, status, end_time=int(time.time() * 1000)))


def end_orphaned_runs(experiment: str, tracking_uri: str | None = None) -> list[str]:
    """End ``KILLED`` every RUNNING run of ``experiment`` whose owner process on this host is gone.

    A process killed with ``kill -9`` (or by the OOM killer) cannot end its runs; the next process
    that works on the experiment calls this, so no run stays RUNNING forever. Runs of live
    processes, of other hosts and without an owner tag are left alone.

    Returns:
        The ids of the runs ended.
    """
    runs = search_runs(experiment, "attributes.status = 'RUNNING'", tracking_uri=tracking_uri)
    column = f"tags.{OWNER_TAG}"
    if runs.empty or column not in runs:
        return []
    ended = []
    client = _client()
    for run_id, record in zip(runs["run_id"], runs[column]):
        try:
            owner = json.loads(record) if isinstance(record, str) else None
        except json.JSONDecodeError:
            owner = None
        if processes.owner_is_dead(owner):
            _retry(lambda r=run_id: client.set_tag(r, "ended_by", "end_orphaned_runs: owner process gone"))
            _retry(lambda r=run_id: client.set_terminated(r, "KILLED"))
            ended.append(run_id)
    return ended


def run_status(run_id: str, tracking_uri: str | None = None) -> str:
    """Current status of a run (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``)."""
    configure(tracking_uri)
    return _retry(lambda: _client().get_run(run_id)).info.status


def list_artifacts(run_id: str, path: str | None = None, tracking_uri: str | None = None) -> list[str]:
    """Paths of every artifact file of a run (recursively below ``path``)."""
    configure(tracking_uri)
    client = _client()
    out: list[str] = []
    stack = [path]
    while stack:
        for item in _retry(lambda p=stack.pop(): client.list_artifacts(run_id, p)):
            (stack.append(item.path) if item.is_dir else out.append(item.path))
    return sorted(out)


def download_artifacts(run_id: str, path: str, tracking_uri: str | None = None, dst_path: str | None = None) -> str:
    """Local path of a run's artifact file or folder ``path`` (downloaded if the store is remote).

    Raises:
        OSError / MlflowException: no such artifact (message names the run and path).
    """
    configure(tracking_uri)
    return _retry(lambda: mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst_path))


def get_metric_history(run_id: str, key: str, tracking_uri: str | None = None) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, sorted by step."""
    configure(tracking_uri)
    history = _retry(lambda: _client().get_metric_history(run_id, key))
    return sorted((m.step, m.value) for m in history)

