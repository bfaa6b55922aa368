"""Log params, metrics, tags, dicts, text, figures and files into a run (the active one by default),
and the provenance tags (git, library versions)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from mlflow.entities import Metric, Param, RunTag

from regimetry.plots import close as close_figure
from regimetry.tracking.store import _client, _retry, _run_id

#: Param values longer than this go to a JSON artifact ``params/<key>.json`` instead.
LONG_PARAM_CHARS = 250
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_VERSION_PACKAGES = ("tensorflow", "keras", "mlflow", "optuna", "pandas", "numpy", "scikit-learn")


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
    try:
        _retry(lambda: _client().log_figure(_run_id(run_id), fig, artifact_file, save_kwargs={"dpi": dpi}))
    finally:
        close_figure(fig)


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
