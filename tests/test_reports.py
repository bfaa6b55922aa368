"""Report notebooks executed by papermill: ablation report from a tracked store, data report,
parameter round trip, kernel resolution, failures with clear messages and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import optuna
import numpy as np
import pandas as pd
import pytest

from regimetry import plots, reports, studies, tracking
from regimetry.reports import cli as reports_cli
from regimetry.studies import backend
from regimetry.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "07_fake_ablation"
ARMS = ("alpha", "beta_failed")


def _error_outputs(notebook: Path) -> list[str]:
    book = nbformat.read(notebook, as_version=4)
    return [f"{o.ename}: {o.evalue}" for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]


def _executed_all(notebook: Path) -> bool:
    book = nbformat.read(notebook, as_version=4)
    return all(c.get("execution_count") for c in book.cells if c.cell_type == "code")


# ------------------------------------------------------------------------------------------------
# A hand-made tracked ablation with everything studies.run_ablation logs (arm "alpha": 2 folds x 2
# seeds; arm "beta_failed": every trial failed, so no confirmation, no summary metrics, no images).
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_store")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    storage = f"sqlite:///{root / 'optuna.db'}"
    budget = studies.Budget(trials_per_arm=3, max_epochs=3, seeds=2, folds=2)
    optuna_storage = studies.resolve_storage(storage)
    for arm, values in (("alpha", (0.41, 0.52, 0.47)), ("beta_failed", None)):
        study = studies.ensure_study(optuna_storage, f"{EXPERIMENT}/{arm}", budget, seed=0)
        for i in range(3):
            trial = study.ask()
            trial.suggest_float("train.learning_rate", 1e-4, 3e-3, log=True)
            trial.suggest_categorical("model.d_model", [16, 32])
            if values is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, values[i])

    rng = np.random.default_rng(0)
    classes = ["low", "mid", "high"]
    with tracking.run(EXPERIMENT, run_name="parent", tracking_uri=uri, tags={
        "stage": "study", "dataset": "synthetic", "scientific": "model.pooling",
        "optuna_storage": storage, "question": 'Does "pooling" matter? (a=b, it\'s quoted)',
        "optuna_studies": json.dumps([f"{EXPERIMENT}/{a}" for a in ARMS]), "seed": "0",
    }) as parent:
        tracking.log_params({"budget.trials_per_arm": 3, "budget.seeds": 2, "budget.folds": 2})
        tracking.log_dict({"arms": [{"name": a, "overrides": {"model.pooling": a}, "min_window_fraction": None}
                                    for a in ARMS],
                           "nuisance": [{"name": "train.learning_rate", "type": "Float", "low": 1e-4, "high": 3e-3,
                                         "log": True, "when": None}],
                           "fixed": {"model.num_layers": 1}}, "ablation.json")
        arm_ids = {}
        for arm in ARMS:
            with tracking.run(EXPERIMENT, run_name=arm, parent_run_id=parent.run_id,
                              tags={"stage": "arm", "arm": arm, "optuna_study": f"{EXPERIMENT}/{arm}"}) as a:
                arm_ids[arm] = a.run_id
        for arm in ARMS:
            for t in range(3):
                with tracking.run(EXPERIMENT, run_name=f"{arm}/trial-{t}", parent_run_id=arm_ids[arm], tags={
                        "stage": "trial", "arm": arm, "optuna_trial": str(t),
                        "optuna_state": "FAIL" if arm == "beta_failed" else "COMPLETE"}) as r:
                    if arm == "beta_failed":
                        r.set_status("FAILED")
        for fold in range(2):
            for seed in range(2):
                with tracking.run(EXPERIMENT, run_name=f"alpha/confirm-fold{fold}-seed{seed}",
                                  parent_run_id=arm_ids["alpha"],
                                  tags={"stage": "confirm", "arm": "alpha", "fold": str(fold), "seed": str(seed),
                                        "git_sha": "abc123", "version.keras": "3.15.0"}):
                    tracking.log_history({"train/loss": [1.1, 0.9, 0.8], "val/loss": [1.0, 0.95, 0.97],
                                          "val/balanced_accuracy": [0.40, 0.45, 0.44]})
                    tracking.log_metrics({"val/balanced_accuracy": 0.45 + 0.01 * seed,
                                          "test/balanced_accuracy": 0.40 + 0.02 * fold + 0.01 * seed,
                                          "epochs_run": 3}, step=3)
                    cm = rng.integers(0, 9, size=(3, 3))
                    tracking.log_dict({"labels": classes, "rows": "true", "columns": "predicted", "matrix": cm},
                                      "metrics/confusion_test.json")
                    scores = [rng.dirichlet(np.ones(6), size=(1, 4, 6)) for _ in range(2)]
                    tracking.log_figure(plots.attention_heatmaps(scores, title="window 0"), "attention/window_0.png")
        prefix = "confirm/test/balanced_accuracy"
        tracking.log_metrics({f"{prefix}_mean": 0.425, f"{prefix}_std": 0.02, f"{prefix}_seed_ci_low": 0.39,
                              f"{prefix}_seed_ci_high": 0.46, f"{prefix}_pooled": 0.43, f"{prefix}_boot_ci_low": 0.35,
                              f"{prefix}_boot_ci_high": 0.51, "tuning/best_val": 0.52, "tuning/fraction_pruned": 0.0,
                              "tuning/fraction_failed": 0.0, "fold0/test/balanced_accuracy": 0.415,
                              "fold1/test/balanced_accuracy": 0.435}, run_id=arm_ids["alpha"])
        tracking.set_tags({"best_trial": "1", "edge_warnings": "train.learning_rate=0.003 is at the upper edge "
                           "of the search space"}, run_id=arm_ids["alpha"])
        tracking.log_metrics({"tuning/fraction_failed": 1.0, "tuning/fraction_pruned": 0.0}, run_id=arm_ids["beta_failed"])
        tracking.log_text("arm,best_val\nalpha,0.52\n", "summary/arms.csv")
        tracking.log_text("arm,fold,n_test_windows,balanced_accuracy,macro_f1,log_loss\n"
                          "alpha,0,40,0.415,0.4,1.0\nalpha,1,40,0.435,0.41,0.99\n", "summary/per_fold.csv")
        tracking.log_text("a,b,metric,difference,ci_low,ci_high,verdict\n"
                          "alpha,har_rv,balanced_accuracy,0.01,-0.05,0.07,alpha vs har_rv: no difference\n",
                          "summary/differences.csv")
        tracking.log_text("alpha vs har_rv: no difference\n", "summary/verdicts.txt")
    return {"uri": uri, "storage": storage, "parent": parent.run_id, "arms": arm_ids, "root": root}


def test_loaded_tables_name_every_arm_and_survive_missing_pieces(fake_store):
    runs = reports.load_ablation_runs(EXPERIMENT, fake_store["uri"])
    assert runs.parent_run_id == fake_store["parent"]
    assert runs.arm_names == list(ARMS)
    assert len(runs.trials) == 6 and len(runs.confirms) == 4

    summary = reports.arm_summary(runs)
    assert list(summary["arm"]) == list(ARMS)
    alpha, beta = summary.iloc[0], summary.iloc[1]
    assert (alpha["mean"], alpha["seed_ci_low"], alpha["boot_ci_high"], alpha["confirm_runs"]) == (0.425, 0.39, 0.51, 4)
    assert np.isnan(beta["mean"]) and np.isnan(beta["best_val"]) and beta["confirm_runs"] == 0

    seeds = reports.seed_results(runs)
    assert len(seeds) == 4 and set(seeds["arm"]) == {"alpha"}
    assert seeds.loc[(seeds["fold"] == 1) & (seeds["seed"] == 1), "test"].item() == pytest.approx(0.43)

    folds = reports.fold_results(runs)
    assert list(folds.index) == ["fold 0", "fold 1", "pooled"]
    assert folds.loc["pooled", "alpha"] == 0.43 and folds.loc["fold 1", "alpha"] == 0.435

    warnings = reports.tuning_warnings(runs)
    assert any("alpha" in w and "upper edge" in w for w in warnings)
    assert any("beta_failed" in w and "100% of trials failed" in w for w in warnings)
    assert any("beta_failed" in w and "no tuning result" in w for w in warnings)

    # Best model chosen on validation, never on test: seed 1 has the higher val score in both folds.
    best = reports.best_model_run(runs, "alpha")
    assert runs.confirms.set_index("run_id").loc[best, "tags.seed"] == "1"
    assert reports.best_model_run(runs, "beta_failed") is None
    assert len(reports.attention_images(runs, best)) == 1
    matrix, labels, used = reports.pooled_confusion(runs, "alpha")
    assert labels == ["low", "mid", "high"] and used == 4 and matrix.shape == (3, 3)
    assert reports.pooled_confusion(runs, "beta_failed") is None

    histories = reports.confirmation_histories(runs, "alpha")
    assert len(histories) == 4
    # The final val/... value at step epochs_run is not part of the per-epoch curve.
    assert all([s for s, _ in h["val/balanced_accuracy"]] == [0, 1, 2] for h in histories.values())

    frames = reports.trial_frames(runs)
    assert frames["alpha"]["value"].max() == 0.52
    assert set(frames["beta_failed"]["state"].astype(str)) == {"FAIL"}
    assert reports.differences(runs)["verdict"].tolist() == ["alpha vs har_rv: no difference"]
    assert reports.verdict_lines(runs) == ["alpha vs har_rv: no difference"]
    env = reports.environment(runs).set_index("item")
    assert env.loc["git_sha", "logged by the runs"] == "abc123"


def test_ablation_report_executes_writes_html_and_logs_to_parent(fake_store, tmp_path):
    paths = reports.render_ablation_report(EXPERIMENT, tracking_uri=fake_store["uri"], storage=fake_store["storage"],
                                           output_dir=tmp_path)
    assert paths.notebook == tmp_path / EXPERIMENT / "ablation_report.ipynb"
    assert _error_outputs(paths.notebook) == [] and _executed_all(paths.notebook)
    html = paths.html.read_text()
    for arm in ARMS:
        assert re.search(rf"<td [^>]*>{arm}</td>", html), arm
    assert "0.425 [0.390, 0.460]" in html  # confirmation mean with its seed interval
    assert "0.430 [0.350, 0.510]" in html  # pooled with its block-bootstrap interval
    assert "attention heat maps of beta_failed: not available" in html
    assert "100% of trials failed" in html and "upper edge" in html
    assert "data:image/png;base64" in html
    assert html.count("data:image/png") >= 6  # strip plot, history, importances, curves, attention, confusion
    # issue 16: the HTML reads like a paper (no code); the .ipynb keeps the code
    assert "reports.arm_summary(" not in html and "import math" not in html
    assert "reports.arm_summary(" in paths.notebook.read_text()
    # The stored notebook keeps the parameters papermill injected.
    book = nbformat.read(paths.notebook, as_version=4)
    injected = [c for c in book.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and fake_store["parent"] in injected[0].source
    logged = tracking.list_artifacts(fake_store["parent"], "report", tracking_uri=fake_store["uri"])
    assert logged == ["report/ablation_report.html", "report/ablation_report.ipynb"]


def test_unknown_experiment_fails_with_clear_message_and_exit_code(fake_store, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "regimetry.reports", "no_such_experiment", "--tracking-uri", fake_store["uri"],
         "--output-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "'no_such_experiment'" in proc.stderr and fake_store["uri"] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "no_such_experiment").exists()

    code = reports.main([EXPERIMENT, "--tracking-uri", fake_store["uri"], "--parent-run-id", "0" * 32,
                         "--output-dir", str(tmp_path)])
    assert code == 2
    missing = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
    with pytest.raises(ValueError, match="does not exist"):
        reports.load_ablation_runs(EXPERIMENT, missing)
    assert not (tmp_path / "typo").exists()  # a typo does not create an empty store


def test_default_parent_is_the_newest_finished_one_never_a_crashed_run(tmp_path):
    """Issue 14: a bad or crashed invocation leaves a FAILED/RUNNING parent; the report must not pick it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.run(EXPERIMENT, run_name="failed-only", tracking_uri=uri, tags={"stage": "study"}) as failed:
        failed.set_status("FAILED")
    with pytest.raises(ValueError, match="no FINISHED ablation run") as info:
        reports.load_ablation_runs(EXPERIMENT, uri)
    assert failed.run_id in str(info.value) and "FAILED" in str(info.value)
    with tracking.run(EXPERIMENT, run_name="good", tracking_uri=uri, tags={"stage": "study"}) as good:
        pass
    with tracking.run(EXPERIMENT, run_name="crashed", tracking_uri=uri, tags={"stage": "study"}) as crashed:
        crashed.set_status("FAILED")
    assert reports.load_ablation_runs(EXPERIMENT, uri).parent_run_id == good.run_id
    # an explicit id still reaches any parent (the harness renders its own report before closing the run)
    assert reports.load_ablation_runs(EXPERIMENT, uri, crashed.run_id).parent_run_id == crashed.run_id


def test_passwords_never_reach_the_notebook(monkeypatch):
    url = "postgresql://user:s3cret@db.example:5432/optuna"
    from regimetry.config import redact_url

    assert redact_url(url) == "postgresql://user:***@db.example:5432/optuna"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    # an "@" in a file name is not a password (issue 14: the two old redactors disagreed here)
    assert redact_url("sqlite:///data/a@b.db") == "sqlite:///data/a@b.db"
    assert redact_url("mysql://u:p@ss@h/db?x=@") == "mysql://u:***@h/db?x=@"
    # an unencoded "/" in the password (SQLAlchemy reads it so; fresh-user finding: it was printed in full)
    assert redact_url("postgresql://u:pa/ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u:pw@h") == "postgresql://u:***@h"
    assert redact_url("postgresql://u@corp:pw@h/db") == "postgresql://u@corp:***@h/db"  # an "@" in the user name
    monkeypatch.setenv("REGIMETRY_REPORT_STORAGE", url)
    assert reports._from_env("$REGIMETRY_REPORT_STORAGE") == url and reports._from_env("plain") == "plain"


def _notebook(path: Path, cells: list[str], kernel: str = "no-such-kernel") -> Path:
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    params = nbformat.v4.new_code_cell("text = 'x'\nnumber = 0\nitems = []\nmapping = {}\nnothing = 1")
    params.metadata["tags"] = ["parameters"]
    book.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(book, path)
    return path


def test_parameters_round_trip_with_types_in_the_current_interpreter(tmp_path):
    out = tmp_path / "values.json"
    source = _notebook(tmp_path / "echo.ipynb", [
        "import json, sys\n"
        f"json.dump({{'text': text, 'number': number, 'items': items, 'mapping': mapping, 'nothing': nothing,"
        f" 'python': sys.executable}}, open({str(out)!r}, 'w'))"])
    values = {
        "text": 'He said "a=b" and \'c = d\'; back\\slash\nnew line, tab\t, ünïcode',
        "number": 7,
        "items": ["x=1", 2, 3.5, None, True, ["nested", "list"]],
        "mapping": {"key=value": "it's \"quoted\"", "n": (1, 2)},
        "nothing": None,
    }
    paths = reports.render_notebook(source, tmp_path / "out", values)
    assert paths.html.is_file() and _error_outputs(paths.notebook) == []
    got = json.loads(out.read_text())
    assert got.pop("python") == sys.executable  # the kernelspec named a kernel that does not exist
    values["mapping"]["n"] = [1, 2]  # tuples travel as lists
    assert got == values
    with pytest.raises(TypeError, match="parameter 'number'"):
        reports.render_notebook(source, tmp_path / "out", {"number": object()})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['numbr'\]"):
        reports.render_notebook(source, tmp_path / "out", {"numbr": 1})


def test_report_notebooks_are_stored_without_outputs_and_declare_their_parameters():
    import papermill

    expected = {"ablation_report.ipynb": ["experiment", "tracking_uri", "storage", "parent_run_id", "metric",
                                          "max_pruned_fraction", "max_failed_fraction"],
                "data_report.ipynb": ["data_config"],
                "controls_report.ipynb": ["checks_csv"]}
    for name, params in expected.items():
        book = nbformat.read(reports.NOTEBOOK_DIR / name, as_version=4)
        nbformat.validate(book)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, name
        assert list(papermill.inspect_notebook(str(reports.NOTEBOOK_DIR / name))) == params, name
        sources = "\n".join(c.source for c in code)
        assert "import mlflow" not in sources and "import optuna" not in sources, name


def test_failing_cell_gives_clear_error_and_keeps_partial_notebook(tmp_path):
    source = _notebook(tmp_path / "fails.ipynb", ["ok = 1", "raise ValueError(f'bad parameter number={number}')",
                                                  "never = 1"])
    with pytest.raises(reports.ReportError) as info:
        reports.render_notebook(source, tmp_path / "out", {"number": 42})
    message = str(info.value)
    assert "ValueError: bad parameter number=42" in message and "fails.ipynb" in message
    assert info.value.notebook == tmp_path / "out" / "fails.ipynb" and info.value.notebook.is_file()
    assert "partially executed notebook kept" in message
    assert _error_outputs(info.value.notebook) == ["ValueError: bad parameter number=42"]


def test_data_report_from_yaml(tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  source: synthetic\n  synthetic_bars: 1200\n  window_size: 9\n"
                      "  features: [log_return, abs_return, rv_5]\n")
    assert reports.main(["--data-config", str(config), "--output-dir", str(tmp_path)]) == 0
    notebook = tmp_path / "data" / "data_report_synthetic.ipynb"
    assert _error_outputs(notebook) == [] and _executed_all(notebook)
    html = notebook.with_suffix(".html").read_text()
    for name in ("calm_up", "volatile_down", "choppy_sideways", "rv_5", "expected duration", "val share"):
        assert name in html, name
    assert html.count("data:image/png") >= 2  # label shares, regime timeline
    assert "the leakage audit applies to user CSV columns only" in html
    with pytest.raises(ValueError, match="DataConfig.window_size"):
        reports.render_data_report({"source": "synthetic", "window_size": 0}, tmp_path)


def test_data_report_on_a_missing_or_bad_csv_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    """A new-user check: a missing CSV gave exit 1, ~50 lines of notebook traceback and a half-written
    report; the data is now prepared before any notebook runs."""
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close\n2020-01-02,1,2,0.5,1\n2020-01-01,1,2,0.5,1\n")
    for csv, message in ((tmp_path / "nope.csv", "not found"), (bad, "not in increasing order")):
        config = tmp_path / "data.yaml"
        config.write_text(f"data:\n  source: csv\n  csv_path: {csv}\n")
        assert reports.main(["--data-config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


def test_data_report_shows_the_leakage_audit_of_every_user_column(tmp_path):
    from regimetry.data import load_source

    bars = load_source(DataConfig(source="sp500")).bars.loc[:"2007-12-31"]
    r = bars["log_return"]
    frame = pd.DataFrame({"timestamp": bars.index.strftime("%Y-%m-%d"), "open": bars["open"], "high": bars["high"],
                          "low": bars["low"], "close": bars["close"], "volume": bars["volume"],
                          "momentum_10": r.rolling(10).sum(),  # causal
                          "leaky_next_return": r.shift(-1),  # the canary: tomorrow's return
                          "up_day": np.where(r > 0, "True", "False"),
                          "trend": np.where(r.rolling(20).mean() > 0, "Buy", "Sell")})
    path = tmp_path / "bars.csv"
    frame.to_csv(path, index=False)
    config = {"source": "csv", "csv_path": str(path), "features": ["log_return", "abs_return"],
              "train_fraction": 0.6, "val_fraction": 0.2}
    html = reports.render_data_report(config, tmp_path / "csv").html.read_text()
    section = html[html.index("Leakage audit of the user input columns"):html.index("Labels per split")]
    assert "Flagged: <code>leaky_next_return</code>" in section and "threshold" in section.lower()
    for column in ("momentum_10", "leaky_next_return", "up_day", "trend", "not audited: categorical",
                   "What a flag means and what to do", "partial R2 (future | past)", "noise level"):
        assert column in section, column
    # the table's own rows: the canary flagged, the causal, boolean and categorical columns not
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr>\s*<td[^>]*>(\w+)</td>.*?</tr>", section, re.S)}
    assert set(rows) == {"momentum_10", "leaky_next_return", "up_day", "trend"}, set(rows)
    assert re.search(r">yes</td>", rows["leaky_next_return"])
    assert all(re.search(r">no</td>", rows[c]) for c in ("momentum_10", "up_day", "trend"))
    assert "<code>momentum_10</code>" not in section.split("What a flag means")[0]
    table = reports.leakage_audit_table(__import__("regimetry.data", fromlist=["prepare"]).prepare(
        DataConfig(**{**config, "features": ("log_return", "abs_return"), "leakage_check": "off"})))
    assert table.set_index("column").loc["leaky_next_return", "flagged"] == "yes"  # recomputed when off


def test_data_config_from_every_form(tmp_path):
    expected = DataConfig(source="synthetic", window_size=9)
    path = tmp_path / "c.yml"
    path.write_text("source: synthetic\nwindow_size: 9\n")
    assert reports.data_config_from(expected) is expected
    assert reports.data_config_from({"source": "synthetic", "window_size": 9}) == expected
    assert reports.data_config_from({"data": {"source": "synthetic", "window_size": 9}}) == expected
    assert reports.data_config_from("source: synthetic\nwindow_size: 9\n") == expected
    assert reports.data_config_from(str(path)) == expected and reports.data_config_from(path) == expected
    with pytest.raises(FileNotFoundError):
        reports.data_config_from(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="YAML mapping"):
        reports.data_config_from("- just\n- a list\n")


def test_transition_matrix_and_label_distribution(random_splits):
    y = np.array([0, 0, 1, 1, 1, 2, 0, 0])
    m = reports.transition_matrix(y, ["a", "b", "c"])
    probs = m[["a", "b", "c"]].to_numpy()
    np.testing.assert_allclose(probs, [[2 / 3, 1 / 3, 0], [0, 2 / 3, 1 / 3], [1, 0, 0]])
    np.testing.assert_allclose(m["expected duration (windows)"], [3.0, 3.0, 1.0])
    assert m["transitions"].tolist() == [3, 3, 1]
    never = reports.transition_matrix(np.array([0, 1, 0]), ["a", "b", "c"])
    assert never.loc["c"].iloc[:3].isna().all() and np.isnan(never.loc["c", "expected duration (windows)"])
    with pytest.raises(ValueError, match="0..2"):
        reports.transition_matrix(np.array([0, 3]), ["a", "b", "c"])

    dist = reports.label_distribution(random_splits)
    assert list(dist.index) == ["low", "mid", "high"]
    assert dist["train windows"].tolist() == [20, 20, 20] and dist["test windows"].sum() == 21
    np.testing.assert_allclose(dist["val share"].sum(), 1.0)


# ------------------------------------------------------------------------------------------------
# The real harness: a tiny 2-arm ablation run by regimetry.studies (tests/conftest.py)
# ------------------------------------------------------------------------------------------------
@pytest.mark.xdist_group("smoke_03")  # shares the session's 03 smoke run (tests/conftest.py)
def test_report_of_a_real_tiny_ablation(tiny_ablation_store, tmp_path):
    store = tiny_ablation_store
    proc = subprocess.run(
        [sys.executable, "-m", "regimetry.reports", store["experiment"], "--tracking-uri", store["uri"],
         "--storage", store["storage"], "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    notebook = tmp_path / store["experiment"] / "ablation_report.ipynb"
    assert _error_outputs(notebook) == [] and _executed_all(notebook)
    html = notebook.with_suffix(".html").read_text()
    for arm in store["arms"]:
        assert re.search(rf"<td [^>]*>{arm}</td>", html), arm
    runs = reports.load_ablation_runs(store["experiment"], store["uri"])
    summary = reports.arm_summary(runs)
    assert list(summary["arm"]) == list(store["arms"])
    assert summary["mean"].notna().all() and (summary["confirm_runs"] >= 1).all()
    assert not pd.isna(summary["pooled"]).any()


def test_per_fold_table_and_bars_carry_the_references(tmp_path):
    """Issue 16: HAR-RV and persistence stand beside the arms in the per-fold table and chart."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.run(EXPERIMENT, run_name="parent", tracking_uri=uri, tags={"stage": "study"}) as parent:
        with tracking.run(EXPERIMENT, run_name="alpha", parent_run_id=parent.run_id,
                          tags={"stage": "arm", "arm": "alpha"}) as arm:
            tracking.log_metrics({"fold0/test/balanced_accuracy": 0.5, "fold1/test/balanced_accuracy": 0.6,
                                  "confirm/test/balanced_accuracy_pooled": 0.55}, run_id=arm.run_id)
        tracking.log_text("arm,fold,n_test_windows,balanced_accuracy\nalpha,0,40,0.5\nalpha,1,40,0.6\n"
                          "har_rv,0,40,0.45\nhar_rv,1,40,0.65\n", "summary/per_fold.csv")
        tracking.log_text("model,balanced_accuracy_pooled\nhar_rv,0.55\n", "summary/references.csv")
    folds = reports.fold_results(reports.load_ablation_runs(EXPERIMENT, uri), "balanced_accuracy")
    assert list(folds.columns) == ["alpha", "har_rv (reference)"]
    assert folds.loc["fold 1", "har_rv (reference)"] == 0.65 and folds.loc["pooled", "har_rv (reference)"] == 0.55
    figure = reports.fold_figure(folds)
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["alpha", "har_rv (reference)"]
    assert len(ax.patches) == 2 * 3  # two series x (2 folds + pooled)


def test_training_curves_have_one_colour_per_run_and_the_legend_outside():
    """Issue 16: 15 confirmation runs drew in repeating colours under a legend covering them."""
    histories = {f"fold{f}/seed{s}": {"train/loss": [(0, 1.0), (1, 0.9)], "val/loss": [(0, 1.1), (1, 1.0)]}
                 for f in range(5) for s in range(3)}
    figure = reports.histories_figure(histories)
    colors = {tuple(line.get_color()) for line in figure.axes[0].lines}
    assert len(colors) == 15
    assert all(ax.get_legend() is None for ax in figure.axes) and len(figure.legends) == 1


def test_controls_report_renders_the_checks_table_and_forest_plot(tmp_path, capfd):
    """Issue 12: 00's one table as a papermill report (failed checks highlighted, A/A false calls counted)."""
    checks = pd.DataFrame([
        {"control": "order", "check": "winner_beats", "arm": "learnable", "b": "none", "expected": "> 0",
         "estimate": 0.43, "ci_low": 0.41, "ci_high": 0.45, "mde": 0.026, "passed": True},
        {"control": "order", "check": "aa_null", "arm": "learnable", "b": "learnable_copy", "expected": "= 0",
         "estimate": 0.005, "ci_low": -0.003, "ci_high": 0.012, "mde": 0.01, "passed": True},
        {"control": "event_order", "check": "at_chance", "arm": "padding", "b": "chance", "expected": "= 0.500",
         "estimate": 0.675, "ci_low": 0.66, "ci_high": 0.691, "mde": float("nan"), "passed": False},
    ])
    path = tmp_path / "checks.csv"
    checks.to_csv(path, index=False)
    paths = reports.render_controls_report(path, tmp_path / "out")
    html = paths.html.read_text()
    assert "2 of 3 checks passed" in html and "0 false call(s) in 1 comparison(s)" in html
    assert "#f8d7da" in html and "data:image/png;base64" in html  # the failed row, the forest plot
    # the kernel talks over unix sockets: no "running over TCP without encryption" warning in the console
    assert "without encryption" not in capfd.readouterr().err
    assert not list((tmp_path / "out").glob("kernel-*-ipc*"))  # and its socket files are cleaned up
    with pytest.raises(FileNotFoundError, match="no checks table"):
        reports.render_controls_report(tmp_path / "missing.csv", tmp_path / "out")


def test_rerendering_reads_the_tagged_relative_storage_from_the_callers_directory(tmp_path, monkeypatch):
    """A parent run tagged ``optuna_storage=sqlite:///mlruns/o.db`` (relative, as the default run writes
    it) is re-rendered without --storage: the kernel, which runs in the output directory, must get the
    storage under the caller's directory, not create an empty one under reports/."""
    from regimetry.reports import render

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.run(EXPERIMENT, run_name="parent", tracking_uri=uri,
                      tags={"stage": "study", "optuna_storage": "sqlite:///mlruns/o.db"}) as parent:
        with tracking.run(EXPERIMENT, run_name="alpha", parent_run_id=parent.run_id,
                          tags={"stage": "arm", "arm": "alpha"}):
            pass
    seen = {}

    def fake_render(notebook, output_dir, parameters, **kwargs):
        seen.update(parameters)
        return render.ReportPaths(Path(output_dir) / "a.ipynb", Path(output_dir) / "a.html")

    monkeypatch.setattr(render, "render_notebook", fake_render)
    render.render_ablation_report(EXPERIMENT, tracking_uri=uri, log_to_parent=False)
    assert seen["storage"] == f"sqlite:///{tmp_path / 'mlruns' / 'o.db'}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    backend.resolve_storage(other)  # an existing storage (created by a writer)
    render.render_ablation_report(EXPERIMENT, tracking_uri=uri, log_to_parent=False, storage=other)
    assert seen["storage"] == other  # an explicit --storage wins


def test_a_missing_storage_is_refused_by_readers_and_not_created(tmp_path, monkeypatch):
    """New-user check: re-rendering with a mistyped --storage created an empty SQLite file (and its
    directory) and rendered "no studies"; readers now refuse a storage file that does not exist."""
    from regimetry.reports import render

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.run(EXPERIMENT, run_name="parent", tracking_uri=uri, tags={"stage": "study"}) as parent:
        with tracking.run(EXPERIMENT, run_name="alpha", parent_run_id=parent.run_id,
                          tags={"stage": "arm", "arm": "alpha"}):
            pass
    monkeypatch.setattr(render, "render_notebook", lambda *a, **k: pytest.fail("rendered on a missing storage"))
    missing = tmp_path / "typo" / "optuna.db"
    for url in (f"sqlite:///{missing}", f"journal:///{tmp_path / 'typo' / 'j.log'}"):
        with pytest.raises(ValueError, match=r"--storage '.*typo.*': no Optuna storage at .*does not exist"):
            render.render_ablation_report(EXPERIMENT, tracking_uri=uri, log_to_parent=False, storage=url)
        with pytest.raises(ValueError, match="no Optuna storage"):
            backend.study_trials_frame(f"{EXPERIMENT}/alpha", url)
    assert not (tmp_path / "typo").exists()
    assert reports_cli.main([EXPERIMENT, "--tracking-uri", uri, "--storage", f"sqlite:///{missing}",
                             "--no-log", "--output-dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "typo").exists()
    # an existing file that is not an Optuna storage (empty; another program's database, here MLflow's)
    # is refused and left byte for byte as it was (fresh-user check: Optuna created its tables in it)
    empty = tmp_path / "empty.db"
    empty.touch()
    for path, why in ((empty, r"is not an Optuna storage \(no Optuna tables; it is empty"),
                      (tmp_path / "mlflow.db", r"is an MLflow tracking store \(give it as --tracking-uri\)")):
        before = path.read_bytes()
        with pytest.raises(ValueError, match=why):
            render.render_ablation_report(EXPERIMENT, tracking_uri=uri, log_to_parent=False, storage=f"sqlite:///{path}")
        assert path.read_bytes() == before
