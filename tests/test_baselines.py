"""Tests of regimetry.baselines on small simulated Markov-switching paths (known truth)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from regimetry import baselines as B
from regimetry.config import DataConfig
from regimetry.data.synthetic import MarkovSwitchingParams, hamilton_filter, simulate_markov_switching
from regimetry.data.types import SplitData, Splits

WINDOW = 6
FEATURES = 7  # distinct from every other test dimension


def _windows(feats: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.stack([feats[p - WINDOW + 1 : p + 1] for p in pos]).astype(np.float32)


def make_splits(
    num_bars: int = 3000,
    seed: int = 1,
    target: str = "true_regime",
    bars_override: pd.DataFrame | None = None,
    gap: int = 10,
    fractions: tuple[float, float] = (0.5, 0.6),
) -> Splits:
    """Hand-built ``Splits`` from a simulated path: windows of 7 trailing-return features, a
    chronological split at ``fractions`` (default 50/10/40: a long test period, so that comparing
    models with the ceiling is not dominated by sampling noise) with a ``gap``-bar embargo; labels =
    the true regime or the forward vol regime (training-period tertiles)."""
    path = simulate_markov_switching(num_bars=num_bars, seed=seed)
    bars = path.bars if bars_override is None else bars_override
    r = bars["log_return"].to_numpy()
    cfg = DataConfig(source="synthetic", window_size=WINDOW, horizon=5, target=target, synthetic_bars=num_bars)
    feats = np.stack(
        [r, np.abs(r), r**2, *(pd.Series(r).rolling(w, min_periods=1).std().fillna(0).to_numpy() for w in (3, 5, 10, 20))],
        axis=1,
    )
    assert feats.shape[1] == FEATURES
    if target == "true_regime":
        labels = pd.Series(path.regimes.astype(float), index=bars.index)
        thresholds = None
        names = ["calm", "turbulent", "middle"]
    else:
        from regimetry.data.labels import bucket, forward_realized_vol, vol_class_names, vol_thresholds

        fv = forward_realized_vol(bars["log_return"], cfg.horizon)
        train_end = int(fractions[0] * num_bars)
        thresholds = vol_thresholds(fv.to_numpy()[WINDOW:train_end], 3)
        labels = pd.Series(bucket(fv.to_numpy(), thresholds), index=bars.index)
        names = vol_class_names(3)
    pos_all = np.arange(max(WINDOW, 25), num_bars)
    pos_all = pos_all[np.isfinite(labels.to_numpy()[pos_all])]
    n = len(pos_all)
    a, b = int(fractions[0] * n), int(fractions[1] * n)
    parts = []
    for pos in (pos_all[:a], pos_all[a + gap : b], pos_all[b + gap :]):
        parts.append(SplitData(X=_windows(feats, pos), y=labels.to_numpy()[pos].astype(np.int64),
                               index=bars.index[pos], positions=pos.astype(np.int64)))
    return Splits(
        *parts, feature_names=[f"f{i}" for i in range(FEATURES)], class_names=names, config=cfg, bars=bars,
        labels=labels, label_thresholds=thresholds, extras={"params": path.params, "regimes": path.regimes},
    )


@pytest.fixture(scope="module")
def splits() -> Splits:
    return make_splits()


@pytest.fixture(scope="module")
def results(splits) -> dict[str, B.BaselineResult]:
    return B.run_baselines(splits, seed=0)


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
def test_realized_vol_matches_definition():
    r = np.random.default_rng(0).normal(0, 0.01, size=40)
    rv = B.realized_vol(r, 7)
    assert np.isnan(rv[:6]).all()
    t = 20
    assert rv[t] == pytest.approx(np.sqrt(252 / 7 * np.sum(r[t - 6 : t + 1] ** 2)))
    partial = B.realized_vol(r, 7, min_periods=1)
    assert partial[2] == pytest.approx(np.sqrt(252 * np.mean(r[:3] ** 2)))
    with pytest.raises(ValueError, match="window"):
        B.realized_vol(r, 0)


def test_har_features_shape_and_causality():
    r = np.random.default_rng(1).normal(0, 0.01, size=50)
    f = B.har_features(r)
    assert f.shape == (50, 3) and np.isfinite(f).all()
    r2 = r.copy()
    r2[30:] *= 5
    np.testing.assert_array_equal(B.har_features(r2)[:30], f[:30])
    assert f[40, 1] == pytest.approx(np.log(np.sqrt(252 / 5 * np.sum(r[36:41] ** 2))))


def test_bucket_matches_label_convention():
    from regimetry.data.labels import bucket as label_bucket

    values = np.array([0.05, 0.1271, 0.15, 0.1934, 0.5])
    thr = np.array([0.1271, 0.1934])
    np.testing.assert_array_equal(B.bucket(values, thr), label_bucket(values, thr).astype(int))
    with pytest.raises(ValueError, match="ascending"):
        B.bucket(values, thr[::-1])


def test_forward_filter_equals_hamilton_filter_with_true_parameters():
    path = simulate_markov_switching(num_bars=500, seed=5)
    p = path.params
    le = B.gaussian_log_emissions(path.returns[:, None], np.array(p.mu)[:, None], (np.array(p.sigma) ** 2)[:, None, None])
    ours = B.forward_filter(le, p.initial_distribution, p.transition_matrix)
    np.testing.assert_allclose(ours, hamilton_filter(path.returns, p), atol=1e-10)


def test_forward_filter_uses_no_future_data_and_differs_from_smoothing():
    from hmmlearn.hmm import GaussianHMM

    path = simulate_markov_switching(num_bars=600, seed=6)
    X = path.returns[:, None] * 100
    model = GaussianHMM(3, covariance_type="full", n_iter=30, random_state=0).fit(X)
    filt = B.forward_filter(B.gaussian_log_emissions(X, model.means_, model.covars_), model.startprob_, model.transmat_)
    t = 300
    X2 = X.copy()
    X2[t + 1 :] = np.random.default_rng(0).normal(0, 5, size=(len(X) - t - 1, 1))
    filt2 = B.forward_filter(B.gaussian_log_emissions(X2, model.means_, model.covars_), model.startprob_, model.transmat_)
    np.testing.assert_array_equal(filt[: t + 1], filt2[: t + 1])
    smoothed = model.predict_proba(X)
    # The last filtered row is the last smoothed row; earlier rows differ (smoothing looks ahead).
    np.testing.assert_allclose(filt[-1], smoothed[-1], atol=1e-6)
    assert np.abs(filt[:-50] - smoothed[:-50]).max() > 0.1


# ------------------------------------------------------------------------------------------------
# Baselines end to end
# ------------------------------------------------------------------------------------------------
def test_every_baseline_runs_with_aligned_outputs(splits, results):
    assert set(results) == set(B.BASELINES)
    for name, res in results.items():
        assert res.val_pred.shape == splits.val.y.shape and res.test_pred.shape == splits.test.y.shape, name
        for probs, split in ((res.val_probs, splits.val), (res.test_probs, splits.test)):
            if probs is not None:
                assert probs.shape == (len(split), 3), name
                np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "recall/calm"):
            assert key in res.test_metrics and key in res.val_metrics, (name, key)
        assert res.test_confusion.shape == (3, 3) and res.test_confusion.sum() == len(splits.test)
        expected_ba = np.mean([np.mean(res.test_pred[splits.test.y == c] == c) for c in np.unique(splits.test.y)])
        assert res.test_metrics["balanced_accuracy"] == pytest.approx(expected_ba)
    assert results["persistence"].test_probs is None and np.isnan(results["persistence"].test_metrics["log_loss"])


def test_bayes_filter_is_the_ceiling(results):
    """The true-parameter filter is Bayes-optimal: the best log loss of every probabilistic
    baseline and the best accuracy (EM-fitted HMM parameters get within sampling noise, 0.01)."""
    bayes = results["bayes_filter"].test_metrics
    for name, res in results.items():
        if name == "bayes_filter":
            continue
        assert bayes["accuracy"] >= res.test_metrics["accuracy"] - 0.01, name
        if res.test_probs is not None:
            assert bayes["log_loss"] <= res.test_metrics["log_loss"], name
    assert bayes["accuracy"] > results["climatology"].test_metrics["accuracy"] + 0.1
    assert results["hmm"].test_metrics["balanced_accuracy"] > 0.7  # EM recovers the regimes


@pytest.mark.parametrize("name", ["persistence", "har_rv", "garch", "hmm"])
def test_bar_level_baselines_use_no_future_data(splits, results, name):
    """Changing every return after a test bar t leaves the predictions at test windows ending at or
    before t unchanged (fitted on train, hyperparameters chosen on val, filtered forward). The bar
    is in the test period because val data legitimately choose hyperparameters (HAR-RV's C)."""
    t = int(splits.test.positions[len(splits.test) // 2])
    bars = splits.bars.copy()
    r = bars["log_return"].to_numpy().copy()
    r[t + 1 :] = np.random.default_rng(1).normal(0, 0.05, size=len(r) - t - 1)
    bars["log_return"] = r
    changed = dataclasses.replace(splits, bars=bars)
    res = B.run_baseline(name, changed, seed=0)
    keep = splits.test.positions <= t
    ref = results[name]
    if ref.test_probs is not None:
        np.testing.assert_allclose(res.test_probs[keep], ref.test_probs[keep], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(res.test_pred[keep], ref.test_pred[keep])
    assert not np.array_equal(res.test_pred[~keep], ref.test_pred[~keep])  # the change did reach later windows


def test_persistence_is_the_label_h_bars_ago():
    """On the forward-vol target, trailing RV over the horizon at t is the label of t - h."""
    sp = make_splits(num_bars=700, seed=4, target="forward_vol_regime", fractions=(0.6, 0.8))
    res = B.run_baseline("persistence", sp)
    h = sp.config.horizon
    expected = sp.labels.to_numpy()[sp.test.positions - h].astype(int)
    np.testing.assert_array_equal(res.test_pred, expected)
    assert res.params["bucketing"] == "label_thresholds"


def test_results_log_to_mlflow(tracking_uri, splits, results):
    from regimetry import tracking

    for name in ("har_rv", "garch"):
        with tracking.run("test_baselines", run_name=name, tags={"stage": "baseline", "arm": name}):
            tracking.log_metrics(B.result_metrics(results[name]))
    runs = tracking.search_runs("test_baselines", "tags.stage = 'baseline'")
    assert len(runs) == 2
    row = runs[runs["tags.arm"] == "har_rv"].iloc[0]
    assert row["metrics.test/balanced_accuracy"] == pytest.approx(results["har_rv"].test_metrics["balanced_accuracy"])
    assert "metrics.val/recall/calm" in runs.columns


def test_errors_name_the_problem(splits):
    with pytest.raises(KeyError, match="valid names"):
        B.run_baseline("arima", splits)
    fv = make_splits(num_bars=400, seed=2, target="forward_vol_regime", fractions=(0.6, 0.8))
    with pytest.raises(ValueError, match="bayes_filter.*synthetic"):
        B.run_baseline("bayes_filter", fv)
    assert "bayes_filter" not in B.applicable_baselines(fv)
    bars = splits.bars.copy()
    bars.iloc[500, bars.columns.get_loc("log_return")] = np.nan
    with pytest.raises(ValueError, match="log_return.*row 500"):
        B.run_baseline("garch", dataclasses.replace(splits, bars=bars))


# ------------------------------------------------------------------------------------------------
# The experiment script
# ------------------------------------------------------------------------------------------------
def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baselines_script_smoke_logs_promised_runs(tracking_uri, tmp_path, monkeypatch):
    from regimetry import tracking

    monkeypatch.chdir(tmp_path)  # the report goes to ./reports/01_baselines/
    script = _load_script("01_baselines")
    summary = script.main(["--smoke", "--dataset", "synthetic", "--tracking-uri", tracking_uri])
    assert (tmp_path / "reports" / "01_baselines" / "data_report.html").is_file()
    runs = tracking.search_runs("01_baselines", tracking_uri=tracking_uri)
    assert set(runs["status"]) == {"FINISHED"}
    parents = runs[runs["tags.stage"] == "baseline_session"]
    children = runs[runs["tags.stage"] == "baseline"]
    assert len(parents) == 1
    assert {"report/data_report.ipynb", "report/data_report.html"} <= set(
        tracking.list_artifacts(parents["run_id"].iloc[0], "report", tracking_uri=tracking_uri))
    assert set(children["tags.arm"]) == set(B.BASELINES) == set(summary)
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert set(children["tags.dataset"]) == {"synthetic"}
    for key in ("test/balanced_accuracy", "test/macro_f1", "val/balanced_accuracy", "test/accuracy",
                "test/balanced_accuracy_ci_low", "test/balanced_accuracy_ci_high", "time/fit_seconds"):
        assert children[f"metrics.{key}"].notna().all(), key
    bayes = children[children["tags.arm"] == "bayes_filter"].iloc[0]
    assert bayes["metrics.test/log_loss"] == children["metrics.test/log_loss"].min()
    har = children[children["tags.arm"] == "har_rv"].iloc[0]
    assert float(har["params.C"]) in B.C_GRID
    artifacts = tracking.list_artifacts(har["run_id"], tracking_uri=tracking_uri)
    assert {"figures/confusion_test.png", "predictions/test.csv"} <= set(artifacts)
    # issue 12: every baseline is compared with HAR-RV and persistence, with an MDE beside each verdict
    from pathlib import Path

    parent_id = parents["run_id"].iloc[0]
    diffs = pd.read_csv(Path(tracking.download_artifacts(parent_id, "differences.csv", tracking_uri=tracking_uri)))
    others = set(B.BASELINES) - {"har_rv"}
    assert set(diffs.loc[diffs["b"] == "har_rv", "a"]) == others
    assert (diffs["mde"] > 0).all() and (diffs["ci_low"] <= diffs["difference"]).all()
    undetected = diffs[~diffs["detected"]]
    assert undetected["verdict"].str.contains("none larger than").all()
