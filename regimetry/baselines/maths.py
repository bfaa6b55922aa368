"""Pure building blocks of the baselines: realized volatility, HAR-RV features, bucketing and the
scaled forward filter of a Gaussian HMM (functions of arrays, no ``Splits``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from regimetry.data.features import LOG_RV_FLOOR

__all__ = ["ANNUALIZATION", "HAR_LAGS", "bucket", "forward_filter", "gaussian_log_emissions", "har_features",
           "realized_vol"]

ANNUALIZATION = 252
"""Bars per year used to annualise realized volatility (daily bars)."""

HAR_LAGS = (1, 5, 22)
"""HAR-RV aggregation windows in bars: daily, weekly, monthly (Corsi, 2009)."""

_LOG_RV_FLOOR = LOG_RV_FLOOR  # one floor for the HAR baseline and the log_rv_<n> features
"""Floor (annualised vol, fraction) before taking logs, so that a zero return gives a finite log RV."""


def realized_vol(
    returns: np.ndarray, window: int, annualization: int = ANNUALIZATION, min_periods: int | None = None
) -> np.ndarray:
    """Trailing realized volatility ``sqrt(annualization / window * sum_{k=0..window-1} r_{t-k}^2)``.

    Args:
        returns: float ``(T,)`` log returns per bar (leading NaNs allowed: they are skipped).
        window: bars in the sum, ``>= 1``.
        annualization: bars per year (252 for daily bars).
        min_periods: fewest finite returns needed; with fewer than ``window`` available (the start
            of the series) the mean square over the available ones is used. Default ``window``.

    Returns:
        float64 ``(T,)`` annualised volatility as a fraction (0.2 = 20 %); NaN where fewer than
        ``min_periods`` returns are available. Uses returns up to t only.

    Raises:
        ValueError: ``window < 1``, ``min_periods`` outside ``[1, window]`` or ``returns`` not 1-D.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"realized_vol: returns must be 1-D, got shape {r.shape}")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"realized_vol: window must be a positive integer, got {window!r}")
    min_periods = int(window) if min_periods is None else int(min_periods)
    if not 1 <= min_periods <= window:
        raise ValueError(f"realized_vol: min_periods must lie in [1, window={window}], got {min_periods}")
    mean_sq = pd.Series(r * r).rolling(int(window), min_periods=min_periods).mean().to_numpy()
    return np.sqrt(annualization * mean_sq)


def har_features(returns: np.ndarray, lags: Sequence[int] = HAR_LAGS) -> np.ndarray:
    """HAR-RV regressors: log annualised realized vol over each of ``lags`` trailing bars.

    With daily bars only, the daily realized variance is proxied by the squared daily return, so
    the regressors are ``log RV_1 = log(|r_t| sqrt(252))``, ``log RV_5`` and ``log RV_22`` (Corsi,
    2009, eq. 8, on log volatilities instead of variances - a monotone reparametrisation). Vols are
    floored at ``1e-4`` before the log so that a zero return gives a finite value. Near the start
    of the series, where fewer than ``lag`` returns exist, the available ones are averaged.

    Args:
        returns: float ``(T,)`` log returns (leading NaNs allowed).
        lags: aggregation windows in bars (default 1, 5, 22).

    Returns:
        float64 ``(T, len(lags))``; NaN only before the first finite return. Uses returns up to t only.
    """
    cols = []
    for lag in lags:
        rv = realized_vol(returns, int(lag), min_periods=1)
        cols.append(np.where(np.isfinite(rv), np.log(np.maximum(rv, _LOG_RV_FLOOR)), np.nan))
    return np.stack(cols, axis=1)


def bucket(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class ids by cutting ``values`` at ascending ``thresholds``.

    Class ``k`` holds ``thresholds[k-1] <= v < thresholds[k]`` (``np.digitize``), so
    ``len(thresholds) + 1`` classes, class 0 the lowest - the convention of the forward-volatility
    labels (thresholds at training-period quantiles).

    Args:
        values: float ``(n,)``, finite.
        thresholds: float ``(num_classes - 1,)``, ascending.

    Returns:
        int64 ``(n,)``.

    Raises:
        ValueError: thresholds not ascending, or non-finite values.
    """
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if np.any(np.diff(t) < 0):
        raise ValueError(f"bucket: thresholds must be ascending, got {t}")
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"bucket: {int((~np.isfinite(v)).sum())} non-finite value(s) to bucket")
    return np.digitize(v, t).astype(np.int64)


def gaussian_log_emissions(X: np.ndarray, means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """Log densities of multivariate normal emissions, one column per state.

    Args:
        X: float ``(T, D)`` observations.
        means: float ``(K, D)`` state means.
        covars: float ``(K, D, D)`` state covariance matrices (positive definite).

    Returns:
        float64 ``(T, K)`` with ``log N(X_t; means_k, covars_k)``.

    Raises:
        ValueError: inconsistent shapes.
    """
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    means = np.asarray(means, dtype=np.float64)
    covars = np.asarray(covars, dtype=np.float64)
    K, D = means.shape
    if X.shape[1] != D or covars.shape != (K, D, D):
        raise ValueError(
            f"gaussian_log_emissions: X {X.shape}, means {means.shape} and covars {covars.shape} "
            f"must be (T, D), (K, D), (K, D, D)"
        )
    out = np.empty((X.shape[0], K))
    for k in range(K):
        chol = np.linalg.cholesky(covars[k])
        z = np.linalg.solve(chol, (X - means[k]).T)  # (D, T)
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        out[:, k] = -0.5 * (D * np.log(2 * np.pi) + log_det + (z * z).sum(axis=0))
    return out


def forward_filter(log_emissions: np.ndarray, startprob: np.ndarray, transmat: np.ndarray) -> np.ndarray:
    """Filtered state probabilities ``P(s_t = k | x_1..x_t)`` of a hidden Markov chain.

    The forward recursion (Hamilton, 1989, eqs. 22.4.5-22.4.6; Rabiner, 1989, scaled alpha pass)
    in log space: ``alpha_1 = pi * b_1``, ``alpha_t = (alpha_{t-1} @ A) * b_t``, normalised every
    step. Row t depends on observations up to t only - unlike ``hmmlearn``'s ``predict_proba``,
    which returns forward-backward (smoothed) posteriors that use the whole sequence.

    Args:
        log_emissions: float ``(T, K)`` log emission densities ``log p(x_t | s_t = k)``.
        startprob: float ``(K,)`` distribution of the first state.
        transmat: float ``(K, K)`` row-stochastic, ``transmat[i, j] = P(s_t = j | s_{t-1} = i)``.

    Returns:
        float64 ``(T, K)``; every row sums to 1.

    Raises:
        ValueError: inconsistent shapes or non-stochastic inputs.
    """
    le = np.asarray(log_emissions, dtype=np.float64)
    pi = np.asarray(startprob, dtype=np.float64)
    A = np.asarray(transmat, dtype=np.float64)
    if le.ndim != 2 or pi.shape != (le.shape[1],) or A.shape != (le.shape[1], le.shape[1]):
        raise ValueError(
            f"forward_filter: log_emissions {le.shape}, startprob {pi.shape}, transmat {A.shape} "
            "must be (T, K), (K,), (K, K)"
        )
    if not (np.allclose(pi.sum(), 1.0, atol=1e-6) and np.allclose(A.sum(axis=1), 1.0, atol=1e-6)):
        raise ValueError("forward_filter: startprob and every row of transmat must sum to 1")
    with np.errstate(divide="ignore"):
        log_A = np.log(A)
        log_prior = np.log(pi)
    out = np.empty_like(le)
    for t in range(le.shape[0]):
        log_alpha = log_prior + le[t]
        log_alpha -= logsumexp(log_alpha)
        out[t] = np.exp(log_alpha)
        log_prior = logsumexp(log_alpha[:, None] + log_A, axis=0)
    return out
