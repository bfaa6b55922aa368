"""Chronological splits, purge/embargo, walk-forward folds and the prepare() entry point."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest

from regimetry.config import DEFAULT_FEATURES, DataConfig
from regimetry.data import load_bars, load_source, prepare, prepare_folds
from regimetry.data.sources import RegimetryDataWarning
from regimetry.data.splits import purge_and_embargo
from regimetry.data.windows import count_windows

SYN = dict(source="synthetic", synthetic_bars=1500, window_size=7, horizon=5, features=("log_return", "abs_return",
           "range", "rv_10"), target="forward_vol_regime")


def _check_no_leak(s, W, h):
    for later in (s.val, s.test):
        first_window_bar = int(later.positions[0]) - W + 1
        assert np.all(s.train.positions + h < first_window_bar)
    assert np.all(s.val.positions + h < int(s.test.positions[0]) - W + 1)


def test_sp500_default():
    s = prepare(DataConfig(source="sp500"))
    assert s.class_names == ["low_vol", "normal_vol", "high_vol"]
    for part in (s.train, s.val, s.test):
        assert part.X.ndim == 3 and part.X.shape[1:] == (30, len(DEFAULT_FEATURES)) and part.X.dtype == np.float32
        assert part.y.dtype == np.int64 and part.positions.dtype == np.int64
        assert np.all(np.isfinite(part.X))
        assert set(np.unique(part.y)) == {0, 1, 2}
        assert isinstance(part.index, pd.DatetimeIndex) and part.index.equals(s.bars.index[part.positions])
    _check_no_leak(s, 30, 21)
    # thresholds are the training samples' tertiles (RESEARCH_FACTS: about 12.7 % and 19.3 %)
    assert 0.11 < s.label_thresholds[0] < 0.14 and 0.18 < s.label_thresholds[1] < 0.21
    assert np.bincount(s.train.y).max() - np.bincount(s.train.y).min() <= 1
    # embargo: validation starts `horizon` bars after its block start, i.e. after the purge gap
    assert int(s.val.positions[0]) - int(s.train.positions[-1]) == 21 + 29 + 1 + 21
    assert len(s.fingerprint) == 12 and s.fingerprint == prepare(DataConfig(source="sp500")).fingerprint
    bars = load_bars(DataConfig(source="sp500"))
    assert isinstance(bars.index, pd.DatetimeIndex) and "log_return" in bars and len(bars) == 5031
    # the window's last step is the preprocessed bar at its position
    position = int(s.train.positions[5])
    np.testing.assert_allclose(s.train.X[5, -1], s.preprocessor.transform(_features_at(s, position))[0], rtol=1e-6)


def _features_at(s, position):
    from regimetry.data.features import compute_features
    f = compute_features(s.bars.iloc[: position + 1], s.feature_names)
    return f.iloc[[position]]


def test_fraction_counts_follow_window_formula_and_stride():
    config = DataConfig(**SYN)
    s = prepare(config)
    warmup = s.extras["warmup_bars"]
    n_samples = count_windows(1500 - 5 - warmup, 7, 1)  # the last `horizon` bars have no label
    n_train = round(0.7 * n_samples)
    n_val = round(0.15 * n_samples)
    assert len(s.train) == n_train - (5 + 7 - 1)            # purged
    assert len(s.val) == n_val - 5 - (5 + 7 - 1)             # embargo at start, purge at end
    assert len(s.test) == n_samples - n_train - n_val - 5   # embargo at start
    _check_no_leak(s, 7, 5)
    strided = prepare(dataclasses.replace(config, stride=4))
    for part in (strided.train, strided.val, strided.test):
        assert np.all(np.diff(part.positions) == 4)
        assert np.all((part.positions - (warmup + 6)) % 4 == 0)
    _check_no_leak(strided, 7, 5)
    assert abs(len(strided.train) - len(s.train) / 4) <= 3


def test_purge_and_embargo_positions():
    W, h, e = 6, 4, 3
    train, val, test = np.arange(10, 60), np.arange(60, 80), np.arange(80, 100)
    tr, va, te = purge_and_embargo(train, val, test, window_size=W, horizon=h, embargo=e)
    assert tr[-1] == 60 - W - h  # 50: label period 51..54 ends before the first val window (55..60)
    assert va[0] == 63 and va[-1] == 80 - W - h and te[0] == 83


def test_date_split_and_embargo_zero():
    config = DataConfig(source="sp500", val_start="2010-01-01", test_start="2014-01-01", embargo=0)
    s = prepare(config)
    assert s.train.index[-1] < pd.Timestamp("2010-01-01") <= s.val.index[0]
    assert s.val.index[-1] < pd.Timestamp("2014-01-01") <= s.test.index[0]
    assert int(s.val.positions[0]) - int(s.train.positions[-1]) == 21 + 29 + 1
    _check_no_leak(s, 30, 21)


def test_synthetic_extras_and_true_regime():
    s = prepare(DataConfig(source="synthetic", synthetic_bars=1500, window_size=7, horizon=5))
    assert s.class_names == ["calm_up", "volatile_down", "choppy_sideways"]
    true = s.extras["true_regimes"]
    post = s.extras["filter_posterior"]
    assert true.index.equals(s.bars.index) and post.shape == (1500, 3) and post.index.equals(s.bars.index)
    np.testing.assert_array_equal(s.test.y, true.to_numpy()[s.test.positions])
    assert s.label_thresholds is None and s.extras["params"].num_regimes == 3
    with_ind = prepare(DataConfig(source="synthetic", synthetic_bars=1500, window_size=7, horizon=5,
                                  include_columns=("ind_abs_return",)))
    assert with_ind.feature_names[-1] == "ind_abs_return"


def test_folds_cover_the_period_and_are_embargoed():
    config = DataConfig(source="sp500", num_folds=4, folds_start="2006-01-01", folds_end="2017-12-31")
    folds = prepare_folds(config)
    assert [f.fold for f in folds] == [0, 1, 2, 3]
    tests = [f.test.positions for f in folds]
    union = np.concatenate(tests)
    assert np.all(np.diff(union) == 1)  # contiguous, disjoint, ordered (stride 1)
    assert folds[0].test.index[0] >= pd.Timestamp("2006-01-01")
    assert folds[0].test.index[0] - pd.Timestamp("2006-01-01") < pd.Timedelta(days=5)
    assert folds[-1].test.index[-1] <= pd.Timestamp("2017-12-31")
    assert pd.Timestamp("2017-12-31") - folds[-1].test.index[-1] < pd.Timedelta(days=5)
    assert folds[0].extras["folds"]["period_start"] == folds[0].test.index[0]
    for k, f in enumerate(folds):
        _check_no_leak(f, 30, 21)
        assert f.train.positions[0] == folds[0].train.positions[0]  # expanding
        assert f.val.positions[-1] + 21 + 21 < f.test.positions[0] - 29  # purge + embargo before test
        if k:
            assert len(f.train) > len(folds[k - 1].train)
        assert f.train.X.shape[1:] == (30, len(DEFAULT_FEATURES))


def test_fold_fits_ignore_later_data():
    config = DataConfig(**SYN, num_folds=3, folds_start=None)
    source = load_source(config)
    folds = prepare_folds(config, source=source)
    for k in range(3):
        first = int(folds[k].val.positions[0]) - 7 + 1
        bars = source.bars.copy()
        bars.iloc[first:, bars.columns.get_loc("log_return")] *= 2.5
        for c in ("high", "open"):
            bars.iloc[first:, bars.columns.get_loc(c)] *= 1.05
        perturbed = prepare_folds(config, source=dataclasses.replace(source, bars=bars))
        a, b = folds[k].preprocessor.fitted_state(), perturbed[k].preprocessor.fitted_state()
        for key in ("numeric_median", "numeric_mean", "numeric_scale"):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(folds[k].label_thresholds, perturbed[k].label_thresholds)
        np.testing.assert_array_equal(folds[k].train.X, perturbed[k].train.X)
        assert not np.array_equal(folds[k].test.X, perturbed[k].test.X)
        if k < 2:  # a later fold trains on the changed data, so its fit does change
            c = perturbed[k + 1].preprocessor.fitted_state()
            assert not np.array_equal(folds[k + 1].preprocessor.fitted_state()["numeric_scale"], c["numeric_scale"])


def test_folds_start_outside_data_falls_back_to_40_percent():
    config = DataConfig(**{**SYN, "synthetic_bars": 1200}, num_folds=2, folds_start="1990-01-01")
    with pytest.warns(RegimetryDataWarning, match="first 40 %"):
        folds = prepare_folds(config)
    n = len(prepare(DataConfig(**{**SYN, "synthetic_bars": 1200}, train_fraction=0.5, val_fraction=0.2))
            .labels.dropna())
    assert len(folds) == 2 and folds[0].test.positions[0] > 0.35 * n


def test_too_few_bars_for_splits():
    with pytest.raises(ValueError, match="split is empty after the purge and embargo"):
        prepare(DataConfig(source="synthetic", synthetic_bars=120, window_size=20, horizon=10))
    with pytest.raises(ValueError, match="60 bars are too few"):
        prepare(DataConfig(source="synthetic", synthetic_bars=60, window_size=30))
    with pytest.raises(ValueError, match=r"100 bars give \d+ labelled windows"):
        prepare(DataConfig(source="synthetic", synthetic_bars=100, window_size=30, target="forward_vol_regime"))
