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

import dataclasses
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


def _log_loss(y: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    p = np.clip(probs, 1e-15, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(y.shape[0]), y])))


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


def _replicates(block: int, n_boot: int, seed: int, y_true: np.ndarray, stacks: list[np.ndarray],
                resample_seeds: bool, statistic) -> np.ndarray:
    """``n_boot`` values of ``statistic(y, *stacks)`` over circular-block resamples of the windows and,
    if ``resample_seeds``, with-replacement resamples of each stack's seed axis (axis 1)."""
    rng = np.random.default_rng(seed)
    bs = CircularBlockBootstrap(block, np.arange(y_true.shape[0]), seed=rng)
    out = np.empty(n_boot)
    for r, (pos, _) in enumerate(bs.bootstrap(n_boot)):
        idx = pos[0]
        drawn = []
        for stack in stacks:
            rows = stack[idx]
            if resample_seeds and stack.shape[1] > 1:
                rows = rows[:, rng.integers(0, stack.shape[1], stack.shape[1])]
            drawn.append(rows)
        out[r] = statistic(y_true[idx], *drawn)
    return out


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
    reps = _replicates(block, n_boot, seed, y_true, [stack], resample_seeds,
                       lambda y, p: seed_averaged_metric(metric, y, p, num_classes))
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

    def diff(y, pa, pb):
        return seed_averaged_metric(metric, y, pa, num_classes) - seed_averaged_metric(metric, y, pb, num_classes)

    estimate = float(diff(y_true, a, b))
    reps = _replicates(block, n_boot, seed, y_true, [a, b], resample_seeds, diff)
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
