"""Input-side layers: per-window centering (level-free encoder inputs) and a fixed feature selection.

``WindowCentering`` subtracts each window's own mean of every feature, over its real steps, so the
encoder sees the window's shape (deviations from its own level) and never the level itself. This is
the normalisation half of RevIN (Kim et al. 2022, "Reversible instance normalization for accurate
time-series forecasting against distribution shift", ICLR), applied to a classifier: with a linear
shortcut carrying the levels (``regimetry.models``), the nonlinear encoder cannot extrapolate a level
it never saw in training (e.g. the record-low volatility of 2004-2006 after a 1999-2003 training
period); only the linear part, which extrapolates monotonically as HAR-RV does, sees it.

``FeatureSelect`` keeps fixed feature columns (e.g. the HAR log realized-volatility lags for the
shortcut).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="regimetry")
class WindowCentering(keras.layers.Layer):
    """Subtract each window's per-feature mean over its real steps (padding stays 0).

    Call arguments:
        inputs: float tensor ``(batch, T, num_features)`` without NaN (after ``NanPaddingMask``).
        padding_mask: optional boolean ``(batch, T)``, True = a real step; ``None`` = all real.

    Returns:
        float tensor ``(batch, T, num_features)``: ``x[b, t] - mean_{real s} x[b, s]`` on real steps,
        0 on padded steps. A window with no real step stays 0.
    """

    def call(self, inputs, padding_mask=None):
        if padding_mask is None:
            return inputs - ops.mean(inputs, axis=1, keepdims=True)
        real = ops.cast(ops.expand_dims(padding_mask, -1), inputs.dtype)
        count = ops.maximum(ops.sum(real, axis=1, keepdims=True), 1.0)
        mean = ops.sum(inputs * real, axis=1, keepdims=True) / count
        return (inputs - mean) * real

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="regimetry")
class FeatureSelect(keras.layers.Layer):
    """Keep the feature columns ``indices`` (in that order) of the last axis.

    Args:
        indices: non-empty sequence of distinct non-negative column indices.

    Call arguments:
        inputs: tensor ``(..., num_features)``.

    Returns:
        tensor ``(..., len(indices))``.

    Raises:
        ValueError: empty, negative or repeated indices.
    """

    def __init__(self, indices, **kwargs):
        super().__init__(**kwargs)
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
            raise ValueError(f"FeatureSelect: indices must be distinct non-negative integers, got {indices}")
        self.indices = tuple(indices)

    def call(self, inputs):
        return ops.take(inputs, list(self.indices), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.indices))

    def get_config(self):
        return {**super().get_config(), "indices": list(self.indices)}
