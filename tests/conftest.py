"""Shared fixtures: tiny configs, seeds and a temporary MLflow store per test."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store (artifacts beside it) for one test; sets MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


# ---- training / tracking fixtures (tests/test_training.py, test_tracking.py, test_cli.py) ----
def make_random_splits(n_train=60, n_val=24, n_test=21, window=6, features=7, num_classes=3, seed=0):
    """Hand-made ``Splits`` with learnable random windows (class shifts the mean of feature 0).

    Distinct sizes (T 6, features 7, 3 classes) so that swapped axes fail.
    """
    import numpy as np
    import pandas as pd

    from regimetry.config import DataConfig
    from regimetry.data.types import SplitData, Splits

    rng = np.random.default_rng(seed)
    n_total = n_train + n_val + n_test
    dates = pd.bdate_range("2001-01-01", periods=n_total + window)
    parts = []
    start = 0
    for n in (n_train, n_val, n_test):
        y = np.arange(n, dtype=np.int64) % num_classes
        rng.shuffle(y)
        X = rng.normal(size=(n, window, features)).astype(np.float32)
        X[:, :, 0] += 1.5 * y[:, None]
        pos = np.arange(start, start + n, dtype=np.int64) + window - 1
        parts.append(SplitData(X=X, y=y, index=pd.DatetimeIndex(dates[pos]), positions=pos))
        start += n
    bars = pd.DataFrame({"close": np.linspace(100, 110, len(dates)), "log_return": 0.0}, index=dates)
    return Splits(
        train=parts[0], val=parts[1], test=parts[2],
        feature_names=[f"f{i}" for i in range(features)],
        class_names=["low", "mid", "high"][:num_classes] if num_classes <= 3 else [f"c{i}" for i in range(num_classes)],
        config=DataConfig(source="synthetic", window_size=window),
        bars=bars, labels=pd.Series(np.nan, index=dates), fingerprint="deadbeef",
    )


@pytest.fixture
def random_splits():
    """Tiny hand-made Splits: train 60 / val 24 / test 21 windows of shape (6, 7), 3 classes."""
    return make_random_splits()


# ---- the smoke run of the main job, shared by tests/test_experiments.py and test_reports.py ----
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _arm_names(script: str) -> list[str]:
    """The arms an experiment script declares (``experiments/<script>.py``'s ``ABLATION``), so no test
    copies them by hand (issue 13)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"declared_{script}", ROOT / "experiments" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [arm.name for arm in module.ABLATION.arms]


@pytest.fixture(scope="session")
def smoke_03(tmp_path_factory):
    """``python experiments/03_encoding_ablation.py --smoke`` run once per session, exactly as a user
    would (default dataset sp500, default worker processes, report on), from a temporary working
    directory into a temporary MLflow store and Optuna storage.

    Returns ``{"experiment", "uri", "storage", "arms", "root", "stdout", "returncode", "seconds"}``.
    """
    import subprocess
    import sys
    import time

    root = tmp_path_factory.mktemp("smoke_03")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    storage = f"sqlite:///{root / 'optuna.db'}"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "03_encoding_ablation.py"), "--smoke",
         "--tracking-uri", uri, "--storage", storage],
        cwd=root, capture_output=True, text=True, timeout=900,
        env={**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"},
    )
    return {"experiment": "03_encoding_ablation", "uri": uri, "storage": storage, "root": root,
            "arms": _arm_names("03_encoding_ablation"),
            "stdout": proc.stdout + proc.stderr, "returncode": proc.returncode,
            "seconds": time.monotonic() - started}


@pytest.fixture(scope="session")
def tiny_ablation_store(smoke_03):
    """A real tracked ablation for the report tests: the session's smoke run of 03."""
    assert smoke_03["returncode"] == 0, smoke_03["stdout"][-4000:]
    return smoke_03


# ---- a throwaway PostgreSQL cluster (tests/test_studies.py: the storage promises on an RDB) ----
@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A SQLAlchemy URL of a fresh PostgreSQL cluster on 127.0.0.1 in a temporary directory, or a
    skip that says why none can be started. ``$REGIMETRY_TEST_POSTGRES_URL`` uses a server you run.

    The cluster is started by ``tests/pg_cluster.py`` (shared with ``benchmarks/crash_recovery.py``);
    as root (CI) it runs under the ``postgres`` system user.
    """
    from pg_cluster import PostgresUnavailable, throwaway_postgres

    given = os.environ.get("REGIMETRY_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    try:
        cluster = throwaway_postgres(tmp_path_factory.mktemp("postgres"))
        url = cluster.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL tests: {exc}")
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)
