"""MLflow tracking (regimetry.tracking): store resolution, run statuses, logging, model round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from regimetry import run_record, tracking, training  # noqa: E402
from regimetry.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402

TINY_MODEL = ModelConfig(d_model=16, num_heads=4, ff_dim=8, num_layers=2)
ONE_EPOCH = TrainConfig(max_epochs=1, batch_size=9, patience=1, seed=5)


@pytest.fixture(scope="module")
def one_epoch():
    """One training run shared by the logging tests (fitting needs no tracking store)."""
    from conftest import make_random_splits

    splits = make_random_splits()
    return splits, training.fit(splits, TINY_MODEL, ONE_EPOCH)


# ---- store ---------------------------------------------------------------------------------------
def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'env.db'}"
    assert tracking.resolve_tracking_uri("sqlite:////x/explicit.db") == "sqlite:////x/explicit.db"


def test_fresh_default_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracking.run("fresh") as active:  # no mlruns/ yet, no server
        tracking.log_text("hello", "notes/hello.txt")
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    files = list((tmp_path / "mlruns" / "artifacts" / "fresh").rglob("hello.txt"))
    assert len(files) == 1 and active.run_id in str(files[0])
    assert not (tmp_path / "mlartifacts").exists()
    assert not any(p.name.isdigit() for p in (tmp_path / "mlruns").iterdir())  # no ./mlruns/<exp_id>


# ---- run statuses ----------------------------------------------------------------------------------
def test_run_statuses_failed_killed_explicit_and_nesting(tracking_uri):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.run("statuses", run_name="fails") as failed:
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with tracking.run("statuses", run_name="interrupted") as killed:
            raise KeyboardInterrupt
    with tracking.run("statuses", run_name="parent") as parent:
        with tracking.run("statuses", run_name="pruned trial") as child:
            child.set_status("KILLED", optuna_state="PRUNED")
        with pytest.raises(ValueError, match="status"):
            child.set_status("PAUSED")
    with tracking.run("statuses", run_name="other process child", parent_run_id=parent.run_id) as adopted:
        pass
    status = tracking.run_status
    assert status(failed.run_id) == "FAILED"
    assert status(killed.run_id) == "KILLED"
    assert status(child.run_id) == "KILLED" and status(parent.run_id) == "FINISHED"
    runs = tracking.search_runs("statuses").set_index("run_id")
    assert runs.loc[child.run_id, "tags.mlflow.parentRunId"] == parent.run_id
    assert runs.loc[adopted.run_id, "tags.mlflow.parentRunId"] == parent.run_id
    assert runs.loc[child.run_id, "tags.optuna_state"] == "PRUNED"
    assert set(runs["status"]) == {"FAILED", "KILLED", "FINISHED"}  # none left RUNNING
    assert tracking.search_runs("no such experiment").empty


def test_logging_100_figures_leaves_none_open(tracking_uri):
    with tracking.run("figures"):
        for i in range(100):
            fig = plt.figure(figsize=(0.5, 0.5), dpi=10)  # pyplot-managed: must be closed by log_figure
            fig.gca().plot([0, i])
            tracking.log_figure(fig, f"figs/f{i}.png", dpi=10)
    assert plt.get_fignums() == []


def test_long_params_and_80_feature_names_do_not_crash(tracking_uri):
    features = tuple(f"indicator_{i:02d}_smoothed" for i in range(80))
    config = DataConfig(source="csv", csv_path="bars.csv", features=features)
    with tracking.run("params") as active:
        tracking.log_params(config.flat())
        tracking.log_params({f"p{i}": i for i in range(230)})  # more than one batch of 100
        tracking.log_params({"huge": "x" * 7000})  # over MLflow's 6000-char limit
    row = tracking.search_runs("params").iloc[0]
    assert row["params.data.features"].startswith("<") and "params/data.features.json" in row["params.data.features"]
    assert row["params.p229"] == "229" and row["params.data.csv_path"] == "bars.csv"
    artifacts = tracking.list_artifacts(active.run_id)
    assert {"params/data.features.json", "params/huge.json"} <= set(artifacts)


def test_relogging_a_long_param_is_a_no_op_and_a_changed_value_raises_before_writing(tracking_uri):
    """Issue 15: a changed long value (same length or not) used to overwrite the stored artifact."""
    import json
    from pathlib import Path

    def stored(run_id):
        path = tracking.download_artifacts(run_id, "params/huge.json")
        return json.loads(Path(path).read_text())["value"]

    with tracking.run("params_immutable") as active:
        tracking.log_params({"huge": "a" * 7000, "short": 1})
        tracking.log_params({"huge": "a" * 7000, "short": 1})  # same values: no-op, no error
        for changed in ("b" * 7000, "a" * 7001, "a" * 6999 + "b"):  # equal length, longer, one char differs
            with pytest.raises(ValueError, match="param 'huge' .* already .*refusing to change it"):
                tracking.log_params({"fresh": 2, "huge": changed})
        with pytest.raises(ValueError, match="param 'short' .* already '1'"):
            tracking.log_params({"fresh": 2, "short": 3})
        run_id = active.run_id
    assert stored(run_id) == "a" * 7000  # the artifact was never rewritten
    row = tracking.search_runs("params_immutable").iloc[0]
    assert "params.fresh" not in row.index or pd.isna(row["params.fresh"])  # nothing of a refused call written
    assert row["params.short"] == "1" and "sha256" in row["params.huge"]


def test_concurrent_processes_share_one_sqlite_store(tracking_uri):
    code = textwrap.dedent(
        """
        import sys
        from regimetry import tracking
        with tracking.run("concurrent", run_name=f"worker {sys.argv[1]}"):
            for step in range(10):
                tracking.log_metrics({"val/loss": step / 10, "worker": float(sys.argv[1])}, step=step)
                tracking.set_tags({f"t{step}": step})
        """
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    runs = tracking.search_runs("concurrent")
    assert len(runs) == 3 and set(runs["status"]) == {"FINISHED"}
    for run_id in runs["run_id"]:
        assert len(tracking.get_metric_history(run_id, "val/loss")) == 10


def test_a_kill_while_the_store_is_created_leaves_no_broken_store(tmp_path):
    """Issue 14 (crash-recovery benchmark, kill point 3): kill -9 among MLflow's schema migrations used
    to leave a half-migrated mlflow.db that every later run failed to open ('table evaluation_datasets
    already exists'). The store is now built in a temporary file and renamed when complete."""
    import signal
    import time

    db = tmp_path / "mlruns" / "mlflow.db"
    code = f"from regimetry import tracking; tracking.configure('sqlite:///{db}')"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(db.parent.glob(".mlflow.db.creating-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the store was created before the kill could hit its creation"
    time.sleep(0.2)  # among the migrations
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not db.exists()  # no half-built store under the store's name
    uri = f"sqlite:///{db}"
    assert tracking.configure(uri) == uri  # the next run creates it, removing the leftover
    assert list(db.parent.glob(".mlflow.db.creating-*")) == []
    with tracking.run("after_kill", tracking_uri=uri):
        tracking.log_metrics({"x": 1.0})
    assert len(tracking.search_runs("after_kill", tracking_uri=uri)) == 1


# ---- a complete training run -----------------------------------------------------------------------
def test_one_epoch_run_logs_everything_and_the_model_round_trips(tracking_uri, one_epoch):
    import mlflow  # the tests may import mlflow; only regimetry.tracking in the package does
    from mlflow import keras as mlflow_keras

    splits, result = one_epoch
    with tracking.run("complete", run_name="one epoch") as active:
        final = tracking.log_training_run(run_record.build(result, splits, TINY_MODEL, ONE_EPOCH, stage="confirm",
                                                           arm="mean", full_model=True))
    row = tracking.search_runs("complete").iloc[0]
    assert row["status"] == "FINISHED"
    # params: the flattened resolved configs
    for key, value in {**splits.config.flat(), **TINY_MODEL.flat(), **ONE_EPOCH.flat()}.items():
        assert row[f"params.{key}"] == str(value), key
    assert row["params.data.n_train"] == "60"
    # tags
    for tag in ("git_sha", "git_dirty", "version.tensorflow", "version.keras", "version.mlflow",
                "version.optuna", "version.pandas"):
        assert row[f"tags.{tag}"], tag
    assert (row["tags.dataset"], row["tags.data_fingerprint"]) == ("synthetic", "deadbeef")
    assert (row["tags.seed"], row["tags.stage"], row["tags.arm"]) == ("5", "confirm", "mean")
    # metrics: per epoch (step = epoch) and final val / test of the restored model at step epochs_run
    assert tracking.get_metric_history(active.run_id, "train/loss") == [(0, pytest.approx(result.history["train/loss"][0]))]
    bal = tracking.get_metric_history(active.run_id, "val/balanced_accuracy")
    assert [s for s, _ in bal] == [0, 1] and bal[1][1] == pytest.approx(result.val_metrics["balanced_accuracy"])
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "recall/low", "recall/mid", "recall/high"):
        assert f"metrics.val/{name}" in row and f"metrics.test/{name}" in row
        assert row[f"metrics.test/{name}"] == pytest.approx(final[f"test/{name}"], nan_ok=True)
    assert row["metrics.best_epoch"] == 0 and row["metrics.epochs_run"] == 1
    # artifacts
    artifacts = set(tracking.list_artifacts(active.run_id))
    windows = run_record.attention_window_indices(len(splits.val))
    expected = {"config/config.json", "data/feature_names.json", "data/class_names.json",
                "figures/confusion_val.png", "figures/confusion_test.png", "figures/training_curves.png",
                "metrics/confusion_val.json", "metrics/confusion_test.json", "keras/model.keras"} | {f"attention/window_{i}.png" for i in windows}
    assert expected <= artifacts, expected - artifacts
    assert len(windows) == 3
    assert plt.get_fignums() == []
    # the model loads back through MLflow (custom layers included) and predicts identically
    X = splits.test.X
    reference = result.model.predict(X, verbose=0)
    for loaded in (tracking.load_model(active.run_id), mlflow_keras.load_model(f"runs:/{active.run_id}/model")):
        np.testing.assert_array_equal(loaded.predict(X, verbose=0), reference)
    # the signature describes (batch, T, features) -> (batch, classes)
    model_uri = row["tags.model_uri"]
    assert model_uri.startswith("models:/")
    model_files = {os.path.basename(f.path) for f in mlflow.artifacts.list_artifacts(model_uri)}
    assert {"MLmodel", "input_example.json"} <= model_files
    info = mlflow.models.get_model_info(model_uri)
    assert json.loads(info.signature.inputs.to_json())[0]["tensor-spec"]["shape"] == [-1, 6, 7]
    assert json.loads(info.signature.outputs.to_json())[0]["tensor-spec"]["shape"] == [-1, 3]


def test_quick_model_is_a_keras_file_that_loads(tracking_uri, one_epoch):
    random_splits, result = one_epoch
    with tracking.run("quick") as active:
        tracking.log_training_run(run_record.build(result, random_splits, TINY_MODEL, ONE_EPOCH, stage="trial",
                                                   arm="a", test=False, figures=False, attention=False))
    artifacts = tracking.list_artifacts(active.run_id)
    assert "keras/model.keras" in artifacts and "model/MLmodel" not in artifacts
    assert not any(a.startswith("figures/") or a.startswith("attention/") for a in artifacts)
    row = tracking.search_runs("quick").iloc[0]
    assert "metrics.test/accuracy" not in row or np.isnan(row["metrics.test/accuracy"])
    loaded = tracking.load_model(active.run_id)
    np.testing.assert_array_equal(loaded.predict(random_splits.val.X, verbose=0),
                                  result.model.predict(random_splits.val.X, verbose=0))


def test_experiments_carry_mlflow_3s_model_training_kind(tracking_uri):
    """Issue 16: every experiment records MLflow 3's model-training kind (what the UI does with it is
    described in the README: 3.17's toggle still needs ?workflowType=machine_learning)."""
    from mlflow.tracking import MlflowClient

    experiment_id = tracking.get_experiment_id("kind_check")
    assert MlflowClient(tracking_uri).get_experiment(experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    # an experiment created elsewhere without the tag gets it on first use
    other = MlflowClient(tracking_uri).create_experiment("made_by_hand")
    tracking.get_experiment_id("made_by_hand")
    assert MlflowClient(tracking_uri).get_experiment(other).tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_unreachable_tracking_server_fails_fast_with_the_option_named():
    """A new-user check waited 120 s without a word on --tracking-uri http://127.0.0.1:1 (MLflow's 7
    retries with back-off); the check now gives up after 2 short retries."""
    import os
    import time

    started = time.monotonic()
    with pytest.raises(ValueError, match=r"--tracking-uri 'http://127.0.0.1:1'.*cannot be opened"):
        tracking.configure("http://127.0.0.1:1")
    assert time.monotonic() - started < 60
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the quick setting is not left behind


def test_a_plain_directory_tracking_uri_says_what_works(tmp_path, monkeypatch):
    """A new-user check: --tracking-uri /some/dir printed MLflow's cut-off deprecation text and never
    said that sqlite:///path/mlflow.db works; a bad MLFLOW_TRACKING_URI was blamed on --tracking-uri."""
    for uri in (str(tmp_path), f"file://{tmp_path}"):
        with pytest.raises(ValueError, match=r"--tracking-uri .*not supported by MLflow 3; use a database, e\.g\. sqlite:///"):
            tracking.configure(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path))
    with pytest.raises(ValueError, match=r"^MLFLOW_TRACKING_URI "):
        tracking.configure(None)
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_unknown_scheme_or_an_unreachable_database_says_so_in_its_own_words(tmp_path):
    """Fresh-user findings: --tracking-uri foo://bar printed MLflow's text about its model registry, and a
    PostgreSQL server that refused the connection was told to delete a half-created store."""
    with pytest.raises(ValueError, match=r"^--tracking-uri 'foo://bar': unknown scheme 'foo'; use a database "
                                         r"\(sqlite:///mlruns/mlflow.db, postgresql://\.\.\., mysql://\.\.\.\) or an MLflow server"):
        tracking.configure("foo://bar")
    with pytest.raises(ValueError, match=r"driver is not installed \(No module named 'MySQLdb'\); for mysql:// pip install pymysql"):
        tracking.configure("mysql://u:pw@127.0.0.1:1/db")
    pytest.importorskip("psycopg")
    with pytest.raises(ValueError, match=r"^--tracking-uri 'postgresql://u:\*\*\*@127.0.0.1:1/db': cannot connect to "
                                         r"the database: \(psycopg.OperationalError\)") as caught:
        tracking.configure("postgresql://u:p@127.0.0.1:1/db")
    assert "delete it" not in str(caught.value)


def test_a_database_server_that_never_answers_fails_within_the_connect_timeout(monkeypatch):
    """Fresh-user finding: a port that accepts connections and never answers hung --tracking-uri and
    --storage for 133-136 s; both now give up after the connection timeout, naming the option."""
    import socket
    import time

    pytest.importorskip("psycopg")
    from regimetry.config import urls
    from regimetry.studies import backend

    monkeypatch.setattr(urls, "CONNECT_TIMEOUT_SECONDS", 2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # accepted by the kernel, never answered
        url = f"postgresql://u:pw@127.0.0.1:{server.getsockname()[1]}/db"
        for check, option in ((tracking.configure, "--tracking-uri"), (backend.resolve_storage, "--storage")):
            started = time.monotonic()
            with pytest.raises(ValueError, match=rf"^{option} 'postgresql://u:\*\*\*@127.0.0.1:\d+/db': .*timeout"):
                check(url)
            assert time.monotonic() - started < 20


# ---- the tracker computes nothing (issue 13) ------------------------------------------------------
def test_the_record_holds_everything_computed_before_logging(one_epoch):
    splits, result = one_epoch
    record = run_record.build(result, splits, TINY_MODEL, ONE_EPOCH, stage="confirm", arm="mean", full_model=True)
    try:
        expected = training.evaluate_full(result.model, splits.test, splits.class_names)
        assert {k: record.metrics[f"test/{k}"] for k in expected.metrics} == pytest.approx(expected.metrics, nan_ok=True)
        np.testing.assert_array_equal(record.dicts["metrics/confusion_test.json"]["matrix"], expected.confusion)
        np.testing.assert_array_equal(record.test_probs, expected.probs)
        windows = run_record.attention_window_indices(len(splits.val))
        assert [a.shape for a in record.attention] == [(len(windows), 4, 6, 6)] * 2  # 2 blocks, 4 heads, T 6
        assert set(record.figures) == {"figures/confusion_val.png", "figures/confusion_test.png",
                                       "figures/training_curves.png"} | {f"attention/window_{i}.png" for i in windows}
        assert record.tags["attention_windows"] == json.dumps(windows) and record.metrics_step == result.epochs_run
        inputs, outputs = record.signature_example
        assert inputs.shape == (2, 6, 7) and outputs.shape == (2, 3)
    finally:
        record.close_figures()
    assert plt.get_fignums() == []


def test_the_tracking_package_imports_no_model_training_or_metrics_code():
    import ast
    from pathlib import Path

    computing = {"regimetry.models", "regimetry.training", "regimetry.scoring", "regimetry.run_record",
                 "regimetry.evaluation", "regimetry.layers"}
    package = Path(tracking.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        allowed = {"regimetry.layers"} if path.name == "training_run.py" else set()  # load_model registers layers
        assert not (names & computing) - allowed, (path.name, names & computing)
