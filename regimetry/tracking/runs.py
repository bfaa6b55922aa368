"""Runs that always end with a final status, and queries over runs (search, status, artifacts)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Iterator, Mapping, Sequence

import mlflow
import pandas as pd
from mlflow.tracking.context import registry as context_registry
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from regimetry import processes
from regimetry.config import redact_url
from regimetry.tracking.log import log_metrics, log_params, set_tags
from regimetry.tracking.store import _client, _retry, configure, get_experiment_id

#: Tag on every run: JSON ``{"host", "pid", "start"}`` of the process that opened it.
OWNER_TAG = "regimetry.owner"
_STATUSES = ("FINISHED", "FAILED", "KILLED")


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
    # no "Downloading artifacts" progress bar per file in the harness's output (MLflow's own switch)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return _retry(lambda: mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst_path))


def get_metric_history(run_id: str, key: str, tracking_uri: str | None = None) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, sorted by step."""
    configure(tracking_uri)
    history = _retry(lambda: _client().get_metric_history(run_id, key))
    return sorted((m.step, m.value) for m in history)
