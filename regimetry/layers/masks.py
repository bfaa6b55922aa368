"""Padding and look-ahead masks for the encoder, built with ``keras.ops`` once per forward pass.

Conventions (shared by every layer of :mod:`regimetry.layers`):

* ``padding_mask`` is a boolean ``(batch, T)`` tensor, ``True`` = a real step, ``False`` = padding.
* an attention mask is a boolean ``(batch, T, T)`` tensor, ``mask[b, q, k] = True`` when query step
  ``q`` may attend to key step ``k``. It broadcasts over the heads; it is never tiled per head.
* the look-ahead (causal) mask lets step ``t`` attend to steps ``<= t`` only.

The model builds the combined mask once (:class:`AttentionMask`) and hands the same tensor to every
encoder block, so no block or head rebuilds it.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["AttentionMask", "NanPaddingMask", "causal_mask", "merge_masks"]


def causal_mask(query_length, key_length=None):
    """Look-ahead mask: ``mask[0, q, k] = (k <= q)``.

    Args:
        query_length: number of query steps ``T`` (Python int or scalar tensor).
        key_length: number of key steps ``S``; ``None`` means ``query_length``.

    Returns:
        Boolean tensor ``(1, T, S)``; broadcasts over the batch.
    """
    key_length = query_length if key_length is None else key_length
    rows = ops.expand_dims(ops.arange(query_length, dtype="int32"), 1)
    cols = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
    return ops.expand_dims(ops.greater_equal(rows, cols), 0)


def merge_masks(inputs, padding_mask=None, use_causal_mask=False, attention_mask=None):
    """Combine a padding mask, the look-ahead mask and an explicit attention mask into one.

    Padded steps are masked both as keys (nobody attends to them) and as queries (their rows are
    empty, so the encoder block zeroes them). Works for any batch size; the result has no head axis.

    Args:
        inputs: the sequence ``(batch, T, d)``; only its batch size and ``T`` are read.
        padding_mask: optional boolean ``(batch, T)``, True = real step.
        use_causal_mask: add the look-ahead mask (step t attends to steps <= t).
        attention_mask: optional boolean ``(batch, T, T)`` (or broadcastable) extra mask.

    Returns:
        Boolean ``(batch, T, T)`` tensor, or ``None`` when no mask was asked for.
    """
    mask = None
    if attention_mask is not None:
        mask = ops.cast(attention_mask, "bool")
    if padding_mask is not None:
        padding_mask = ops.cast(padding_mask, "bool")
        pair = ops.logical_and(ops.expand_dims(padding_mask, 2), ops.expand_dims(padding_mask, 1))
        mask = pair if mask is None else ops.logical_and(mask, pair)
    if use_causal_mask:
        length = ops.shape(inputs)[1]
        causal = causal_mask(length)
        mask = causal if mask is None else ops.logical_and(mask, causal)
    if mask is not None and (mask.shape[0] == 1 or len(mask.shape) < 3):
        shape = ops.shape(inputs)
        mask = ops.broadcast_to(mask, (shape[0], shape[1], shape[1]))
    return mask


@keras.saving.register_keras_serializable(package="regimetry")
class NanPaddingMask(keras.layers.Layer):
    """Turn NaN-padded steps into a padding mask and replace NaN by 0.

    A step whose features are *all* NaN is padding; every other step is real. NaN values are then
    replaced by 0 so that nothing non-finite reaches the input projection. (A step with only some
    NaN features is a data error, not padding: :func:`regimetry.models.check_windows` rejects it
    before prediction; inside the graph its NaN features are zeroed, never propagated.)

    This is how one model takes both fixed windows (no NaN: every step real) and variable-length
    windows padded with :func:`regimetry.models.pad_windows`.

    Call arguments:
        inputs: float tensor ``(batch, T, num_features)``.

    Returns:
        ``(values, padding_mask)``: ``values`` float ``(batch, T, num_features)`` with NaN -> 0, and
        ``padding_mask`` boolean ``(batch, T)``, True = a real step.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, inputs):
        is_nan = ops.isnan(inputs)
        padding_mask = ops.logical_not(ops.all(is_nan, axis=-1))
        # A scalar zero, not zeros_like: at wide inputs (1,705 features) the full zero tensor halved the
        # training rate (benchmarks/README.md, "Width"); the values are the same.
        values = ops.where(is_nan, ops.cast(0.0, inputs.dtype), inputs)
        return values, padding_mask

    def compute_output_spec(self, inputs):
        return (keras.KerasTensor(inputs.shape, dtype=inputs.dtype),
                keras.KerasTensor(inputs.shape[:2], dtype="bool"))


@keras.saving.register_keras_serializable(package="regimetry")
class AttentionMask(keras.layers.Layer):
    """Build the combined ``(batch, T, T)`` attention mask once, for all encoder blocks and heads.

    Args:
        use_causal_mask: bool, add the look-ahead mask (step t attends to steps <= t only).
            Default ``False``.

    Call arguments:
        inputs: the sequence ``(batch, T, d_model)`` (for its batch size and length).
        padding_mask: optional boolean ``(batch, T)``, True = real step.

    Returns:
        Boolean ``(batch, T, T)``; ``mask[b, q, k]`` is True when query ``q`` may attend to key
        ``k``. All True when there is neither padding nor a look-ahead mask.
    """

    def __init__(self, use_causal_mask=False, **kwargs):
        super().__init__(**kwargs)
        self.use_causal_mask = bool(use_causal_mask)

    def call(self, inputs, padding_mask=None):
        mask = merge_masks(inputs, padding_mask=padding_mask, use_causal_mask=self.use_causal_mask)
        if mask is None:
            shape = ops.shape(inputs)
            mask = ops.ones((shape[0], shape[1], shape[1]), dtype="bool")
        return mask

    def compute_output_spec(self, inputs, padding_mask=None):
        return keras.KerasTensor((inputs.shape[0], inputs.shape[1], inputs.shape[1]), dtype="bool")

    def get_config(self):
        config = super().get_config()
        config.update({"use_causal_mask": self.use_causal_mask})
        return config
