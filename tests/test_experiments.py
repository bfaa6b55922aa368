"""End-to-end smoke runs of the numbered experiment scripts (tiny budgets, temporary stores)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest

from regimetry import studies, tracking

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


def _artifacts(run_id, uri, path=None):
    return set(tracking.list_artifacts(run_id, path, tracking_uri=uri))


def _read_artifact(run_id, uri, path):
    return Path(tracking.download_artifacts(run_id, path, tracking_uri=uri)).read_text()


def _check_protocol(experiment, uri, storage, arms, trials, blocks, seeds):
    """The runs, tags, studies and summary artifacts every ablation promises."""
    runs = tracking.search_runs(experiment, tracking_uri=uri)
    assert "RUNNING" not in set(runs["status"])
    parents = runs[runs["tags.stage"] == "study"]
    assert len(parents) == 1
    parent = parents.iloc[0]
    assert set(json.loads(parent["tags.optuna_studies"])) == {f"{experiment}/{a}" for a in arms}
    assert parent["tags.optuna_storage"] == storage

    arm_runs = runs[runs["tags.stage"] == "arm"]
    assert sorted(arm_runs["tags.arm"]) == sorted(arms)
    assert set(arm_runs["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    arm_ids = dict(zip(arm_runs["tags.arm"], arm_runs["run_id"]))

    for arm in arms:
        study = optuna.load_study(study_name=f"{experiment}/{arm}", storage=storage)
        assert len(study.trials) == trials and all(t.state.is_finished() for t in study.trials)
        trial_runs = runs[(runs["tags.stage"] == "trial") & (runs["tags.arm"] == arm)]
        assert len(trial_runs) == trials
        assert set(trial_runs["tags.mlflow.parentRunId"]) == {arm_ids[arm]}
        for _, run in trial_runs.iterrows():
            expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[run["tags.optuna_state"]]
            assert run["status"] == expected
            assert study.trials[int(run["tags.optuna_trial"])].state.name == run["tags.optuna_state"]
        assert set(trial_runs["tags.mlflow.runName"]) == {f"trial {n}" for n in trial_runs["tags.optuna_trial"]}
        confirm = runs[(runs["tags.stage"] == "confirm") & (runs["tags.arm"] == arm)]
        assert len(confirm) == blocks * seeds
        assert set(confirm["tags.mlflow.runName"]) == {f"fold{f}/seed{s}" for f, s in
                                                        zip(confirm["tags.fold"], confirm["tags.seed"])}
        assert confirm["metrics.test/balanced_accuracy"].notna().all()
        assert set(confirm["tags.fold"].astype(int)) == set(range(blocks))
        arm_run = arm_runs[arm_runs["tags.arm"] == arm].iloc[0]
        # issue 16: the arm's run spans its trials and confirmation runs (it showed ~10 ms in the UI)
        assert arm_run["end_time"] >= confirm["end_time"].max()
        for metric in ("balanced_accuracy", "macro_f1", "log_loss"):
            low, high = (arm_run[f"metrics.confirm/test/{metric}_boot_ci_{s}"] for s in ("low", "high"))
            assert low <= arm_run[f"metrics.confirm/test/{metric}_pooled"] <= high
            for block in range(blocks):
                assert f"metrics.fold{block}/test/{metric}" in arm_run.index
        assert "best_config.json" in _artifacts(arm_ids[arm], uri)
        # figures only where a user looks (issue 17): a confirmation run draws attention maps and the
        # confusion/training-curve figures; a trial logs its JSON confusion matrix and no figure
        confirm_run = confirm["run_id"].iloc[0]
        assert "figures/training_curves.png" in _artifacts(confirm_run, uri, "figures")
        if confirm["params.model.use_encoder"].iloc[0] != "False":  # 07's shortcut-only arm has no attention
            assert any(a.endswith(".png") for a in _artifacts(confirm_run, uri, "attention"))
        finished_trial = trial_runs[trial_runs["status"] == "FINISHED"]["run_id"]
        for run_id in finished_trial.iloc[:1]:
            assert "metrics/confusion_val.json" in _artifacts(run_id, uri, "metrics")
            assert not _artifacts(run_id, uri, "figures") and not _artifacts(run_id, uri, "attention")
        # issue 16: the tuned configuration is a run parameter; confirm/test/ holds test-block scores only
        best = json.loads(_read_artifact(arm_ids[arm], uri, "best_config.json"))
        assert arm_run["params.best.model.d_model"] == str(best["model"]["d_model"])
        assert arm_run["params.best.train.learning_rate"] == str(best["train"]["learning_rate"])
        assert 0 <= arm_run["metrics.tuning/fraction_pruned"] <= 1
    assert not [c for c in runs.columns if c.startswith("metrics.confirm/test/") and
                any(w in c for w in ("best_val", "fraction_pruned", "fraction_failed"))]

    summary = _artifacts(parent["run_id"], uri, "summary")
    assert {"summary/summary.md", "summary/arms.csv", "summary/per_fold.csv", "summary/differences.csv",
            "summary/verdicts.txt", "summary/predictions.csv", "summary/classes.json"} <= summary
    predictions = pd.read_csv(io.StringIO(_read_artifact(parent["run_id"], uri, "summary/predictions.csv")))
    assert {f"pred.{a}" for a in arms} <= set(predictions.columns) and predictions["y_true"].notna().all()
    return parent, runs


@pytest.mark.xdist_group("smoke_03")  # the session fixture runs once per test worker: keep its users on one
def test_smoke_03_on_sp500_logs_protocol_verdicts_and_report(smoke_03):
    assert smoke_03["returncode"] == 0, smoke_03["stdout"][-4000:]
    arms = smoke_03["arms"]
    budget = studies.SMOKE_BUDGET
    parent, runs = _check_protocol(smoke_03["experiment"], smoke_03["uri"], smoke_03["storage"], arms,
                                   budget.trials_per_arm, budget.folds, budget.seeds)
    # progress and the final table are printed
    assert re.search(r"trial \d+ (COMPLETE|PRUNED|FAIL)\s*\| \d+/2 done \| best val", smoke_03["stdout"])
    assert "| arm | best val |" in smoke_03["stdout"]
    # verdict lines: every pair of arms, and every arm against HAR-RV and persistence
    verdicts = parent["tags.verdicts"].split(" | ")
    assert len(verdicts) == len(arms) * (len(arms) - 1) // 2 + 2 * len(arms)
    assert all(re.search(r"better than|no detectable difference", v) for v in verdicts)
    assert sum("har_rv" in v for v in verdicts) == len(arms)
    assert sum("persistence" in v for v in verdicts) == len(arms)
    # "no detectable difference" always states the minimum detectable effect
    assert all("none larger than" in v for v in verdicts if "no detectable" in v)
    # the references' own pooled scores, and the MDE of every comparison
    assert "summary/references.csv" in _artifacts(parent["run_id"], smoke_03["uri"], "summary")
    assert "(reference, same folds)" in smoke_03["stdout"]
    # one seed per block: no zero-width "interval" over seeds, and counts read as English (fresh-user finding)
    assert "(1 seed: no interval)" in smoke_03["stdout"] and "(2 blocks x 1 seed)" in smoke_03["stdout"]
    for name in ("har_rv", "persistence"):
        assert 0.0 <= parent[f"metrics.reference/{name}/test/balanced_accuracy_pooled"] <= 1.0
    arm_runs = runs[runs["tags.stage"] == "arm"]
    assert arm_runs["metrics.confirm/mde_vs_har_rv/balanced_accuracy"].notna().all()
    # the papermill report: in reports/smoke/ of the working directory (a smoke run never replaces the
    # full run's reports/03_encoding_ablation/) and on the parent run
    report_dir = smoke_03["root"] / "reports" / "smoke" / "03_encoding_ablation"
    assert not (smoke_03["root"] / "reports" / "03_encoding_ablation").exists()
    assert (report_dir / "ablation_report.ipynb").is_file() and (report_dir / "ablation_report.html").is_file()
    logged = _artifacts(parent["run_id"], smoke_03["uri"], "report")
    assert {"report/ablation_report.ipynb", "report/ablation_report.html"} <= logged
    html = (report_dir / "ablation_report.html").read_text()
    for arm in arms:
        assert arm in html
    assert "Regimes over time" in html and "har_rv (reference)" in html
    # the address that opens the runs table (MLflow 3.17 opens the GenAI overview otherwise)
    assert re.search(r"browse the runs: mlflow ui --backend-store-uri sqlite:///\S+  then open "
                     r"http://127.0.0.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning", smoke_03["stdout"])
    # a quiet console: no line from TensorFlow's C++ logger or CUDA probing (issue 16)
    assert not re.search(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", smoke_03["stdout"], flags=re.M), smoke_03["stdout"][:3000]
    assert "absl::InitializeLog" not in smoke_03["stdout"] and "cuInit" not in smoke_03["stdout"]


@pytest.mark.xdist_group("smoke_03")
def test_re_rendering_a_smoke_report_keeps_it_under_reports_smoke(smoke_03, monkeypatch):
    """Fresh-user finding: ``python -m regimetry.reports 03_encoding_ablation`` after a smoke run wrote the smoke
    report into reports/03_encoding_ablation/, over the full run's; the smoke run's options say where it goes."""
    from regimetry.reports.cli import main as reports_main

    monkeypatch.chdir(smoke_03["root"])
    assert reports_main(["03_encoding_ablation", "--tracking-uri", smoke_03["uri"], "--no-log"]) == 0
    assert (smoke_03["root"] / "reports" / "smoke" / "03_encoding_ablation" / "ablation_report.html").is_file()
    assert not (smoke_03["root"] / "reports" / "03_encoding_ablation").exists()


@pytest.mark.parametrize("script", ["04_mask_ablation", "05_depth_ablation", "06_pooling_ablation",
                                    "07_encoder_value"])
def test_smoke_of_each_experiment_script(script, tmp_path):
    ablation = _load(script)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # --jobs 1: in-process (no worker start-up with its TensorFlow import); the two-process path has its
    # own tests (the 03 smoke run, test_studies' jobs 1 vs 2 and simultaneous-process tests)
    code = studies.main(ablation, ["--smoke", "--dataset", "synthetic", "--no-report", "--jobs", "1",
                                   "--trials", "1", "--folds", "1", "--max-epochs", "1",
                                   "--tracking-uri", uri, "--storage", storage])
    assert code == 0
    parent, _ = _check_protocol(script, uri, storage, [a.name for a in ablation.arms], trials=1, blocks=1, seeds=1)
    # synthetic data: each path's Bayes-optimal ceiling is reported beside the models
    assert "summary/ceilings.csv" in _artifacts(parent["run_id"], uri, "summary")


def test_control_ablation_adds_the_aa_copy_and_fixes_what_the_argument_needs():
    ablation, copy_arm = studies.control_ablation(_load("04_mask_ablation"), "event_order")
    assert ablation.name == "00_control_event_order" and copy_arm == "lookahead_copy"
    copy = ablation.arm(copy_arm)
    assert copy.overrides == ablation.arm("lookahead").overrides and copy.seed_offset == studies.AA_SEED_OFFSET
    assert ablation.fixed["model.positional_encoding"] == "none"  # the control overrides 04's sinusoidal
    assert ablation.fixed["model.linear_shortcut"] is False
    assert ablation.data_overrides()["stride"] == ablation.data_overrides()["window_size"] == 16
    assert ablation.budget == studies.CONTROL_BUDGET
    with pytest.raises(ValueError, match="checks 05_depth_ablation, not 04_mask_ablation"):
        studies.control_ablation(_load("04_mask_ablation"), "induction")


def _fake_summary(pooled, diffs):
    import pandas as pd

    arms = pd.DataFrame([{"arm": a, "balanced_accuracy_pooled": e, "balanced_accuracy_boot_ci_low": lo,
                          "balanced_accuracy_boot_ci_high": hi} for a, (e, lo, hi) in pooled.items()])
    differences = pd.DataFrame([{"a": a, "b": b, "metric": "balanced_accuracy", "difference": e, "ci_low": lo,
                                 "ci_high": hi, "mde": m} for (a, b), (e, lo, hi, m) in diffs.items()])
    return {"arms": arms, "differences": differences}


def test_control_checks_pass_on_the_predicted_outcome_and_fail_otherwise():
    good = _fake_summary(
        {"last": (.95, .93, .97), "mean": (.50, .47, .53), "last_copy": (.94, .92, .96)},
        {("mean", "last"): (-.45, -.48, -.42, .03), ("last", "last_copy"): (.01, -.01, .03, .02)})
    checks = studies.control_checks(good, "recency", "last_copy").set_index(["check", "arm", "b"])
    assert checks["passed"].all()
    # the (mean, last) row is turned into last - mean
    assert checks.loc[("winner_beats", "last", "mean"), "estimate"] == pytest.approx(.45)
    assert checks.loc[("winner_beats", "last", "mean"), "ci_low"] == pytest.approx(.42)
    assert checks.loc[("aa_null", "last", "last_copy"), "mde"] == pytest.approx(.02)
    bad = _fake_summary(
        {"last": (.52, .49, .55), "mean": (.60, .57, .63), "last_copy": (.60, .58, .62)},
        {("mean", "last"): (.08, .05, .11, .03), ("last", "last_copy"): (-.08, -.10, -.06, .02)})
    checks = studies.control_checks(bad, "recency", "last_copy").set_index("check")
    assert not checks["passed"].any()


def test_smoke_of_the_positive_controls_script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("controls00", ROOT / "experiments" / "00_positive_controls.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    code = module.main(["--smoke", "--controls", "event_order", "--no-report", "--jobs", "1", "--trials", "1",
                        "--max-epochs", "1", "--paths", "1", "--tracking-uri", uri, "--storage", storage])
    assert code == 0
    ablation, copy_arm = studies.control_ablation(_load("04_mask_ablation"), "event_order", smoke=True)
    parent, _ = _check_protocol(ablation.name, uri, storage, [a.name for a in ablation.arms], trials=1, blocks=1,
                                seeds=1)
    assert "summary/ceilings.csv" in _artifacts(parent["run_id"], uri, "summary")
    assert "controls/checks.csv" in _artifacts(parent["run_id"], uri, "controls")
    # a smoke run's checks never replace a full run's (fresh-user finding)
    assert not (tmp_path / "reports" / "00_positive_controls").exists()
    table = (tmp_path / "reports" / "smoke" / "00_positive_controls" / "checks.md").read_text()
    assert "| event_order | aa_null | lookahead | lookahead_copy |" in table
    assert "| event_order | winner_beats | lookahead | unmasked |" in table


@pytest.mark.slow
@pytest.mark.parametrize("task", ["order", "recency", "event_order", "induction"])
def test_control_finds_the_predicted_winner_and_no_aa_difference(task, tmp_path, monkeypatch):
    """Issue 12: at the control budget, every predicted winner is called against every at-chance arm
    with the interval clear of zero, and the A/A copy is not called (about 10-15 minutes each)."""
    spec = importlib.util.spec_from_file_location("controls00", ROOT / "experiments" / "00_positive_controls.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    code = module.main(["--controls", task, "--no-report", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                        "--storage", f"sqlite:///{tmp_path}/optuna.db"])
    assert code == 0
    import pandas as pd

    checks = pd.read_csv(tmp_path / "reports" / "00_positive_controls" / "checks.csv")
    assert set(checks["check"]) == {"winner_above_chance", "at_chance", "winner_beats", "aa_null"}
    failed = checks[~checks["passed"]]
    assert failed.empty, failed.to_string()


def test_stage_confirm_without_tuning_refuses_before_writing(tmp_path, capsys):
    """``--stage confirm`` on a storage with no tuning study: one line naming the arms and the stage to
    run first, exit 2; no Optuna study and no MLflow run is created (found by a fresh-user check: it
    used to enqueue every arm's trials, leave a FAILED parent run and exit 1 saying to re-run itself)."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    code = studies.main(_load("03_encoding_ablation"),
                        ["--smoke", "--dataset", "synthetic", "--no-report", "--jobs", "1", "--stage", "confirm",
                         "--tracking-uri", uri, "--storage", storage])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--stage confirm" in err[0] and "--stage tune" in err[0] and "sinusoidal_interleaved" in err[0]
    # no file is left behind either (fresh-user finding: an empty optuna.db and mlflow.db were)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlruns").exists()
    # an existing storage without the studies: refused by the study check, still without a run
    optuna.create_study(study_name="unrelated", storage=storage)
    assert studies.main(_load("03_encoding_ablation"),
                        ["--smoke", "--dataset", "synthetic", "--no-report", "--jobs", "1", "--stage", "confirm",
                         "--tracking-uri", uri, "--storage", storage]) == 2
    assert "no tuning study for arm(s)" in capsys.readouterr().err
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["unrelated"]
    assert len(tracking.search_runs("03_encoding_ablation", tracking_uri=uri)) == 0
