import numpy as np
import pytest

from regimetry.evaluation import (
    Interval,
    block_bootstrap_ci,
    minimum_detectable_effect,
    mean_ci,
    paired_block_bootstrap,
    seed_averaged_metric,
    verdict,
)


def _labels(n=420, k=3, seed=0):
    rng = np.random.default_rng(seed)
    # persistent regimes in runs of 20 windows, like real labels
    return np.repeat(rng.integers(0, k, size=n // 20 + 1), 20)[:n]


def test_identical_predictions_give_zero_width_paired_interval():
    y = _labels()
    pred = np.where(np.random.default_rng(1).random(y.size) < 0.7, y, (y + 1) % 3)
    diff = paired_block_bootstrap("balanced_accuracy", y, pred, pred.copy(), 3, block_length=21, n_boot=200)
    assert diff.estimate == diff.lower == diff.upper == 0.0
    assert verdict("a", "b", "balanced_accuracy", diff).startswith("no detectable difference")


def test_constant_accuracy_difference_is_recovered():
    # A is right everywhere; B is wrong on exactly one window of every block of 10 aligned to the
    # bootstrap blocks, so every resample keeps the gap at exactly 0.1.
    y = _labels(n=400)
    a = y.copy()
    b = y.copy()
    b[::10] = (y[::10] + 1) % 3
    diff = paired_block_bootstrap("accuracy", y, a, b, 3, block_length=10, n_boot=300, seed=3)
    assert diff.estimate == pytest.approx(0.1)
    # circular blocks start anywhere, so each resampled block of 10 still holds exactly one error
    assert diff.lower == pytest.approx(0.1) and diff.upper == pytest.approx(0.1)
    assert verdict("A", "B", "accuracy", diff).startswith("A better than B")


def test_block_interval_covers_estimate_and_widens_with_blocks():
    y = _labels(n=600, seed=4)
    rng = np.random.default_rng(5)
    # errors come in runs of 30 windows (as a regime model's do), so i.i.d. resampling understates them
    wrong_runs = np.repeat(rng.random(y.size // 30 + 1) < 0.4, 30)[: y.size]
    pred = np.where(wrong_runs, (y + 1) % 3, y)
    short = block_bootstrap_ci("balanced_accuracy", y, pred, 3, block_length=1, n_boot=400, seed=0)
    long = block_bootstrap_ci("balanced_accuracy", y, pred, 3, block_length=60, n_boot=400, seed=0)
    for ci in (short, long):
        assert ci.lower <= ci.estimate <= ci.upper
    
    assert long.upper - long.lower > short.upper - short.lower


def test_seed_stack_and_log_loss_lower_is_better():
    y = _labels(n=200)
    good = np.full((y.size, 2, 3), 0.05)
    good[np.arange(y.size), :, y] = 0.9
    bad = np.full((y.size, 3), 1 / 3)
    assert seed_averaged_metric("log_loss", y, good, 3) < seed_averaged_metric("log_loss", y, bad, 3)
    diff = paired_block_bootstrap("log_loss", y, good, bad, 3, block_length=20, n_boot=100)
    assert diff.upper < 0
    assert verdict("good", "bad", "log_loss", diff).startswith("good better than bad")


def test_mean_ci_t_interval():
    mean, std, ci = mean_ci([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.1)
    assert ci.half_width == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    with pytest.raises(ValueError):
        mean_ci([float("nan")])


def test_bad_inputs_are_named():
    y = _labels(n=50)
    with pytest.raises(ValueError, match="block_length"):
        block_bootstrap_ci("accuracy", y, y, 3, block_length=0)
    with pytest.raises(ValueError, match="same windows"):
        paired_block_bootstrap("accuracy", y, y, y[:-1], 3, block_length=5)
    with pytest.raises(ValueError, match="unknown metric"):
        seed_averaged_metric("auc", y, y, 3)


def test_fast_metrics_equal_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss

    rng = np.random.default_rng(11)
    for trial in range(20):
        n, k = int(rng.integers(5, 300)), int(rng.integers(2, 5))
        y = rng.integers(0, k - (trial % 2), n)  # sometimes a class is absent from y_true
        pred = rng.integers(0, k, n)
        probs = rng.dirichlet(np.ones(k), n)
        assert seed_averaged_metric("balanced_accuracy", y, pred, k) == pytest.approx(
            balanced_accuracy_score(y, pred))
        assert seed_averaged_metric("macro_f1", y, pred, k) == pytest.approx(
            f1_score(y, pred, average="macro", labels=np.arange(k), zero_division=0))
        assert seed_averaged_metric("log_loss", y, probs, k) == pytest.approx(
            log_loss(y, probs, labels=np.arange(k)))


def test_seed_resampling_widens_a_gap_made_by_one_lucky_seed():
    # A's two seeds: one perfect, one always wrong; B is right 50 % of the time in every block.
    y = _labels(n=400, seed=7)
    a = np.stack([y, (y + 1) % 3], axis=1)
    b = np.where(np.arange(y.size) % 2 == 0, y, (y + 1) % 3)
    with_seeds = paired_block_bootstrap("accuracy", y, a, b, 3, block_length=20, n_boot=300, seed=1)
    windows_only = paired_block_bootstrap("accuracy", y, a, b, 3, block_length=20, n_boot=300, seed=1,
                                          resample_seeds=False)
    assert with_seeds.estimate == windows_only.estimate == pytest.approx(0.0)
    assert windows_only.upper - windows_only.lower < 0.05  # the seed average hides the seed spread
    assert with_seeds.lower <= -0.4 and with_seeds.upper >= 0.4  # {bad, bad} and {good, good} draws


def test_minimum_detectable_effect_is_2_8_standard_errors_at_80_percent_power():
    assert minimum_detectable_effect(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert minimum_detectable_effect(0.01, power=0.9) > minimum_detectable_effect(0.01)
    assert np.isnan(minimum_detectable_effect(float("nan")))
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_effect(0.01, power=1.0)
    with pytest.raises(ValueError, match="se must be >= 0"):
        minimum_detectable_effect(-0.1)


def test_paired_bootstrap_se_and_mde_in_the_verdict():
    y = _labels()
    rng = np.random.default_rng(1)
    a = np.where(rng.random(y.size) < 0.7, y, (y + 1) % 3)
    b = np.where(rng.random(y.size) < 0.7, y, (y + 2) % 3)
    diff = paired_block_bootstrap("balanced_accuracy", y, a, b, 3, block_length=21, n_boot=400, seed=0)
    assert diff.se > 0
    # the MDE and the 95 % half-width are both ~2 standard errors apart from the power term
    assert diff.mde() == pytest.approx(2.8016 * diff.se, rel=1e-3)
    assert 0.5 * diff.mde() < diff.half_width < diff.mde()
    line = verdict("a", "b", "balanced_accuracy", Interval(0.01, -0.02, 0.04, se=0.015))
    assert line.endswith(f"(none larger than {2.8016 * 0.015:.3f} at 80 % power)")
    called = verdict("a", "b", "balanced_accuracy", Interval(0.05, 0.02, 0.08, se=0.015))
    assert "none larger" not in called and called.startswith("a better than b")


def test_degenerate_blocks_are_flagged_with_their_share_of_the_pooled_evaluation():
    from regimetry.evaluation import degenerate_blocks

    full = np.tile([0, 1, 2], 40)  # 120 windows, all classes
    one_class = np.zeros(60, dtype=int)
    missing = np.tile([0, 1], 30)  # no class 2
    tiny = np.array([0, 1, 2, 0, 1])  # 5 windows < 2 blocks of 21
    flagged = degenerate_blocks([full, one_class, missing, tiny], 3, block_length=21, class_names=["low", "mid", "high"])
    assert [f["fold"] for f in flagged] == [1, 2, 3]
    one, miss, small = flagged
    assert "one class only (low)" in one["message"] and one["classes"] == ["low"]
    assert one["share"] == pytest.approx(60 / 245) and "24% of the pooled evaluation" in one["message"]
    assert "no high window(s)" in miss["reason"]
    assert small["reason"] == "5 windows < 2 bootstrap blocks of 21"
    assert degenerate_blocks([full, full], 3, block_length=21) == []


def _replicates_one_at_a_time(metric, y, stacks, k, block, n_boot, seed, resample_seeds=True):
    """The bootstrap's definition, one replicate at a time: the circular blocks, each stack's seeds,
    then seed_averaged_metric on the drawn windows (A minus B for two stacks)."""
    from arch.bootstrap import CircularBlockBootstrap

    rng = np.random.default_rng(seed)
    out = []
    for pos, _ in CircularBlockBootstrap(block, np.arange(y.size), seed=rng).bootstrap(n_boot):
        idx = pos[0]
        values = []
        for stack in stacks:
            rows = stack[idx]
            if resample_seeds and stack.shape[1] > 1:
                rows = rows[:, rng.integers(0, stack.shape[1], stack.shape[1])]
            values.append(seed_averaged_metric(metric, y[idx], rows, k))
        out.append(values[0] - values[1] if len(values) == 2 else values[0])
    return np.array(out)


@pytest.mark.parametrize("metric", ["balanced_accuracy", "macro_f1", "accuracy", "log_loss"])
def test_batched_replicates_equal_one_replicate_at_a_time_bit_for_bit(metric):
    # The bootstrap scores replicates in batches (evaluation._replicate_scores); its intervals must be
    # those of the definition exactly, with absent classes, 1-10 seeds, float32 and float64 probabilities.
    from regimetry import evaluation

    rng = np.random.default_rng(23)
    for case in range(12):
        n, k = int(rng.integers(30, 700)), int(rng.integers(2, 11))
        seeds_a, seeds_b = int(rng.integers(1, 11)), int(rng.integers(1, 4))
        block, n_boot, seed, resample = int(rng.integers(1, 25)), int(rng.integers(5, 60)), case, case % 4 != 0
        y = rng.integers(0, k, n)
        if case % 3 == 0:
            y[y == 0] = 1  # the first class absent from the truth
        if metric == "log_loss":
            dtype = np.float32 if case % 2 else np.float64
            a = rng.dirichlet(np.ones(k), (n, seeds_a)).astype(dtype)
            a[rng.random((n, seeds_a)) < 0.02] = 0.0
            b = rng.dirichlet(np.ones(k), (n, seeds_b)).astype(dtype)
        else:
            a, b = rng.integers(0, k, (n, seeds_a)), rng.integers(0, k, (n, seeds_b))
        one = _replicates_one_at_a_time(metric, y, [a], k, block, n_boot, seed, resample)
        batched = evaluation._replicate_scores(metric, y, a, k, (block, n_boot, seed, n, (seeds_a,), resample), 0)
        assert np.array_equal(batched, one), (case, np.max(np.abs(batched - one)))
        one = _replicates_one_at_a_time(metric, y, [a, b], k, block, n_boot, seed, resample)
        draws = (block, n_boot, seed, n, (seeds_a, seeds_b), resample)
        batched = (evaluation._replicate_scores(metric, y, a, k, draws, 0)
                   - evaluation._replicate_scores(metric, y, b, k, draws, 1))
        assert np.array_equal(batched, one), (case, np.max(np.abs(batched - one)))
    # and the public intervals are the quantiles of those replicates
    y = _labels()
    pred = np.stack([np.where(rng.random(y.size) < 0.6, y, (y + 1) % 3) for _ in range(3)], axis=1)
    if metric == "log_loss":
        pred = np.eye(3)[pred] * 0.8 + 0.2 / 3
    ci = block_bootstrap_ci(metric, y, pred, 3, block_length=20, n_boot=200, seed=4)
    one = _replicates_one_at_a_time(metric, y, [pred], 3, 20, 200, 4)
    assert (ci.lower, ci.upper) == tuple(np.quantile(one, [0.5 - 0.95 / 2, 0.5 + 0.95 / 2]))
