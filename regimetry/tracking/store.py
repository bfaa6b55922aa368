"""The MLflow store: resolve the tracking URI, create the store and experiments, retry SQLite locks."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from regimetry.config import (check_credentials, connect_args, driver_hint, is_foreign_file, mask_password, one_line, redact_url,
                              sqlite_store_kind, url_scheme)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
#: Experiment tags: the kind MLflow 3 records for a model-training experiment. MLflow 3.17's UI reads
#: it only without its GenAI / model-training toggle; with the toggle (the default) a fresh browser
#: opens the GenAI overview, and ``#/experiments/<id>/runs?workflowType=machine_learning`` opens the
#: runs table (checked in headless Chromium; README "Then look at the results").
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
#: URI schemes of the MLflow 3 tracking stores (``postgresql+psycopg://`` counts as ``postgresql``).
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")

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
    shown = redact_url(uri)
    scheme = url_scheme(uri)
    if scheme not in TRACKING_SCHEMES:  # MLflow's own text is about its model registry
        raise ValueError(f"{option} {shown!r}: unknown scheme {scheme!r}; use a database (sqlite:///mlruns/mlflow.db, "
                         "postgresql://..., mysql://...) or an MLflow server (http://host:5000)")
    check_credentials(uri, option)
    mlflow.set_tracking_uri(uri)
    if uri in _configured:
        return uri
    db = _sqlite_path(uri)
    if db is not None:
        if db.is_dir():
            raise ValueError(f"{option} {shown!r}: {db} is a directory; expected a SQLite file path "
                             "(sqlite:///mlruns/mlflow.db)")
        if is_foreign_file(db):
            raise ValueError(f"{option} {shown!r}: {db} exists and is not a SQLite database; "
                             "point it at a new or an existing MLflow store")
        if sqlite_store_kind(db) == "Optuna storage":
            raise ValueError(f"{option} {shown!r}: {db} is an Optuna storage (give it as --storage); point "
                             f"{option} at the MLflow store, e.g. sqlite:///mlruns/mlflow.db")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{option} {shown!r}: cannot create the directory {db.parent}: "
                             f"{exc.strerror or exc}") from None
    try:
        if db is not None:
            with _file_lock(db.with_name(db.name + ".lock")):
                if not db.exists() or db.stat().st_size == 0:
                    _create_sqlite_store(db)
                MlflowClient(uri).search_experiments(max_results=1)
        else:
            if scheme in ("postgresql", "mysql", "mssql"):
                _connect_once(uri)
            with _quick_http_check():
                _retry(lambda: MlflowClient(uri).search_experiments(max_results=1))
    except ImportError as exc:
        raise ValueError(f"{option} {shown!r}: the database driver is not installed ({mask_password(one_line(exc), uri)}); "
                         f"{driver_hint(uri)}") from None
    except (MlflowException, OSError) as exc:
        raise ValueError(f"{option} {shown!r}: the MLflow store cannot be opened: {mask_password(one_line(exc), uri)}") from None
    except SQLAlchemyError as exc:  # e.g. a store half-created by an older version that was killed
        if db is None and isinstance(exc, OperationalError):  # the database server: not reachable or refused us
            raise ValueError(f"{option} {shown!r}: cannot connect to the database: "
                             f"{mask_password(one_line(exc), uri)}") from None
        raise ValueError(f"{option} {shown!r}: the MLflow store cannot be opened: {mask_password(one_line(exc), uri)}"
                         "; if its creation was interrupted and it holds no runs, delete it") from None
    _configured[uri] = uri
    return uri


def _create_sqlite_store(db: Path) -> None:
    """Create a new SQLite MLflow store atomically (the caller holds the store's lock).

    MLflow builds a new store's schema in dozens of migrations, and a process killed among them
    (``kill -9`` in the first seconds of a first run) used to leave a half-migrated ``mlflow.db`` that
    every later command failed to open (``table ... already exists``). The schema is now built in a
    temporary file beside the store (``.<name>.creating-<pid>``), which takes the store's name only when
    complete (``os.replace``); a kill leaves only that temporary file, removed by the next creation.
    """
    for stale in db.parent.glob(f".{db.name}.creating-*"):
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)
    os.replace(tmp, db)


@contextlib.contextmanager
def _quick_http_check() -> Iterator[None]:
    """While checking a tracking server: 2 retries of at most 10 s each instead of MLflow's defaults
    (7 retries with back-off, 120 s timeout: an unreachable server took minutes to report anything)."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})  # a user's own setting wins
    retries = logging.getLogger("urllib3.connectionpool")  # its "Retrying ..." warnings: our message says it
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries.setLevel(level)
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


def _connect_once(uri: str) -> None:
    """Open and close one connection to a database store: MLflow retries a refused connection 10 times
    with back-off (about 100 s of "Operation will be retried" warnings) before it reports anything.

    Raises:
        sqlalchemy.exc.OperationalError: the server cannot be reached or refuses the credentials;
        ImportError: the driver is not installed.
    """
    engine = create_engine(uri, connect_args=connect_args(uri))
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


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


def _run_id(run_id: str | None) -> str:
    if run_id is not None:
        return run_id
    current = mlflow.active_run()
    if current is None:
        raise RuntimeError("no active MLflow run: use `with tracking.run(...)` or pass run_id=")
    return current.info.run_id
