"""Classical regime baselines, evaluated on the same splits, windows and metrics as the transformers.

Every baseline takes a :class:`regimetry.data.types.Splits` and returns class probabilities (or,
where a model gives none, hard predictions) for the validation and test windows, aligned with
``split.y``, so that the metrics of record (``regimetry.training.metrics_from_probs``) are computed
exactly as for the encoders. Everything that is fitted - thresholds, scalers, regression
coefficients, GARCH and HMM parameters, the HMM state -> regime map - is fitted on the training
period only; the validation period is used only to choose a hyperparameter from a small grid
(HAR-RV / logistic ``C``, gradient-boosting learning rate), and the test period is never looked at.

Bar-level baselines (persistence, HAR-RV, GARCH, HMM) compute their inputs from the raw bars
(``Splits.bars["log_return"]``) at each window's last bar (``split.positions``), using returns up to
and including that bar only. Window baselines (``logistic``, ``gradient_boosting``) use the same
preprocessed windows ``split.X`` as the encoders.

Registry (``BASELINES``):

=====================  ==========================================================================
``climatology``        training class frequencies (the no-skill reference)
``persistence``        trailing realized volatility over the label horizon, bucketed with the
                       training thresholds: "the current regime persists" (hard predictions)
``har_rv``             HAR-RV (Corsi, 2009): log realized vol over 1/5/22 bars into a multinomial
                       logistic regression, ``C`` chosen on validation
``garch``              GARCH(1,1) with Student-t innovations (``arch``), fitted on the training
                       period, filtered forward with fixed parameters, forecast of the forward
                       realized vol over the horizon, bucketed (hard predictions)
``hmm``                Gaussian HMM (``hmmlearn``) on daily returns fitted on the training period;
                       *forward-filtered* state probabilities (data up to t only), mapped to
                       regimes with a state x regime table estimated on the training period
``logistic``           multinomial logistic regression on flattened windows, ``C`` chosen on val
``gradient_boosting``  ``HistGradientBoostingClassifier`` on flattened windows, learning rate on val
``bayes_filter``       synthetic data only: the Hamilton filter with the true parameters - the
                       Bayes-optimal classifier of the true regime, i.e. the ceiling
=====================  ==========================================================================

References:
    Corsi, F. (2009). A simple approximate long-memory model of realized volatility. Journal of
    Financial Econometrics 7(2), 174-196.
    Bollerslev, T. (1986). Generalized autoregressive conditional heteroskedasticity. Journal of
    Econometrics 31(3), 307-327; Bollerslev (1987) for Student-t innovations.
    Hamilton, J. D. (1989). A new approach to the economic analysis of nonstationary time series and
    the business cycle. Econometrica 57(2), 357-384 (the filter).
    Rabiner, L. R. (1989). A tutorial on hidden Markov models. Proc. IEEE 77(2) (scaled forward pass).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from regimetry.data.features import LOG_RV_FLOOR
from regimetry.data.types import SplitData, Splits

__all__ = [
    "ANNUALIZATION",
    "BASELINES",
    "Baseline",
    "BaselineResult",
    "applicable_baselines",
    "bucket",
    "forward_filter",
    "gaussian_log_emissions",
    "har_features",
    "realized_vol",
    "result_metrics",
    "run_baseline",
    "run_baselines",
]

log = logging.getLogger(__name__)

ANNUALIZATION = 252
"""Bars per year used to annualise realized volatility (daily bars)."""

HAR_LAGS = (1, 5, 22)
"""HAR-RV aggregation windows in bars: daily, weekly, monthly (Corsi, 2009)."""

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Inverse L2 strengths tried for the logistic baselines; the best validation balanced accuracy wins."""

GB_LEARNING_RATES = (0.05, 0.15)
"""Learning rates tried for gradient boosting; the best validation balanced accuracy wins."""

_LOG_RV_FLOOR = LOG_RV_FLOOR  # one floor for the HAR baseline and the log_rv_<n> features
"""Floor (annualised vol, fraction) before taking logs, so that a zero return gives a finite log RV."""


# ------------------------------------------------------------------------------------------------
# Results and registry
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """Predictions and metrics of one baseline on one ``Splits``.

    Attributes:
        name: registry name of the baseline.
        val_probs / test_probs: float64 ``(n_val, num_classes)`` / ``(n_test, num_classes)`` class
            probabilities aligned with ``splits.val.y`` / ``splits.test.y``; ``None`` for baselines
            that give hard predictions only (persistence, GARCH).
        val_pred / test_pred: int64 ``(n_val,)`` / ``(n_test,)`` predicted class ids (the argmax of
            the probabilities where there are probabilities).
        val_metrics / test_metrics: the scalar metrics of record
            (``regimetry.training.metrics_from_probs``: accuracy, balanced_accuracy, macro_f1,
            log_loss - NaN for hard predictions - and recall/<class>); ``{}`` for an empty split.
        fit_seconds: wall time of fitting and predicting, in seconds.
        params: the settings in force, including the hyperparameter chosen on validation.
        val_confusion / test_confusion: int64 ``(num_classes, num_classes)`` confusion matrices
            (rows = true, columns = predicted), ``None`` for an empty split.
    """

    name: str
    val_probs: np.ndarray | None
    val_pred: np.ndarray
    test_probs: np.ndarray | None
    test_pred: np.ndarray
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    fit_seconds: float
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    val_confusion: np.ndarray | None = None
    test_confusion: np.ndarray | None = None

    def probs_or_pred(self, split: str) -> np.ndarray:
        """``val_probs``/``test_probs`` where there are probabilities, else the hard predictions."""
        probs = getattr(self, f"{split}_probs")
        return probs if probs is not None else getattr(self, f"{split}_pred")


@dataclasses.dataclass(frozen=True)
class _Output:
    val: np.ndarray  # probabilities (n, C) if probabilistic else predictions (n,)
    test: np.ndarray
    probabilistic: bool
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A registered baseline.

    Attributes:
        name: registry key.
        description: one line for reports and the MLflow run description.
        fit_predict: ``(splits, seed) -> _Output`` (fits on train, predicts val and test).
        applicable: ``splits -> str | None``; ``None`` if the baseline applies, else the reason why
            not (e.g. the Bayes filter needs synthetic data with known parameters).
    """

    name: str
    description: str
    fit_predict: Callable[[Splits, int], _Output]
    applicable: Callable[[Splits], str | None]


# ------------------------------------------------------------------------------------------------
# Pure building blocks
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Helpers over Splits
# ------------------------------------------------------------------------------------------------
def _returns(splits: Splits) -> np.ndarray:
    """Log returns of ``splits.bars`` as float64 ``(n_bars,)``; leading NaNs allowed, no others."""
    if "log_return" not in splits.bars.columns:
        raise ValueError(
            f"baselines: Splits.bars has no 'log_return' column (columns: {list(splits.bars.columns)})"
        )
    r = splits.bars["log_return"].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(r)
    if not finite.any():
        raise ValueError("baselines: Splits.bars['log_return'] holds no finite value")
    first = int(np.argmax(finite))
    if not finite[first:].all():
        bad = first + int(np.argmin(finite[first:]))
        raise ValueError(
            f"baselines: Splits.bars['log_return'] is NaN/inf at row {bad} ({splits.bars.index[bad]}) "
            "after the first valid return; fill or drop that bar in the data source"
        )
    return r


def _train_end(splits: Splits) -> int:
    """Row in ``bars`` of the last training window's last bar: bar-level models fit up to here."""
    return int(np.max(splits.train.positions))


def _at(values: np.ndarray, split: SplitData, what: str) -> np.ndarray:
    out = values[split.positions]
    bad = ~np.all(np.isfinite(out.reshape(len(out), -1)), axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"baselines: {what} is undefined (NaN) at {int(bad.sum())} window(s), first at "
            f"{split.index[i]} (bar row {split.positions[i]}); not enough history before it"
        )
    return out


def _score_metric(y: np.ndarray, pred: np.ndarray) -> float:
    """Validation criterion for the small grids: balanced accuracy (the training monitor)."""
    if len(y) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class absent from y (e.g. a calm val period)
        return float(balanced_accuracy_score(y, pred))


def _full_probs(estimator: Any, X: np.ndarray, num_classes: int) -> np.ndarray:
    """``predict_proba`` expanded to every class id (classes unseen in training get 0)."""
    p = estimator.predict_proba(X)
    classes = np.asarray(estimator.classes_ if hasattr(estimator, "classes_") else estimator[-1].classes_)
    out = np.zeros((X.shape[0], num_classes))
    out[:, classes.astype(int)] = p
    return out


def _hungarian_map(source: np.ndarray, target: np.ndarray, n_source: int, n_target: int) -> np.ndarray:
    """``map[source_id] = target_id`` maximising agreement (unmatched source ids -> best column)."""
    table = np.zeros((n_source, n_target))
    np.add.at(table, (source, target), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = table.argmax(axis=1)
    mapping[rows] = cols
    return mapping.astype(np.int64)


def _vol_score_predictions(splits: Splits, score: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bucket a volatility score (annualised fraction) into classes for val and test.

    For ``forward_vol_regime`` the score is cut at ``splits.label_thresholds`` (the training
    period's label thresholds) - the label's own definition. For other targets (``true_regime``,
    ``column:...``), whose classes need not be ordered by volatility, the score is cut at its own
    training-period quantiles (equal-count buckets) and each bucket is mapped to a class by the
    Hungarian algorithm on the training contingency table.
    """
    k = splits.num_classes
    train_s = _at(score, splits.train, what)
    if splits.config.resolved_target == "forward_vol_regime":
        if splits.label_thresholds is None:
            raise ValueError("baselines: target forward_vol_regime but Splits.label_thresholds is None")
        thresholds = np.asarray(splits.label_thresholds, dtype=np.float64).ravel()
        mapping = np.arange(len(thresholds) + 1)
        how = "label_thresholds"
    else:
        thresholds = np.quantile(train_s, np.arange(1, k) / k)
        mapping = _hungarian_map(bucket(train_s, thresholds), splits.train.y, k, k)
        how = "train_quantiles+hungarian"
    params = {"thresholds": [round(float(t), 6) for t in thresholds], "bucketing": how}
    val = mapping[bucket(_at(score, splits.val, what), thresholds)]
    test = mapping[bucket(_at(score, splits.test, what), thresholds)]
    return val, test, params


def _select_on_val(
    candidates: Sequence[Any],
    make: Callable[[Any], Any],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
) -> tuple[Any, Any]:
    """Fit ``make(c)`` on train for every candidate; return (best candidate, its fitted model)."""
    best = (-np.inf, None, None)
    for c in candidates:
        model = make(c)
        model.fit(X_train, y_train)
        score = _score_metric(y_val, _full_probs(model, X_val, num_classes).argmax(axis=1)) if len(y_val) else 0.0
        if score > best[0]:
            best = (score, c, model)
    return best[1], best[2]


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------
def _climatology(splits: Splits, seed: int) -> _Output:
    k = splits.num_classes
    freq = np.bincount(splits.train.y, minlength=k).astype(np.float64)
    freq /= freq.sum()
    return _Output(
        np.tile(freq, (len(splits.val), 1)), np.tile(freq, (len(splits.test), 1)), True,
        {"train_class_frequencies": [round(float(f), 4) for f in freq]},
    )


def _persistence(splits: Splits, seed: int) -> _Output:
    h = splits.config.horizon
    rv = realized_vol(_returns(splits), h)
    val, test, params = _vol_score_predictions(splits, rv, f"trailing {h}-bar realized vol")
    return _Output(val, test, False, {"window": h, **params})


def _har_rv(splits: Splits, seed: int) -> _Output:
    feats = har_features(_returns(splits))
    what = f"HAR-RV features (log RV over {HAR_LAGS} bars)"
    Xtr, Xva, Xte = (_at(feats, s, what) for s in (splits.train, splits.val, splits.test))
    k = splits.num_classes

    def make(c: float):
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
        )

    c, model = _select_on_val(C_GRID, make, Xtr, splits.train.y, Xva, splits.val.y, k)
    return _Output(
        _full_probs(model, Xva, k), _full_probs(model, Xte, k), True,
        {"lags": list(HAR_LAGS), "C": c, "C_grid": list(C_GRID), "class_weight": "balanced"},
    )


def _garch(splits: Splits, seed: int) -> _Output:
    from arch import arch_model

    h = splits.config.horizon
    r = _returns(splits)
    first = int(np.argmax(np.isfinite(r)))
    end = _train_end(splits)
    pct = r[first:] * 100.0  # percent returns: arch's optimiser is best conditioned near unit scale
    n_fit = end - first + 1
    if n_fit < 100:
        raise ValueError(f"garch: only {n_fit} training returns (need >= 100) to fit GARCH(1,1)-t")
    spec = dict(mean="Constant", vol="GARCH", p=1, q=1, dist="t", rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the parameters are logged
        fitted = arch_model(pct[:n_fit], **spec).fit(disp="off", options={"maxiter": 500})
        # Fixed training parameters, filtered through the whole path: the forecast made at bar t
        # uses returns up to t only (no refit, no look-ahead).
        fixed = arch_model(pct, **spec).fix(fitted.params)
        needed = np.concatenate([s.positions for s in (splits.train, splits.val, splits.test)]) - first
        start = int(max(needed.min(), 0))
        fc = fixed.forecast(horizon=h, start=start, reindex=False)
    var = fc.variance.to_numpy()  # (n_origins, h) percent^2, origin = start..end
    mean = fc.mean.to_numpy()
    expected_sq = (var + mean**2).sum(axis=1)  # E[sum_{k=1..h} r_{t+k}^2] in percent^2
    forecast = np.full(len(r), np.nan)
    forecast[first + start : first + start + len(expected_sq)] = np.sqrt(ANNUALIZATION / h * expected_sq) / 100.0
    val, test, params = _vol_score_predictions(splits, forecast, f"GARCH {h}-bar forward vol forecast")
    fitted_params = {  # arch names alpha[1], beta[1]: keep tracking-safe names
        f"garch_{k.replace('[', '').replace(']', '')}": round(float(v), 6) for k, v in fitted.params.items()
    }
    return _Output(val, test, False, {"horizon": h, "dist": "t", "fit_bars": n_fit, **fitted_params, **params})


def _hmm_observations(r: np.ndarray) -> np.ndarray:
    return (r * 100.0)[:, None]  # percent log returns, (T, 1)


def _sticky_volatility_init(model: Any, obs: np.ndarray) -> None:
    """Start EM from persistent states that split the bars by trailing 10-bar volatility."""
    k = model.n_components
    d = obs.shape[1]
    local_var = pd.Series((obs**2).sum(axis=1)).rolling(10, min_periods=1).mean().to_numpy()
    groups = np.array_split(np.argsort(local_var, kind="stable"), k)
    model.n_features = d
    model.startprob_ = np.full(k, 1.0 / k)
    model.transmat_ = np.full((k, k), 0.05 / max(k - 1, 1)) + np.eye(k) * (0.95 - 0.05 / max(k - 1, 1))
    model.means_ = np.stack([obs[g].mean(axis=0) for g in groups])
    model.covars_ = np.stack([np.cov(obs[g].T).reshape(d, d) + 1e-6 * np.eye(d) for g in groups])


def _hmm(splits: Splits, seed: int, n_states: int | None = None, n_init: int = 3) -> _Output:
    from hmmlearn.hmm import GaussianHMM

    k = splits.num_classes
    n_states = n_states or k
    r = _returns(splits)
    first = int(np.argmax(np.isfinite(r)))
    end = _train_end(splits)
    obs = _hmm_observations(r[first:])
    train_obs = obs[: end - first + 1]
    best, best_ll = None, -np.inf
    # EM finds local optima (e.g. a non-persistent "outlier" state): start once from sticky states
    # split by trailing volatility, and ``n_init - 1`` times from hmmlearn's k-means start; keep
    # the best training likelihood.
    for i in range(n_init):
        model = GaussianHMM(
            n_components=n_states, covariance_type="full", n_iter=200, tol=1e-4, random_state=seed + i,
            implementation="scaling", init_params="" if i == 0 else "stmc",
        )
        if i == 0:
            _sticky_volatility_init(model, train_obs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(train_obs)
        ll = model.score(train_obs)
        if np.isfinite(ll) and ll > best_ll:
            best, best_ll = model, ll
    if best is None:
        raise RuntimeError("hmm: every EM run on the training returns diverged")
    filtered = np.full((len(r), n_states), np.nan)
    filtered[first:] = forward_filter(
        gaussian_log_emissions(obs, best.means_, best.covars_), best.startprob_, best.transmat_
    )
    # State -> regime table on the training windows: P(regime | state), posterior-weighted counts
    # plus one pseudo-count per cell (no zero probabilities).
    post_train = _at(filtered, splits.train, "HMM filtered posterior")
    table = np.ones((n_states, k))
    for c in range(k):
        table[:, c] += post_train[splits.train.y == c].sum(axis=0)
    state_to_regime = table / table.sum(axis=1, keepdims=True)
    val = _at(filtered, splits.val, "HMM filtered posterior") @ state_to_regime
    test = _at(filtered, splits.test, "HMM filtered posterior") @ state_to_regime
    order = np.argsort(best.covars_[:, 0, 0])
    params = {
        "n_states": n_states,
        "observations": "log_return_pct",
        "train_loglik": round(float(best_ll), 3),
        "state_vol_ann_pct": [round(float(np.sqrt(best.covars_[s, 0, 0] * ANNUALIZATION)), 2) for s in order],
        "state_persistence": [round(float(best.transmat_[s, s]), 4) for s in order],
    }
    return _Output(val, test, True, params)


def _flat(split: SplitData) -> np.ndarray:
    return split.X.reshape(len(split), -1).astype(np.float64)


def _logistic(splits: Splits, seed: int) -> _Output:
    k = splits.num_classes
    Xtr, Xva, Xte = _flat(splits.train), _flat(splits.val), _flat(splits.test)

    def make(c: float):
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=1000, random_state=seed)
        )

    c, model = _select_on_val(C_GRID, make, Xtr, splits.train.y, Xva, splits.val.y, k)
    return _Output(
        _full_probs(model, Xva, k), _full_probs(model, Xte, k), True,
        {"inputs": "flattened_windows", "C": c, "C_grid": list(C_GRID), "class_weight": "balanced"},
    )


def _gradient_boosting(splits: Splits, seed: int) -> _Output:
    k = splits.num_classes
    Xtr, Xva, Xte = _flat(splits.train), _flat(splits.val), _flat(splits.test)
    fixed = dict(max_iter=100, max_leaf_nodes=15, min_samples_leaf=40, l2_regularization=1.0, max_bins=63)

    def make(lr: float):
        return HistGradientBoostingClassifier(
            learning_rate=lr, early_stopping=False, class_weight="balanced", random_state=seed, **fixed
        )

    lr, model = _select_on_val(GB_LEARNING_RATES, make, Xtr, splits.train.y, Xva, splits.val.y, k)
    val_probs, test_probs = _full_probs(model, Xva, k), _full_probs(model, Xte, k)
    return _Output(
        val_probs, test_probs, True,
        {"inputs": "flattened_windows", "learning_rate": lr, "learning_rate_grid": list(GB_LEARNING_RATES),
         "class_weight": "balanced", **fixed},
    )


_POSTERIOR_KEYS = ("filter_posterior", "hamilton_posterior", "posterior", "filtered_probs")


def _bayes_posterior(splits: Splits) -> np.ndarray:
    """The true-parameter Hamilton filter's posterior aligned to ``bars``: ``(n_bars, K)``."""
    extras = splits.extras or {}
    for key in _POSTERIOR_KEYS:
        if key in extras and extras[key] is not None:
            post = extras[key]
            return np.asarray(post.to_numpy() if hasattr(post, "to_numpy") else post, dtype=np.float64)
    params = extras.get("params", extras.get("true_params"))
    if params is None:
        raise ValueError(
            f"bayes_filter: Splits.extras holds neither a filter posterior ({_POSTERIOR_KEYS}) nor the "
            f"true parameters ('params'); keys: {sorted(extras)}"
        )
    from regimetry.data.synthetic import hamilton_filter

    r = _returns(splits)
    first = int(np.argmax(np.isfinite(r)))
    post = np.full((len(r), splits.num_classes), np.nan)
    post[first:] = hamilton_filter(r[first:], params)
    return post


def _bayes_filter(splits: Splits, seed: int) -> _Output:
    post = _bayes_posterior(splits)
    if post.shape != (len(splits.bars), splits.num_classes):
        raise ValueError(
            f"bayes_filter: filter posterior has shape {post.shape}, expected (n_bars={len(splits.bars)}, "
            f"num_classes={splits.num_classes})"
        )
    val = _at(post, splits.val, "Bayes filter posterior")
    test = _at(post, splits.test, "Bayes filter posterior")
    return _Output(val, test, True, {"parameters": "true"})


def _always(splits: Splits) -> str | None:
    return None


def _needs_returns(splits: Splits) -> str | None:
    if "log_return" not in splits.bars.columns:
        return "Splits.bars has no log_return column"
    return None


def _needs_truth(splits: Splits) -> str | None:
    if splits.config.source != "synthetic" or splits.config.resolved_target != "true_regime":
        return "needs synthetic data with target true_regime (the true parameters are unknown otherwise)"
    return None


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("climatology", "training class frequencies", _climatology, _always),
        Baseline("persistence", "trailing realized vol over the horizon, bucketed at the training thresholds",
                 _persistence, _needs_returns),
        Baseline("har_rv", "HAR-RV (Corsi 2009): log RV 1/5/22 bars -> multinomial logistic, C on val",
                 _har_rv, _needs_returns),
        Baseline("garch", "GARCH(1,1)-t fitted on train, fixed-parameter forward-vol forecast, bucketed",
                 _garch, _needs_returns),
        Baseline("hmm", "Gaussian HMM on returns fitted on train, forward-filtered, states mapped on train",
                 _hmm, _needs_returns),
        Baseline("logistic", "multinomial logistic regression on flattened windows, C on val", _logistic, _always),
        Baseline("gradient_boosting", "HistGradientBoosting on flattened windows, learning rate on val",
                 _gradient_boosting, _always),
        Baseline("bayes_filter", "Hamilton filter with the true parameters (synthetic ceiling)",
                 _bayes_filter, _needs_truth),
    )
}


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------
def _evaluate(y: np.ndarray, probs: np.ndarray | None, pred: np.ndarray, class_names: list[str]):
    """The metrics of record (an ``EvalResult``), or ``None`` for an empty split."""
    from regimetry.training import metrics_from_probs

    if len(y) == 0:
        return None
    if probs is not None:
        return metrics_from_probs(y, probs, class_names)
    return metrics_from_probs(y, None, class_names, y_pred=pred)


def run_baseline(name: str, splits: Splits, seed: int = 0) -> BaselineResult:
    """Fit one baseline on ``splits.train`` (choosing any hyperparameter on ``splits.val``) and
    predict the validation and test windows.

    Args:
        name: a key of ``BASELINES``.
        splits: prepared data (``regimetry.data.prepare`` or one fold of ``prepare_folds``).
        seed: seeds the stochastic fits (EM initialisation, boosting, solvers).

    Returns:
        :class:`BaselineResult` with probabilities/predictions aligned with ``splits.val.y`` and
        ``splits.test.y`` and the metrics of record for both.

    Raises:
        KeyError: unknown ``name`` (listing the valid names).
        ValueError: the baseline does not apply to this data (the reason is given), or the data
            lacks what it needs (e.g. too little history before the first window).
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; valid names: {sorted(BASELINES)}")
    baseline = BASELINES[name]
    reason = baseline.applicable(splits)
    if reason is not None:
        raise ValueError(f"baseline {name!r} does not apply: {reason}")
    if len(splits.train) == 0:
        raise ValueError(f"baseline {name!r}: the training split is empty")
    t0 = time.perf_counter()
    # One BLAS/OpenMP thread: these fits are small, and on a small shared CPU multithreaded BLAS and
    # OpenMP spin-waiting made them 5-50x slower (measured on 2 cores under load: logistic
    # regression on S&P 500 flattened windows 41.7 s -> 2.5 s, boosting on 1500 x 42 6.9 s -> 1.4 s).
    with threadpool_limits(limits=1):
        out = baseline.fit_predict(splits, seed)
    seconds = time.perf_counter() - t0
    for split, values in (("val", out.val), ("test", out.test)):
        n = len(getattr(splits, split))
        expected = (n, splits.num_classes) if out.probabilistic else (n,)
        if np.shape(values) != expected:  # an internal bug, not a user error: fail loudly
            raise RuntimeError(f"baseline {name!r}: {split} output has shape {np.shape(values)}, expected {expected}")
    if out.probabilistic:
        val_probs, test_probs = out.val, out.test
        val_pred, test_pred = val_probs.argmax(axis=1), test_probs.argmax(axis=1)
    else:
        val_probs = test_probs = None
        val_pred, test_pred = out.val, out.test
    val_pred = np.asarray(val_pred, dtype=np.int64)
    test_pred = np.asarray(test_pred, dtype=np.int64)
    names = list(splits.class_names)
    val_eval = _evaluate(splits.val.y, val_probs, val_pred, names)
    test_eval = _evaluate(splits.test.y, test_probs, test_pred, names)
    return BaselineResult(
        name=name,
        val_probs=val_probs,
        val_pred=val_pred,
        test_probs=test_probs,
        test_pred=test_pred,
        val_metrics=dict(val_eval.metrics) if val_eval else {},
        test_metrics=dict(test_eval.metrics) if test_eval else {},
        fit_seconds=seconds,
        params=dict(out.params),
        val_confusion=val_eval.confusion if val_eval else None,
        test_confusion=test_eval.confusion if test_eval else None,
    )


def result_metrics(result: BaselineResult, prefix: str = "") -> dict[str, float]:
    """Flat metrics for tracking: ``{prefix + "val/<metric>": v, prefix + "test/<metric>": v,
    prefix + "time/fit_seconds": s}`` (NaN kept: log loss of hard predictions is NaN)."""
    out = {f"{prefix}val/{k}": float(v) for k, v in result.val_metrics.items()}
    out.update({f"{prefix}test/{k}": float(v) for k, v in result.test_metrics.items()})
    out[f"{prefix}time/fit_seconds"] = float(result.fit_seconds)
    return out


def applicable_baselines(splits: Splits) -> list[str]:
    """Names of the registered baselines that apply to ``splits`` (in registry order)."""
    return [n for n, b in BASELINES.items() if b.applicable(splits) is None]


def run_baselines(splits: Splits, names: Sequence[str] | None = None, seed: int = 0) -> dict[str, BaselineResult]:
    """Run several baselines on the same ``splits``.

    Args:
        splits: prepared data.
        names: baselines to run; ``None`` runs every applicable one (inapplicable ones are skipped
            with a log message; a name given explicitly that does not apply raises).
        seed: passed to every baseline.

    Returns:
        ``{name: BaselineResult}`` in the order run.

    Raises:
        KeyError / ValueError: as :func:`run_baseline`.
    """
    chosen = applicable_baselines(splits) if names is None else list(names)
    if names is None:
        skipped = sorted(set(BASELINES) - set(chosen))
        if skipped:
            log.info("baselines skipped (not applicable): %s", skipped)
    return {name: run_baseline(name, splits, seed=seed) for name in chosen}
