"""Positional encodings: closed form, odd widths, the learnable table's training and persistence."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import tensorflow as tf

from regimetry.layers import LearnablePositionalEmbedding, SinusoidalPositionalEncoding, sinusoidal_table

BATCH, T, D = 3, 6, 16


def _closed_form(pos: int, channel: int, depth: int, style: str, wavelength: float = 10000.0) -> float:
    """The paper's equation written out independently of the implementation."""
    if style == "interleaved":
        i = channel // 2
        angle = pos / wavelength ** (2 * i / depth)
        return np.sin(angle) if channel % 2 == 0 else np.cos(angle)
    n_sin = (depth + 1) // 2
    if channel < n_sin:
        return np.sin(pos / wavelength ** (2 * channel / depth))
    i = channel - n_sin
    return np.cos(pos / wavelength ** (2 * i / depth))


def _roundtrip(model: keras.Model, x, tmp_path) -> keras.Model:
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    return loaded


@pytest.mark.parametrize("style", ["interleaved", "stacked"])
@pytest.mark.parametrize("depth", [D, 15])  # an odd d_model is documented to work
def test_sinusoidal_matches_closed_form(style, depth):
    layer = SinusoidalPositionalEncoding(style=style)
    out = np.asarray(layer(np.zeros((BATCH, T, depth), "float32")))
    assert out.shape == (BATCH, T, depth)
    for pos in (0, 1, 3, T - 1):
        for channel in (0, 1, 2, 7, depth - 2, depth - 1):
            expected = _closed_form(pos, channel, depth, style)
            assert out[1, pos, channel] == pytest.approx(expected, abs=1e-5), (pos, channel)
    # Same table for every window of the batch, and it is added (not replacing the input).
    x = np.random.default_rng(0).normal(size=(BATCH, T, depth)).astype("float32")
    np.testing.assert_allclose(np.asarray(layer(x)) - x, out, atol=1e-6)


def test_stacked_is_a_channel_permutation_of_interleaved():
    inter = np.asarray(sinusoidal_table(T, D, style="interleaved"))
    stacked = np.asarray(sinusoidal_table(T, D, style="stacked"))
    np.testing.assert_allclose(stacked, np.concatenate([inter[:, 0::2], inter[:, 1::2]], axis=1), atol=1e-6)
    assert not np.allclose(stacked, inter)


def test_sinusoidal_max_wavelength_and_dynamic_length():
    layer = SinusoidalPositionalEncoding(style="interleaved", max_wavelength=100.0)
    inputs = keras.Input(shape=(None, D))  # length known only at run time
    model = keras.Model(inputs, layer(inputs))
    for length in (T, 9):
        out = np.asarray(model(np.zeros((BATCH, length, D), "float32")))
        assert out.shape == (BATCH, length, D)
        assert out[2, length - 1, 4] == pytest.approx(_closed_form(length - 1, 4, D, "interleaved", 100.0), abs=1e-5)


def test_sinusoidal_table_is_a_constant_not_a_weight(tmp_path):
    layer = SinusoidalPositionalEncoding(style="stacked")
    inputs = keras.Input(shape=(T, D))
    model = keras.Model(inputs, layer(inputs))
    assert layer.weights == []
    loaded = _roundtrip(model, np.ones((BATCH, T, D), "float32"), tmp_path)
    assert loaded.layers[1].get_config()["style"] == "stacked"


@pytest.mark.parametrize(
    "layer", [SinusoidalPositionalEncoding(style="stacked", max_wavelength=500.0), LearnablePositionalEmbedding(9)]
)
def test_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    x = np.random.default_rng(1).normal(size=(BATCH, T, D)).astype("float32")
    out = np.asarray(layer(x))
    clone.build((BATCH, T, D))
    clone.set_weights(layer.get_weights())  # the learnable clone draws its own table: give it the original's
    np.testing.assert_array_equal(out, np.asarray(clone(x)))


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="style"):
        SinusoidalPositionalEncoding(style="rotary")
    with pytest.raises(ValueError, match="max_wavelength"):
        SinusoidalPositionalEncoding(max_wavelength=1.0)
    with pytest.raises(ValueError, match="sequence_length"):
        LearnablePositionalEmbedding(0)


def test_learnable_shape_and_prefix_of_table():
    layer = LearnablePositionalEmbedding(sequence_length=9)
    x = np.zeros((BATCH, T, D), "float32")
    out = np.asarray(layer(x))
    assert out.shape == (BATCH, T, D)
    table = np.asarray(layer.embeddings)
    assert table.shape == (9, D)
    np.testing.assert_allclose(out[2], table[:T], atol=1e-7)


def test_learnable_longer_input_is_a_clear_error():
    layer = LearnablePositionalEmbedding(sequence_length=5)
    with pytest.raises(ValueError, match=r"6 steps.*sequence_length=5"):
        layer(np.zeros((BATCH, T, D), "float32"))
    built = LearnablePositionalEmbedding(sequence_length=T)
    built(np.zeros((BATCH, T, D), "float32"))
    with pytest.raises(ValueError, match=r"7 steps.*sequence_length=6"):
        built(np.zeros((BATCH, T + 1, D), "float32"))


def test_learnable_table_is_trained():
    inputs = keras.Input(shape=(T, 7))
    x = keras.layers.Dense(D)(inputs)
    x = LearnablePositionalEmbedding(T, name="pe")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", run_eagerly=True)
    before = np.asarray(model.get_layer("pe").embeddings).copy()
    rng = np.random.default_rng(2)
    model.train_on_batch(rng.normal(size=(BATCH, T, 7)).astype("float32"), np.array([0, 1, 2]))
    after = np.asarray(model.get_layer("pe").embeddings)
    assert np.abs(after - before).min() > 0  # every row and channel received a gradient


def test_learnable_table_restored_on_load(tmp_path):
    inputs = keras.Input(shape=(T, D))
    layer = LearnablePositionalEmbedding(T, name="pe")
    model = keras.Model(inputs, layer(inputs))
    layer.embeddings.assign(np.random.default_rng(3).normal(size=(T, D)).astype("float32"))
    loaded = _roundtrip(model, np.zeros((BATCH, T, D), "float32"), tmp_path)
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("pe").embeddings), np.asarray(layer.embeddings))


def test_gradients_reach_learnable_table():
    layer = LearnablePositionalEmbedding(T)
    x = tf.constant(np.random.default_rng(4).normal(size=(BATCH, T, D)).astype("float32"))
    layer(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert grad is not None and np.all(np.abs(np.asarray(grad)) > 0)
