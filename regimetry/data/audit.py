"""Leakage audit of user input columns: does a column know the future returns?

The most common fatal error with user indicators is a column computed with future bars (a
``shift(-1)``, a centred rolling window, a forward volatility). The audit asks, for each numeric or
boolean input column ``x``, how much of ``x`` the *future* returns explain once the *past* returns
have explained all they can:

1. Past design ``P_t``: for lags ``k = 0..L`` the return ``r_{t-k}``, ``log |r_{t-k}|`` and
   ``r_{t-k}^2``, plus the log trailing realized volatility over 5, 22, 63, 126 and 252 bars
   (so every causal volatility transform, HAR lags included, is nearly spanned).
2. Future design ``F_t``: for leads ``k = 1..L`` the same three transforms of ``r_{t+k}``, plus
   the log forward realized volatility over 5 and ``L`` bars.
3. Ordinary least squares of the standardised column on ``P`` and on ``[P, F]``; the statistic is
   the partial R-squared of the future block,
   ``(R2_full - R2_past) / (1 - R2_past)`` (the share of what the past leaves unexplained that the
   future explains; Greene, *Econometric Analysis*, partial R-squared of a block of regressors).

A causal column can relate to future returns only through what it shares with past returns
(volatility persistence), which ``P`` already absorbs, so its partial R-squared stays near the
noise level ``dim(F) / n``. Measured on the S&P 500 and NASDAQ tuning periods (1999-2007, L = 21,
1,989 rows; ``tests/test_data_audit.py``): the built-in causal features score .00-.14, causal
indicators a user would bring (RSI, MACD cross, moving-average signals) score similarly, while a
``shift(-1)`` return scores 1.00, a centred 21-bar volatility .85, and the forward 21-day
volatility .99. A column is flagged at ``partial R2 >= FLAG_THRESHOLD`` (0.5).

Only training-period rows are used (the audit itself never looks at validation or test data).
The number of lags ``L`` shrinks below ``H`` when the training period is short (10 rows per
regressor); columns with fewer than 5 complete rows per regressor are reported as not audited
rather than guessed at.
"""

from __future__ import annotations

import dataclasses

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:  # annotations only: sources precede the audit in the flow
    from regimetry.data.sources import SourceData

__all__ = ["FLAG_THRESHOLD", "ColumnAudit", "leakage_audit", "audit_source"]

#: Partial R-squared of the future returns at or above which a column is flagged.
FLAG_THRESHOLD = 0.5
_TRAILING_WINDOWS = (5, 22, 63, 126, 252)
_ROWS_PER_REGRESSOR = 10
_MIN_ROWS_PER_REGRESSOR = 5
_EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class ColumnAudit:
    """The audit of one column.

    Attributes:
        column: the input column's name.
        partial_r2: share of the past-unexplained variance the future returns explain (0..1), NaN
            when not audited.
        r2_past: R-squared of the past design alone.
        rows: complete rows used.
        lags: ``L``, past lags and future leads (bars).
        flagged: ``partial_r2 >= FLAG_THRESHOLD``.
        note: why a column was not audited (empty otherwise).
    """

    column: str
    partial_r2: float
    r2_past: float
    rows: int
    lags: int
    flagged: bool
    note: str = ""

    @property
    def evidence(self) -> str:
        """One line for warnings, tags and reports."""
        if self.note:
            return f"{self.column}: not audited ({self.note})"
        return (f"{self.column}: future returns (leads 1..{self.lags}) explain {self.partial_r2:.0%} of what the past "
                f"returns leave unexplained (partial R2 {self.partial_r2:.3f}, {self.rows} training rows; causal "
                f"columns stay near {self.lags * 3 / max(self.rows, 1):.2f})")


def _designs(log_return: pd.Series, lags: int, windows: tuple[int, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    r = log_return.astype(np.float64)
    log_abs, squared = np.log(r.abs() + _EPS), r ** 2
    past, future = {}, {}
    for k in range(lags + 1):
        past[f"r_lag{k}"], past[f"logabs_lag{k}"], past[f"sq_lag{k}"] = r.shift(k), log_abs.shift(k), squared.shift(k)
    for w in windows:
        past[f"logrv_past{w}"] = np.log(np.sqrt(squared.rolling(w).mean()) + _EPS)
    for k in range(1, lags + 1):
        future[f"r_lead{k}"], future[f"logabs_lead{k}"], future[f"sq_lead{k}"] = (
            r.shift(-k), log_abs.shift(-k), squared.shift(-k))
    for w in sorted({min(5, lags), lags}):
        future[f"logrv_future{w}"] = np.log(np.sqrt(squared.rolling(w).mean().shift(-w)) + _EPS)
    return pd.DataFrame(past), pd.DataFrame(future)


def _r2(y: np.ndarray, q: np.ndarray) -> float:
    """R-squared of ``y`` (centred) on the orthonormal basis ``q`` (intercept included in ``q``)."""
    fitted = q @ (q.T @ y)
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - fitted) ** 2)) / total if total > 0 else float("nan")


def _basis(matrix: np.ndarray) -> np.ndarray:
    matrix = np.column_stack([np.ones(len(matrix)), matrix])
    scale = matrix.std(axis=0)
    scale[scale == 0] = 1.0
    q, r = np.linalg.qr(matrix / scale)
    keep = np.abs(np.diag(r)) > 1e-8 * np.abs(np.diag(r)).max()  # drop collinear columns
    return q[:, keep]


def leakage_audit(inputs: pd.DataFrame, log_return: pd.Series, horizon: int) -> list[ColumnAudit]:
    """Audit every column of ``inputs`` against past and future returns.

    Args:
        inputs: numeric (or 0/1 boolean) input columns on the training period's bars, aligned
            with ``log_return``; NaN = missing.
        log_return: float log returns of the same bars (the training period, plus nothing later).
        horizon: the label horizon ``H`` in bars; the audit uses ``L = min(H, what the rows allow)``
            lags and leads.

    Returns:
        One :class:`ColumnAudit` per column, in order.

    Raises:
        ValueError: ``inputs`` and ``log_return`` not aligned.
    """
    if not inputs.index.equals(log_return.index):
        raise ValueError("leakage_audit: inputs and log_return must share one index (the training bars)")
    n = len(inputs)
    windows = tuple(w for w in _TRAILING_WINDOWS if w <= n // 4)
    # complete rows lose the longest trailing window and L leads; regressors: past 3(L+1) + windows,
    # future 3L + 2, intercept 1. Take the largest L <= H with _ROWS_PER_REGRESSOR rows per regressor.
    usable = n - (max(windows) if windows else 0) - int(horizon)
    lags = min(int(horizon), (usable // _ROWS_PER_REGRESSOR - len(windows) - 6) // 6)
    if lags < 1:
        return [ColumnAudit(c, float("nan"), float("nan"), n, 0, False,
                            f"{n} training rows are too few for the regression") for c in inputs.columns]
    past, future = _designs(log_return, lags, windows)
    # One BLAS thread: the QR factorisations are small (rows x ~140), where threads gain little, and on a
    # busy machine OpenBLAS threads spin against each other (measured: 0.86 s per QR with 2 threads
    # under load against 0.04 s with 1; benchmarks/README.md, "Width").
    with threadpool_limits(limits=1, user_api="blas"):
        return _audit_columns(inputs, past, future, lags)


def _audit_columns(inputs: pd.DataFrame, past: pd.DataFrame, future: pd.DataFrame, lags: int) -> list[ColumnAudit]:
    complete = past.notna().all(axis=1) & future.notna().all(axis=1)
    results = []
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for column in inputs.columns:
        x = pd.to_numeric(inputs[column], errors="coerce").astype(np.float64)
        rows = complete & x.notna()
        used = int(rows.sum())
        if used < _MIN_ROWS_PER_REGRESSOR * (past.shape[1] + future.shape[1] + 1):  # e.g. a long NaN warm-up
            results.append(ColumnAudit(column, float("nan"), float("nan"), used, lags, False,
                                       f"{used} complete training rows are too few for the regression"))
            continue
        if x[rows].nunique() < 2:
            results.append(ColumnAudit(column, float("nan"), float("nan"), used, lags, False, "constant"))
            continue
        key = np.packbits(rows.to_numpy()).tobytes()
        if key not in cache:  # the bases depend only on which rows are complete
            p = past[rows].to_numpy()
            cache[key] = (_basis(p), _basis(np.column_stack([p, future[rows].to_numpy()])))
        q_past, q_full = cache[key]
        y = x[rows].to_numpy()
        y = (y - y.mean()) / y.std()
        r2_past, r2_full = _r2(y, q_past), _r2(y, q_full)
        partial = 0.0 if r2_past >= 1.0 - 1e-12 else max(0.0, (r2_full - r2_past) / (1.0 - r2_past))
        results.append(ColumnAudit(column, partial, r2_past, used, lags, partial >= FLAG_THRESHOLD))
    return results


def audit_source(source: "SourceData", train_end: int, horizon: int) -> list[ColumnAudit]:
    """Audit a loaded source's numeric and boolean input columns on its bars before ``train_end``.

    What ``regimetry.data.prepare`` runs (and the data report shows): the rows are the bars
    ``0 .. train_end - 1``, i.e. up to the last training sample's bar, so no validation or test bar
    enters; categorical columns are not audited (their one-hot codes are not one series).

    Args:
        source: a :class:`~regimetry.data.sources.SourceData` (``inputs``, ``kinds`` and
            ``bars["log_return"]``).
        train_end: one past the position (bar) of the last training sample.
        horizon: the label horizon in bars (see :func:`leakage_audit`).

    Returns:
        One :class:`ColumnAudit` per numeric or boolean column, in the order of ``source.kinds``
        (empty when there is none).

    Raises:
        ValueError: ``train_end`` outside ``1 .. len(source.bars)``.
    """
    if not 1 <= int(train_end) <= len(source.bars):
        raise ValueError(f"audit_source: train_end must lie in 1..{len(source.bars)} (bars of {source.name}), "
                         f"got {train_end}")
    columns = [c for c, kind in source.kinds.items() if kind in ("numeric", "boolean")]
    if not columns:
        return []
    end = int(train_end)
    inputs = source.inputs.iloc[:end][columns].apply(pd.to_numeric, errors="coerce")
    return leakage_audit(inputs, source.bars["log_return"].iloc[:end], horizon)
