"""Single-run command line (python -m regimetry train)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from regimetry.__main__ import load_configs, main

TINY = [
    "--set", "data.source=synthetic", "--set", "data.synthetic_bars=700", "--set", "data.window_size=6",
    "--set", "model.d_model=16", "--set", "model.num_heads=4", "--set", "model.ff_dim=8",
    "--set", "model.num_layers=1", "--set", "train.max_epochs=2", "--set", "train.batch_size=32",
]


def test_cli_trains_a_tiny_synthetic_config_and_logs_a_run(tracking_uri, tmp_path, capsys):
    from regimetry import tracking

    config = tmp_path / "single.yaml"
    config.write_text("model:\n  pooling: max\ntrain:\n  seed: 7\n")
    code = main(["train", "--config", str(config), *TINY, "--tracking-uri", tracking_uri,
                 "--experiment", "cli_test", "--quick-model"])
    out = capsys.readouterr().out
    assert code == 0
    runs = tracking.search_runs("cli_test", tracking_uri=tracking_uri)
    assert len(runs) == 1
    row = runs.iloc[0]
    assert f"run_id: {row['run_id']}" in out and "test/balanced_accuracy" in out
    assert row["status"] == "FINISHED"
    assert (row["params.model.pooling"], row["params.train.seed"], row["params.model.d_model"]) == ("max", "7", "16")
    assert row["tags.stage"] == "single" and row["tags.dataset"] == "synthetic"
    assert 0.0 <= row["metrics.test/balanced_accuracy"] <= 1.0
    assert "keras/model.keras" in tracking.list_artifacts(row["run_id"], tracking_uri=tracking_uri)


def test_bad_override_exits_2_naming_the_field():
    proc = subprocess.run([sys.executable, "-m", "regimetry", "train", "--set", "model.d_model=-3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "ModelConfig.d_model" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("overrides, message", [
    (["model.dmodel=3"], "unknown field"),
    (["optim.lr=3"], "unknown section"),
    (["train.learning_rate"], "expected section.field=value"),
])
def test_bad_overrides_return_2(overrides, message, capsys):
    args = ["train"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match=message):
        load_configs(None, overrides)


def test_a_bad_feature_name_exits_2_before_any_store_exists(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    args = ["train", "--tracking-uri", uri, "--set", "data.source=synthetic", "--set", "data.features=log_rv_1,rv_1"]
    assert main(args) == 2
    assert "unknown feature 'rv_1'" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*"))  # no mlflow.db, no .lock, no directory


def test_missing_config_file_and_help(capsys):
    assert main(["train", "--config", "/no/such/file.yaml"]) == 2
    assert "/no/such/file.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--tracking-uri" in capsys.readouterr().out


def test_example_config_file_loads():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "configs" / "single_run.yaml"
    data, model, train = load_configs(str(example), ["model.d_model=64"])
    assert (data.source, model.d_model, train.monitor) == ("sp500", 64, "val_balanced_accuracy")
