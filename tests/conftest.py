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


# ---- reports fixture (tests/test_reports.py) ----
@pytest.fixture(scope="session")
def tiny_ablation_store(tmp_path_factory):
    """A real, tiny 2-arm ablation (pooling mean vs last) run once per session by the harness
    ``regimetry.studies.main`` on synthetic data (``--smoke``, 2 trials per arm, 2 epochs, 1 path x 1 seed,
    ``--no-report``) into a temporary MLflow store and Optuna storage.

    Returns ``{"experiment", "uri", "storage", "arms", "root"}``.
    """
    from regimetry import studies
    from regimetry.studies import Ablation, Arm, Budget, Categorical, Float, SearchSpace

    root = tmp_path_factory.mktemp("tiny_ablation")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    storage = f"sqlite:///{root / 'optuna.db'}"
    budget = Budget(trials_per_arm=2, max_epochs=2, patience=1, seeds=1, folds=1,
                    pruner_startup_trials=1, pruner_warmup_epochs=1)
    ablation = Ablation(
        name="tiny_report_ablation",
        question="Does mean or last pooling classify synthetic regimes better? (report test)",
        scientific="model.pooling",
        arms=(Arm("mean", {"model.pooling": "mean"}), Arm("last", {"model.pooling": "last"})),
        nuisance=SearchSpace((Float("train.learning_rate", low=1e-3, high=3e-3, log=True),
                              Categorical("model.d_model", choices=(8, 16)))),
        fixed={"model.num_layers": 1, "model.num_heads": 2, "model.ff_dim": 16, "data.window_size": 10,
               "data.synthetic_bars": 900, "data.features": ["log_return", "abs_return", "rv_5"]},
        budget=budget,
        smoke_budget=budget,
    )
    code = studies.main(ablation, ["--smoke", "--dataset", "synthetic", "--paths", "1", "--no-report",
                                   "--tracking-uri", uri, "--storage", storage])
    assert code == 0, f"the tiny ablation failed with exit code {code}"
    return {"experiment": ablation.name, "uri": uri, "storage": storage,
            "arms": [a.name for a in ablation.arms], "root": root}
