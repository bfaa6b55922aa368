"""The ablation harness: equal budgets, FAIL/PRUNED bookkeeping, resume, two processes, smoke runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from pg_cluster import fresh_database
from regimetry import processes, records, studies, tracking
from regimetry.studies import backend, context
from regimetry.studies import summary as study_summary
from regimetry.studies import Ablation, Arm, Budget, Categorical, Float, SearchSpace

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = SearchSpace((
    Float("train.learning_rate", low=5e-4, high=3e-3, log=True),
    Categorical("model.d_model", choices=(8, 16)),
    Categorical("head", choices=("linear", "mlp")),
    Categorical("head_units", choices=(8, 16), when=("head", "mlp")),
))
TINY_BUDGET = Budget(trials_per_arm=3, max_epochs=2, patience=1, seeds=1, folds=2,
                     pruner_startup_trials=1, pruner_warmup_epochs=0)


def _tiny(name="tiny_ablation", arms=None):
    return Ablation(
        name=name,
        question="Is a tiny test question answered?",
        scientific="model.pooling",
        arms=arms or (Arm("mean", {"model.pooling": "mean"}), Arm("last", {"model.pooling": "last"})),
        nuisance=TINY_SPACE,
        fixed={"model.num_layers": 1, "model.num_heads": 2, "model.ff_dim": 16, "data.window_size": 12,
               "data.synthetic_bars": 900},
        budget=TINY_BUDGET,
        smoke_budget=TINY_BUDGET,
    )


def _args(tmp_path, *extra):
    # --jobs 1: these tests monkeypatch the harness, which spawned worker processes would not see
    return ["--dataset", "synthetic", "--smoke", "--no-report", "--paths", "2", "--jobs", "1",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db",
            "--storage", f"sqlite:///{tmp_path}/optuna.db", *extra]


def _study(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def _runs(tmp_path, experiment):
    return tracking.search_runs(experiment, tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def test_ensure_study_enqueues_exact_budget_once(tmp_path):
    storage = studies.resolve_storage(f"sqlite:///{tmp_path}/s.db")
    first = studies.ensure_study(storage, "x/a", TINY_BUDGET, seed=0)
    again = studies.ensure_study(storage, "x/a", TINY_BUDGET, seed=0)
    assert len(first.get_trials()) == len(again.get_trials()) == 3
    bigger = studies.ensure_study(storage, "x/a", Budget(trials_per_arm=5), seed=0)
    assert len(bigger.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 5


_CLAIMER = """
import sys
import optuna
from regimetry import studies
from regimetry.studies import backend
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="claims", storage=studies.resolve_storage(sys.argv[1]))
sys.stdout.write(" ".join(str(t.number) for t in iter(lambda: backend.claim_waiting_trial(study), None)))
"""


def test_simultaneous_processes_never_claim_one_trial_twice_on_sqlite(tmp_path):
    """SQLite ignores SELECT ... FOR UPDATE: without BEGIN IMMEDIATE, 4 processes claimed 60 WAITING
    trials 70 times (two workers ran one trial and the second crashed on tell)."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="claims", storage=studies.resolve_storage(url))
    for i in range(60):
        study.enqueue_trial({"x": i})
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, url], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    claims = [int(n) for p in procs for n in p.communicate(timeout=300)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(claims) == list(range(60))  # every trial claimed, none twice
    assert len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,))) == 60


def test_a_study_whose_creator_died_mid_creation_is_finished_by_the_next_process(tmp_path):
    """Issue 14: kill -9 between creating a study and recording its budget left it unusable (every
    re-run waited 120 s, then failed). A process on the creator's host finishes the enqueue at once,
    without doubling a slot; a creator that lives, or that never recorded itself, is still waited for."""
    import socket

    storage = studies.resolve_storage(f"sqlite:///{tmp_path}/optuna.db")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    configs = studies.draw_configurations(TINY_SPACE, 3, seed=0)
    for name, creator in (("x/dead", {"host": socket.gethostname(), "pid": gone.pid, "start": "1"}),
                          ("x/alive", processes.owner()), ("x/unknown", None)):
        study = optuna.create_study(storage=storage, study_name=name)
        if creator is not None:
            study.set_user_attr(studies.CREATOR_ATTR, creator)
        study.enqueue_trial(configs[0], user_attrs={"regimetry_budget_slot": True, "slot": 0})  # then killed
    study = studies.ensure_study(storage, "x/dead", TINY_BUDGET, seed=0, space=TINY_SPACE, wait_seconds=30)
    assert study.user_attrs["budget"] == 3
    assert sorted((t.user_attrs["slot"], t.system_attrs["fixed_params"]) for t in study.trials) == \
        [(i, c) for i, c in enumerate(configs)]
    for name in ("x/alive", "x/unknown"):
        with pytest.raises(RuntimeError, match="budget was never recorded.*delete-study"):
            studies.ensure_study(storage, name, TINY_BUDGET, seed=0, space=TINY_SPACE, wait_seconds=1)


def test_every_arm_gets_the_same_configurations_whatever_the_claim_order(tmp_path):
    """Issue 14: configurations are drawn up front and enqueued with their parameters, so trial i of
    every arm is configuration i, however workers interleave (here: opposite claim orders)."""
    storage = studies.resolve_storage(f"sqlite:///{tmp_path}/s.db")
    drawn = studies.draw_configurations(TINY_SPACE, 6, seed=3)
    assert drawn[:4] == studies.draw_configurations(TINY_SPACE, 4, seed=3)  # a larger budget extends
    assert drawn != studies.draw_configurations(TINY_SPACE, 6, seed=4)  # the seed matters
    assert len({tuple(sorted(d.items())) for d in drawn}) == 6  # distinct points
    by_arm = {}
    for arm, reverse in (("a", False), ("b", True)):
        study = studies.ensure_study(storage, f"x/{arm}", Budget(trials_per_arm=6), seed=3, space=TINY_SPACE)
        claimed = []
        while (trial := backend.claim_waiting_trial(study)) is not None:
            claimed.append((trial.number, TINY_SPACE.sample(trial)))
            study.tell(trial, 0.5)
        if reverse:
            claimed.reverse()
        by_arm[arm] = dict(claimed)
    assert by_arm["a"] == by_arm["b"] == dict(enumerate(drawn))
    # a grown budget enqueues the next drawn points, not new random ones
    grown = studies.ensure_study(storage, "x/a", Budget(trials_per_arm=8), seed=3, space=TINY_SPACE)
    waiting = sorted(grown.get_trials(states=(optuna.trial.TrialState.WAITING,)), key=lambda t: t.number)
    assert [t.system_attrs["fixed_params"] for t in waiting] == studies.draw_configurations(TINY_SPACE, 8, seed=3)[6:]


def test_failed_and_pruned_trials_are_recorded_in_optuna_and_mlflow(tmp_path, monkeypatch):
    # "broken" resolves on its own (so it passes the up-front arm check) but fails with every sampled
    # d_model (8 or 16 // 32 heads = 0): a failure that only a trial can find, recorded as FAIL.
    ablation = _tiny(arms=(Arm("ok", {"model.pooling": "mean"}),
                           Arm("broken", {"model.pooling": "mean", "model.num_heads": 32})))
    # An always-pruning pruner (Optuna's ThresholdPruner: any value below 2 prunes) for the "ok" arm.
    monkeypatch.setattr(backend, "_pruner", lambda budget: optuna.pruners.ThresholdPruner(lower=2.0))
    code = studies.main(ablation, _args(tmp_path, "--stage", "tune", "--trials", "2"))
    assert code == 0
    ok, broken = _study(tmp_path, "tiny_ablation/ok"), _study(tmp_path, "tiny_ablation/broken")
    assert [t.state.name for t in ok.trials] == ["PRUNED", "PRUNED"]
    assert [t.state.name for t in broken.trials] == ["FAIL", "FAIL"]
    runs = _runs(tmp_path, "tiny_ablation")
    trials = runs[runs["tags.stage"] == "trial"]
    by_state = trials.groupby("tags.optuna_state")["status"].agg(set).to_dict()
    assert by_state == {"PRUNED": {"KILLED"}, "FAIL": {"FAILED"}}
    assert "RUNNING" not in set(runs["status"])
    # a pruned trial's run shows the epochs it trained (fresh-user finding: it logged params only)
    pruned = trials[trials["tags.optuna_state"] == "PRUNED"]
    assert pruned["metrics.val/balanced_accuracy"].notna().all() and pruned["metrics.train/loss"].notna().all()


def test_interrupt_then_resume_runs_exactly_the_missing_trials(tmp_path, monkeypatch, capsys):
    from regimetry import training

    ablation = _tiny()
    real_fit = training.fit
    calls = {"n": 0}

    def interrupting_fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", interrupting_fit)
    args = _args(tmp_path, "--stage", "tune", "--arms", "mean", "--trials", "2")
    assert studies.main(ablation, args) == 130
    # a storage file that did not exist is announced (a mistyped --storage path must not pass silently)
    assert re.search(r"new Optuna storage \S+optuna\.db \(no such file before\)", capsys.readouterr().out)
    counts = studies.budget_counts(_study(tmp_path, "tiny_ablation/mean"))
    assert counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"] == 1 and counts["INTERRUPTED"] == 1
    assert counts["WAITING"] == 1  # the interrupted slot was given back
    assert "RUNNING" not in set(_runs(tmp_path, "tiny_ablation")["status"])

    resumed = {"n": 0}

    def counting_fit(*a, **k):
        resumed["n"] += 1
        return real_fit(*a, **k)

    monkeypatch.setattr(training, "fit", counting_fit)
    assert studies.main(ablation, args) == 0
    assert "new Optuna storage" not in capsys.readouterr().out  # resumed: the same storage
    counts = studies.budget_counts(_study(tmp_path, "tiny_ablation/mean"))
    assert counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"] == 2, counts
    assert counts["WAITING"] == counts["RUNNING"] == 0 and counts["INTERRUPTED"] == 1
    assert resumed["n"] == 1  # the resumed run trained exactly the one missing trial
    runs = _runs(tmp_path, "tiny_ablation")
    assert "RUNNING" not in set(runs["status"])
    trial_runs = runs[runs["tags.stage"] == "trial"]
    interrupted = trial_runs[trial_runs["tags.interrupted"] == "true"]
    assert list(interrupted["status"]) == ["KILLED"] and list(interrupted["tags.optuna_state"]) == ["FAIL"]
    assert len(trial_runs) == 3


def test_two_processes_finish_exactly_the_budget(tmp_path):
    script = ROOT / "experiments" / "03_encoding_ablation.py"
    cmd = [sys.executable, str(script), *_args(tmp_path, "--stage", "tune", "--trials", "3", "--arms", "none",
                                                "--max-epochs", "1")]  # each process is one worker
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    study = _study(tmp_path, "03_encoding_ablation/none")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(study.trials) == len(finished) == 3
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    runs = _runs(tmp_path, "03_encoding_ablation")
    trial_runs = runs[runs["tags.stage"] == "trial"]
    assert sorted(trial_runs["tags.optuna_trial"].astype(int)) == [0, 1, 2]


def test_bad_data_fails_cleanly_before_any_trial_is_claimed(tmp_path, capsys):
    ablation = _tiny()
    args = _args(tmp_path, "--stage", "tune")
    args[args.index("synthetic")] = "csv"
    code = studies.main(ablation, [*args, "--csv", str(tmp_path / "missing.csv")])
    assert code == 2
    assert "missing.csv" in capsys.readouterr().err
    storage = studies.resolve_storage(f"sqlite:///{tmp_path}/optuna.db")
    assert optuna.get_all_study_summaries(storage) == []  # no study, so no budget lost
    assert studies.main(ablation, _args(tmp_path, "--csv", "x.csv")) == 2  # --csv without --dataset csv


@pytest.mark.parametrize("bad", ["storage_dir", "storage_under_file", "storage_password", "journal_dir",
                                 "storage_not_a_db", "storage_no_scheme", "tracking_not_a_db", "tracking_dir"])
def test_bad_storage_or_tracking_uri_is_one_line_exit_2_and_writes_nothing(bad, tmp_path, capsys):
    """Issue 14: storage and tracking URI are checked before any MLflow run, study or claim exists;
    the message names the option and hides the password; a user's file is left as it was."""
    (tmp_path / "notes.txt").write_text("my notes")
    args = _args(tmp_path, "--stage", "tune")
    option, value = {
        "storage_dir": ("--storage", f"sqlite:///{tmp_path}"),
        "storage_under_file": ("--storage", f"sqlite:///{tmp_path}/notes.txt/optuna.db"),
        "storage_password": ("--storage", "postgresql://alice:s3cret@127.0.0.1:1/optuna"),
        "journal_dir": ("--storage", f"journal:///{tmp_path}"),
        "storage_not_a_db": ("--storage", f"sqlite:///{tmp_path}/notes.txt"),
        "storage_no_scheme": ("--storage", f"{tmp_path}/optuna.db"),
        "tracking_not_a_db": ("--tracking-uri", f"sqlite:///{tmp_path}/notes.txt"),
        "tracking_dir": ("--tracking-uri", f"sqlite:///{tmp_path}"),
    }[bad]
    args[args.index(option) + 1] = value
    assert studies.main(_tiny(), args) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "s3cret" not in err
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    assert not (tmp_path / "notes.txt.lock").exists()
    if bad in ("storage_dir", "journal_dir", "storage_not_a_db", "storage_no_scheme"):
        # found without writing or connecting: refused before the MLflow store exists (fresh-user finding)
        assert not (tmp_path / "mlruns").exists() and "[SQL:" not in err
    elif option == "--storage":  # the tracking store is valid: it holds no run of this invocation
        assert _runs(tmp_path, "tiny_ablation").empty
    else:
        assert not (tmp_path / "optuna.db").exists()


def test_swapped_storage_and_tracking_stores_are_refused_and_left_as_they_were(tmp_path, capsys):
    """Fresh-user finding: with --storage and --tracking-uri swapped, MLflow added its tables to the Optuna
    database (and failed with a 107-line traceback) and Optuna added its tables to the MLflow store."""
    import sqlite3

    mlflow_db, optuna_db = tmp_path / "stores" / "mlflow.db", tmp_path / "stores" / "optuna.db"
    tracking.configure(f"sqlite:///{mlflow_db}")
    studies.resolve_storage(f"sqlite:///{optuna_db}")

    def tables(path):
        with sqlite3.connect(path) as db:
            return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))

    before = {path: tables(path) for path in (mlflow_db, optuna_db)}
    for option, value, message in (
            ("--storage", f"sqlite:///{mlflow_db}", r"--storage '.*mlflow.db': .* is an MLflow tracking store \(give it as --tracking-uri\)"),
            ("--tracking-uri", f"sqlite:///{optuna_db}", r"--tracking-uri '.*optuna.db': .* is an Optuna storage \(give it as --storage\)")):
        args = _args(tmp_path, "--stage", "tune")
        args[args.index(option) + 1] = value
        assert studies.main(_tiny(), args) == 2
        err = capsys.readouterr().err.strip()
        assert re.search(message, err) and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert {path: tables(path) for path in (mlflow_db, optuna_db)} == before


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], r"--seed: must be an integer in \[0, 2\*\*32\), got -1"),
    (["--set", "model.d_model=8"], r"--set: only data.<field> settings"),
    # fresh-user finding: the example given was model.d_model=64, which --set here refuses
    (["--set", "window_size=10"], r"^error: --set 'window_size=10': expected section.field=value \(e\.g\. data\.window_size=10\)$"),
    (["--set", "=3"], r"^error: --set '=3': expected section.field=value \(e\.g\. data\.window_size=30\)$"),
    (["--set", "data.source=csv"], r"--set data.source: use the option of its own"),
    (["--set", "data.no_such_field=1"], r"no_such_field"),
    (["--dataset", "sp500", "--folds", "1000"], r"--folds / DataConfig.num_folds=1000: .* use at most \d+ folds"),
    # fresh-user finding: a file too short for even one fold was told to "use at most 1 folds" under --folds 1
    (["--dataset", "csv", "--csv", str(Path(__file__).parent / "fixtures" / "signals.csv"), "--folds", "1"],
     r"--folds / DataConfig.num_folds=1: .* holds \d+ windows.*: even one fold is too short: give more data"),
    (["--arms", "mean,last,mean"], r"--arms: 'mean' given more than once"),  # fresh-user finding: was dropped silently
    (["--arms", " "], r"--arms: empty; name one or more of \['mean', 'last'\]"),  # fresh-user finding: meant all arms
    (["--patience", "0"], r"--patience: must be >= 1, got 0"),
    # fresh-user finding: the driver read the host from the password's second half and printed it
    (["--storage", "postgresql://u:p@ss@127.0.0.1:1/db"], r"^error: --storage 'postgresql://u:\*\*\*@127\.0\.0\.1:1/db': the password holds an unencoded '@'"),
    (["--tracking-uri", "postgresql://u:p@ss@127.0.0.1:1/db"], r"^error: --tracking-uri 'postgresql://u:\*\*\*@127\.0\.0\.1:1/db': the password holds an unencoded '@'"),
    # fresh-user finding: a date the user typed outside the data moved the test blocks with a warning, exit 0
    (["--dataset", "sp500", "--folds-start", "2011-06-01"],
     r"--folds-start 2011-06-01: too little data before the first test block \(fold 0: .*\); start the folds later$"),
    (["--dataset", "sp500", "--folds-start", "2020-13-45"], r"^error: --folds-start: expected an ISO date YYYY-MM-DD"),
    (["--dataset", "sp500", "--folds-start", "2030-01-01"],
     r"--folds-start 2030-01-01: lies outside the samples' period \(\d{4}-\d\d-\d\d \.\. 20\d\d-\d\d-\d\d\) or on its first "
     r"day; give a date after the first day, up to the last"),
])
def test_bad_options_are_one_line_exit_2_and_leave_no_run(extra, message, tmp_path, capsys):
    """Issue 14 (found by a new-user check): each bad option is one line naming it, exit 2, no MLflow run."""
    args = _args(tmp_path, "--stage", "tune", *extra)  # a later --dataset wins in argparse
    assert studies.main(_tiny(), args) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert _runs(tmp_path, "tiny_ablation").empty


def test_patience_sets_every_trials_early_stopping_and_a_resume_under_another_budget_is_refused(tmp_path, capsys):
    """A stored study's trials keep the epoch cap and patience they trained with: a resume under others
    would mix two budgets (and its confirmation runs would silently keep the stored trials' settings,
    since they retrain the best trial's configuration), so it is refused, naming the options and the
    stored values, before anything is written."""
    three = ("--stage", "tune", "--trials", "1", "--max-epochs", "3")
    assert studies.main(_tiny(), _args(tmp_path, *three, "--patience", "1")) == 0
    trials = _study(tmp_path, "tiny_ablation/mean").trials
    assert {json.loads(t.user_attrs[records.TRAIN_CONFIG_ATTR])["patience"] for t in trials} == {1}
    runs_before = len(_runs(tmp_path, "tiny_ablation"))
    capsys.readouterr()
    for extra, asks in ((["--max-epochs", "3", "--patience", "2"], "--patience 2 (its trials: 1)"),
                        (["--max-epochs", "1"], "--max-epochs 1 (its trials: 3)"),  # the same patience: not named
                        (["--max-epochs", "2"], "--max-epochs 2 (its trials: 3)")):
        assert studies.main(_tiny(), _args(tmp_path, "--stage", "tune", "--trials", "1", *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert re.search(r"'tiny_ablation/mean' in sqlite:///.* was tuned with another training budget: this run asks "
                         + re.escape(asks) + r" \(and 'tiny_ablation/last', likewise\)", err), err
        assert "optuna delete-study --study-name tiny_ablation/last" in err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert len(_runs(tmp_path, "tiny_ablation")) == runs_before
    assert "Re-run with --max-epochs 3, give" in err
    assert len(_study(tmp_path, "tiny_ablation/mean").trials) == len(trials)
    assert studies.main(_tiny(), _args(tmp_path, *three, "--patience", "1")) == 0  # resumes
    # fresh-user finding: a patience that cannot stop a run (>= --max-epochs - 1: the first epoch always counts
    # as better) is the same budget whatever its value
    other = tmp_path / "other"
    other.mkdir()
    assert studies.main(_tiny(), _args(other, *three, "--patience", "2")) == 0
    assert studies.main(_tiny(), _args(other, *three, "--patience", "9")) == 0


def test_a_smoke_run_has_its_own_default_storage(tmp_path, monkeypatch):
    """Fresh-user finding: a ``--smoke`` run on the default storage locked it against the main job (other data,
    so the identity check refused the full run). Smoke runs default to ``mlruns/optuna_smoke.db``."""
    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "synthetic", "--smoke", "--no-report", "--paths", "2", "--jobs", "1", "--stage", "tune",
            "--trials", "1", "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db"]
    assert studies.main(_tiny(), args) == 0
    assert (tmp_path / "mlruns" / "optuna_smoke.db").is_file() and not (tmp_path / "mlruns" / "optuna.db").exists()
    assert studies.SMOKE_STORAGE == "sqlite:///mlruns/optuna_smoke.db" != studies.DEFAULT_STORAGE


def test_confirm_reports_the_stored_budget_and_refuses_unequal_ones(tmp_path, capsys):
    """Fresh-user finding: after ``--stage tune --trials 2``, a ``--stage confirm`` with a smaller ``--trials``
    confirmed the best of 2 trials but printed "Budget: 1 trials per arm". And arms extended one at a time
    (``--arms``) would be compared after unequal budgets: refused, naming them and how to even them."""
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "tune", "--trials", "2")) == 0
    capsys.readouterr()
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "confirm", "--trials", "1")) == 0
    out = capsys.readouterr().out
    assert "the stored studies hold 2 trials per arm (this run's --trials: 1)" in out
    assert "Budget: 2 trials per arm" in out and "Budget: 1 trials" not in out
    parent = _runs(tmp_path, "tiny_ablation").query("`tags.stage` == 'study'").iloc[0]  # the latest parent run
    assert parent["params.budget.trials_per_arm"] == "2"
    # fresh-user finding: a confirm with a larger --trials queued a trial in every study before failing
    runs_before = len(_runs(tmp_path, "tiny_ablation"))
    capsys.readouterr()
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "confirm", "--trials", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(r"^error: --trials 3: the stored studies hold mean 2, last 2 trials, and --stage confirm does not "
                     r"tune; run --stage tune --trials 3 \(with the same other options\) first", err), err
    assert len(_study(tmp_path, "tiny_ablation/mean").trials) == 2 and len(_runs(tmp_path, "tiny_ablation")) == runs_before
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "tune", "--trials", "3", "--arms", "mean")) == 0
    runs_before = len(_runs(tmp_path, "tiny_ablation"))
    capsys.readouterr()
    for stage in ("confirm", "all"):  # refused before any MLflow run (they used to leave empty ones behind)
        assert studies.main(_tiny(), _args(tmp_path, "--stage", stage, "--trials", "1")) == 2
        err = capsys.readouterr().err.strip()
        assert re.search(r"^error: the arms' studies hold unequal tuning budgets \(mean 3, last 2 trials\); .*"
                         r"Run --stage tune --trials 3 for every arm", err) and len(err.splitlines()) == 1, err
        assert len(_runs(tmp_path, "tiny_ablation")) == runs_before


def test_a_finished_tune_stage_rerun_opens_no_mlflow_run(tmp_path, capsys):
    """Fresh-user finding: re-running a finished ``--stage tune`` opened a parent run and one run per arm
    that stayed empty. It now says there is nothing to tune; a larger --trials still extends the budget."""
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "tune", "--trials", "1")) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "run --stage confirm with the same --storage" in out[-2] and "browse the runs: mlflow ui" in out[-1]
    runs_before = len(_runs(tmp_path, "tiny_ablation"))
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "tune", "--trials", "1")) == 0
    assert "every arm's tuning budget is already finished" in capsys.readouterr().out
    assert len(_runs(tmp_path, "tiny_ablation")) == runs_before
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "tune", "--trials", "2")) == 0
    assert len(_study(tmp_path, "tiny_ablation/mean").trials) == 2
    assert len(_runs(tmp_path, "tiny_ablation")) > runs_before


def test_a_bad_feature_name_creates_no_store_file(tmp_path, capsys):
    """Issue 14 (fresh-user finding): a mistyped feature name used to be found only after the MLflow store
    (mlflow.db and its .lock) had been created; the data are now checked before any store exists."""
    args = _args(tmp_path, "--stage", "tune", "--set", "data.features=log_rv_1,nonsense_3")
    assert studies.main(_tiny(), args) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown feature 'nonsense_3'" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_resuming_a_study_on_other_data_is_refused(tmp_path):
    from regimetry.config import DataConfig

    storage = studies.resolve_storage(f"sqlite:///{tmp_path}/s.db")
    key = studies.data_key(DataConfig(source="synthetic"))
    studies.ensure_study(storage, "x/a", TINY_BUDGET, seed=0, data_key=key)
    studies.ensure_study(storage, "x/a", TINY_BUDGET, seed=0, data_key=key)  # same data: resumes
    with pytest.raises(ValueError, match=r"tuned on other data.*source"):
        studies.ensure_study(storage, "x/a", TINY_BUDGET, seed=0, data_key=studies.data_key(DataConfig()))


def test_jobs_1_and_jobs_2_give_the_same_trials_parameters_and_metrics(tmp_path):
    """Issue 14: configurations are fixed by construction, so the number of workers and their claim
    order change neither trial i's parameters nor (same seed) its score."""
    results = {}
    for jobs in (1, 2):
        root = tmp_path / f"jobs{jobs}"
        root.mkdir()
        args = _args(root, "--paths", "1")
        args[args.index("--jobs") + 1] = str(jobs)
        assert studies.main(_tiny(), args) == 0
        results[jobs] = {
            arm: [(t.number, t.params, round(t.value, 6), t.state.name)
                  for t in sorted(_study(root, f"tiny_ablation/{arm}").trials, key=lambda t: t.number)]
            for arm in ("mean", "last")}
    assert results[1] == results[2]
    # and every arm got the same configurations
    assert [p for _, p, _, _ in results[1]["mean"]] == [p for _, p, _, _ in results[1]["last"]]


def _slot_study(tmp_path, trials=4, startup=1):
    storage = studies.resolve_storage(f"sqlite:///{tmp_path}/slots.db")
    budget = Budget(trials_per_arm=trials, pruner_startup_trials=startup, pruner_warmup_epochs=0)
    return studies.ensure_study(storage, "x/a", budget, seed=0, space=TINY_SPACE)


def _slot_of(trial) -> int:
    return trial.study._storage.get_trial(trial._trial_id).user_attrs["slot"]


def test_pruning_compares_a_slot_with_the_lower_slots_at_the_same_epoch_whatever_their_fate(tmp_path):
    """Issue 14: pruning must not depend on which trials happen to be COMPLETE when a trial asks (with
    several workers that is timing). Slot i at epoch k is compared with slots 0..i-1 at epoch k, a
    lower slot that was later pruned included; Optuna's MedianPruner would prune this trial."""
    study = _slot_study(tmp_path)
    t0, t1, t2 = (backend.claim_waiting_trial(study) for _ in range(3))
    assert [_slot_of(t) for t in (t0, t1, t2)] == [0, 1, 2]
    for trial, curve in ((t0, [0.5, 0.6]), (t1, [0.7, 0.8])):
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
    backend.finish_trial(study, t0, "PRUNED")
    backend.finish_trial(study, t1, "COMPLETE", 0.8)
    t2.report(0.65, 0)
    assert not t2.should_prune()  # median of slots 0, 1 at epoch 0 is .60; Optuna's (COMPLETE only) .70
    assert optuna.pruners.MedianPruner(n_startup_trials=1).prune(study, study._storage.get_trial(t2._trial_id))
    t2.report(0.65, 1)
    assert t2.should_prune()  # best so far .65 < median(.6, .8) = .70


def test_pruning_waits_for_a_running_lower_slot_and_decides_as_a_single_worker_would(tmp_path):
    """Issue 14: with two workers, slot 2 may reach epoch 0 before slot 1 does; it waits for slot 1's
    value instead of deciding on whatever has finished, so --jobs 1 and --jobs 2 prune alike."""
    import threading
    import time

    study = _slot_study(tmp_path)
    t0, t1, t2 = (backend.claim_waiting_trial(study) for _ in range(3))
    t0.report(0.6, 0)
    backend.finish_trial(study, t0, "COMPLETE", 0.6)
    t2.report(0.62, 0)
    other_worker = threading.Thread(target=lambda: (time.sleep(0.6), t1.report(0.9, 0)))
    other_worker.start()
    started = time.monotonic()
    decision = t2.should_prune()  # alone (slot 0 only) .62 > .60 would not prune; with slot 1: median .75
    waited = time.monotonic() - started
    other_worker.join()
    assert decision is True and waited >= 0.5


def test_a_lower_slot_waiting_for_a_worker_makes_the_trial_yield_and_is_claimed_first(tmp_path):
    """Issue 14: after a crash or Ctrl-C a slot's retry is WAITING; a higher slot whose pruning needs it
    gives its own slot back (SlotYield) instead of deadlocking a single worker, and the lowest slot is
    claimed first."""
    study = _slot_study(tmp_path)
    t0, t1 = backend.claim_waiting_trial(study), backend.claim_waiting_trial(study)
    assert backend.hand_back(study, t0)  # slot 0 interrupted: its retry waits
    t1.report(0.5, 0)
    with pytest.raises(backend.SlotYield, match="slot 0"):
        t1.should_prune()
    assert backend.hand_back(study, t1)
    assert [_slot_of(backend.claim_waiting_trial(study)) for _ in range(4)] == [0, 1, 2, 3]


def test_best_trial_ties_go_to_the_lowest_slot_not_the_storage_order(tmp_path):
    study = _slot_study(tmp_path, trials=3)
    trials = [backend.claim_waiting_trial(study) for _ in range(3)]
    for trial, value in zip(reversed(trials), (0.7, 0.7, 0.5)):  # slots 2 and 1 tie at the top
        backend.finish_trial(study, trial, "COMPLETE", value)
    assert backend.best_trial(study).user_attrs["slot"] == 1


def test_a_yielding_trial_is_handed_back_and_the_budget_still_finishes(tmp_path, monkeypatch):
    """The tuning loop gives a yielding trial's slot back (MLflow run KILLED, tagged ``yielded``) and goes
    on: the budget reads n/n, nothing FAIL or RUNNING."""
    from regimetry.studies import tuning

    real = tuning._fit_trial
    calls = {"n": 0}

    def yielding_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise backend.SlotYield("slot 0 (trial 9) waits for a worker")
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "_fit_trial", yielding_once)
    assert studies.main(_tiny(), _args(tmp_path, "--stage", "tune", "--arms", "mean", "--trials", "2")) == 0
    counts = studies.budget_counts(_study(tmp_path, "tiny_ablation/mean"))
    assert counts["COMPLETE"] + counts["PRUNED"] == 2 and counts["FAIL"] == 0 and counts["INTERRUPTED"] == 1, counts
    assert counts["WAITING"] == counts["RUNNING"] == 0
    runs = _runs(tmp_path, "tiny_ablation")
    yielded = runs[runs["tags.yielded"].notna()] if "tags.yielded" in runs else runs.iloc[0:0]
    assert list(yielded["status"]) == ["KILLED"] and "RUNNING" not in set(runs["status"])


def test_summary_flags_a_one_class_block_beside_the_verdicts():
    """Issue 16: a one-class test block (the first round's 2004-2006) is named wherever verdicts appear."""
    import numpy as np

    from regimetry.config import ModelConfig, TrainConfig

    rng = np.random.default_rng(0)
    y_blocks = [np.zeros(50, dtype=int), np.tile([0, 1, 2], 50)]
    confs = [studies.ArmConfirmation(arm, 0, 0.5, ModelConfig(), TrainConfig(), y_blocks,
                                     [rng.dirichlet(np.ones(3), size=(len(y), 2)) for y in y_blocks], [], [], 0.0, 0.0)
             for arm in ("mean", "last")]
    summary = studies.summarize(_tiny(), confs, num_classes=3, horizon=21, baselines=None, n_boot=50)
    assert [w["fold"] for w in summary["block_warnings"]] == [0]
    assert "one class only" in summary["block_warnings"][0]["message"] and "25%" in summary["block_warnings"][0]["message"]
    markdown = study_summary.markdown(summary, _tiny(), TINY_BUDGET)
    assert "## Evaluation blocks that weaken these verdicts" in markdown
    assert markdown.index("## Verdicts") < markdown.index("block 0: one class only")


def test_progress_lines_give_elapsed_time_and_an_estimate_of_the_time_left():
    assert study_summary.timing(30.0, 1, 4) == "elapsed 30s, ~1m30s left"
    assert study_summary.timing(125.0, 4, 4) == "elapsed 2m05s"
    assert study_summary.timing(float("nan"), 0, 4) == "elapsed -"


_KILLABLE = '''
import sys
sys.path.insert(0, {tests!r})
from test_studies import _tiny
from regimetry import studies
sys.exit(studies.main(_tiny(), {args!r}))
'''


def _kill_group_when(proc, ready, timeout: float, settle: float = 0.0) -> None:
    """Poll ``ready()`` until it holds (then wait ``settle`` s) or ``proc`` ends; SIGKILL the process group."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                time.sleep(settle)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _trial_table(root):
    out = {}
    for arm in ("mean", "last"):
        trials = _study(root, f"tiny_ablation/{arm}").trials
        out[arm] = sorted((t.user_attrs.get("slot"), tuple(sorted(t.params.items())), round(t.value, 6), t.state.name)
                          for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    return out


def _storage_url(kind: str, root: Path, request) -> str:
    if kind == "sqlite":
        return f"sqlite:///{root}/optuna.db"
    if kind == "journal":
        return f"journal:///{root}/optuna.log"
    return fresh_database(request.getfixturevalue("postgres_url"))


def _running_trials(storage_url: str) -> list:
    try:
        storage = studies.resolve_storage(storage_url)
        return [t for s in optuna.get_all_study_summaries(storage)
                for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
                if t.state.name == "RUNNING" and studies.OWNER_ATTR in t.system_attrs]
    except Exception:  # noqa: BLE001 - the storage may not exist yet
        return []


@pytest.mark.parametrize("kind", ["sqlite", "journal", pytest.param("postgres", marks=pytest.mark.xdist_group("postgres"))])
def test_kill_9_during_tuning_then_an_immediate_rerun_finishes_the_exact_budget(kind, tmp_path, request):
    """Issue 14: a worker killed with SIGKILL leaves a RUNNING trial and RUNNING MLflow runs. An
    immediate re-run recognises the dead owner (same host, pid gone), retries the trial at once
    without counting it as a failure, ends the dead runs KILLED and (sqlite: checked against an
    uninterrupted run) gives the same trials."""
    import signal
    import time

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir(), clean.mkdir()
    storage_url = _storage_url(kind, killed, request)
    args = _args(killed, "--paths", "1")
    args[args.index("--storage") + 1] = storage_url
    script = killed / "run.py"
    script.write_text(_KILLABLE.format(tests=str(Path(__file__).parent), args=args))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_group_when(proc, lambda: bool(_running_trials(storage_url)), timeout=240, settle=1.0)  # inside training
    assert proc.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    before = _runs(killed, "tiny_ablation")
    assert "RUNNING" in set(before["status"])  # what kill -9 leaves behind

    assert studies.main(_tiny(), args) == 0  # immediately, no grace period
    storage = studies.resolve_storage(storage_url)
    for arm in ("mean", "last"):
        counts = studies.budget_counts(optuna.load_study(study_name=f"tiny_ablation/{arm}", storage=storage))
        assert counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"] == 3, (arm, counts)
        assert counts["RUNNING"] == counts["WAITING"] == 0 and counts["FAIL"] == 0, (arm, counts)
    runs = _runs(killed, "tiny_ablation")
    assert "RUNNING" not in set(runs["status"])
    ended = runs[runs["tags.ended_by"].notna()] if "tags.ended_by" in runs else runs.iloc[0:0]
    was_running = set(before.loc[before["status"] == "RUNNING", "run_id"])
    assert set(ended["run_id"]) == was_running and set(ended["status"]) == {"KILLED"}
    if kind == "sqlite":  # the same result as a run that was never interrupted
        assert studies.main(_tiny(), _args(clean, "--paths", "1")) == 0
        assert _trial_table(killed) == _trial_table(clean)


@pytest.mark.slow
def test_sigterm_to_the_main_process_ends_every_run_and_hands_back_the_trials(tmp_path):
    """SIGTERM (timeout, docker stop, Slurm) reaches the main process only; it used to die at once and
    leave its MLflow runs RUNNING. Now it ends like Ctrl-C: workers get the signal forwarded, every run
    ends KILLED, no trial stays RUNNING, exit 130, and a re-run finishes the exact budget."""
    import signal
    import time

    args = _args(tmp_path, "--paths", "1")
    args[args.index("--jobs") + 1] = "2"
    script = tmp_path / "run.py"
    # worker processes are spawned: they re-import the script, hence the __main__ guard
    script.write_text(_KILLABLE.format(tests=str(Path(__file__).parent), args=args)
                      .replace("sys.exit(", "if __name__ == '__main__':\n    sys.exit("))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    storage_url = f"sqlite:///{tmp_path}/optuna.db"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not _running_trials(storage_url):
        time.sleep(0.2)
    time.sleep(1.0)  # inside a trial's training
    proc.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` does
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    runs = _runs(tmp_path, "tiny_ablation")
    assert "RUNNING" not in set(runs["status"]) and "KILLED" in set(runs["status"])
    assert not _running_trials(storage_url)
    assert studies.main(_tiny(), args) == 0
    for arm in ("mean", "last"):
        counts = studies.budget_counts(_study(tmp_path, f"tiny_ablation/{arm}"))
        assert counts["COMPLETE"] + counts["PRUNED"] == 3 and counts["RUNNING"] == counts["WAITING"] == 0, counts


def _verdicts_and_pooled(root) -> tuple:
    """The finished session's verdicts tag and its arm runs' pooled test metrics (exact reprs)."""
    runs = _runs(root, "tiny_ablation")
    parent = runs[(runs["tags.stage"] == "study") & (runs["status"] == "FINISHED")].sort_values("start_time").iloc[-1]
    arms = runs[(runs["tags.stage"] == "arm") & (runs["tags.mlflow.parentRunId"] == parent["run_id"])]
    pooled = {row["tags.arm"]: {k: repr(float(row[k])) for k in runs.columns if k.startswith("metrics.confirm/test/")}
              for _, row in arms.iterrows()}  # repr: exact, and NaN (a 1-seed std) equals NaN
    return parent["tags.verdicts"], pooled, set(arms["run_id"])


@pytest.mark.slow
def test_kill_9_during_confirmation_then_an_immediate_rerun_resumes_it(tmp_path):
    """Issue 14: kill -9 of the process group while confirmation runs. The immediate re-run takes over
    the confirmation runs the dead session finished (no duplicate, no retraining), trains the rest, and
    gives the verdicts and pooled metrics of an uninterrupted run, bit for bit, with nothing RUNNING."""
    import signal
    import time

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir(), clean.mkdir()
    args = _args(killed)  # 2 paths x 1 seed x 2 arms = 4 confirmation runs
    script = killed / "run.py"
    script.write_text(_KILLABLE.format(tests=str(Path(__file__).parent), args=args))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def a_confirmation_run_finished() -> bool:
        runs = _runs(killed, "tiny_ablation")
        return bool(len(runs) and "tags.stage" in runs
                    and ((runs["tags.stage"] == "confirm") & (runs["status"] == "FINISHED")).any())

    _kill_group_when(proc, a_confirmation_run_finished, timeout=600)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = _runs(killed, "tiny_ablation")
    finished_before = set(before.loc[(before["tags.stage"] == "confirm") & (before["status"] == "FINISHED"), "run_id"])
    assert 1 <= len(finished_before) < 4

    assert studies.main(_tiny(), args) == 0  # immediately, no grace period
    runs = _runs(killed, "tiny_ablation")
    assert "RUNNING" not in set(runs["status"])
    for arm in ("mean", "last"):
        counts = studies.budget_counts(_study(killed, f"tiny_ablation/{arm}"))
        assert counts["COMPLETE"] + counts["PRUNED"] == 3 and counts["RUNNING"] == counts["WAITING"] == 0, counts
    verdicts, pooled, arm_runs = _verdicts_and_pooled(killed)
    confirms = runs[(runs["tags.stage"] == "confirm") & (runs["status"] == "FINISHED")]
    assert len(confirms) == 4 and set(confirms["tags.mlflow.parentRunId"]) <= arm_runs  # none duplicated
    resumed = set(confirms.loc[confirms["tags.resumed_from"].notna(), "run_id"])
    assert resumed == finished_before  # taken over, not trained again

    assert studies.main(_tiny(), _args(clean)) == 0
    assert (verdicts, pooled) == _verdicts_and_pooled(clean)[:2]
    assert verdicts and all(len(metrics) >= 3 for metrics in pooled.values())


@pytest.mark.xdist_group("postgres")  # one throwaway cluster per test worker: keep its users on one
def test_postgres_two_simultaneous_tuning_processes_then_confirm(postgres_url, tmp_path):
    """Issue 14: several machines share one PostgreSQL: two processes tune at once and finish
    exactly the budget with the same configuration per slot in every arm; a confirm stage follows."""
    storage_url = fresh_database(postgres_url)
    args = _args(tmp_path, "--paths", "1")
    args[args.index("--storage") + 1] = storage_url
    script = tmp_path / "tune.py"
    script.write_text(_KILLABLE.format(tests=str(Path(__file__).parent), args=[*args, "--stage", "tune"]))
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    storage = studies.resolve_storage(storage_url)
    slots = {}
    for arm in ("mean", "last"):
        study = optuna.load_study(study_name=f"tiny_ablation/{arm}", storage=storage)
        counts = studies.budget_counts(study)
        assert counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"] == 3 and counts["RUNNING"] == 0, counts
        slots[arm] = sorted((t.user_attrs["slot"], tuple(sorted(t.params.items()))) for t in study.trials)
    assert slots["mean"] == slots["last"]
    assert studies.main(_tiny(), [*args, "--stage", "confirm"]) == 0
    runs = _runs(tmp_path, "tiny_ablation")
    # one synthetic path (--paths 1) x 1 seed per arm
    assert "RUNNING" not in set(runs["status"]) and len(runs[runs["tags.stage"] == "confirm"]) == 2


def test_a_short_budget_never_prints_verdicts(tmp_path, capsys):
    """Issue 14: with a trial still RUNNING in a live process, confirmation stops with a message."""
    args = _args(tmp_path, "--paths", "1", "--trials", "2")
    assert studies.main(_tiny(), [*args, "--stage", "tune"]) == 0
    capsys.readouterr()
    for arm in ("last", "mean"):  # one more slot in each (equal budgets), mean's claimed by a live process (this one)
        study = _study(tmp_path, f"tiny_ablation/{arm}")
        study.enqueue_trial({}, user_attrs={"regimetry_budget_slot": True})
        study.set_user_attr("budget", 3)
    trial = backend.claim_waiting_trial(study)
    assert trial is not None
    assert studies.main(_tiny(), [*args, "--stage", "confirm", "--trials", "3"]) == 1
    err = capsys.readouterr().err
    assert "tuning budget is not finished" in err and "mean 2/3 (1 running, 0 waiting)" in err
    assert "Traceback" not in err


def test_console_drops_tensorflow_retracing_warnings_only(caplog):
    """Issue 16: four 700-character retracing warnings per run; real TensorFlow warnings still show."""
    import logging

    context.configure_logging()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("tensorflow").warning("5 out of the last 31 calls to <f> triggered tf.function retracing.")
        logging.getLogger("tensorflow").warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]


def test_a_storage_whose_driver_is_missing_says_how_to_install_it():
    """New-user check: Optuna's "Please install appropriate one." named no package."""
    with pytest.raises(ValueError, match=r"--storage 'mysql://u:\*\*\*@127.0.0.1/x'.*driver is not installed: "
                                         r"for mysql:// pip install pymysql and write mysql\+pymysql://"):
        studies.resolve_storage("mysql://u:pw@127.0.0.1/x")


def test_rerunning_a_finished_ablation_says_that_it_trains_the_confirmation_again(tmp_path, capsys):
    """Fresh-user finding: a second run of a finished ablation silently retrained every confirmation run."""
    ablation = _tiny()
    args = _args(tmp_path, "--trials", "1", "--folds", "1", "--max-epochs", "1")
    assert studies.main(ablation, args) == 0
    assert "already confirmed" not in capsys.readouterr().out
    assert studies.main(ablation, args) == 0
    out = capsys.readouterr().out
    assert re.search(r"a finished session \(MLflow run \w+\) already confirmed all \d+ runs of this plan; "
                     r"training them again", out), out[-2000:]
    assert "python -m regimetry.reports tiny_ablation --tracking-uri sqlite:///" in out


def test_ctrl_c_while_the_pool_workers_start_prints_no_traceback(tmp_path):
    """Fresh-user finding: Ctrl-C while the two workers were still importing TensorFlow printed ~100
    lines of KeyboardInterrupt traceback per worker. Workers now start with SIGINT/SIGTERM blocked and
    take a pending one as an interrupt once their handlers are installed: one line, exit 130."""
    import signal
    import time

    script = ROOT / "experiments" / "03_encoding_ablation.py"
    args = _args(tmp_path, "--stage", "tune", "--arms", "none", "--trials", "2")
    args[args.index("--jobs") + 1] = "2"
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    for line in proc.stdout:  # the pool starts its workers right after this line
        if ": tuning " in line:
            break
    time.sleep(1.0)  # the workers are importing TensorFlow now
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: finished trials are stored" in err, err


def test_a_pool_worker_starts_no_task_after_an_interrupt(monkeypatch):
    """Fresh-user finding: after Ctrl-C with --jobs 2 the pool's workers went on to train the confirmation
    runs already handed to them (56 s, three new FINISHED runs). Once interrupted, in a task or idle, a
    worker refuses every later task without running it."""
    import signal

    from regimetry import processes

    monkeypatch.setattr(processes, "_INTERRUPTED", False)
    ran = []

    def interrupted_task():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        processes._guarded(interrupted_task)
    with pytest.raises(KeyboardInterrupt, match="before this task started"):
        processes._guarded(ran.append, "next task")
    assert ran == []

    # a signal while idle only marks the worker; a signal inside a task interrupts it
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        processes.worker_signals()
        monkeypatch.setattr(processes, "_INTERRUPTED", False)
        signal.raise_signal(signal.SIGINT)  # idle: no exception here
        assert processes._INTERRUPTED
        with pytest.raises(KeyboardInterrupt, match="before this task started"):
            processes._guarded(ran.append, "after an idle interrupt")
        monkeypatch.setattr(processes, "_INTERRUPTED", False)
        with pytest.raises(KeyboardInterrupt, match="interrupted by signal"):
            processes._guarded(signal.raise_signal, signal.SIGTERM)
        assert ran == [] and processes._INTERRUPTED and not processes._IN_TASK
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_pool_workers_share_the_cores_among_their_tensorflow_threads(monkeypatch):
    """Each pool worker starts TensorFlow with the usable cores divided among the workers (not one thread
    pool per core in every process); a user's own TF_NUM_*_THREADS setting wins."""
    for name in processes.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cores = len(os.sched_getaffinity(0))
    assert processes.threads_per_worker(2) == max(1, cores // 2)
    assert processes.threads_per_worker(1) == cores and processes.threads_per_worker(10 * cores) == 1

    def worker_settings() -> list[str | None]:
        with processes.worker_pool(2, os.getpid) as pool:
            return [processes.worker_result(processes.submit(pool, os.getenv, name))
                    for name in processes.THREAD_VARIABLES]

    share = str(max(1, cores // 2))
    assert worker_settings() == [share, share]
    assert all(os.getenv(name) is None for name in processes.THREAD_VARIABLES)  # the parent is untouched
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert worker_settings() == ["3", share]


def test_data_warnings_print_as_one_line_without_library_source():
    """Fresh-user finding: a data warning showed the harness's file, line and source line under it."""
    from regimetry.data.sources import RegimetryDataWarning
    from regimetry.studies import context

    assert context._format_warning(RegimetryDataWarning("column 'x': 3 NaN"), RegimetryDataWarning,
                                   "/somewhere/context.py", 57, "blocks = list(...)") == "warning: column 'x': 3 NaN\n"
    other = context._format_warning(UserWarning("u"), UserWarning, "/somewhere/lib.py", 3, "x = 1")
    assert "/somewhere/lib.py:3" in other and "UserWarning" in other
