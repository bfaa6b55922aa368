"""TransformerEncoderBlock: shapes, persistence, look-ahead and padding properties, no NaN."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import tensorflow as tf

from regimetry.layers import TransformerEncoderBlock

BATCH, HEADS, T, D, KEY_DIM, FF = 3, 4, 6, 16, 5, 11


def _x(seed=0, batch=BATCH, d=D):
    return np.random.default_rng(seed).normal(size=(batch, T, d)).astype("float32")


def _block(**kwargs):
    params = dict(num_heads=HEADS, key_dim=KEY_DIM, ff_dim=FF, dropout=0.0)
    params.update(kwargs)
    block = TransformerEncoderBlock(**params)
    block.build((None, T, D))
    return block


def _padding():
    mask = np.ones((BATCH, T), bool)
    mask[0, 4:] = False
    mask[1, :] = False  # nothing to attend to anywhere in this window
    return mask


@pytest.mark.parametrize("norm_first", [False, True])
def test_shapes_and_scores(norm_first):
    block = _block(norm_first=norm_first)
    out = block(_x())
    assert out.shape == (BATCH, T, D)
    out, scores = block(_x(), return_attention_scores=True)
    assert out.shape == (BATCH, T, D) and scores.shape == (BATCH, HEADS, T, T)
    np.testing.assert_allclose(np.asarray(scores).sum(-1), 1.0, atol=1e-5)


def test_config_round_trip():
    block = _block(norm_first=True, activation="relu", dropout=0.2, layer_norm_epsilon=1e-6)
    config = block.get_config()
    for key in ("num_heads", "key_dim", "ff_dim", "dropout", "norm_first", "activation", "layer_norm_epsilon",
                "kernel_initializer", "bias_initializer"):
        assert key in config
    clone = TransformerEncoderBlock.from_config(config)
    assert clone.get_config() == config
    clone.build((None, T, D))
    clone.set_weights(block.get_weights())
    np.testing.assert_array_equal(np.asarray(block(_x())), np.asarray(clone(_x())))


@pytest.mark.parametrize("norm_first", [False, True])
def test_keras_save_load(norm_first, tmp_path):
    inputs = keras.Input(shape=(T, D))
    padding = keras.Input(shape=(T,), dtype="bool")
    block = TransformerEncoderBlock(HEADS, KEY_DIM, FF, dropout=0.1, norm_first=norm_first, name="block")
    model = keras.Model([inputs, padding], block(inputs, padding_mask=padding, use_causal_mask=True))
    model.save(tmp_path / "block.keras")
    loaded = keras.saving.load_model(tmp_path / "block.keras")
    feed = [_x(), _padding()]
    np.testing.assert_array_equal(np.asarray(model(feed)), np.asarray(loaded(feed)))
    assert loaded.get_layer("block").get_config() == block.get_config()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_look_ahead_never_sees_the_future(norm_first, with_padding):
    block = _block(norm_first=norm_first)
    padding = np.ones((BATCH, T), bool) if not with_padding else _padding()
    kwargs = {"use_causal_mask": True}
    if with_padding:
        kwargs["padding_mask"] = padding
    x = _x(1)
    base, scores = block(x, return_attention_scores=True, **kwargs)
    base, scores = np.asarray(base), np.asarray(scores)
    # Scores above the diagonal are exactly zero.
    upper = np.triu(np.ones((T, T), bool), 1)
    assert np.all(scores[:, :, upper] == 0.0)
    rng = np.random.default_rng(2)
    for t in range(T - 1):
        changed = x.copy()
        changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape) * 5
        out = np.asarray(block(changed, **kwargs))
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=0)
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])  # the test can fail


def test_padded_steps_do_not_influence_real_steps():
    block = _block()
    padding = _padding()
    x = _x(3)
    base, scores = block(x, padding_mask=padding, return_attention_scores=True)
    base, scores = np.asarray(base), np.asarray(scores)
    # No attention to padded keys; padded query rows have all-zero scores.
    assert np.all(scores[0, :, :, 4:] == 0) and np.all(scores[0, :, 4:, :] == 0) and np.all(scores[1] == 0)
    np.testing.assert_allclose(scores[0, :, :4, :4].sum(-1), 1.0, atol=1e-5)
    changed = x.copy()
    changed[0, 4:] = 100.0
    changed[1] = -7.0
    out = np.asarray(block(changed, padding_mask=padding))
    np.testing.assert_allclose(out[0, :4], base[0, :4], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[2], base[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch,heads", [(1, 1), (BATCH, HEADS), (5, 2)])
def test_masks_combine_for_any_batch_and_heads(batch, heads):
    block = TransformerEncoderBlock(num_heads=heads, key_dim=KEY_DIM, ff_dim=FF)
    padding = np.ones((batch, T), bool)
    padding[-1, 3:] = False
    out, scores = block(_x(4, batch=batch), padding_mask=padding, use_causal_mask=True, return_attention_scores=True)
    assert out.shape == (batch, T, D) and scores.shape == (batch, heads, T, T)
    expected = padding[:, :, None] & padding[:, None, :] & np.tril(np.ones((T, T), bool))
    scores = np.asarray(scores)
    assert np.all(scores[np.broadcast_to(~expected[:, None], scores.shape)] == 0)
    np.testing.assert_allclose(scores[-1, :, :3].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_fully_masked_rows_give_zero_attention_and_finite_gradients(norm_first):
    block = _block(norm_first=norm_first)
    padding = _padding()
    x = tf.constant(_x(5))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out, scores = block(x, padding_mask=padding, use_causal_mask=True, return_attention_scores=True)
        loss = tf.reduce_sum(out**2) + tf.reduce_sum(scores)
    grads = tape.gradient(loss, [x] + block.trainable_variables)
    assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(scores)).all()
    assert all(g is not None and np.isfinite(np.asarray(g)).all() for g in grads)
    # The attention contribution of an empty row is exactly zero: the block reduces to the
    # residual path plus the feed-forward network there.
    row = np.asarray(x)[1:2]
    if norm_first:
        h = row
        expected = h + np.asarray(block._ffn_output(block._ffn_intermediate(block._ffn_norm(h))))
    else:
        h = np.asarray(block._attention_norm(row))
        expected = np.asarray(block._ffn_norm(h + np.asarray(block._ffn_output(block._ffn_intermediate(h)))))
    np.testing.assert_allclose(np.asarray(out)[1:2], expected, atol=1e-5)


def test_dropout_only_in_training():
    block = _block(dropout=0.3)
    x = _x(6)
    np.testing.assert_array_equal(np.asarray(block(x, training=False)), np.asarray(block(x, training=False)))
    assert not np.allclose(np.asarray(block(x, training=True)), np.asarray(block(x, training=False)))


@pytest.mark.parametrize(
    "kwargs,field",
    [({"num_heads": 0}, "num_heads"), ({"key_dim": 2.5}, "key_dim"), ({"dropout": 1.0}, "dropout"),
     ({"activation": "softplus"}, "activation")],
)
def test_invalid_arguments_are_named(kwargs, field):
    params = dict(num_heads=HEADS, key_dim=KEY_DIM, ff_dim=FF)
    params.update(kwargs)
    with pytest.raises(ValueError, match=field):
        TransformerEncoderBlock(**params)
