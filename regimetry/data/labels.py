"""Regime labels per bar.

``forward_vol_regime``
    Forward realized volatility over the next ``h`` bars, annualised (a fraction, 0.15 = 15 %/yr):
    ``fv_t = sqrt(252 / h * sum_{k=1..h} r_{t+k}^2)`` (realized variance as in Andersen &
    Bollerslev, 1998, "Answering the skeptics", IER 39(4), on daily returns), bucketed into
    ``K`` classes at the ``k/K`` quantiles (k = 1..K-1) of ``fv`` over the *training samples only*.
    Class c holds ``thresholds[c-1] <= fv < thresholds[c]``. The last ``h`` bars have no label.
``true_regime``
    The simulated regime of the Markov-switching source (``regimetry.data.synthetic``).
``column:<name>``
    A label column of the user's CSV: classes are the sorted distinct training values; a value in
    validation or test that training never saw is an error (naming the column and timestamp). A
    column that looks continuous (more than ``MAX_LABEL_CLASSES`` distinct training values) is
    refused in one line, unless ``DataConfig.label_buckets = K`` asks to bucket it at the
    training period's ``k/K`` quantiles (the ``forward_vol_regime`` rule, no look-ahead).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "forward_realized_vol",
    "vol_thresholds",
    "bucket",
    "vol_class_names",
    "encode_column_labels",
    "bucket_column_labels",
]

TRADING_DAYS = 252


def forward_realized_vol(log_return: pd.Series, horizon: int) -> pd.Series:
    """Annualised realized volatility over the next ``horizon`` bars (see module docstring).

    Args:
        log_return: float Series of per-bar log returns ``r_t`` (fractions).
        horizon: ``h >= 1`` bars.

    Returns:
        float64 Series aligned with ``log_return``: ``fv_t`` uses ``r_{t+1}..r_{t+h}``; NaN for the
        last ``h`` bars and wherever one of those returns is NaN.

    Raises:
        ValueError: ``horizon < 1``.
    """
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"DataConfig.horizon: must be a positive integer, got {horizon!r}")
    r2 = log_return.astype(np.float64) ** 2
    # rolling(h) at t+h sums r_{t+1..t+h}; shifting by -h puts it at t.
    total = r2.rolling(horizon, min_periods=horizon).sum().clip(lower=0.0).shift(-horizon)
    return np.sqrt(TRADING_DAYS / horizon * total)


def vol_thresholds(train_values: np.ndarray, num_regimes: int) -> np.ndarray:
    """Quantile thresholds of the training samples' forward volatility.

    Args:
        train_values: ``(n,)`` forward volatilities of the training samples (finite).
        num_regimes: ``K >= 2``.

    Returns:
        float64 ``(K-1,)`` thresholds, the ``1/K .. (K-1)/K`` quantiles (numpy's linear rule).

    Raises:
        ValueError: no finite training value, or thresholds that are not strictly increasing
            (too many tied values for ``K`` classes).
    """
    values = np.asarray(train_values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("forward_vol_regime: no training sample has a forward volatility to set thresholds")
    qs = np.arange(1, num_regimes) / num_regimes
    thresholds = np.quantile(values, qs)
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError(
            f"forward_vol_regime: training-period quantile thresholds {thresholds.tolist()} are not strictly "
            f"increasing; too many tied volatilities for num_regimes={num_regimes}"
        )
    return thresholds


def bucket(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class of each value: the number of thresholds ``<= value``; NaN stays NaN.

    Returns:
        float64 array (class ids as floats, NaN where ``values`` is NaN).
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.searchsorted(np.asarray(thresholds), values, side="right").astype(np.float64)
    out[~np.isfinite(values)] = np.nan
    return out


def vol_class_names(num_regimes: int) -> list[str]:
    """``["low_vol", "normal_vol", "high_vol"]`` for 3 classes, else ``vol_q0 .. vol_q{K-1}``."""
    if num_regimes == 3:
        return ["low_vol", "normal_vol", "high_vol"]
    return [f"vol_q{i}" for i in range(num_regimes)]


def _line(position: int) -> str:
    return f"line {position + 2}"


#: More distinct training values than this in a label column is not a regime label.
MAX_LABEL_CLASSES = 20


def _check_not_continuous(values: pd.Series, train_values: pd.Series, classes: list, column: str) -> None:
    """A short error for a label column that holds a measurement rather than classes."""
    if len(classes) > MAX_LABEL_CLASSES:
        kind = "looks continuous" if values.dtype.kind == "f" else "has too many classes for a regime label"
        raise ValueError(
            f"label column {column!r} {kind} ({len(classes)} distinct values in {len(train_values)} training "
            f"samples, at most {MAX_LABEL_CLASSES} classes allowed); give a column of class labels, or bucket "
            f"it at training-period quantiles with data.label_buckets=K"
        )


def bucket_column_labels(
    values: pd.Series, train_positions: np.ndarray, num_buckets: int, column: str
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Bucket a continuous CSV label column into ``K`` classes at training-period quantiles.

    The same no-look-ahead rule as ``forward_vol_regime``: the ``1/K .. (K-1)/K`` quantiles of the
    column over the *training samples only* are the thresholds; class c holds
    ``thresholds[c-1] <= value < thresholds[c]``.

    Args:
        values: the raw label column aligned with the bars, float; NaN = no label.
        train_positions: int positions of the training samples.
        num_buckets: K >= 2.
        column: the column name (for messages).

    Returns:
        ``(codes, class_names, thresholds)``: float64 codes (NaN where unlabelled), names
        ``<column>_q0 .. <column>_q{K-1}``, float64 ``(K-1,)`` thresholds.

    Raises:
        ValueError: a non-numeric column, or tied training values that give non-increasing
            thresholds; the message names the column.
    """
    if values.dtype.kind not in "fiu":
        raise ValueError(f"label column {column!r}: data.label_buckets needs a numeric column, got text values "
                         f"such as {values.dropna().iloc[0]!r}")
    numeric = values.to_numpy(dtype=np.float64)
    try:
        thresholds = vol_thresholds(numeric[np.asarray(train_positions, dtype=np.int64)], num_buckets)
    except ValueError as exc:
        raise ValueError(f"label column {column!r} with data.label_buckets={num_buckets}: "
                         f"{str(exc).split(': ', 1)[-1]}") from None
    return bucket(numeric, thresholds), [f"{column}_q{i}" for i in range(num_buckets)], thresholds


def encode_column_labels(
    values: pd.Series, train_positions: np.ndarray, other_positions: np.ndarray, column: str
) -> tuple[np.ndarray, list[str]]:
    """Encode a CSV label column with the classes seen in training.

    Args:
        values: the raw label column aligned with the bars: float (integer-valued) or strings;
            NaN = no label.
        train_positions: int positions of the training samples.
        other_positions: int positions of validation and test samples.
        column: the column name (for messages).

    Returns:
        ``(codes, class_names)``: float64 codes aligned with ``values`` (NaN where unlabelled or
        where the value is not a training class and no sample uses it) and the class names.

    Raises:
        ValueError: a single class among the training samples; a validation/test sample whose
            value never occurs in training, naming the column, the timestamp and the file line
            (header = line 1).
    """
    train_values = values.iloc[train_positions].dropna()
    classes = sorted(pd.unique(train_values).tolist())
    _check_not_continuous(values, train_values, classes, column)
    if values.dtype.kind == "f":
        names = [str(int(c)) if float(c).is_integer() else repr(float(c)) for c in classes]
    else:
        names = [str(c) for c in classes]
    if len(classes) < 2:
        raise ValueError(
            f"label column {column!r}: the training split holds a single class ({names}, {len(train_values)} "
            f"samples); a classifier needs at least two; use a longer training period"
        )
    mapping = {c: i for i, c in enumerate(classes)}
    codes = np.array([mapping.get(v, np.nan) if pd.notna(v) else np.nan for v in values.tolist()], dtype=np.float64)
    other = np.asarray(other_positions, dtype=np.int64)
    unseen = other[np.isnan(codes[other]) & values.iloc[other].notna().to_numpy()]
    if unseen.size:
        p = int(unseen[0])
        value = values.iloc[p]
        shown = str(int(value)) if values.dtype.kind == "f" and float(value).is_integer() else str(value)
        raise ValueError(
            f"label column {column!r}: value {shown!r} at {values.index[p]} ({_line(p)}) is in the "
            f"validation/test period but never occurs in the training period (training classes: {names})"
        )
    return codes, names
