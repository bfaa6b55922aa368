"""Pool a ``(batch, T, d_model)`` sequence into one ``(batch, d_model)`` vector, and the CLS token."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ClsToken", "SequencePooling"]

POOLING_MODES = ("mean", "max", "cls", "last", "attention")
POSITIONS = ("first", "last")


def _check_position(cls_name: str, field: str, value: str) -> str:
    if value not in POSITIONS:
        raise ValueError(f"{cls_name}.{field}: expected one of {list(POSITIONS)}, got {value!r}")
    return value


@keras.saving.register_keras_serializable(package="regimetry")
class ClsToken(keras.layers.Layer):
    """Add a learnable CLS token to the sequence and extend the padding mask.

    The token is a trainable ``(1, 1, d_model)`` weight (named ``token``), the same for every window;
    ``SequencePooling(mode="cls")`` reads the encoder's output at its position. It is added after the
    positional encoding, so it carries no position.

    Placement: ``"first"`` prepends it (BERT / ViT). Under a look-ahead (causal) mask a token placed
    first attends to nothing but itself, so :func:`regimetry.models.build_classifier` places it
    ``"last"`` (after every step, padded ones included) when ``attention_mask="causal"``: it then
    sees every real step of the window.

    Args:
        position: ``"first"`` or ``"last"``. Default ``"first"``.
        initializer: initializer of the token. Default ``TruncatedNormal(stddev=0.02)`` (BERT / ViT).

    Call arguments:
        inputs: float tensor ``(batch, T, d_model)``.
        padding_mask: optional boolean ``(batch, T)``, True = a real step.

    Returns:
        ``(batch, T + 1, d_model)`` tensor; with a ``padding_mask``, the tuple ``(sequence,
        padding_mask)`` whose mask is ``(batch, T + 1)`` with True at the token.

    Raises:
        ValueError: an unknown ``position``; inputs that are not 3-D.

    References:
        Devlin et al. (2019), BERT; Dosovitskiy et al. (2021), ViT (class token).
    """

    def __init__(self, position="first", initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.position = _check_position("ClsToken", "position", position)
        if initializer is None:
            initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.initializer = keras.initializers.get(initializer)

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(f"ClsToken expects (batch, T, d_model) inputs, got shape {tuple(inputs_shape)}")
        self.token = self.add_weight(
            shape=(1, 1, int(inputs_shape[-1])), initializer=self.initializer, trainable=True, name="token"
        )

    def call(self, inputs, padding_mask=None):
        batch = ops.shape(inputs)[0]
        token = ops.broadcast_to(ops.cast(self.token, inputs.dtype), (batch, 1, ops.shape(self.token)[-1]))
        parts = [token, inputs] if self.position == "first" else [inputs, token]
        outputs = ops.concatenate(parts, axis=1)
        if padding_mask is None:
            return outputs
        real = ops.ones((batch, 1), dtype="bool")
        mask_parts = [real, ops.cast(padding_mask, "bool")]
        if self.position == "last":
            mask_parts = mask_parts[::-1]
        return outputs, ops.concatenate(mask_parts, axis=1)

    def compute_output_spec(self, inputs, padding_mask=None):
        batch, length, depth = inputs.shape
        outputs = keras.KerasTensor((batch, None if length is None else length + 1, depth), dtype=self.compute_dtype)
        if padding_mask is None:
            return outputs
        return outputs, keras.KerasTensor((batch, outputs.shape[1]), dtype="bool")

    def get_config(self):
        config = super().get_config()
        config.update({"position": self.position, "initializer": keras.initializers.serialize(self.initializer)})
        return config


@keras.saving.register_keras_serializable(package="regimetry")
class SequencePooling(keras.layers.Layer):
    """Reduce the time axis of the encoder's output, ignoring padded steps.

    Modes:
        * ``mean``: average over the real steps.
        * ``max``: channel-wise maximum over the real steps.
        * ``last``: the last real step (the highest index whose mask is True).
        * ``cls``: the step holding the CLS token (index 0 for ``cls_position="first"``, the last
          index for ``"last"``); see :class:`ClsToken`.
        * ``attention``: learned attention pooling, ``softmax_t(w . h_t)`` over the real steps, then
          the weighted sum of the ``h_t`` (SeqPool of Hassani et al., 2021). Its scoring weight is
          the sublayer ``attention_logits`` (``Dense(1)`` without bias).

    A window with no real step at all pools to a vector of zeros (never NaN) in every mode except
    ``cls``, which always reads the token. Values at padded steps never reach the output (even
    NaN or inf values).

    Args:
        mode: one of ``mean``, ``max``, ``cls``, ``last``, ``attention``. Default ``"mean"``.
        cls_position: where the CLS token sits for ``mode="cls"``: ``"first"`` or ``"last"``.

    Call arguments:
        inputs: float tensor ``(batch, T, d_model)``.
        padding_mask: optional boolean ``(batch, T)``, True = a real step; ``None`` = all real.

    Returns:
        Float tensor ``(batch, d_model)``.

    Raises:
        ValueError: an unknown ``mode`` or ``cls_position``; inputs that are not 3-D.

    References:
        Hassani et al. (2021), "Escaping the Big Data Paradigm with Compact Transformers" (SeqPool);
        Devlin et al. (2019), BERT (CLS pooling).
    """

    def __init__(self, mode="mean", cls_position="first", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"SequencePooling.mode: expected one of {list(POOLING_MODES)}, got {mode!r}")
        self.mode = mode
        self.cls_position = _check_position("SequencePooling", "cls_position", cls_position)

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(f"SequencePooling expects (batch, T, d_model) inputs, got shape {tuple(inputs_shape)}")
        if self.mode == "attention":
            self._attention_logits = keras.layers.Dense(
                1, use_bias=False, name="attention_logits", dtype=self.dtype_policy
            )
            self._attention_logits.build(inputs_shape)

    def call(self, inputs, padding_mask=None):
        if self.mode == "cls":
            return inputs[:, 0, :] if self.cls_position == "first" else inputs[:, -1, :]
        if padding_mask is None:
            return self._pool_unmasked(inputs)
        mask = ops.cast(padding_mask, "bool")
        mask3 = ops.expand_dims(mask, -1)  # (batch, T, 1)
        zeros = ops.zeros_like(inputs)
        any_real = ops.any(mask, axis=1, keepdims=True)  # (batch, 1)
        if self.mode == "mean":
            total = ops.sum(ops.where(mask3, inputs, zeros), axis=1)
            count = ops.sum(ops.cast(mask, inputs.dtype), axis=1, keepdims=True)
            return total / ops.maximum(count, ops.ones_like(count))
        if self.mode == "max":
            lowest = ops.full_like(inputs, -6.0e4 if keras.backend.standardize_dtype(inputs.dtype) == "float16" else -3.0e38)
            pooled = ops.max(ops.where(mask3, inputs, lowest), axis=1)
            return ops.where(any_real, pooled, ops.zeros_like(pooled))
        if self.mode == "last":
            steps = ops.arange(ops.shape(inputs)[1], dtype="int32")
            last = ops.max(ops.where(mask, ops.expand_dims(steps, 0), ops.zeros_like(mask, dtype="int32")), axis=1)
            # A select-and-sum rather than take_along_axis: the same values, and no int64 gather, which
            # TensorFlow's oneDNN build logs as an error on CPUs without AVX-512.
            chosen = ops.expand_dims(ops.equal(ops.expand_dims(steps, 0), ops.expand_dims(last, 1)), -1)
            picked = ops.sum(ops.where(chosen, inputs, zeros), axis=1)
            return ops.where(any_real, picked, ops.zeros_like(picked))
        # attention: a softmax restricted to the real steps, zero weights when there is none.
        logits = ops.squeeze(self._attention_logits(ops.where(mask3, inputs, zeros)), -1)  # (batch, T)
        logits = ops.where(mask, logits, ops.full_like(logits, -1.0e9))
        logits = logits - ops.max(logits, axis=1, keepdims=True)
        weights = ops.where(mask, ops.exp(logits), ops.zeros_like(logits))
        weights = weights / ops.maximum(ops.sum(weights, axis=1, keepdims=True), ops.full_like(logits[:, :1], 1e-30))
        return ops.sum(ops.expand_dims(weights, -1) * ops.where(mask3, inputs, zeros), axis=1)

    def compute_output_spec(self, inputs, padding_mask=None):
        return keras.KerasTensor((inputs.shape[0], inputs.shape[-1]), dtype=self.compute_dtype)

    def _pool_unmasked(self, inputs):
        if self.mode == "mean":
            return ops.mean(inputs, axis=1)
        if self.mode == "max":
            return ops.max(inputs, axis=1)
        if self.mode == "last":
            return inputs[:, -1, :]
        logits = ops.squeeze(self._attention_logits(inputs), -1)
        weights = ops.exp(logits - ops.max(logits, axis=1, keepdims=True))
        weights = weights / ops.sum(weights, axis=1, keepdims=True)  # a softmax; fine for T = 1 too
        return ops.sum(ops.expand_dims(weights, -1) * inputs, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "cls_position": self.cls_position})
        return config
