"""Causal bar features: the value at bar t uses bars <= t only.

Input bars carry lower-case columns ``open, high, low, close, volume`` (those available) and
``log_return`` (``log(close_t / close_{t-1})`` of the adjusted close; NaN on the first bar when the
previous close is unknown). Features, with ``r_t`` the log return:

=====================  ================================================================  ==========
name                   definition                                                        needs
=====================  ================================================================  ==========
``log_return``         ``r_t``                                                           close
``abs_return``         ``|r_t|``                                                         close
``squared_return``     ``r_t^2``                                                         close
``range``              ``log(high_t / low_t)`` (Parkinson-style range)                   high, low
``close_location``     ``(close_t - low_t) / (high_t - low_t)`` in [0, 1]; 0.5 if H = L  high, low
``gap``                ``log(open_t / close_{t-1})`` (unadjusted closes)                 open
``log_volume``         ``log(1 + volume_t)``                                             volume
``volume_z``           ``volume_z_63``                                                   volume
``volume_z_<n>``       ``(v_t - mean(v_{t-n..t-1})) / std(v_{t-n..t-1})``, ``v = log(1+V)``;   volume
                       0 where the past n bars' volume is constant
``rv_<n>``             ``sqrt(252 / n * sum_{k=0..n-1} r_{t-k}^2)``: realized volatility      close
                       over the last n bars, annualised (fraction: 0.15 = 15 %/yr)
``mom_<n>``            ``sum_{k=0..n-1} r_{t-k}``: n-bar log return (momentum)                 close
``log_rv_<n>``         ``log(max(rv_n, 1e-4))``, n >= 1: log realized volatility; with        close
                       n = 1, 5, 22 these are the HAR-RV regressors (Corsi 2009, eq. 8, on
                       log volatilities; ``rv_1 = sqrt(252) |r_t|``, the daily-bar proxy of
                       the day's realized vol). The floor (0.01 %/yr) keeps a zero return
                       finite and equals the one of ``regimetry.baselines.har_features``
``log_parkinson_<n>``  ``log(max(sqrt(252 / (4 ln 2 n) * sum_{k=0..n-1} log(H/L)_{t-k}^2),   high, low
                       1e-4))``, n >= 1: log Parkinson (1980, eq. 1.4) range-based
                       volatility over the last n bars, annualised. The daily range is
                       about five times as efficient an estimator of the day's variance as
                       the squared close-to-close return (Parkinson 1980), which is why
                       HAR models on range-based volatility tend to forecast better
                       (Martens & van Dijk 2007; Christensen & Podolskij 2007). A flat
                       window (high == low on all n bars, e.g. a halted or stale quote)
                       gives the floor, log(1e-4) = -9.21, far below real values (about -2)
=====================  ================================================================  ==========

Why log levels: the regime label is a *level* of volatility. A model on standardised ``rv_<n>``
must extrapolate when a test period is calmer than anything in training (S&P 500 2004-2006 after
1999-2003); in logs the same move is a small, linear shift, which is how HAR-RV and persistence stay
right there (``shared`` reference numbers; README "Results").

A feature is NaN where its lookback is not yet available (``rv_63`` needs 63 returns, so with
a NaN first return it starts at bar 63). ``regimetry.data.prepare`` drops the leading bars where
any selected feature is NaN (the warm-up), so the first sample's inputs are complete.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "FIXED_FEATURES",
    "compute_features",
    "check_feature_names",
    "required_columns",
    "valid_feature_description",
]

TRADING_DAYS = 252

FIXED_FEATURES = (
    "log_return",
    "abs_return",
    "squared_return",
    "range",
    "close_location",
    "gap",
    "log_volume",
    "volume_z",
)
_PATTERNS = {"rv": 2, "mom": 1, "volume_z": 2, "log_rv": 1, "log_parkinson": 1}  # prefix -> minimum n
_PATTERN_RE = re.compile(r"^(log_rv|log_parkinson|rv|mom|volume_z)_(\d+)$")
LOG_RV_FLOOR = 1e-4  # annualised vol fraction; the same floor as regimetry.baselines.har_features
_NEEDS = {
    "log_return": ("log_return",),
    "abs_return": ("log_return",),
    "squared_return": ("log_return",),
    "range": ("high", "low"),
    "close_location": ("high", "low", "close"),
    "gap": ("open", "close"),
    "log_volume": ("volume",),
    "volume_z": ("volume",),
    "rv": ("log_return",),
    "mom": ("log_return",),
    "log_rv": ("log_return",),
    "log_parkinson": ("high", "low"),
}


def valid_feature_description() -> str:
    """Human-readable list of valid feature names (for error messages)."""
    return ", ".join(FIXED_FEATURES) + ", rv_<n> (n >= 2), log_rv_<n> (n >= 1), log_parkinson_<n> (n >= 1), mom_<n> (n >= 1), volume_z_<n> (n >= 2)"


def _parse(name: str) -> tuple[str, int | None]:
    if name in FIXED_FEATURES:
        return name, None
    match = _PATTERN_RE.match(name)
    if match:
        prefix, digits = match.groups()
        n = int(digits)
        if n >= _PATTERNS[prefix] and digits[0] == "0":
            # one name per window length, so that two spellings never make two columns of the same feature
            raise ValueError(f"DataConfig.features: unknown feature {name!r}: write the window length without "
                             f"leading zeros, {prefix}_{n}")
        if n >= _PATTERNS[prefix]:
            return prefix, n
    raise ValueError(f"DataConfig.features: unknown feature {name!r}; valid names are {valid_feature_description()}")


def check_feature_names(names: Iterable[str]) -> list[str]:
    """Validate feature names.

    Returns:
        The names as a list, in order.

    Raises:
        ValueError: an unknown name (listing the valid ones) or a duplicate name.
    """
    names = list(names)
    for name in names:
        _parse(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"DataConfig.features: duplicate feature name(s) {duplicates}")
    return names


def required_columns(name: str) -> tuple[str, ...]:
    """Bar columns a feature needs (``log_return`` counts as a column; it exists when close does).

    Raises:
        ValueError: an unknown feature name.
    """
    kind, _ = _parse(name)
    return _NEEDS[kind]


def _volume_z(volume: pd.Series, n: int) -> pd.Series:
    v = np.log1p(volume.astype(np.float64))
    past = v.shift(1).rolling(n, min_periods=n)
    mean = past.mean()
    std = past.std(ddof=1)
    z = (v - mean) / std
    return z.where(~((std <= 1e-12) & mean.notna()), 0.0)


def compute_features(bars: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Compute causal features on bars.

    Args:
        bars: DataFrame with a ``DatetimeIndex`` and the columns each feature needs (see the module
            table); prices positive, ``volume >= 0``.
        names: feature names (module table).

    Returns:
        float64 DataFrame ``(len(bars), len(names))``, same index, columns ``names``; NaN during
        each feature's warm-up. Row t depends on rows <= t only, so ``compute_features(bars[:t+1])``
        equals row t of ``compute_features(bars)``.

    Raises:
        ValueError: an unknown feature name, or a feature whose input column is missing from
            ``bars`` (naming both).
    """
    names = check_feature_names(names)
    out: dict[str, pd.Series] = {}
    for name in names:
        missing = [c for c in required_columns(name) if c not in bars.columns]
        if missing:
            raise ValueError(
                f"feature {name!r} needs bar column(s) {missing}, which the data does not have "
                f"(columns: {list(bars.columns)})"
            )
        kind, n = _parse(name)
        r = bars["log_return"].astype(np.float64) if "log_return" in bars.columns else None
        if kind == "log_return":
            s = r
        elif kind == "abs_return":
            s = r.abs()
        elif kind == "squared_return":
            s = r**2
        elif kind == "range":
            s = np.log(bars["high"] / bars["low"])
        elif kind == "close_location":
            span = bars["high"] - bars["low"]
            s = ((bars["close"] - bars["low"]) / span.where(span > 0)).fillna(0.5).clip(0.0, 1.0)
        elif kind == "gap":
            s = np.log(bars["open"] / bars["close"].shift(1))
        elif kind == "log_volume":
            s = np.log1p(bars["volume"].astype(np.float64))
        elif kind == "volume_z":
            s = _volume_z(bars["volume"], 63 if n is None else n)
        elif kind == "rv":
            s = np.sqrt((TRADING_DAYS / n) * (r**2).rolling(n, min_periods=n).sum().clip(lower=0.0))
        elif kind == "log_rv":
            rv = np.sqrt((TRADING_DAYS / n) * (r**2).rolling(n, min_periods=n).sum().clip(lower=0.0))
            s = np.log(rv.clip(lower=LOG_RV_FLOOR))
        elif kind == "log_parkinson":
            range_sq = np.log(bars["high"] / bars["low"]) ** 2
            pk = np.sqrt(TRADING_DAYS / (4.0 * np.log(2.0) * n) * range_sq.rolling(n, min_periods=n).sum().clip(lower=0.0))
            s = np.log(pk.clip(lower=LOG_RV_FLOOR))
        elif kind == "mom":
            s = r.rolling(n, min_periods=n).sum()
        else:  # pragma: no cover - _parse guarantees one of the above
            raise AssertionError(kind)
        out[name] = s.astype(np.float64)
    return pd.DataFrame(out, index=bars.index)
