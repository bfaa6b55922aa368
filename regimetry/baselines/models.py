"""The baselines themselves: each one's fit on the training period and prediction of the validation
and test windows, and the ``BASELINES`` registry (see :mod:`regimetry.baselines`)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from arch import arch_model
from hmmlearn.hmm import GaussianHMM
from scipy.optimize import linear_sum_assignment
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from regimetry.baselines.maths import ANNUALIZATION, HAR_LAGS, bucket, forward_filter, gaussian_log_emissions, \
    har_features, realized_vol
from regimetry.data.synthetic import hamilton_filter
from regimetry.data.types import SplitData, Splits

__all__ = ["BASELINES", "C_GRID", "GB_LEARNING_RATES", "Baseline"]

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Inverse L2 strengths tried for the logistic baselines; the best validation balanced accuracy wins."""

GB_LEARNING_RATES = (0.05, 0.15)
"""Learning rates tried for gradient boosting; the best validation balanced accuracy wins."""


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
