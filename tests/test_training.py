"""Training loop, early stopping, seeding and the metrics of record (regimetry.training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss

from regimetry import training
from regimetry.config import ModelConfig, TrainConfig

# Distinct sizes: d_model 16, heads 4, ff 8 (T 6, features 7, 3 classes come from the fixture).
TINY_MODEL = ModelConfig(d_model=16, num_heads=4, ff_dim=8, num_layers=1, dropout=0.1)
TINY_TRAIN = TrainConfig(max_epochs=3, batch_size=9, patience=3, learning_rate=3e-3, seed=3)
TIME_FREE = lambda h: {k: v for k, v in h.items() if not k.startswith("time/")}  # noqa: E731


@pytest.fixture(scope="module")
def fitted():
    from conftest import make_random_splits

    splits = make_random_splits()
    return splits, training.fit(splits, TINY_MODEL, TINY_TRAIN)


# ---- metrics of record ------------------------------------------------------------------------
def test_metrics_from_probs_hand_computed_example():
    y = np.array([0, 0, 1, 1, 1, 2])
    probs = np.array([
        [0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1],
        [0.3, 0.4, 0.3], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6],
    ])
    result = training.metrics_from_probs(y, probs, ["low", "mid", "high"])
    m = result.metrics
    # predictions: 0, 1, 1, 1, 0, 2 -> recalls low 1/2, mid 2/3, high 1/1
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall/low"] == pytest.approx(0.5)
    assert m["recall/mid"] == pytest.approx(2 / 3)
    assert m["recall/high"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    expected_ll = -np.mean(np.log([0.7, 0.2, 0.8, 0.4, 0.3, 0.6]))
    assert m["log_loss"] == pytest.approx(expected_ll)
    np.testing.assert_array_equal(result.confusion, [[1, 1, 0], [1, 2, 0], [0, 0, 1]])
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * (2 / 3) / (4 / 3), 1.0]  # precision low 1/2, mid 2/3
    assert m["macro_f1"] == pytest.approx(np.mean(f1))


def test_metrics_missing_class_and_hard_predictions():
    y = np.array([0, 0, 1, 1])  # class 2 absent from this split (a calm test period)
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    m = training.metrics_from_probs(y, probs, ["a", "b", "c"]).metrics
    assert math.isnan(m["recall/c"])
    p64 = probs.astype(float) / probs.astype(float).sum(axis=1, keepdims=True)
    assert m["log_loss"] == pytest.approx(log_loss(y, p64, labels=[0, 1, 2]))
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)  # over classes present in y
    hard = training.metrics_from_probs(y, None, ["a", "b", "c"], y_pred=np.array([0, 0, 1, 2]))
    assert math.isnan(hard.metrics["log_loss"])
    assert hard.metrics["accuracy"] == pytest.approx(0.75)
    assert hard.probs is None and hard.confusion.shape == (3, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(y_true=np.array([0, 1, 3]), probs=np.full((3, 3), 1 / 3)), "y_true"),
        (dict(y_true=np.array([0, 1, 2]), probs=np.full((3, 2), 0.5)), "probs: expected shape"),
        (dict(y_true=np.array([0, 1, 2]), probs=np.full((3, 3), np.nan)), "NaN"),
        (dict(y_true=np.array([0, 1, 2]), probs=None), "exactly one"),
        (dict(y_true=np.array([0, 1, 2]), probs=None, y_pred=np.array([0, 5, 1])), "y_pred"),
    ],
)
def test_metrics_reject_bad_input(kwargs, message):
    y_true = kwargs.pop("y_true")
    probs = kwargs.pop("probs")
    with pytest.raises(ValueError, match=message):
        training.metrics_from_probs(y_true, probs, ["a", "b", "c"], **kwargs)


def test_class_weights_balanced_and_absent_class():
    w = training.class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w, [4 / (2 * 3), 4 / (2 * 1), 0.0])
    assert w.dtype == np.float32


# ---- fit ----------------------------------------------------------------------------------------
def test_fit_history_and_restored_best_epoch(fitted):
    splits, result = fitted
    keys = {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/balanced_accuracy",
            "val/macro_f1", "time/epoch_seconds"}
    assert set(result.history) == keys
    assert all(len(v) == result.epochs_run == 3 for v in result.history.values())
    bal = result.history["val/balanced_accuracy"]
    assert result.best_epoch == int(np.argmax(bal))  # first maximum wins
    assert result.monitor == "val/balanced_accuracy" and result.best_score == bal[result.best_epoch]
    # The returned model carries the best epoch's weights: re-scoring reproduces that epoch.
    again = training.evaluate(result.model, splits.val, splits.class_names)
    assert again["balanced_accuracy"] == pytest.approx(bal[result.best_epoch])
    assert again["log_loss"] == pytest.approx(result.history["val/loss"][result.best_epoch], rel=1e-6)
    assert result.val_metrics == again
    assert result.val_confusion.shape == (3, 3) and result.val_confusion.sum() == len(splits.val)
    assert result.fit_seconds > 0 and not result.stopped_early
    # evaluate accepts probabilities as well as a model
    probs = training.predict_proba(result.model, splits.test.X, batch_size=4)
    assert probs.shape == (len(splits.test), 3) and probs.dtype == np.float32
    from_probs = training.evaluate(probs, splits.test, splits.class_names)
    from_model = training.evaluate(result.model, splits.test, splits.class_names)
    assert from_probs == pytest.approx(from_model, rel=1e-6, nan_ok=True)  # batch size: float noise only


def test_same_seed_same_metrics(fitted):
    splits, first = fitted
    second = training.fit(splits, TINY_MODEL, TINY_TRAIN)
    assert TIME_FREE(second.history) == TIME_FREE(first.history)
    assert second.val_metrics == first.val_metrics
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_reused_graphs_give_bit_identical_runs(fitted):
    """Issue 17: fit(reuse_graphs=True) trains one kept compiled model per configuration; every run
    (another seed, then the first seed again, with dropout and the shortcut warm start) matches a
    fresh compile exactly, and the kept model's traced train function is the same object."""
    from conftest import make_random_splits

    splits, seed3 = fitted
    model = TINY_MODEL.replace(linear_shortcut=True, center_windows=True)
    training._COMPILED_MODELS.clear()
    runs = []
    for seed in (5, 3, 5):
        fresh = training.fit(splits, model, TINY_TRAIN.replace(seed=seed))
        fresh_probs = training.predict_proba(fresh.model, splits.test.X)
        reused = training.fit(splits, model, TINY_TRAIN.replace(seed=seed), reuse_graphs=True)
        assert TIME_FREE(reused.history) == TIME_FREE(fresh.history)
        assert reused.val_metrics == fresh.val_metrics and reused.best_epoch == fresh.best_epoch
        np.testing.assert_array_equal(training.predict_proba(reused.model, splits.test.X), fresh_probs)
        runs.append((reused.model, reused.model.train_function))
    assert runs[0][0] is runs[1][0] is runs[2][0]  # one kept model ...
    assert runs[0][1] is runs[2][1]  # ... traced once
    # another configuration (or data shape) gets its own model
    other = training.fit(splits, model, TINY_TRAIN.replace(seed=5, learning_rate=1e-3), reuse_graphs=True)
    assert other.model is not runs[0][0]
    wider = make_random_splits(features=5)
    assert training.fit(wider, model, TINY_TRAIN, reuse_graphs=True).model is not runs[0][0]
    training._COMPILED_MODELS.clear()


def test_compile_builds_the_optimizer_so_the_train_step_is_traced_once():
    """Issue 17: an optimizer built lazily inside the first train step makes TensorFlow trace that step
    twice (~2 s per new model); compile_model builds it, with the same result bit for bit."""
    import keras

    from conftest import make_random_splits
    from regimetry.models import build_classifier

    splits = make_random_splits()

    def trained(lazy: bool):
        keras.utils.set_random_seed(3)
        data = training.make_dataset(splits.train.X, splits.train.y, splits.num_classes, 9, shuffle_seed=3)
        model = build_classifier(TINY_MODEL, splits.window_size, splits.num_features, splits.num_classes)
        training.compile_model(model, TINY_TRAIN)
        assert model.optimizer.built
        if lazy:  # Keras' own behaviour: the same optimizer, built inside the first traced step
            model.compile(optimizer=keras.optimizers.AdamW.from_config(model.optimizer.get_config()),
                          loss=model.loss, metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                          jit_compile=False)
            assert not model.optimizer.built
        traces = []
        step = model.train_step
        model.train_step = lambda batch: traces.append(1) or step(batch)  # Python runs only while tracing
        model.fit(data, epochs=2, verbose=0)
        return model, len(traces)

    (built, built_traces), (lazy, lazy_traces) = trained(False), trained(True)
    assert (built_traces, lazy_traces) == (1, 2)
    for ours, keras_own in zip(built.get_weights(), lazy.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, keras_own)
    for ours, keras_own in zip(built.optimizer.variables, lazy.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(keras_own))


def test_epoch_callback_sees_every_epoch_and_its_exception_propagates(fitted):
    splits, seed3 = fitted
    class Prune(Exception):
        pass

    seen = []

    def callback(epoch, metrics):
        seen.append((epoch, metrics))
        if epoch == 1:
            raise Prune("pruned at epoch 1")

    with pytest.raises(Prune, match="epoch 1"):
        training.fit(splits, TINY_MODEL, TINY_TRAIN.replace(max_epochs=5, seed=4), epoch_callback=callback)
    assert [e for e, _ in seen] == [0, 1]
    assert seen[0][1]["train/loss"] != seed3.history["train/loss"][0]  # another seed, another run
    assert {"train/loss", "val/balanced_accuracy", "val/loss"} <= set(seen[0][1])
    assert all(isinstance(v, float) for v in seen[0][1].values())


def test_early_stopping_when_the_monitor_stalls(random_splits):
    # A vanishing learning rate leaves the argmax predictions unchanged: no strict improvement.
    config = TINY_TRAIN.replace(learning_rate=1e-12, patience=1, max_epochs=6, monitor="val_accuracy",
                                class_weight="none", label_smoothing=0.1, clipnorm=None)
    result = training.fit(random_splits, TINY_MODEL, config)
    assert result.stopped_early
    assert result.epochs_run == 2 and result.best_epoch == 0


def test_fit_rejects_bad_splits(random_splits):
    import dataclasses

    empty_val = dataclasses.replace(random_splits, val=dataclasses.replace(
        random_splits.val, X=random_splits.val.X[:0], y=random_splits.val.y[:0],
        index=random_splits.val.index[:0], positions=random_splits.val.positions[:0]))
    with pytest.raises(ValueError, match="Splits.val: empty"):
        training.fit(empty_val, TINY_MODEL, TINY_TRAIN)
    with pytest.raises(ValueError, match="seed"):
        training.set_global_seed(-1)


# ---- linear shortcut warm start (issue 11) -----------------------------------------------------
def test_last_real_steps_skips_trailing_padding():
    X = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3)
    X[1, 2:] = np.nan  # window 1 has two real steps
    np.testing.assert_array_equal(training.last_real_steps(X), np.stack([X[0, 3], X[1, 1]]))


@pytest.mark.parametrize("use_encoder", [True, False], ids=["encoder+shortcut", "shortcut-only"])
def test_warm_start_makes_the_untrained_model_the_logistic_regression(random_splits, use_encoder):
    from sklearn.linear_model import LogisticRegression

    from regimetry.models import build_classifier

    config = TINY_MODEL.replace(linear_shortcut=True, use_encoder=use_encoder)
    k = random_splits.num_classes
    model = build_classifier(config, random_splits.window_size, random_splits.num_features, k)
    assert training.warm_start_shortcut(model, random_splits.train, k, None)
    ours = training.predict_proba(model, random_splits.test.X)
    reference = LogisticRegression(C=1.0, max_iter=500).fit(
        training.last_real_steps(random_splits.train.X), random_splits.train.y)
    # the encoder's head starts at zero, so the whole model is the regression before training
    np.testing.assert_allclose(ours, reference.predict_proba(training.last_real_steps(random_splits.test.X)),
                               atol=1e-4)
    plain = build_classifier(TINY_MODEL, random_splits.window_size, random_splits.num_features, k)
    assert not training.warm_start_shortcut(plain, random_splits.train, k, None)


def test_warm_start_binary_and_absent_class(random_splits):
    import dataclasses

    from regimetry.models import build_classifier

    y = (random_splits.train.y > 0).astype(random_splits.train.y.dtype)  # classes 0/1 present, 2 absent
    train = dataclasses.replace(random_splits.train, y=y)
    config = TINY_MODEL.replace(linear_shortcut=True, use_encoder=False)
    model = build_classifier(config, random_splits.window_size, random_splits.num_features, 3)
    training.warm_start_shortcut(model, train, 3, None)
    probs = training.predict_proba(model, random_splits.train.X)
    assert probs[:, 2].max() < 1e-3  # the absent class is (almost) never predicted
    accuracy = np.mean(probs.argmax(1) == y)
    assert accuracy >= np.mean(y == np.bincount(y).argmax())  # at least the majority class


def test_warm_start_reads_only_the_shortcut_features(random_splits):
    from sklearn.linear_model import LogisticRegression

    from regimetry.models import build_classifier

    names = random_splits.feature_names
    config = TINY_MODEL.replace(linear_shortcut=True, use_encoder=False, shortcut_features=(names[4], names[0]))
    k = random_splits.num_classes
    model = build_classifier(config, random_splits.window_size, random_splits.num_features, k, feature_names=names)
    training.warm_start_shortcut(model, random_splits.train, k, None)
    cols = [4, 0]
    reference = LogisticRegression(C=1.0, max_iter=500).fit(
        training.last_real_steps(random_splits.train.X)[:, cols], random_splits.train.y)
    np.testing.assert_allclose(training.predict_proba(model, random_splits.test.X),
                               reference.predict_proba(training.last_real_steps(random_splits.test.X)[:, cols]),
                               atol=1e-4)


# ---- the warm start as an early-stopping candidate (TrainConfig.warm_start_candidate, issue 11) --
def _separable_splits(random_splits):
    """``random_splits`` with feature 0 of every step set to the window's class: the warm-started
    logistic regression on the last step is perfect on validation (balanced accuracy 1.0)."""
    import dataclasses

    def relabel(part):
        X = np.array(part.X, copy=True)
        X[:, :, 0] = part.y[:, None] * 3.0
        return dataclasses.replace(part, X=X)

    return dataclasses.replace(random_splits, train=relabel(random_splits.train), val=relabel(random_splits.val),
                               test=relabel(random_splits.test))


def test_warm_start_kept_when_no_epoch_beats_it(random_splits):
    from regimetry.models import build_classifier

    splits = _separable_splits(random_splits)
    config = TINY_MODEL.replace(linear_shortcut=True)
    train = TINY_TRAIN.replace(warm_start_candidate=True, patience=2, max_epochs=4, learning_rate=3e-2)
    result = training.fit(splits, config, train)
    assert result.best_epoch == -1 and result.best_score == 1.0
    assert result.epochs_run == 2 and result.stopped_early  # two epochs could not beat 1.0
    # restored: exactly the warm-started model before any step (same seed, same build)
    training.set_global_seed(train.seed)
    fresh = build_classifier(config, splits.window_size, splits.num_features, splits.num_classes)
    weights = training.class_weights(splits.train.y, splits.num_classes)[splits.train.y]
    training.warm_start_shortcut(fresh, splits.train, splits.num_classes, weights)
    np.testing.assert_allclose(training.predict_proba(result.model, splits.test.X),
                               training.predict_proba(fresh, splits.test.X), rtol=1e-6, atol=1e-7)
    assert result.val_metrics["balanced_accuracy"] == 1.0
    # off (the default): the best epoch is restored, whatever the warm start scored
    assert training.fit(splits, config, train.replace(warm_start_candidate=False)).best_epoch >= 0


def test_warm_start_candidate_restores_an_epoch_only_when_it_beats_the_start(random_splits):
    from regimetry.models import build_classifier

    config = TINY_MODEL.replace(linear_shortcut=True)
    for seed in (3, 4, 5):
        train = TINY_TRAIN.replace(warm_start_candidate=True, seed=seed, max_epochs=4)
        training.set_global_seed(seed)
        fresh = build_classifier(config, random_splits.window_size, random_splits.num_features, 3)
        weights = training.class_weights(random_splits.train.y, 3)[random_splits.train.y]
        training.warm_start_shortcut(fresh, random_splits.train, 3, weights)
        start = training.metrics_from_probs(random_splits.val.y, training.predict_proba(fresh, random_splits.val.X),
                                            random_splits.class_names).metrics["balanced_accuracy"]
        result = training.fit(random_splits, config, train)
        epochs = result.history["val/balanced_accuracy"]
        if max(epochs) > start:
            assert result.best_epoch == int(np.argmax(epochs)) and result.best_score == max(epochs)
        else:
            assert result.best_epoch == -1 and result.best_score == start
    # no shortcut: nothing to keep, the flag changes nothing
    plain = training.fit(random_splits, TINY_MODEL, TINY_TRAIN.replace(warm_start_candidate=True))
    assert plain.best_epoch >= 0
    with pytest.raises(ValueError, match="warm_start_candidate"):
        TrainConfig(warm_start_candidate="yes")


def test_warm_start_margin_in_standard_errors(random_splits):
    config = TINY_MODEL.replace(linear_shortcut=True)
    base = TINY_TRAIN.replace(warm_start_candidate=True, max_epochs=3, learning_rate=1e-2)
    strict = training.fit(random_splits, config, base)
    assert strict.best_epoch >= 0  # at lr 1e-2 an epoch beats the warm start on these data
    # a margin no epoch can clear (in SEs of the paired validation difference): the warm start stays
    kept = training.fit(random_splits, config, base.replace(warm_start_margin=1e6))
    assert kept.best_epoch == -1 and kept.history["val/balanced_accuracy"] == strict.history["val/balanced_accuracy"]
    assert training.fit(random_splits, config, base.replace(warm_start_margin=0.0)).best_epoch == strict.best_epoch
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="warm_start_margin"):
            TrainConfig(warm_start_margin=bad)
