"""The leakage audit: flags columns that know the future, and none of the causal ones (issue 15)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from regimetry.config import DataConfig
from regimetry.data import load_source, prepare, prepare_folds
from regimetry.data.audit import FLAG_THRESHOLD, leakage_audit
from regimetry.data.features import compute_features
from regimetry.data.sources import RegimetryDataWarning

BUILT_IN = ("log_return", "abs_return", "range", "close_location", "log_rv_1", "log_rv_5", "log_rv_22",
            "log_rv_63", "volume_z", "rv_5", "rv_21", "rv_63", "log_parkinson_1", "log_parkinson_5", "log_parkinson_22")


def _indicators(bars: pd.DataFrame) -> pd.DataFrame:
    """Causal indicators of the kind users bring (as in tests/fixtures/signals.csv, computed for real)."""
    c = bars["close"]
    d = c.diff()
    up, down = d.clip(lower=0).ewm(alpha=1 / 14).mean(), (-d.clip(upper=0)).ewm(alpha=1 / 14).mean()
    macd = c.ewm(span=12).mean() - c.ewm(span=26).mean()
    sma20, sd20 = c.rolling(20).mean(), c.rolling(20).std()
    return pd.DataFrame({"rsi_14": 100 - 100 / (1 + up / down), "macd_cross": (macd > macd.ewm(span=9).mean()) * 1.0,
                         "sma_50_200": (c.rolling(50).mean() > c.rolling(200).mean()) * 1.0,
                         "bollinger_b": (c - sma20) / (2 * sd20), "momentum_20": c.pct_change(20),
                         "atr_14": (bars["high"] - bars["low"]).rolling(14).mean() / c})


def _canaries(r: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"next_return": r.shift(-1), "centred_vol_21": r.rolling(21, center=True).std(),
                         "forward_vol_21": np.sqrt((r ** 2).rolling(21).sum().shift(-21))})


@pytest.mark.parametrize("source", ["sp500", "nasdaq"])
def test_three_canaries_flagged_no_causal_column_flagged(source):
    bars = load_source(DataConfig(source=source)).bars.loc[:"2007-12-31"]  # a tuning period only
    r = bars["log_return"]
    causal = pd.concat([compute_features(bars, BUILT_IN), _indicators(bars)], axis=1)
    results = {a.column: a for a in leakage_audit(pd.concat([causal, _canaries(r)], axis=1), r, horizon=21)}
    flagged = {c for c, a in results.items() if a.flagged}
    assert flagged == {"next_return", "centred_vol_21", "forward_vol_21"}  # 3 of 3, 0 false positives of 21
    assert all(results[c].partial_r2 > 0.8 for c in flagged)
    assert max(results[c].partial_r2 for c in causal.columns) < FLAG_THRESHOLD * 0.7  # a clear margin
    assert "explain" in results["next_return"].evidence and "next_return" in results["next_return"].evidence


def test_too_few_rows_are_reported_not_guessed():
    index = pd.bdate_range("2020-01-01", periods=80)
    r = pd.Series(np.random.default_rng(0).normal(0, 0.01, 80), index=index)
    (result,) = leakage_audit(pd.DataFrame({"x": r.shift(-1)}, index=index), r, horizon=21)
    assert not result.flagged and "too few" in result.note and np.isnan(result.partial_r2)
    with pytest.raises(ValueError, match="share one index"):
        leakage_audit(pd.DataFrame({"x": r.to_numpy()}), r, horizon=21)


def _csv_with(tmp_path, extra: dict, start: str | None = None, end: str = "2007-12-31") -> str:
    bars = load_source(DataConfig(source="sp500")).bars.loc[start:end]
    frame = pd.DataFrame({"timestamp": bars.index.strftime("%Y-%m-%d"), "open": bars["open"], "high": bars["high"],
                          "low": bars["low"], "close": bars["close"], "volume": bars["volume"]})
    for name, values in extra.items():
        frame[name] = values(bars).to_numpy()
    path = tmp_path / "bars.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_prepare_warns_names_the_column_and_can_refuse(tmp_path):
    path = _csv_with(tmp_path, {"rsi_14": lambda b: _indicators(b)["rsi_14"],
                                "fwd_vol": lambda b: _canaries(b["log_return"])["forward_vol_21"]})
    config = dict(source="csv", csv_path=path, features=("log_return", "abs_return"), folds_start="2005-01-01",
                  num_folds=2)
    with pytest.warns(RegimetryDataWarning, match=r"look into the future: fwd_vol: future returns .* explain"):
        splits = prepare(DataConfig(**config))
    audit = {a["column"]: a for a in splits.extras["leakage_audit"]}
    assert audit["fwd_vol"]["flagged"] and not audit["rsi_14"]["flagged"]
    with pytest.raises(ValueError, match="fwd_vol"):
        prepare(DataConfig(**config, leakage_check="error"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegimetryDataWarning)
        assert "leakage_audit" not in prepare(DataConfig(**config, leakage_check="off")).extras
    with pytest.raises(ValueError, match="leakage_check: expected 'warn', 'error' or 'off'"):
        DataConfig(**config, leakage_check="maybe")


def test_walk_forward_runs_audit_the_longest_training_period(tmp_path):
    """A 2005-2012 file with 5 walk-forward folds from 2008: the first fold trains on about two years,
    too few rows to see the centred and forward volatilities (the audit of an experiment run missed 2 of
    3 canaries there); the last fold's training period sees all three."""
    canaries = {name: (lambda b, name=name: _canaries(b["log_return"])[name])
                for name in ("next_return", "centred_vol_21", "forward_vol_21")}
    path = _csv_with(tmp_path, {"rsi_14": lambda b: _indicators(b)["rsi_14"], **canaries},
                     start="2005-01-01", end="2012-12-31")
    with pytest.raises(ValueError, match="next_return.*centred_vol_21.*forward_vol_21"):
        prepare_folds(DataConfig(source="csv", csv_path=path, features=("log_return", "abs_return"),
                                 folds_start="2008-01-01", num_folds=5, leakage_check="error"))


def test_the_fixture_and_clean_columns_raise_no_warning(tmp_path):
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "signals.csv"
    clean = _csv_with(tmp_path, {"rsi_14": lambda b: _indicators(b)["rsi_14"],
                                 "macd_cross": lambda b: _indicators(b)["macd_cross"]})
    for path, extra in ((fixture, dict(window_size=6, horizon=3, train_fraction=0.6, val_fraction=0.2,
                                       features=("log_return",))), (clean, {})):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RegimetryDataWarning)
            warnings.filterwarnings("ignore", message=".*constant over the training period", category=RegimetryDataWarning)
            splits = prepare(DataConfig(source="csv", csv_path=str(path), **extra))
        assert not any(a["flagged"] for a in splits.extras["leakage_audit"])


def test_the_same_leakage_warning_is_shown_once_per_process(tmp_path, monkeypatch):
    """A study prepares the same file for every trial, fold and seed: the finding is shown once, even under
    an "always" filter (issue 14); another finding is still shown."""
    from regimetry.data import splits as splits_module

    monkeypatch.setattr(splits_module, "_WARNED", set())
    path = _csv_with(tmp_path, {"fwd_vol": lambda b: _canaries(b["log_return"])["forward_vol_21"]})
    config = DataConfig(source="csv", csv_path=path, features=("log_return", "abs_return"), folds_start="2005-01-01",
                        num_folds=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = prepare(config)
        prepare(config)
        prepare_folds(config)  # audits the last fold's (longer) training period: another finding
        prepare_folds(config)
        other = prepare(config.replace(horizon=10))  # another label horizon: another finding
        prepare(config)
    leaks = [w for w in caught if issubclass(w.category, RegimetryDataWarning) and "look into the future" in str(w.message)]
    messages = [str(w.message) for w in leaks]
    assert len(messages) == len(set(messages)) == 3, messages
    assert {w.filename for w in leaks} == {__file__}  # each points at the caller of prepare / prepare_folds
    assert first.extras["leakage_audit"] and other.extras["leakage_audit"]  # the audit itself still runs each time
