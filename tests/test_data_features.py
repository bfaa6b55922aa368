"""Causal features, forward-volatility labels and windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from regimetry.config import DEFAULT_FEATURES
from regimetry.data import labels
from regimetry.data.features import compute_features
from regimetry.data.synthetic import simulate_markov_switching
from regimetry.data.windows import count_windows, make_windows, window_end_positions

ALL = tuple(dict.fromkeys(DEFAULT_FEATURES + ("squared_return", "gap", "log_volume", "rv_10", "mom_7", "volume_z_11",
                                               "log_rv_1", "log_rv_5", "log_rv_22", "log_rv_63",
                                               "log_parkinson_1", "log_parkinson_5", "log_parkinson_22")))


@pytest.fixture(scope="module")
def bars():
    b = simulate_markov_switching(num_bars=260, seed=4).bars
    b = b.drop(columns=["ind_momentum_10", "ind_abs_return"])
    b["log_return"] = np.log(b["close"]).diff()  # NaN first return, as for real data
    return b


def test_feature_at_t_uses_bars_up_to_t_only(bars):
    full = compute_features(bars, ALL)
    assert list(full.columns) == list(ALL) and full.index.equals(bars.index)
    for t in [0, 1, 5, 62, 63, 64, 100, 171, 259]:
        prefix = compute_features(bars.iloc[: t + 1], ALL)
        np.testing.assert_allclose(prefix.iloc[t].to_numpy(), full.iloc[t].to_numpy(), rtol=1e-12, atol=1e-15,
                                   equal_nan=True, err_msg=f"t={t}")


def test_feature_definitions(bars):
    f = compute_features(bars, ["rv_5", "range", "close_location", "mom_7", "volume_z_11"])
    r = bars["log_return"].to_numpy()
    t = 40
    assert f["rv_5"].iloc[t] == pytest.approx(np.sqrt(252 / 5 * np.sum(r[t - 4: t + 1] ** 2)))
    assert f["range"].iloc[t] == pytest.approx(np.log(bars["high"].iloc[t] / bars["low"].iloc[t]))
    assert 0 <= f["close_location"].min() and f["close_location"].max() <= 1
    assert f["mom_7"].iloc[t] == pytest.approx(np.sum(r[t - 6: t + 1]))
    v = np.log1p(bars["volume"].to_numpy())
    past = v[t - 11: t]
    assert f["volume_z_11"].iloc[t] == pytest.approx((v[t] - past.mean()) / past.std(ddof=1))
    # warm-up: rv_5 needs returns 1..5 -> first value at bar 5
    assert f["rv_5"].iloc[:5].isna().all() and f["rv_5"].iloc[5:].notna().all()


def test_unknown_feature_lists_valid_names(bars):
    with pytest.raises(ValueError, match=r"unknown feature 'rv_x'.*log_return.*rv_<n>"):
        compute_features(bars, ["rv_x"])
    # a leading zero names the spelling to use (fresh-user finding: log_parkinson_05 was only "unknown")
    with pytest.raises(ValueError, match=r"'log_parkinson_05'.*without leading zeros, log_parkinson_5$"):
        compute_features(bars, ["log_parkinson_05"])
    with pytest.raises(ValueError, match=r"unknown feature 'rv_01'; valid names"):  # rv_1 is not valid either
        compute_features(bars, ["rv_01"])
    with pytest.raises(ValueError, match="duplicate"):
        compute_features(bars, ["rv_5", "rv_5"])
    with pytest.raises(ValueError, match="needs bar column"):
        compute_features(bars.drop(columns=["volume"]), ["volume_z"])


def test_log_rv_definition_floor_and_har_agreement(bars):
    from regimetry.baselines import har_features

    f = compute_features(bars, ["log_rv_1", "log_rv_5", "log_rv_22", "rv_5"])
    r = bars["log_return"].to_numpy()
    t = 120
    assert f["log_rv_1"].iloc[t] == pytest.approx(np.log(max(np.sqrt(252) * abs(r[t]), 1e-4)))
    assert f["log_rv_5"].iloc[t] == pytest.approx(np.log(f["rv_5"].iloc[t]))
    assert f["log_rv_22"].iloc[t] == pytest.approx(np.log(np.sqrt(252 / 22 * np.sum(r[t - 21: t + 1] ** 2))))
    # warm-up: log_rv_22 needs 22 returns (the first return is NaN) -> first value at bar 22
    assert f["log_rv_22"].iloc[:22].isna().all() and f["log_rv_22"].iloc[22:].notna().all()
    # where both are complete, the features equal the HAR-RV baseline's regressors exactly
    har = har_features(r)
    np.testing.assert_allclose(f[["log_rv_1", "log_rv_5", "log_rv_22"]].to_numpy()[22:], har[22:], rtol=1e-12)
    # a zero return gives the floor, not -inf
    zero = bars.copy()
    zero.loc[zero.index[50], "log_return"] = 0.0
    assert compute_features(zero, ["log_rv_1"])["log_rv_1"].iloc[50] == pytest.approx(np.log(1e-4))
    with pytest.raises(ValueError, match=r"log_rv_<n> \(n >= 1\)"):
        compute_features(bars, ["log_rv_0"])


def test_log_parkinson_definition_warm_up_and_floor(bars):
    f = compute_features(bars, ["log_parkinson_1", "log_parkinson_5", "log_parkinson_22"])
    hl = np.log(bars["high"].to_numpy() / bars["low"].to_numpy())
    t = 120
    # Parkinson (1980): variance = (ln H/L)^2 / (4 ln 2) per bar, annualised over 252 bars
    assert f["log_parkinson_1"].iloc[t] == pytest.approx(np.log(np.sqrt(252 / (4 * np.log(2)) * hl[t] ** 2)))
    assert f["log_parkinson_22"].iloc[t] == pytest.approx(
        np.log(np.sqrt(252 / (4 * np.log(2) * 22) * np.sum(hl[t - 21: t + 1] ** 2))))
    # needs no return: the first value of a 5-bar window is at bar 4 (bars 0..4)
    assert f["log_parkinson_5"].iloc[:4].isna().all() and f["log_parkinson_5"].iloc[4:].notna().all()
    # a bar with high == low gives the floor, not -inf
    flat = bars.copy()
    flat.loc[flat.index[50], "high"] = flat.loc[flat.index[50], "low"]
    assert compute_features(flat, ["log_parkinson_1"])["log_parkinson_1"].iloc[50] == pytest.approx(np.log(1e-4))
    with pytest.raises(ValueError, match=r"log_parkinson_<n> \(n >= 1\)"):
        compute_features(bars, ["log_parkinson_0"])
    with pytest.raises(ValueError, match=r"needs bar column\(s\) \['high'\]"):
        compute_features(bars.drop(columns=["high"]), ["log_parkinson_5"])


def test_forward_vol_and_buckets():
    r = pd.Series([np.nan, 0.01, -0.02, 0.03, 0.0, 0.01, -0.01])
    fv = labels.forward_realized_vol(r, 3)
    assert fv.iloc[0] == pytest.approx(np.sqrt(252 / 3 * (0.01**2 + 0.02**2 + 0.03**2)))
    assert fv.iloc[3] == pytest.approx(np.sqrt(252 / 3 * (0.0 + 0.01**2 + 0.01**2)))
    assert fv.iloc[-3:].isna().all() and fv.iloc[:-3].notna().all()
    thr = labels.vol_thresholds(np.arange(1.0, 13.0), 3)
    np.testing.assert_allclose(thr, np.quantile(np.arange(1.0, 13.0), [1 / 3, 2 / 3]))
    codes = labels.bucket(np.array([0.0, thr[0], thr[1] + 1, np.nan]), thr)
    np.testing.assert_array_equal(codes[:3], [0, 1, 2])
    assert np.isnan(codes[3])
    assert labels.vol_class_names(3) == ["low_vol", "normal_vol", "high_vol"]
    assert labels.vol_class_names(4) == ["vol_q0", "vol_q1", "vol_q2", "vol_q3"]
    with pytest.raises(ValueError, match="not strictly increasing"):
        labels.vol_thresholds(np.ones(10), 3)


@pytest.mark.parametrize("n_rows, window, stride", [(6, 6, 1), (7, 6, 1), (20, 6, 1), (20, 6, 4), (23, 6, 4),
                                                    (5, 6, 1), (31, 7, 3)])
def test_window_count_formula(n_rows, window, stride):
    ends = window_end_positions(10, 10 + n_rows - 1, window, stride)
    expected = 0 if n_rows < window else (n_rows - window) // stride + 1
    assert ends.size == expected == count_windows(n_rows, window, stride)
    if ends.size:
        assert ends[0] == 10 + window - 1 and np.all(np.diff(ends) == stride) and ends[-1] <= 10 + n_rows - 1


def test_make_windows_shape_and_alignment():
    matrix = np.arange(40 * 7, dtype=np.float64).reshape(40, 7)
    ends = np.array([18, 21, 50])
    X = make_windows(matrix, ends, 6, row_offset=13)
    assert X.shape == (3, 6, 7) and X.dtype == np.float32
    np.testing.assert_array_equal(X[0, -1], matrix[18 - 13])
    np.testing.assert_array_equal(X[0, 0], matrix[18 - 13 - 5])
    np.testing.assert_array_equal(X[2, -1], matrix[50 - 13])
    with pytest.raises(ValueError, match="reach outside"):
        make_windows(matrix, np.array([15]), 6, row_offset=13)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="window_size"):
            count_windows(10, bad, 1)
        with pytest.raises(ValueError, match="stride"):
            window_end_positions(0, 10, 3, bad)
