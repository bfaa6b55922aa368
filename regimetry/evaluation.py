"""Statistics of record for comparisons: seed intervals, block bootstrap, paired differences, verdicts.

Regime labels are strongly autocorrelated (a forward-volatility label at t shares ``horizon - 1`` bars
with the label at t + 1), so an i.i.d. bootstrap over windows understates uncertainty. Intervals here
resample *blocks* of consecutive windows with the circular block bootstrap of Politis & Romano (1992),
as implemented in ``arch.bootstrap.CircularBlockBootstrap``; the block length should be at least the
label horizon (in windows).

Predictions of several seeds are carried as a 2-D array ``(n_windows, n_seeds)`` of class ids (or
``(n_windows, n_seeds, n_classes)`` of probabilities for log loss). Each bootstrap replicate resamples
blocks of windows *and*, by default, the seeds (with replacement, independently per model), then
computes the metric per drawn seed and averages: a two-level bootstrap whose interval covers both the
sampling uncertainty of the test period and the training randomness of the model (Bouthillier et al.,
2021, "Accounting for variance in machine learning benchmarks"). With only a few seeds the seed level
is coarse; more seeds give more honest intervals. The spread over seeds alone is also reported by
:func:`mean_ci`.

References:
    Politis, D. N. and Romano, J. P. (1992). A circular block-resampling procedure for stationary data.
    Künsch, H. R. (1989). The jackknife and the bootstrap for general stationary observations.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
from typing import Any, Callable

import numpy as np
from arch.bootstrap import CircularBlockBootstrap
from scipy import stats

__all__ = [
    "METRICS",
    "HIGHER_IS_BETTER",
    "Interval",
    "mean_ci",
    "seed_averaged_metric",
    "block_bootstrap_ci",
    "paired_block_bootstrap",
    "verdict",
    "degenerate_blocks",
]


def _confusion(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = true class (as sklearn's confusion_matrix)."""
    return np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# The bootstrap evaluates a metric thousands of times, so the class-count metrics are computed from
# one bincount instead of a scikit-learn call each; tests/test_evaluation.py checks that they equal
# sklearn's balanced_accuracy_score, f1_score(average="macro") and log_loss on random inputs.
def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    cm = _confusion(y, pred, num_classes)
    support = cm.sum(axis=1)
    present = support > 0  # like sklearn: classes absent from y_true are left out of the mean
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    cm = _confusion(y, pred, num_classes)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def _accuracy(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    return float(np.mean(y == pred))


def _true_class_log_probs(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(n,)`` log of each window's probability of its true class (clipped at 1e-15, rows renormalised)."""
    p = np.clip(probs, 1e-15, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return np.log(p[np.arange(y.shape[0]), y])


def _log_loss(y: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    return float(-np.mean(_true_class_log_probs(y, probs)))


#: metric name -> (function(y_true, predictions, num_classes), needs probabilities)
METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray, int], float], bool]] = {
    "balanced_accuracy": (_balanced_accuracy, False),
    "macro_f1": (_macro_f1, False),
    "accuracy": (_accuracy, False),
    "log_loss": (_log_loss, True),
}
HIGHER_IS_BETTER = {"balanced_accuracy": True, "macro_f1": True, "accuracy": True, "log_loss": False}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval.

    Attributes:
        estimate: the statistic on the original data (for differences: A minus B).
        lower, upper: interval bounds at ``level``.
        level: coverage, e.g. 0.95.
        n: windows (bootstrap) or seeds (t-interval) behind it.
        se: standard error of the estimate (the bootstrap replicates' standard deviation); NaN
            when unknown.
    """

    estimate: float
    lower: float
    upper: float
    level: float = 0.95
    n: int = 0
    se: float = float("nan")

    def mde(self, power: float = 0.8) -> float:
        """Minimum detectable effect of this comparison (see :func:`minimum_detectable_effect`)."""
        return minimum_detectable_effect(self.se, level=self.level, power=power)

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2.0

    def excludes_zero(self) -> bool:
        return self.lower > 0.0 or self.upper < 0.0

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}estimate": self.estimate, f"{prefix}ci_low": self.lower, f"{prefix}ci_high": self.upper}

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.lower:.3f}, {self.upper:.3f}]"


def minimum_detectable_effect(se: float, level: float = 0.95, power: float = 0.8) -> float:
    """Smallest true difference a two-sided test at ``1 - level`` detects with probability ``power``.

    ``MDE = (z_{1 - (1 - level)/2} + z_{power}) * se`` (normal approximation of the paired
    difference's sampling distribution; e.g. Bloom 1995, "Minimum detectable effects"): with
    ``level=0.95`` and ``power=0.8`` it is ``2.80 * se``. A "no detectable difference" verdict then
    reads "no difference larger than MDE" at the run's budget.

    Args:
        se: standard error of the difference (e.g. the paired bootstrap replicates' standard deviation).
        level: confidence level of the interval (two-sided test at ``1 - level``).
        power: the wanted probability of detecting a difference of the returned size.

    Returns:
        The MDE in the metric's units (NaN when ``se`` is NaN).

    Raises:
        ValueError: ``level`` or ``power`` outside (0, 1), or a negative ``se``.
    """
    if not (0.0 < level < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"minimum_detectable_effect: level and power must lie in (0, 1), got {level}, {power}")
    if se < 0:
        raise ValueError(f"minimum_detectable_effect: se must be >= 0, got {se}")
    return float((stats.norm.ppf(1.0 - (1.0 - level) / 2.0) + stats.norm.ppf(power)) * se)


def mean_ci(values, level: float = 0.95) -> tuple[float, float, Interval]:
    """Mean, sample standard deviation and Student-t interval of the mean over seeds.

    Args:
        values: 1-D sequence of per-seed metric values (NaNs are dropped).
        level: interval coverage (default 0.95).

    Returns:
        ``(mean, std, Interval)``; with one value the interval has zero width and std is NaN.

    Raises:
        ValueError: no finite value.
    """
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError("mean_ci: no finite values")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, float("nan"), Interval(mean, mean, mean, level, 1)
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2.0, arr.size - 1) * std / np.sqrt(arr.size))
    return mean, std, Interval(mean, mean - half, mean + half, level, int(arr.size))


def _as_seed_stack(predictions: np.ndarray, needs_probs: bool) -> np.ndarray:
    arr = np.asarray(predictions)
    if needs_probs:
        if arr.ndim == 2:
            arr = arr[:, None, :]
        if arr.ndim != 3:
            raise ValueError(f"probabilities must be (n, n_classes) or (n, n_seeds, n_classes), got {arr.shape}")
    else:
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"class predictions must be (n,) or (n, n_seeds), got {arr.shape}")
    return arr


def seed_averaged_metric(metric: str, y_true: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """The metric computed per seed and averaged over seeds.

    Args:
        metric: a key of :data:`METRICS`.
        y_true: int array ``(n,)``.
        predictions: class ids ``(n,)`` / ``(n, n_seeds)``, or for ``log_loss`` probabilities
            ``(n, n_classes)`` / ``(n, n_seeds, n_classes)``.
        num_classes: number of regimes.

    Raises:
        ValueError: unknown metric or a shape mismatch.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")
    func, needs_probs = METRICS[metric]
    stack = _as_seed_stack(predictions, needs_probs)
    y_true = np.asarray(y_true, dtype=np.int64)
    if not needs_probs:
        stack = stack.astype(np.int64, copy=False)
    if stack.shape[0] != y_true.shape[0]:
        raise ValueError(f"{metric}: {stack.shape[0]} predictions for {y_true.shape[0]} labels")
    return float(np.mean([func(y_true, stack[:, s], num_classes) for s in range(stack.shape[1])]))


def _check_block_length(block_length: int, n: int) -> int:
    if not isinstance(block_length, (int, np.integer)) or block_length < 1:
        raise ValueError(f"block_length must be a positive integer (windows), got {block_length!r}")
    if n < 2:
        raise ValueError(f"block bootstrap needs at least 2 windows, got {n}")
    return int(min(block_length, n))


@functools.lru_cache(maxsize=4)
def _draws(block: int, n_boot: int, seed: int, n: int, seed_counts: tuple[int, ...],
           resample_seeds: bool) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The resampled window indices ``(n_boot, n)`` and, per stack, the drawn seeds ``(n_boot, seeds)``
    (read-only arrays, cached: a summary draws the same resamples for many comparisons).

    One generator (``seed``) draws, replicate by replicate, the circular blocks and then each stack's
    seeds (with replacement, when ``resample_seeds`` and the stack has more than one seed)."""
    rng = np.random.default_rng(seed)
    bs = CircularBlockBootstrap(block, np.arange(n), seed=rng)
    idx = np.empty((n_boot, n), dtype=np.intp)
    picks = [np.broadcast_to(np.arange(s), (n_boot, s)).copy() for s in seed_counts]
    for r, (pos, _) in enumerate(bs.bootstrap(n_boot)):
        idx[r] = pos[0]
        for drawn, s in zip(picks, seed_counts):
            if resample_seeds and s > 1:
                drawn[r] = rng.integers(0, s, s)
    for arr in (idx, *picks):
        arr.setflags(write=False)
    return idx, tuple(picks)


#: Windows x seeds gathered at once per batch of replicates (bounds a batch's memory to ~16 MB).
_BATCH_ELEMENTS = 2_000_000
#: Replicate scores already computed, keyed by the data's digest and the draws (see _replicate_scores).
_SCORES: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
_SCORES_KEPT = 256


def _digest(arr: np.ndarray) -> tuple:
    arr = np.ascontiguousarray(arr)
    return arr.shape, arr.dtype.str, hashlib.blake2b(arr.view(np.uint8).ravel(), digest_size=16).hexdigest()


def _replicate_scores(metric: str, y_true: np.ndarray, stack: np.ndarray, num_classes: int, draws: tuple,
                      which: int) -> np.ndarray:
    """``seed_averaged_metric(metric, y_true[idx[r]], stack[idx[r]][:, picks[r]])`` for every replicate
    ``r`` of ``_draws(*draws)`` (``picks`` = its stack ``which``): ``(n_boot,)`` float64.

    Computed in batches of replicates: each window's contribution per seed once (its confusion-matrix
    cell, or its log probability of the true class), each replicate's metric for every seed of
    ``stack``, then the mean over the replicate's drawn seeds. The floating-point operations are those
    of :func:`seed_averaged_metric` and every mean is NumPy's 1-D mean of the same values (:func:`_row_means`),
    so the values equal it bit for bit (tests/test_evaluation.py). One replicate at a time, the 03
    summary's 55 intervals took ~13 s (benchmarks/README.md). A result is kept for the same data and
    draws: a summary scores each arm on the same resamples in several comparisons."""
    key = (metric, num_classes, draws, which, _digest(y_true), _digest(stack))
    if key in _SCORES:
        _SCORES.move_to_end(key)
        return _SCORES[key]
    idx, picks = _draws(*draws)
    picks = picks[which]
    n_boot, n = idx.shape
    seeds = stack.shape[1]
    if METRICS[metric][1]:
        # (seeds, n): per window, as _log_loss computes it for each seed's (n, k) rows
        per_window = np.stack([_true_class_log_probs(y_true, stack[:, s]) for s in range(seeds)])
    else:
        per_window = np.ascontiguousarray((y_true[:, None] * num_classes + stack.astype(np.int64, copy=False)).T)
    step = max(1, _BATCH_ELEMENTS // max(1, n * seeds))
    out = np.empty(n_boot)
    for start in range(0, n_boot, step):
        gathered = per_window[:, idx[start:start + step]]  # (seeds, R, n)
        if METRICS[metric][1]:
            # mean over windows in the stack's dtype, then float64, as float(_log_loss(...)) per seed
            values = (-_row_means(gathered.reshape(-1, n))).astype(np.float64).reshape(seeds, -1)
        else:
            values = _class_metric_batch(metric, gathered, num_classes)
        per_seed = values.T  # (R, seeds): the metric of every seed of the stack on each replicate
        drawn = np.take_along_axis(per_seed, picks[start:start + step], axis=1)
        out[start:start + drawn.shape[0]] = _row_means(drawn)
    _SCORES[key] = out
    out.setflags(write=False)
    if len(_SCORES) > _SCORES_KEPT:
        _SCORES.popitem(last=False)
    return out


def _row_means(a: np.ndarray) -> np.ndarray:
    """``np.mean`` of every row of a 2-D array, called on each row: NumPy may sum a multi-axis
    reduction in another order than a 1-D one, and the bootstrap's values must equal
    :func:`seed_averaged_metric`'s bit for bit."""
    return np.array([np.mean(row) for row in a], dtype=np.result_type(a.dtype, np.float16))


def _class_metric_batch(metric: str, cells: np.ndarray, k: int) -> np.ndarray:
    """``(seeds, R)`` values of a class-count metric from confusion-matrix cells ``true * k + pred``
    ``(seeds, R, n)``, as :data:`METRICS` computes them from one ``(k, k)`` matrix."""
    seeds, r, n = cells.shape
    if metric == "accuracy":  # a mean of 0/1 values is exact in any order
        return (cells // k == cells % k).mean(axis=2)
    offset = np.arange(seeds * r).reshape(seeds, r, 1) * (k * k)
    cm = np.bincount((cells + offset).ravel(), minlength=seeds * r * k * k).reshape(seeds * r, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)  # (seeds * R, k)
    if metric == "balanced_accuracy":
        support = cm.sum(axis=2)
        present = support > 0  # like sklearn: classes absent from y_true are left out of the mean
        recall = np.divide(tp, support, out=np.zeros(tp.shape), where=present)
        return np.array([np.mean(v[p]) for v, p in zip(recall, present)]).reshape(seeds, r)
    if metric == "macro_f1":
        denom = cm.sum(axis=1) + cm.sum(axis=2)
        f1 = np.divide(2 * tp.astype(float), denom, out=np.zeros(tp.shape), where=denom > 0)
        return _row_means(f1).reshape(seeds, r)
    raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")


def block_bootstrap_ci(
    metric: str,
    y_true: np.ndarray,
    predictions: np.ndarray,
    num_classes: int,
    *,
    block_length: int,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
) -> Interval:
    """Circular block-bootstrap percentile interval of a (seed-averaged) metric.

    Args:
        metric: ``balanced_accuracy``, ``macro_f1``, ``accuracy`` or ``log_loss``.
        y_true: int array ``(n,)`` of true regimes, in time order.
        predictions: see :func:`seed_averaged_metric`.
        num_classes: number of regimes.
        block_length: windows per block; use at least the label horizon (bars / stride).
        n_boot: bootstrap replicates. level: interval coverage. seed: resampling seed.
        resample_seeds: also resample the seeds in every replicate (two-level bootstrap).

    Returns:
        :class:`Interval` whose estimate is the metric on the original data (all seeds).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    block = _check_block_length(block_length, y_true.shape[0])
    _, needs_probs = METRICS[metric] if metric in METRICS else (None, False)
    stack = _as_seed_stack(predictions, needs_probs)
    estimate = seed_averaged_metric(metric, y_true, stack, num_classes)
    draws = (block, n_boot, seed, y_true.shape[0], (stack.shape[1],), resample_seeds)
    reps = _replicate_scores(metric, y_true, stack, num_classes, draws, 0)
    lo, hi = np.quantile(reps, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return Interval(estimate, float(lo), float(hi), level, int(y_true.shape[0]))


def paired_block_bootstrap(
    metric: str,
    y_true: np.ndarray,
    predictions_a: np.ndarray,
    predictions_b: np.ndarray,
    num_classes: int,
    *,
    block_length: int,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
) -> Interval:
    """Paired circular block-bootstrap interval of ``metric(A) - metric(B)`` on the same windows.

    Both models are scored on the *same* resampled blocks in each replicate, so the interval reflects
    how much the difference (not each score) varies; with ``resample_seeds`` each model's seeds are
    also redrawn (independently: A's and B's training runs are independent), so a gap that one lucky
    seed produced does not pass for a real one. Identical single-seed predictions give a zero-width
    interval at 0; a constant gap is recovered exactly when it holds in every block.

    Args:
        predictions_a, predictions_b: predictions of the two models on the same windows (shapes as in
            :func:`seed_averaged_metric`; the numbers of seeds may differ).
        Others: as in :func:`block_bootstrap_ci`.

    Returns:
        :class:`Interval` of A minus B.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    block = _check_block_length(block_length, y_true.shape[0])
    needs_probs = METRICS[metric][1] if metric in METRICS else False
    a = _as_seed_stack(predictions_a, needs_probs)
    b = _as_seed_stack(predictions_b, needs_probs)
    if a.shape[0] != y_true.shape[0] or b.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"paired bootstrap needs both models on the same windows: labels {y_true.shape[0]}, "
            f"A {a.shape[0]}, B {b.shape[0]}"
        )

    estimate = float(seed_averaged_metric(metric, y_true, a, num_classes)
                     - seed_averaged_metric(metric, y_true, b, num_classes))
    draws = (block, n_boot, seed, y_true.shape[0], (a.shape[1], b.shape[1]), resample_seeds)
    reps = (_replicate_scores(metric, y_true, a, num_classes, draws, 0)
            - _replicate_scores(metric, y_true, b, num_classes, draws, 1))
    lo, hi = np.quantile(reps, [0.5 - level / 2.0, 0.5 + level / 2.0])
    se = float(np.std(reps, ddof=1)) if len(reps) > 1 else float("nan")
    return Interval(estimate, float(lo), float(hi), level, int(y_true.shape[0]), se=se)


def verdict(name_a: str, name_b: str, metric: str, difference: Interval) -> str:
    """One line stating the comparison: a winner only when the paired interval excludes zero.

    Returns e.g. ``"learnable better than none on balanced_accuracy: +0.031 [0.012, 0.050]"`` or
    ``"no detectable difference between learnable and none on balanced_accuracy: +0.004 [-0.020, 0.027]"``.
    For ``log_loss`` lower is better, so a negative difference means A is better.
    """
    text = f"{difference.estimate:+.3f} [{difference.lower:+.3f}, {difference.upper:+.3f}]"
    if not difference.excludes_zero():
        mde = difference.mde()
        bound = f" (none larger than {mde:.3f} at 80 % power)" if math.isfinite(mde) else ""
        return f"no detectable difference between {name_a} and {name_b} on {metric}: {text}{bound}"
    a_better = (difference.estimate > 0) == HIGHER_IS_BETTER.get(metric, True)
    winner, loser = (name_a, name_b) if a_better else (name_b, name_a)
    return f"{winner} better than {loser} on {metric}: {name_a} - {name_b} = {text}"


def degenerate_blocks(y_blocks: list[np.ndarray], num_classes: int, block_length: int,
                      class_names: list[str] | None = None) -> list[dict[str, Any]]:
    """Evaluation blocks that weaken pooled verdicts, with their share of the pooled windows.

    A block is flagged when its true labels hold a single class (its balanced accuracy is that
    class's recall, so each window is simply right or wrong and a model that predicts one class
    scores 0 or 1), when a class is missing from it (balanced accuracy averages over the classes
    present), or when it holds fewer than ``2 * block_length`` windows (a circular block bootstrap
    then resamples fewer than two independent blocks from it).

    Args:
        y_blocks: int ``(n_b,)`` true labels of each evaluation block, in order.
        num_classes: K.
        block_length: bootstrap block length in windows.
        class_names: optional names for the message.

    Returns:
        One dict per flagged block: ``fold``, ``n_windows``, ``share`` (of all pooled windows),
        ``classes`` (present, names), ``reason`` and ``message`` (one line for tables and tags).
    """
    total = sum(int(np.asarray(y).size) for y in y_blocks)
    names = class_names or [str(k) for k in range(num_classes)]
    flagged = []
    for b, y in enumerate(y_blocks):
        y = np.asarray(y)
        present = sorted({int(v) for v in np.unique(y)})
        reasons = []
        if len(present) == 1:
            reasons.append(f"one class only ({names[present[0]]}): balanced accuracy there is 0 or 1 per window")
        elif len(present) < num_classes:
            missing = [names[k] for k in range(num_classes) if k not in present]
            reasons.append(f"no {', '.join(missing)} window(s): balanced accuracy averages the classes present")
        if y.size < 2 * block_length:
            reasons.append(f"{y.size} windows < 2 bootstrap blocks of {block_length}")
        if reasons:
            share = y.size / total if total else float("nan")
            flagged.append({"fold": b, "n_windows": int(y.size), "share": share,
                            "classes": [names[k] for k in present], "reason": "; ".join(reasons),
                            "message": f"block {b}: {'; '.join(reasons)} ({y.size} windows, {share:.0%} of the "
                                       "pooled evaluation)"})
    return flagged
