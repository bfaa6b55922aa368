"""The declaration language (regimetry.studies.spec): search spaces, arm resolution, experiment
declarations, and arms checked before any budget is spent (issue 13)."""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from regimetry import studies
from regimetry.studies import Arm, Categorical, Float, SearchSpace
from test_studies import TINY_BUDGET, TINY_SPACE, _args, _runs, _tiny

ROOT = Path(__file__).resolve().parents[1]


def test_search_space_conditions_and_edges():
    trial = optuna.trial.FixedTrial({"train.learning_rate": 1e-3, "model.d_model": 8, "head": "linear"})
    assert TINY_SPACE.sample(trial) == {"train.learning_rate": 1e-3, "model.d_model": 8, "head": "linear"}
    space = SearchSpace((Float("lr", low=1e-4, high=1e-2, log=True), Categorical("w", choices=(8, 16, 32))))
    warnings = space.edge_warnings({"lr": 1.02e-4, "w": 16})
    assert len(warnings) == 1 and "lr" in warnings[0] and "lower edge" in warnings[0]
    assert space.edge_warnings({"lr": 1e-3, "w": 32}) == ["w=32 is at the upper edge of the search space"]


def test_resolve_applies_arm_last_and_builds_head():
    ablation = _tiny()
    model, train = ablation.resolve(ablation.arms[1], {"model.pooling": "max", "head": "mlp", "head_units": 8},
                                    TINY_BUDGET, seed=7)
    assert model.pooling == "last" and model.head_units == (8,) and model.num_layers == 1
    assert (train.max_epochs, train.seed) == (2, 7)
    with pytest.raises(ValueError, match="d_model"):
        ablation.resolve(ablation.arms[0], {"model.d_model": -3}, TINY_BUDGET, seed=0)


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


@pytest.mark.parametrize("script", ["04_mask_ablation", "05_depth_ablation", "06_pooling_ablation"])
def test_experiment_declarations(script):
    ablation = _load_script(script)
    assert ablation.name == script and len(ablation.arms) >= 2
    for arm in ablation.arms:  # every arm resolves to a valid config with the default nuisance space
        ablation.resolve(arm, {"head": "linear"}, ablation.budget, seed=0)


def test_set_passes_data_settings_to_the_run(tmp_path):
    """--set data.label_buckets / data.timezone reach DataConfig (and so the study identity)."""
    options = studies.RunOptions(dataset="synthetic", data_settings=(("leakage_check", "error"),))
    config = studies.data_config(_tiny(), options, TINY_BUDGET)
    assert config.leakage_check == "error"


def test_a_typo_in_an_arm_fails_at_once_and_spends_no_budget(tmp_path, capsys):
    """Issue 13: every arm is resolved before any budget is spent; a typo'd value is one line naming the
    arm and the allowed values, exit 2, and no study or MLflow run is written."""
    ablation = _tiny(arms=(Arm("mean", {"model.pooling": "mean"}), Arm("typo", {"model.positional_encoding": "tAPE"})))
    assert studies.main(ablation, _args(tmp_path, "--stage", "tune")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "arm 'typo'" in err and "positional_encoding" in err and "'tAPE'" in err and "'sinusoidal'" in err, err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlruns").exists()


def test_a_changed_arm_definition_refuses_to_resume_its_study(tmp_path, capsys):
    """Issue 13: the study identity covers the arm, the fixed settings and the nuisance space; a re-run
    after the arm changed refuses (exit 2, before any MLflow run) and says how to start a new study."""
    args = _args(tmp_path, "--stage", "tune", "--arms", "mean", "--trials", "1")
    assert studies.main(_tiny(), args) == 0
    parents = _runs(tmp_path, "tiny_ablation").query("`tags.stage` == 'study'")
    capsys.readouterr()
    edited = _tiny(arms=(Arm("mean", {"model.pooling": "mean", "model.dropout": 0.2}),
                         Arm("last", {"model.pooling": "last"})))
    assert studies.main(edited, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "'tiny_ablation/mean'" in err and "arm.overrides" in err and "--storage" in err and "delete-study" in err
    assert len(_runs(tmp_path, "tiny_ablation").query("`tags.stage` == 'study'")) == len(parents)
    assert studies.main(_tiny(), args) == 0  # the unchanged definition still resumes


def test_shortcut_features_the_data_lacks_keep_the_present_ones_or_fall_back_to_every_feature():
    """RESIDUAL_MODEL's shortcut reads the HAR lags of two estimators; a user's --features with only the
    HAR-RV lags keeps those (not every feature), synthetic data without any falls back to ``()``."""
    ablation = studies.Ablation(name="x", question="q", scientific="s", arms=(Arm("a", {}), Arm("b", {})),
                               fixed=dict(studies.RESIDUAL_MODEL))
    arm = ablation.arms[0]
    full = ablation.resolve(arm, {}, TINY_BUDGET, 0, feature_names=["log_return", *studies.HAR_SHORTCUT_FEATURES])
    assert full[0].shortcut_features == studies.HAR_SHORTCUT_FEATURES
    assert "log_parkinson_22" in studies.HAR_SHORTCUT_FEATURES and "log_rv_22" in studies.HAR_SHORTCUT_FEATURES
    part = ablation.resolve(arm, {}, TINY_BUDGET, 0, feature_names=["log_return", "log_rv_1", "log_rv_5", "log_rv_22"])
    assert part[0].shortcut_features == ("log_rv_1", "log_rv_5", "log_rv_22")
    none = ablation.resolve(arm, {}, TINY_BUDGET, 0, feature_names=["log_return", "abs_return"])
    assert none[0].shortcut_features == ()


def test_the_ceiling_table_does_not_depend_on_the_order_runs_finish():
    from regimetry.studies.summary import ceiling_table

    ceiling = {"accuracy": 0.8, "balanced_accuracy": 0.75}
    y = np.array([0, 1, 1, 0])
    results = [{"arm": arm, "fold": fold, "seed": seed, "ceiling": ceiling, "y_true": y,
                "probs": np.eye(2)[(y + seed + fold) % 2]}
               for arm in ("b", "a") for fold in (1, 0) for seed in (1, 0)]
    table = ceiling_table(results, blocks=None)
    again = ceiling_table(results[::-1], blocks=None)
    pd.testing.assert_frame_equal(table, again)
    assert list(table["arm"]) == ["a"] * 4 + ["b"] * 4 and list(table["path"][:4]) == [0, 0, 1, 1]


def test_every_study_of_another_definition_is_named_with_its_delete_command(tmp_path, capsys):
    """A change of the fixed settings changes every arm's study: the refusal names all of them and gives
    the delete command of each (a fresh user deleted the one named and was refused again)."""
    args = _args(tmp_path, "--stage", "tune", "--trials", "1")
    assert studies.main(_tiny(), args) == 0
    capsys.readouterr()
    edited = dataclasses.replace(_tiny(), fixed={**_tiny().fixed, "model.ff_dim": 8})
    assert studies.main(edited, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "ablation.fixed" in err and "likewise" in err, err
    for name in ("tiny_ablation/mean", "tiny_ablation/last"):  # runnable as printed: the real storage URL
        command = f"optuna delete-study --study-name {shlex.quote(name)} --storage {shlex.quote(f'sqlite:///{tmp_path}/optuna.db')}"
        assert command in err, err  # shell-quoted: a path with a space or a URL with & stays one argument
