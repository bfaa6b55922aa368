"""Control tasks (regimetry.data.controls): each generator's defining property, the prepare path,
the ceilings, and the chance level of permutation-invariant rules. No model is trained here."""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from regimetry.config import CONTROL_TASKS, DataConfig, ModelConfig, add_data_arguments
from regimetry.data import prepare
from regimetry.data import controls as C

ROOT = Path(__file__).resolve().parents[1]


def _fit_score(train_X, train_y, test_X, test_y) -> float:
    model = LogisticRegression(max_iter=2000).fit(train_X, train_y)
    return float(model.score(test_X, test_y))


def _batches(task: str, n_train: int = 6000, n_test: int = 4000, seed: int = 3):
    control = C.CONTROLS[task]
    rng = np.random.default_rng(seed)
    return (control.sampler(n_train, control.window_size, rng), control.sampler(n_test, control.window_size, rng))


# ------------------------------------------------------------------------------------------------
# generators
# ------------------------------------------------------------------------------------------------
def test_order_classes_are_time_reversals_with_the_same_multiset():
    sigma = C.order_sigma(16)
    np.testing.assert_allclose(sigma[1], sigma[0][::-1])
    assert np.all(np.diff(sigma[0]) > 0) and sigma[0, -1] / sigma[0, 0] == pytest.approx(C.ORDER_RATIO)
    batch = C.sample_order(7, 16, np.random.default_rng(0))
    assert batch.X.shape == (7, 16, C.ORDER_CHANNELS) and batch.X.dtype == np.float64 and batch.y.dtype == np.int64
    np.testing.assert_allclose(batch.X, sigma[batch.y][:, :, None] * batch.info["z"])
    # exact pairing: reversing a class-0 window in time gives the class-1 window of the reversed noise
    z = batch.info["z"]
    np.testing.assert_allclose((sigma[0][None, :, None] * z)[:, ::-1], sigma[1][None, :, None] * z[:, ::-1])
    # statistically: the sorted squared steps (the multiset) have the same distribution in both classes
    big = C.sample_order(20000, 16, np.random.default_rng(1))
    sorted_sq = np.sort((big.X ** 2).reshape(len(big.y), -1), axis=1)
    for rank in (0, 8, 16, 24, 31):
        assert stats.ks_2samp(sorted_sq[big.y == 0, rank], sorted_sq[big.y == 1, rank]).pvalue > 1e-3
    # ... while the first step's variance differs a lot (rising starts low)
    assert stats.ks_2samp(big.X[big.y == 0, 0, 0], big.X[big.y == 1, 0, 0]).pvalue < 1e-10


def test_recency_regime_counts_have_the_same_distribution_under_both_labels():
    W = 16
    batch = C.sample_recency(30000, W, np.random.default_rng(2))
    regimes, switch = batch.info["regimes"], batch.info["switch"]
    assert batch.X.shape == (30000, W, 1 + C.RECENCY_NOISE_CHANNELS)
    np.testing.assert_array_equal(regimes[:, -1], batch.y)  # label = regime at the window's end
    np.testing.assert_array_equal(regimes[:, 0], 1 - batch.y)  # A != B
    assert switch.min() == 1 and switch.max() == W - 1
    ones = regimes.sum(axis=1)  # number of regime-1 ("plus") steps
    counts = np.stack([np.bincount(ones[batch.y == k], minlength=W)[1:W] for k in (0, 1)])
    assert stats.chi2_contingency(counts).pvalue > 1e-3
    for k in (0, 1):  # uniform on 1..W-1 under each label
        assert stats.chisquare(counts[k]).pvalue > 1e-3
    # the signal channel's mean follows the regime
    signal = batch.X[:, :, 0]
    assert signal[regimes == 1].mean() == pytest.approx(C.RECENCY_MU, abs=0.03)
    assert signal[regimes == 0].mean() == pytest.approx(-C.RECENCY_MU, abs=0.03)


def test_event_order_paired_draws_share_the_multiset_and_flip_the_label():
    W = 16
    batch = C.sample_event_order(500, W, np.random.default_rng(4))
    X, a, b = batch.X, batch.info["pos_a"], batch.info["pos_b"]
    assert X.shape == (500, W, 3 + C.EVENT_NOISE_CHANNELS)
    assert np.all(a != b) and a.max() <= W - 2 and b.max() <= W - 2
    np.testing.assert_array_equal(X[:, :, 0].sum(1), 1.0)
    np.testing.assert_array_equal(X[:, :, 1].sum(1), 1.0)
    np.testing.assert_array_equal(X[:, :, 2], np.eye(W)[[W - 1] * 500])  # query flag on the last step only
    np.testing.assert_array_equal(batch.y, (a < b).astype(int))
    rows = np.arange(500)
    paired = X.copy()
    paired[rows, a], paired[rows, b] = X[rows, b], X[rows, a]  # swap the two marker steps
    np.testing.assert_array_equal(C.event_order_posterior(paired).argmax(1), 1 - batch.y)
    for i in range(500):
        np.testing.assert_array_equal(np.unique(X[i], axis=0), np.unique(paired[i], axis=0))
    np.testing.assert_array_equal(paired[:, -1], X[:, -1])  # the query step is untouched
    # positions are uniform: both orders equally likely
    assert abs(batch.y.mean() - 0.5) < 0.08
    # both markers sit in the half of the window that the 04 padding arm's truncation always keeps
    # (min_window_fraction 0.5): truncation can never leave a lone marker that gives the order away
    keep = int(np.ceil(0.5 * W))
    assert a.min() >= W - keep and b.min() >= W - keep
    assert set(np.concatenate([a, b])) == set(range(W - keep, W - 1))  # every allowed position is used
    with pytest.raises(ValueError, match="window_size >= 5"):
        C.sample_event_order(10, 4, np.random.default_rng(0))


def test_induction_query_occurs_twice_and_label_is_the_successor():
    W, V = 13, C.INDUCTION_VALUES
    pairs = (W - 1) // 2
    batch = C.sample_induction(3000, W, np.random.default_rng(5))
    tokens, p = batch.info["tokens"], batch.info["query_position"]
    assert batch.X.shape == (3000, W, pairs + V)
    np.testing.assert_array_equal(batch.X.argmax(2), tokens)
    np.testing.assert_array_equal(batch.X.sum(2), 1.0)
    q = tokens[:, -1]
    assert np.all(q < pairs)
    np.testing.assert_array_equal((tokens == q[:, None]).sum(1), 2)  # q occurs exactly twice
    np.testing.assert_array_equal(tokens[np.arange(3000), p], q)
    assert p.max() <= W - 3
    np.testing.assert_array_equal(tokens[np.arange(3000), p + 1] - pairs, batch.y)  # label = successor
    # every window holds the same bag of tokens: counts carry nothing
    counts = batch.X.sum(axis=1)
    counts_no_query = counts.copy()
    counts_no_query[np.arange(3000), q] -= 1
    assert np.all(counts_no_query == counts_no_query[0])
    assert np.bincount(batch.y, minlength=V).min() > 3000 / V * 0.85


def test_induction_label_is_not_predictable_from_counts_or_single_positions():
    train, test = _batches("induction")
    chance = C.CONTROLS["induction"].chance
    counts = lambda b: b.X.sum(axis=1)  # noqa: E731
    assert abs(_fit_score(counts(train), train.y, counts(test), test.y) - chance) < 0.04
    # a linear model on the flattened one-hot window (every single (token, position) pair) is at chance too
    flat = lambda b: b.X.reshape(len(b.y), -1)  # noqa: E731
    assert abs(_fit_score(flat(train), train.y, flat(test), test.y) - chance) < 0.04


@pytest.mark.parametrize("window, match", [(14, "odd window_size"), (11, "split evenly"), (3, ">= 5")])
def test_induction_rejects_window_sizes_it_cannot_use(window, match):
    with pytest.raises(ValueError, match=rf"DataConfig\.window_size: control:induction.*{match}"):
        C.sample_induction(4, window, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------
# permutation-invariant rules sit at chance; order-aware rules and the Bayes rule do not
# ------------------------------------------------------------------------------------------------
def test_order_invariant_rule_at_chance_order_aware_rule_above():
    train, test = _batches("order")
    sorted_sq = lambda b: np.sort((b.X ** 2).reshape(len(b.y), -1), axis=1)  # noqa: E731
    flat_sq = lambda b: (b.X ** 2).reshape(len(b.y), -1)  # noqa: E731
    assert abs(_fit_score(sorted_sq(train), train.y, sorted_sq(test), test.y) - 0.5) < 0.04
    aware = _fit_score(flat_sq(train), train.y, flat_sq(test), test.y)
    ceiling = C.bayes_ceiling(test.y, test.posterior)["accuracy"]
    assert aware > 0.85 and ceiling > 0.9 and aware <= ceiling + 0.02
    assert ceiling == pytest.approx(C.CONTROLS["order"].ceiling_estimate, abs=0.02)


def test_recency_invariant_rule_at_chance_last_step_rule_above():
    train, test = _batches("recency")
    invariant = lambda b: np.sort(b.X[:, :, 0], axis=1)  # noqa: E731
    assert abs(_fit_score(invariant(train), train.y, invariant(test), test.y) - 0.5) < 0.04
    last_only = float(np.mean((test.X[:, -1, 0] > 0) == test.y))
    assert last_only == pytest.approx(stats.norm.cdf(C.RECENCY_MU), abs=0.02)
    flat = lambda b: b.X[:, :, 0]  # noqa: E731
    assert _fit_score(flat(train), train.y, flat(test), test.y) > 0.9
    ceiling = C.bayes_ceiling(test.y, test.posterior)["accuracy"]
    assert last_only < ceiling <= 1.0
    assert ceiling == pytest.approx(C.CONTROLS["recency"].ceiling_estimate, abs=0.01)


def test_recency_posterior_matches_brute_force_enumeration():
    batch = C.sample_recency(5, 6, np.random.default_rng(7), mu=0.8)
    x = batch.X[:, :, 0]
    for i in range(5):
        like = {0: 0.0, 1: 0.0}
        for first in (0, 1):
            for s in range(1, 6):
                regimes = np.where(np.arange(6) < s, first, 1 - first)
                like[1 - first] += np.prod(stats.norm.pdf(x[i], loc=0.8 * (2 * regimes - 1)))
        assert C.recency_posterior(batch.X[i:i + 1], 0.8)[0, 1] == pytest.approx(like[1] / (like[0] + like[1]))


def test_event_order_invariant_rule_at_chance_order_aware_rule_above():
    train, test = _batches("event_order")
    invariant = lambda b: np.sort(b.X, axis=1).reshape(len(b.y), -1)  # noqa: E731
    assert abs(_fit_score(invariant(train), train.y, invariant(test), test.y) - 0.5) < 0.04
    flat = lambda b: b.X[:, :, :2].reshape(len(b.y), -1)  # noqa: E731
    assert _fit_score(flat(train), train.y, flat(test), test.y) > 0.95


@pytest.mark.parametrize("task", CONTROL_TASKS)
def test_posterior_functions_recompute_the_stored_posterior(task):
    control = C.CONTROLS[task]
    batch = control.sampler(300, control.window_size, np.random.default_rng(8))
    np.testing.assert_allclose(control.posterior(batch.X), batch.posterior)
    np.testing.assert_allclose(batch.posterior.sum(1), 1.0)
    result = C.bayes_ceiling(batch.y, batch.posterior)
    assert control.chance < result["accuracy"] <= 1.0 and result["n"] == 300
    if control.ceiling is not None:
        assert result["accuracy"] == control.ceiling


# ------------------------------------------------------------------------------------------------
# the data layer
# ------------------------------------------------------------------------------------------------
def test_prepare_order_windows_are_the_segments():
    overrides = C.control_data_overrides("order")
    W = overrides["window_size"]
    config = DataConfig(**overrides)
    assert config.resolved_target == "true_regime" and config.control_task == "order"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = prepare(config)
    n_segments = overrides["synthetic_bars"] // W
    assert splits.class_names == ["rising", "falling"]
    assert splits.feature_names == ["x_0", "x_1"]
    assert splits.extras["warmup_bars"] == 0
    for part in (splits.train, splits.val, splits.test):
        assert part.X.shape == (len(part), W, 2) and part.X.dtype == np.float32
        assert np.all(part.positions % W == W - 1)  # each window ends on a segment's last bar
        first_bars = splits.bars.iloc[part.positions - W + 1]
        assert (first_bars["step"] == 0).all()  # ... and starts on its first bar
        np.testing.assert_array_equal(first_bars["segment"].to_numpy(), part.positions // W)
        assert abs(part.y.mean() - 0.5) < 0.05
    # purge with horizon 1 drops one segment per boundary; the embargo none
    assert len(splits.train) + len(splits.val) + len(splits.test) == n_segments - 2
    assert 4000 <= len(splits.train) <= 8000
    assert splits.train.index.max() < splits.val.index.min() and splits.val.index.max() < splits.test.index.min()
    assert splits.bars.index.is_monotonic_increasing and splits.bars.index[0] == np.datetime64("2040-01-02")
    # the windows hold the generator's raw inputs, standardised with training statistics
    path = C.generate_control("order", overrides["synthetic_bars"], W, 0)
    state = splits.preprocessor.fitted_state()
    raw = splits.test.X * state["numeric_scale"] + state["numeric_mean"]
    rows = splits.test.positions[:, None] + np.arange(-W + 1, 1)[None, :]
    np.testing.assert_allclose(raw, path.inputs.to_numpy()[rows], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(splits.test.y, path.labels[splits.test.positions])
    ceiling = C.control_ceiling(splits)
    assert 0.5 < ceiling["accuracy"] <= 1.0 and ceiling["n"] == len(splits.test)
    assert ceiling["accuracy"] == pytest.approx(C.CONTROLS["order"].ceiling_estimate, abs=0.03)


@pytest.mark.parametrize("task", CONTROL_TASKS)
def test_prepare_every_control(task):
    control = C.CONTROLS[task]
    overrides = C.control_data_overrides(task)
    overrides["synthetic_bars"] = overrides["window_size"] * 1500
    splits = prepare(DataConfig(**overrides, synthetic_seed=3))
    W = control.window_size
    assert splits.window_size == W and splits.class_names == list(control.class_names)
    assert splits.num_classes == control.num_classes
    assert np.all(splits.train.positions % W == W - 1)
    assert splits.extras["control"] is control and splits.extras["params"].names == control.class_names
    counts = np.bincount(splits.train.y, minlength=control.num_classes) / len(splits.train)
    assert np.all(np.abs(counts - 1 / control.num_classes) < 0.06)
    ceiling = C.control_ceiling(splits, "val")
    assert control.chance < ceiling["accuracy"] <= 1.0
    # every fixed setting is a valid model setting
    ModelConfig.from_dict({k.split(".", 1)[1]: v for k, v in control.fixed.items()})


def test_seeds_give_independent_paths_and_same_seed_the_same_data():
    overrides = dict(C.control_data_overrides("recency"), synthetic_bars=16 * 400)
    a = prepare(DataConfig(**overrides, synthetic_seed=1))
    b = prepare(DataConfig(**overrides, synthetic_seed=1))
    c = prepare(DataConfig(**overrides, synthetic_seed=2))
    assert a.fingerprint == b.fingerprint and a.fingerprint != c.fingerprint
    assert not np.allclose(a.train.X, c.train.X)


def test_start_inside_a_segment_drops_the_partial_segment():
    overrides = dict(C.control_data_overrides("event_order"), synthetic_bars=16 * 400)
    splits = prepare(DataConfig(**overrides, start="2040-01-03T00:05:00"))
    W = 16
    assert splits.bars["step"].iloc[0] == 0 and splits.bars.index[0] == np.datetime64("2040-01-04")
    first_bars = splits.bars.iloc[splits.train.positions - W + 1]
    assert (first_bars["step"] == 0).all()


def test_include_and_exclude_columns_select_channels():
    overrides = dict(C.control_data_overrides("recency"), synthetic_bars=16 * 300)
    splits = prepare(DataConfig(**overrides, exclude_columns=("noise_1",)))
    assert splits.feature_names == ["signal", "noise_0"]
    with pytest.raises(ValueError, match=r"DataConfig.include_columns/exclude_columns: .*\['bogus'\]"):
        prepare(DataConfig(**overrides, include_columns=("bogus",)))


# ------------------------------------------------------------------------------------------------
# configuration and registry
# ------------------------------------------------------------------------------------------------
def test_unknown_control_names_the_field_and_the_valid_tasks():
    with pytest.raises(ValueError) as info:
        DataConfig(source="control:parity")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("DataConfig.source: expected one of ['sp500', 'nasdaq', 'csv', 'synthetic'] or "
                              "control:<task> with task in ['order', 'recency', 'event_order', 'induction']")
    assert "'control:parity'" in message
    with pytest.raises(ValueError, match=r"control task: expected one of \['order', 'recency', 'event_order', "
                                         r"'induction'\], got 'parity'"):
        C.control_data_overrides("parity")


@pytest.mark.parametrize("changes, field", [
    ({"features": ("log_return",)}, "features"),
    ({"stride": 1}, "stride"),
    ({"target": "forward_vol_regime"}, "target"),
])
def test_control_config_rejects_settings_that_break_the_argument(changes, field):
    with pytest.raises(ValueError, match=rf"^DataConfig\.{field}: "):
        DataConfig(**{**C.control_data_overrides("order"), **changes})


def test_target_true_regime_still_needs_a_simulated_source():
    with pytest.raises(ValueError, match="DataConfig.target"):
        DataConfig(source="sp500", target="true_regime")


def test_too_few_bars_for_one_segment():
    with pytest.raises(ValueError, match="DataConfig.synthetic_bars"):
        C.generate_control("order", 10, 16, 0)


def test_dataset_option_accepts_control_names():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, seed_help="s", smoke_help="s")
    assert parser.parse_args(["--dataset", "control:induction"]).dataset == "control:induction"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "control:parity"])


def test_control_index_is_one_business_day_per_segment():
    index = C.control_index(3, 4)
    assert len(index) == 12 and index.is_monotonic_increasing and index.is_unique
    assert list(index.normalize().unique().day_name()) == ["Monday", "Tuesday", "Wednesday"]
    assert str(index[5]) == "2040-01-03 00:01:00"


def _ablation(name: str):
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


def test_registry_matches_the_config_and_the_experiments():
    assert tuple(C.CONTROLS) == CONTROL_TASKS
    ablations = {}
    for control in C.CONTROLS.values():
        if control.ablation not in ablations:
            ablations[control.ablation] = _ablation(control.ablation)
        arms = {a.name for a in ablations[control.ablation].arms}
        names = [a.name for a in ablations[control.ablation].arms]
        winners = control.winners_among(names)
        assert winners and set(winners) | set(control.at_chance) == arms, control.name
        assert not set(winners) & set(control.at_chance)
        assert set(control.at_chance) <= arms, control.name  # at_chance always names real arms
        assert control.chance == pytest.approx(1 / control.num_classes)
        assert control.data_overrides()["stride"] == control.window_size
        assert 12 <= control.window_size <= 24
        scientific = {k for a in ablations[control.ablation].arms for k in a.overrides}
        assert not scientific & set(control.fixed), f"{control.name} fixes the scientific hyperparameter"


def test_a_new_encoding_arm_is_a_predicted_winner_without_editing_the_registry():
    """The recipe of issue 13: a positional encoding added as an arm of 03 is checked by the order
    control (theory: any positional encoding breaks permutation invariance) with no registry edit."""
    order = C.CONTROLS["order"]
    names = [a.name for a in _ablation("03_encoding_ablation").arms] + ["tape"]
    assert "tape" in order.winners_among(names) and "none" not in order.winners_among(names)
    # explicit winners stay as declared (recency: only last-step pooling)
    assert C.CONTROLS["recency"].winners_among(["mean", "last", "new_pooling"]) == ("last",)
