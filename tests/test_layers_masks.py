"""Mask helpers: look-ahead mask, padding x look-ahead combination, NaN padding detection."""

from __future__ import annotations

import numpy as np
import pytest

import keras

from regimetry.layers import AttentionMask, NanPaddingMask, causal_mask, merge_masks

BATCH, T, F, D = 3, 6, 7, 16


def _padding():
    mask = np.ones((BATCH, T), bool)
    mask[0, 4:] = False  # two padded steps at the end
    mask[1, :] = False  # a fully padded window
    return mask


def test_causal_mask_is_lower_triangular():
    mask = np.asarray(causal_mask(T))
    assert mask.shape == (1, T, T)
    np.testing.assert_array_equal(mask[0], np.tril(np.ones((T, T), bool)))
    rect = np.asarray(causal_mask(4, T))
    assert rect.shape == (1, 4, T)
    np.testing.assert_array_equal(rect[0], np.tril(np.ones((4, T), bool)))


@pytest.mark.parametrize("batch", [1, BATCH, 5])
def test_merge_padding_and_causal_any_batch(batch):
    x = np.zeros((batch, T, D), "float32")
    padding = np.ones((batch, T), bool)
    padding[0, 3:] = False
    merged = np.asarray(merge_masks(x, padding_mask=padding, use_causal_mask=True))
    assert merged.shape == (batch, T, T)
    expected = padding[:, :, None] & padding[:, None, :] & np.tril(np.ones((T, T), bool))[None]
    np.testing.assert_array_equal(merged, expected)
    only_causal = np.asarray(merge_masks(x, use_causal_mask=True))
    assert only_causal.shape == (batch, T, T)
    assert merge_masks(x) is None


def test_merge_with_explicit_attention_mask():
    x = np.zeros((BATCH, T, D), "float32")
    extra = np.random.default_rng(0).random((BATCH, T, T)) > 0.3
    merged = np.asarray(merge_masks(x, padding_mask=_padding(), use_causal_mask=False, attention_mask=extra))
    pad = _padding()
    np.testing.assert_array_equal(merged, extra & pad[:, :, None] & pad[:, None, :])


def test_nan_padding_mask():
    x = np.random.default_rng(1).normal(size=(BATCH, T, F)).astype("float32")
    x[0, 4:] = np.nan  # padded steps
    x[2, 1, 3] = np.nan  # one missing feature: still a real step, value zeroed
    values, padding = NanPaddingMask()(x)
    values, padding = np.asarray(values), np.asarray(padding)
    assert values.shape == (BATCH, T, F) and padding.shape == (BATCH, T) and padding.dtype == bool
    expected = np.ones((BATCH, T), bool)
    expected[0, 4:] = False
    np.testing.assert_array_equal(padding, expected)
    assert np.isfinite(values).all()
    assert values[2, 1, 3] == 0 and values[0, 5, 0] == 0
    np.testing.assert_array_equal(values[1], x[1])


@pytest.mark.parametrize("causal", [False, True])
def test_attention_mask_layer(causal, tmp_path):
    layer = AttentionMask(use_causal_mask=causal)
    x = np.zeros((BATCH, T, D), "float32")
    out = np.asarray(layer(x, padding_mask=_padding()))
    assert out.shape == (BATCH, T, T) and out.dtype == bool
    tri = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
    np.testing.assert_array_equal(out, _padding()[:, :, None] & _padding()[:, None, :] & tri)
    unpadded = np.asarray(layer(x))
    np.testing.assert_array_equal(unpadded, np.broadcast_to(tri, (BATCH, T, T)))
    # Config round trip and .keras save/load inside a model.
    assert AttentionMask.from_config(layer.get_config()).get_config() == layer.get_config()
    inputs = keras.Input(shape=(T, F))
    values, padding = NanPaddingMask(name="nan")(inputs)
    model = keras.Model(inputs, layer(values, padding_mask=padding))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    windows = np.ones((BATCH, T, F), "float32")
    windows[0, 4:] = np.nan
    np.testing.assert_array_equal(np.asarray(model(windows)), np.asarray(loaded(windows)))
    assert loaded.layers[-1].get_config()["use_causal_mask"] is causal
