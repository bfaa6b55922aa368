"""Tests of regimetry.discovery: clustering fitted on train, Hungarian alignment, regime statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from regimetry import discovery as D

D_MODEL = 16


def _blobs(n: int = 150, seed: int = 0, k: int = 3):
    """Well-separated Gaussian blobs in d_model 16, one per regime; returns (X, truth)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 6, size=(k, D_MODEL))
    truth = rng.integers(0, k, size=n)
    return centers[truth] + rng.normal(size=(n, D_MODEL)), truth


def test_alignment_recovers_reference_after_permutation():
    rng = np.random.default_rng(0)
    index = pd.bdate_range("2010-01-01", periods=200)
    reference = pd.Series(rng.integers(0, 4, size=200), index=index)
    perm = np.array([2, 0, 3, 1])
    permuted = reference.map(lambda v: perm[v])
    aligned, mapping = D.align_labels(permuted, reference)
    pd.testing.assert_series_equal(aligned, reference.astype(np.int64), check_names=False)
    assert mapping == {int(perm[i]): i for i in range(4)}


def test_alignment_uses_matching_timestamps_only():
    index = pd.bdate_range("2010-01-01", periods=120)
    reference = pd.Series(np.repeat([0, 1, 2], 40), index=index)
    # The run covers a shifted period and has noise in 10 % of the shared windows.
    run_index = index[30:]
    run = pd.Series((reference.loc[run_index].to_numpy() + 1) % 3, index=run_index)
    run.iloc[::10] = (run.iloc[::10] + 1) % 3
    aligned, mapping = D.align_labels(run, reference)
    assert mapping == {1: 0, 2: 1, 0: 2}
    assert (aligned == reference.loc[run_index]).mean() >= 0.89


def test_alignment_with_more_clusters_than_reference_keeps_ids_distinct():
    ref = np.array([0, 0, 0, 1, 1, 1, 1])
    run = np.array([5, 5, 2, 7, 7, 7, 9])
    mapping = D.alignment_mapping(run, ref)
    assert mapping[5] == 0 and mapping[7] == 1
    assert sorted(mapping.values()) == [0, 1, 2, 3]  # leftovers get fresh ids, one-to-one
    with pytest.raises(ValueError, match="shared timestamps"):
        D.align_labels(pd.Series([0, 1], index=pd.to_datetime(["2001-01-01", "2001-01-02"])),
                       pd.Series([0, 1], index=pd.to_datetime(["2002-01-01", "2002-01-02"])))


def test_order_by_score_puts_calmest_first():
    labels = np.array([2, 2, 0, 0, 1, 1])
    vol = np.array([0.3, 0.35, 0.2, 0.1, 0.05, 0.06])
    ordered, mapping = D.order_by_score(labels, vol)
    assert mapping == {1: 0, 0: 1, 2: 2}
    np.testing.assert_array_equal(ordered, [2, 2, 1, 1, 0, 0])


def test_regime_statistics_by_hand():
    seq = np.array([0, 0, 0, 1, 1, 0, 0, 2])
    stats = D.regime_statistics([seq, np.array([2, 2])], n_regimes=3)
    np.testing.assert_array_equal(stats.counts, [[3, 1, 1], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(stats.transition_matrix[0], [0.6, 0.2, 0.2])
    np.testing.assert_allclose(stats.stickiness, [0.6, 0.5, 1.0])
    np.testing.assert_allclose(stats.row_entropy[1], 1.0)  # 50/50 row: 1 bit
    np.testing.assert_allclose(stats.row_entropy[2], 0.0)
    np.testing.assert_allclose(stats.mean_duration, [2.5, 2.0, 1.5])  # runs 3,2 | 2 | 1,2
    np.testing.assert_allclose(stats.occupancy, [5 / 10, 2 / 10, 3 / 10])
    np.testing.assert_allclose(stats.expected_duration[0], 2.5)
    metrics = stats.as_metrics("test/")
    assert metrics["test/stickiness/0"] == pytest.approx(0.6)
    assert "test/expected_duration/2" not in metrics  # infinite: never left regime 2


@pytest.mark.parametrize("method", D.CLUSTERING_METHODS)
@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # separated blobs: expected
def test_clustering_fitted_on_train_assigns_new_points(method):
    X, truth = _blobs(n=150, seed=1)
    model = D.fit_clustering(X[:110], method=method, n_clusters=3, seed=0, n_neighbors=8)
    assert model.train_labels.shape == (110,)
    assert D.external_scores(model.train_labels, truth[:110])["ari"] > 0.95
    new = model.predict(X[110:])
    assert new.dtype == np.int64 and new.shape == (40,)
    # Out-of-sample assignment agrees with the training clustering's notion of the blobs.
    assert D.external_scores(np.concatenate([model.train_labels, new]), truth)["ari"] > 0.95
    with pytest.raises(ValueError, match="width"):
        model.predict(X[:5, :7])


def test_fit_clustering_errors():
    X, _ = _blobs(n=30)
    with pytest.raises(ValueError, match="method"):
        D.fit_clustering(X, method="dbscan")
    with pytest.raises(ValueError, match="n_clusters"):
        D.fit_clustering(X, n_clusters=1)
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        D.fit_clustering(X)


def test_external_scores_are_permutation_invariant():
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    assert D.external_scores((truth + 1) % 3, truth) == {"ari": 1.0, "nmi": 1.0}
    assert D.external_scores(np.zeros(7, dtype=int), truth)["ari"] == pytest.approx(0.0)


def test_figures_and_projection():
    X, truth = _blobs(n=60, seed=2)
    xy, rows = D.tsne_projection(X, seed=0, max_points=50)
    assert xy.shape == (50, 2) and rows.shape == (50,) and rows[-1] == 59
    fig = D.plot_projection(xy, truth[rows], n_regimes=3)
    assert len(fig.axes) == 1
    index = pd.bdate_range("2012-01-02", periods=60)
    price = pd.Series(np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 60))) * 100, index=index)
    fig = D.plot_regime_timeline(price, pd.Series(truth, index=index), n_regimes=3, boundaries=[index[30]])
    assert len(fig.axes) == 1


def test_discovery_script_smoke_logs_promised_runs(tracking_uri):
    import importlib.util
    from pathlib import Path

    from regimetry import tracking

    path = Path(__file__).resolve().parents[1] / "experiments" / "02_regime_discovery.py"
    spec = importlib.util.spec_from_file_location("experiment_02", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    summary = script.main(["--smoke", "--dataset", "synthetic", "--no-report", "--tracking-uri", tracking_uri])
    runs = tracking.search_runs("02_regime_discovery", tracking_uri=tracking_uri)
    assert set(runs["status"]) == {"FINISHED"}
    children = runs[runs["tags.stage"] == "discovery"]
    arms = {f"{e}/{m}" for e in ("trained", "untrained") for m in D.CLUSTERING_METHODS}
    assert set(children["tags.arm"]) == arms == set(summary)
    assert len(runs[runs["tags.stage"] == "discovery_session"]) == 1
    for key in ("test/ari", "test/nmi", "train/ari", "test/nmi_vs_label", "train/stickiness/0"):
        assert children[f"metrics.{key}"].notna().all(), key
    # A regime that never occurs (or is never left) in the short test block has no row entropy, so
    # only some regime's entropy is promised per arm, and every logged one lies in [0, log2 K] bits.
    entropy = children[[c for c in children.columns if c.startswith("metrics.test/row_entropy/")]]
    assert entropy.notna().any(axis=1).all()
    bound = np.log2(children["params.n_regimes"].astype(int).to_numpy())[:, None] + 1e-9
    assert ((entropy.isna()) | ((entropy >= 0) & (entropy.to_numpy() <= bound))).all().all()
    first = children[children["tags.arm"] == "trained/spectral"].iloc[0]
    assert first["tags.alignment"] == "ordered_by_trailing_vol"
    assert set(children["tags.reference"]) == {f"run:{first['run_id']}"}
    artifacts = tracking.list_artifacts(first["run_id"], tracking_uri=tracking_uri)
    assert {"regimes.csv", "statistics.json", "figures/timeline.png", "figures/tsne.png"} <= set(artifacts)
    # The trained encoder's validation metrics are on the parent run.
    parent = runs[runs["tags.stage"] == "discovery_session"].iloc[0]
    assert parent["metrics.encoder/val/balanced_accuracy"] >= 0
