"""SequencePooling and ClsToken: padding invariance, empty windows, persistence."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import tensorflow as tf

from regimetry.layers import ClsToken, SequencePooling
from regimetry.layers.pooling import POOLING_MODES
from regimetry.registry import POOLINGS

BATCH, T, D = 3, 6, 16
MODES = list(POOLING_MODES)


def test_every_registered_pooling_is_a_mode_of_the_layer():
    assert set(POOLINGS) <= set(POOLING_MODES)
LENGTHS = [6, 4, 1]  # real steps per window; the rest is padding at the end


def _x(seed=0, length=T):
    return np.random.default_rng(seed).normal(size=(BATCH, length, D)).astype("float32")


def _padding(lengths=LENGTHS):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def _built(mode, **kwargs):
    layer = SequencePooling(mode, **kwargs)
    layer.build((None, T, D))
    return layer


@pytest.mark.parametrize("mode", MODES)
def test_output_shape(mode):
    layer = _built(mode)
    assert layer(_x()).shape == (BATCH, D)
    assert layer(_x(), padding_mask=_padding()).shape == (BATCH, D)


def test_unmasked_values():
    x = _x(1)
    np.testing.assert_allclose(np.asarray(_built("mean")(x)), x.mean(1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(_built("max")(x)), x.max(1), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(_built("last")(x)), x[:, -1])
    np.testing.assert_array_equal(np.asarray(_built("cls")(x)), x[:, 0])
    np.testing.assert_array_equal(np.asarray(_built("cls", cls_position="last")(x)), x[:, -1])


@pytest.mark.parametrize("mode", MODES)
def test_padded_window_pools_like_truncated_window(mode):
    layer = _built(mode, cls_position="first")
    x = _x(2)
    padded = x.copy()
    padding = _padding()
    # Garbage (huge, NaN, inf) at the padded steps must not reach the output.
    padded[~padding] = np.array([1e6, np.nan, np.inf, -np.inf] * (D // 4), "float32")
    pooled = np.asarray(layer(padded, padding_mask=padding))
    assert np.isfinite(pooled).all()
    for i, length in enumerate(LENGTHS):
        truncated = np.asarray(layer(x[i:i + 1, :length]))[0]
        np.testing.assert_allclose(pooled[i], truncated, atol=1e-6, rtol=1e-6)
    # A different value at a padded step changes nothing.
    other = padded.copy()
    other[0 + 1, 5] = 3.0
    np.testing.assert_array_equal(np.asarray(layer(other, padding_mask=padding)), pooled)


def test_last_reads_the_last_real_step_and_cls_last_reads_the_final_index():
    x = _x(3)
    padding = _padding()
    last = np.asarray(_built("last")(x, padding_mask=padding))
    for i, length in enumerate(LENGTHS):
        np.testing.assert_array_equal(last[i], x[i, length - 1])
    cls_last = np.asarray(_built("cls", cls_position="last")(x, padding_mask=padding))
    np.testing.assert_array_equal(cls_last, x[:, -1])


@pytest.mark.parametrize("mode", ["mean", "max", "last", "attention"])
def test_fully_padded_window_is_zero_with_finite_gradients(mode):
    layer = _built(mode)
    padding = np.ones((BATCH, T), bool)
    padding[1] = False
    x = tf.constant(_x(4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled = layer(x, padding_mask=padding)
        loss = tf.reduce_sum(pooled**2)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    pooled = np.asarray(pooled)
    assert np.isfinite(pooled).all()
    np.testing.assert_array_equal(pooled[1], np.zeros(D, "float32"))
    assert all(g is not None and np.isfinite(np.asarray(g)).all() for g in grads)
    assert np.all(np.asarray(grads[0])[1] == 0)  # nothing flows into a padded window


def test_attention_pooling_is_a_softmax_over_valid_steps_and_trains():
    layer = _built("attention")
    assert [w.name for w in layer.trainable_weights] == ["kernel"]
    x = tf.constant(_x(5))
    padding = _padding()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, padding_mask=padding) ** 2)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert np.abs(np.asarray(grad)).sum() > 0
    kernel = np.asarray(layer.trainable_variables[0])
    logits = (np.asarray(x) @ kernel)[..., 0]
    pooled = np.asarray(layer(x, padding_mask=padding))
    for i, length in enumerate(LENGTHS):
        w = np.exp(logits[i, :length] - logits[i, :length].max())
        w /= w.sum()
        np.testing.assert_allclose(pooled[i], (w[:, None] * np.asarray(x)[i, :length]).sum(0), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_config_round_trip_and_save_load(mode, tmp_path):
    layer = SequencePooling(mode, cls_position="last", name="pool")
    config = layer.get_config()
    assert config["mode"] == mode and config["cls_position"] == "last"
    assert SequencePooling.from_config(config).get_config() == config
    inputs = keras.Input(shape=(T, D))
    padding = keras.Input(shape=(T,), dtype="bool")
    model = keras.Model([inputs, padding], layer(inputs, padding_mask=padding))
    model.save(tmp_path / "pool.keras")
    loaded = keras.saving.load_model(tmp_path / "pool.keras")
    feed = [_x(6), _padding()]
    np.testing.assert_array_equal(np.asarray(model(feed)), np.asarray(loaded(feed)))


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        SequencePooling("median")
    with pytest.raises(ValueError, match="cls_position"):
        SequencePooling("cls", cls_position="middle")
    with pytest.raises(ValueError, match="position"):
        ClsToken(position="middle")


@pytest.mark.parametrize("position", ["first", "last"])
def test_cls_token_shape_mask_and_value(position):
    layer = ClsToken(position=position)
    x = _x(7)
    out, mask = layer(x, padding_mask=_padding())
    out, mask = np.asarray(out), np.asarray(mask)
    assert out.shape == (BATCH, T + 1, D) and mask.shape == (BATCH, T + 1)
    token = np.asarray(layer.token)[0, 0]
    assert token.shape == (D,) and np.abs(token).sum() > 0
    at, rest = (0, slice(1, None)) if position == "first" else (-1, slice(0, -1))
    np.testing.assert_array_equal(out[:, at], np.broadcast_to(token, (BATCH, D)))
    np.testing.assert_array_equal(out[:, rest], x)
    assert mask[:, at].all()
    np.testing.assert_array_equal(mask[:, rest], _padding())
    assert np.asarray(layer(x)).shape == (BATCH, T + 1, D)  # without a padding mask


def test_cls_token_trains_and_round_trips(tmp_path):
    layer = ClsToken(position="last", name="cls")
    x = tf.constant(_x(8))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x)[:, -1] ** 2)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert np.all(np.asarray(grad) != 0)
    config = layer.get_config()
    assert ClsToken.from_config(config).get_config() == config
    inputs = keras.Input(shape=(T, D))
    padding = keras.Input(shape=(T,), dtype="bool")
    seq, mask = layer(inputs, padding_mask=padding)
    model = keras.Model([inputs, padding], [seq, mask])
    layer.token.assign(np.random.default_rng(9).normal(size=(1, 1, D)).astype("float32"))
    model.save(tmp_path / "cls.keras")
    loaded = keras.saving.load_model(tmp_path / "cls.keras")
    feed = [_x(9), _padding()]
    for a, b in zip(model(feed), loaded(feed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("cls").token), np.asarray(layer.token))
