"""The record format (regimetry.records): an ablation's records written through the harness's own
writers into a temporary MLflow store, then every key read back through the report's readers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from regimetry import records, reports, tracking
from regimetry.config import DataConfig, ModelConfig, TrainConfig
from regimetry.studies import Ablation, Arm, Budget, RunOptions
from regimetry.studies import confirm, runner, summary

EXPERIMENT = "09_records_roundtrip"
ARMS = ("alpha", "beta")
ABLATION = Ablation(name=EXPERIMENT, question="Do the records round-trip?", scientific="model.pooling",
                    arms=(Arm("alpha", {"model.pooling": "mean"}), Arm("beta", {"model.pooling": "last"})))
BUDGET = Budget(trials_per_arm=2, max_epochs=2, patience=1, seeds=2, folds=2)


def _confirmations(rng: np.random.Generator, y_blocks: list[np.ndarray]) -> list[summary.ArmConfirmation]:
    out = []
    for i, arm in enumerate(ARMS):
        probs = [rng.dirichlet(np.ones(3), size=(len(y), BUDGET.seeds)).astype(np.float32) for y in y_blocks]
        out.append(summary.ArmConfirmation(arm, best_trial=i, best_value=0.5 + i / 10, model_config=ModelConfig(),
                                           train_config=TrainConfig(), y_true=y_blocks, probs=probs, per_run=[],
                                           edge_warnings=["model.dropout=0.0 is at the lower edge"] if i else [],
                                           fraction_pruned=0.5, fraction_failed=0.0))
    return out


def _write(tmp_path) -> tuple[str, dict, np.ndarray]:
    """An ablation's records through the real writers (runner, confirm), as ``run_ablation`` writes them."""
    uri = tracking.configure(f"sqlite:///{tmp_path}/mlflow.db")
    rng = np.random.default_rng(0)
    y_blocks = [rng.integers(0, 3, size=60), rng.integers(0, 3, size=60)]
    confirmations = _confirmations(rng, y_blocks)
    reference = {"name": "har_rv", "per_block": [rng.dirichlet(np.ones(3), size=len(y)) for y in y_blocks]}
    result = summary.summarize(ABLATION, confirmations, num_classes=3, horizon=5, baselines=[reference], n_boot=50)
    timestamps = pd.date_range("2020-01-01", periods=120, freq="D")
    result["predictions"] = pd.DataFrame({"timestamp": timestamps, "fold": np.repeat([0, 1], 60),
                                          "y_true": np.concatenate(y_blocks), "pred.alpha": 0, "pred.beta": 1})
    result["ceilings"] = pd.DataFrame([{"arm": "alpha", "path": 0, "seed": 0, "accuracy": 0.5,
                                        "ceiling_accuracy": 0.6, "fraction_of_ceiling": 0.83,
                                        "ceiling_balanced_accuracy": 0.55}])
    options = RunOptions(dataset="synthetic", storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=uri)
    config = DataConfig(source="synthetic")
    probs = rng.dirichlet(np.ones(3), size=60).astype(np.float32)
    with tracking.run(EXPERIMENT, run_name="parent", tags=runner._parent_tags(ABLATION, options, config,
                                                                                list(ABLATION.arms),
                                                                                options.storage)) as parent:
        ctx = runner._open_session(ABLATION, options, BUDGET, config, list(ABLATION.arms), parent.run_id)
        with tracking.run(EXPERIMENT, run_name="fold0/seed0", parent_run_id=ctx.arm_run_ids["alpha"],
                          tags=confirm.confirm_tags("alpha", 0, 0, "key-0", parent.run_id)):
            tracking.log_metrics({records.split_metric("test", "balanced_accuracy"): 0.4,
                                  records.split_metric("val", "balanced_accuracy"): 0.45})
            confirm.log_test_probs(probs)
        confirm.log_summary(result, confirmations, ctx.arm_run_ids, summary.markdown(result, ABLATION, BUDGET),
                            ["low", "mid", "high"])
    return uri, result, probs


def test_every_key_the_harness_writes_reads_back(tmp_path):
    uri, result, probs = _write(tmp_path)
    runs = reports.load_ablation_runs(EXPERIMENT, uri)
    assert runs.arm_names == list(ARMS)

    # parent run: tags, params, the declaration artifact
    proto = reports.protocol(runs)
    overview = dict(zip(proto["overview"]["item"], proto["overview"]["value"]))
    for item in ("question", "scientific hyperparameter", "dataset", "seed", "budget", "Optuna studies",
                 "Optuna storage"):
        assert overview[item] != "not recorded", item
    assert json.loads(runs.tag(records.OPTUNA_STUDIES)) == [f"{EXPERIMENT}/{a}" for a in ARMS]
    assert list(proto["arms"]["arm"]) == list(ARMS) and proto["nuisance"] is not None
    assert records.read_params(runs.parent, records.OPTIONS_PARAM) == {"jobs": "1", "smoke": "False"}
    assert records.read_params(runs.parent, records.BUDGET_PARAM)["trials_per_arm"] == "2"
    assert reports.verdict_lines(runs) == result["verdicts"]
    assert records.split_joined(runs.tag(records.VERDICTS)) == result["verdicts"]
    assert runs.tag(records.BLOCK_WARNINGS) is not None
    har = records.read_metric(runs.parent, records.reference_metric("har_rv", "balanced_accuracy"))
    assert har == float(result["references"]["balanced_accuracy_pooled"].iloc[0])

    # arm runs: every column of the report's arm table, read through the metric and tag keys
    table = reports.arm_summary(runs).set_index("arm")
    expected = result["arms"].set_index("arm")
    for arm in ARMS:
        for column, source in (("mean", "balanced_accuracy_mean"), ("seed_ci_low", "balanced_accuracy_seed_ci_low"),
                               ("seed_ci_high", "balanced_accuracy_seed_ci_high"),
                               ("pooled", "balanced_accuracy_pooled"), ("boot_ci_low", "balanced_accuracy_boot_ci_low"),
                               ("boot_ci_high", "balanced_accuracy_boot_ci_high"), ("best_val", "best_val"),
                               ("fraction_pruned", "fraction_pruned"), ("fraction_failed", "fraction_failed")):
            assert math.isclose(table.loc[arm, column], float(expected.loc[arm, source])), (arm, column)
        assert int(table.loc[arm, "best_trial"]) == int(expected.loc[arm, "best_trial"])
        row = runs.arms.loc[arm]
        other = [a for a in ARMS if a != arm][0]
        assert not math.isnan(records.read_metric(row, records.mde_metric(other)))
        assert not math.isnan(records.read_metric(row, records.mde_metric("har_rv")))
        assert set(records.read_fold_metrics(row, "macro_f1")) == {0, 1}
        assert records.read_params(row, records.BEST_PARAM)[records.best_param("model", "d_model")[len("best."):]]
        assert records.read_params(row, records.ARM_PARAM) == {k: str(v) for k, v in ABLATION.arm(arm).overrides.items()}
        assert runs.json(row["run_id"], records.BEST_CONFIG)["model"] == dict(json.loads(json.dumps(
            ModelConfig().to_dict())))
    assert table.loc["beta", "edge_warnings"] and table.loc["alpha", "edge_warnings"] == ""

    # per-fold and pooled results of arms and references; every summary artifact
    folds = reports.fold_results(runs)
    assert list(folds.index) == ["fold 0", "fold 1", "pooled"]
    assert {"alpha", "beta", "har_rv (reference)"} <= set(folds.columns) and not folds.isna().any().any()
    for path in (records.SUMMARY_ARMS, records.SUMMARY_PER_FOLD, records.SUMMARY_DIFFERENCES,
                 records.SUMMARY_PREDICTIONS, records.SUMMARY_REFERENCES, records.SUMMARY_CEILINGS):
        assert len(runs.csv(runs.parent_run_id, path)), path
    assert runs.text(runs.parent_run_id, records.SUMMARY_MARKDOWN).startswith(f"# {EXPERIMENT}")
    assert runs.json(runs.parent_run_id, records.SUMMARY_CLASSES) == {"class_names": ["low", "mid", "high"]}
    assert len(reports.differences(runs)) and reports.regimes_over_time_figure(runs, "alpha") is not None

    # confirmation run: its tags, test metric and probabilities (what a resumed confirmation reads)
    confirms = runs.confirms
    assert len(confirms) == 1
    row = confirms.iloc[0]
    assert records.read_tag(row, records.CONFIRM_KEY_TAG) == "key-0"
    assert records.read_tag(row, records.SESSION_TAG) == runs.parent_run_id
    assert records.read_tag(row, records.STAGE) == records.STAGE_CONFIRM
    assert list(reports.seed_results(runs)["test"]) == [0.4]
    stored = np.load(tracking.download_artifacts(row["run_id"], records.CONFIRM_PROBS_ARTIFACT))
    np.testing.assert_array_equal(stored, probs)


def test_fold_keys_parse_back():
    assert records.parse_fold_metric(records.fold_metric(3, "log_loss"), "log_loss") == 3
    assert records.parse_fold_metric(records.fold_metric(3, "log_loss"), "macro_f1") is None
    assert records.parse_fold_metric("confirm/test/log_loss_pooled", "log_loss") is None
    assert records.split_joined(records.joined(["a b", "c"])) == ["a b", "c"]
    assert records.split_joined(records.NONE) == []
