"""MLflow tracking for regimetry: the only package that imports ``mlflow``.

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

Layout: ``store`` (URI, store creation, experiments, SQLite-lock retries), ``runs`` (runs that always
end, queries), ``log`` (params, metrics, tags, artifacts, provenance), ``training_run`` (one trained
model's record, the model files). Every public name is importable from ``regimetry.tracking``.

Computes nothing: ``log_training_run`` logs a ``regimetry.run_record.RunRecord`` (evaluation,
attention and figures are computed by ``regimetry.run_record.build`` before the call).

Models: every ``log_training_run`` saves the trained Keras model as a native ``.keras`` file under the
run's ``keras/model.keras`` artifact (about 0.1 s). The full MLflow Keras flavour (MLmodel, signature,
input example, environment) costs seconds per model (see ``benchmarks/README.md``), so it is logged
only on request (``run_record.build(..., full_model=True)``: confirmation runs and the CLI). ``load_model`` loads either.
"""

from __future__ import annotations

from regimetry.tracking.log import (
    LONG_PARAM_CHARS,
    git_info,
    log_artifact,
    log_dict,
    log_figure,
    log_history,
    log_metrics,
    log_params,
    log_text,
    set_tags,
    version_tags,
)
from regimetry.tracking.runs import (
    OWNER_TAG,
    ActiveRun,
    browse_hint,
    download_artifacts,
    end_orphaned_runs,
    extend_end_time,
    get_metric_history,
    list_artifacts,
    run,
    run_status,
    search_runs,
)
from regimetry.tracking.store import (
    DEFAULT_TRACKING_URI,
    EXPERIMENT_TAGS,
    artifact_root_for,
    configure,
    get_experiment_id,
    resolve_tracking_uri,
)
from regimetry.tracking.training_run import load_model, log_training_run

__all__ = [
    "DEFAULT_TRACKING_URI",
    "EXPERIMENT_TAGS",
    "LONG_PARAM_CHARS",
    "OWNER_TAG",
    "ActiveRun",
    "artifact_root_for",
    "browse_hint",
    "configure",
    "download_artifacts",
    "end_orphaned_runs",
    "extend_end_time",
    "get_experiment_id",
    "get_metric_history",
    "git_info",
    "list_artifacts",
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
    "run_status",
    "search_runs",
    "set_tags",
    "version_tags",
]
