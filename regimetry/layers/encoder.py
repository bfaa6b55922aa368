"""One Transformer encoder block (self-attention + feed-forward), post- or pre-layer-norm."""

from __future__ import annotations

import keras
from keras import ops

from regimetry.layers.masks import merge_masks

__all__ = ["TransformerEncoderBlock"]

ACTIVATIONS = ("gelu", "relu", "swish", "tanh")


@keras.saving.register_keras_serializable(package="regimetry")
class TransformerEncoderBlock(keras.layers.Layer):
    """A Transformer encoder block: multi-head self-attention, then a position-wise MLP.

    Post-norm (``norm_first=False``, the paper)::

        x = LayerNorm(x + Dropout(MHA(x)));  x = LayerNorm(x + Dropout(FFN(x)))

    Pre-norm (``norm_first=True``, Xiong et al. 2020)::

        x = x + Dropout(MHA(LayerNorm(x)));  x = x + Dropout(FFN(LayerNorm(x)))

    with ``FFN(x) = Dense(d_model)(activation(Dense(ff_dim)(x)))``. ``d_model`` is the input's last
    axis. ``MHA`` is scaled dot-product attention, ``softmax(Q K^T / sqrt(key_dim) + B) V`` per head,
    the computation of ``keras.layers.MultiHeadAttention`` (sublayers ``query``, ``key``, ``value``,
    ``attention_output``: ``EinsumDense``), written out so that the combined boolean mask
    ``(batch, T, T)`` (see :func:`regimetry.layers.masks.merge_masks`) becomes one additive bias
    ``B`` shared by all heads, with no per-head mask work.

    Masking: padded steps are masked as keys and as queries. A query row left with nothing to attend
    to (a padded step, or a fully padded window) gets an attention output of exactly zero and
    attention scores of exactly zero, never NaN, and so does its gradient (a plain masked softmax
    would give a uniform row there; this layer zeroes such rows of the attention output and the
    scores). Scores of masked keys (e.g. above the diagonal under the look-ahead mask) are exactly 0.

    Args:
        num_heads: int >= 1, attention heads.
        key_dim: int >= 1, size of each head's queries, keys and values.
        ff_dim: int >= 1, hidden units of the feed-forward network.
        dropout: float in ``[0, 1)``, rate on the attention weights and on both residual branches.
            Default 0.
        norm_first: bool, pre-layer-norm block when True, post-norm (the paper) when False.
        activation: feed-forward activation, one of ``gelu`` (exact erf form), ``relu``, ``swish``,
            ``tanh``. Default ``"gelu"``.
        layer_norm_epsilon: float > 0, epsilon of both layer norms. Default 1e-5.
        kernel_initializer: initializer of the dense kernels. Default ``"glorot_uniform"``.
        bias_initializer: initializer of the biases. Default ``"zeros"``.

    Call arguments:
        inputs: float tensor ``(batch, T, d_model)``.
        padding_mask: optional boolean ``(batch, T)``, True = a real step.
        use_causal_mask: bool, add the look-ahead mask (step t attends to steps <= t only).
        training: bool, dropout on/off.
        return_attention_scores: bool, also return the attention weights.
        attention_mask: optional precomputed boolean ``(batch, T, T)`` mask (True = may attend),
            combined by logical AND with the two above. The model builds it once per forward pass
            (:class:`regimetry.layers.AttentionMask`) and passes it to every block.

    Returns:
        ``(batch, T, d_model)`` tensor, or ``(output, scores)`` with ``scores`` float
        ``(batch, num_heads, T, T)`` (softmax weights before dropout; rows sum to 1, or to 0 for a
        row with nothing to attend to) when ``return_attention_scores=True``.

    Raises:
        ValueError: an argument out of range (at construction) or inputs that are not 3-D (at build).

    References:
        Vaswani et al. (2017), "Attention Is All You Need", Section 3.1-3.3; Xiong et al. (2020),
        "On Layer Normalization in the Transformer Architecture" (pre-norm).
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        ff_dim,
        dropout=0.0,
        norm_first=False,
        activation="gelu",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for field, value in (("num_heads", num_heads), ("key_dim", key_dim), ("ff_dim", ff_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerEncoderBlock.{field}: must be a positive integer, got {value!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"TransformerEncoderBlock.dropout: must lie in [0, 1), got {dropout!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"TransformerEncoderBlock.activation: expected one of {list(ACTIVATIONS)}, got {activation!r}"
            )
        if not layer_norm_epsilon > 0:
            raise ValueError(f"TransformerEncoderBlock.layer_norm_epsilon: must be > 0, got {layer_norm_epsilon!r}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.ff_dim = ff_dim
        self.dropout = float(dropout)
        self.norm_first = bool(norm_first)
        self.activation = activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _dense_kwargs(self):
        return {
            "kernel_initializer": keras.initializers.get(keras.initializers.serialize(self.kernel_initializer)),
            "bias_initializer": keras.initializers.get(keras.initializers.serialize(self.bias_initializer)),
            "dtype": self.dtype_policy,
        }

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                f"TransformerEncoderBlock expects (batch, T, d_model) inputs with a known d_model, got shape "
                f"{tuple(inputs_shape)}"
            )
        d_model = int(inputs_shape[-1])
        heads, key_dim = self.num_heads, self.key_dim
        # Multi-head attention projections (the maths of keras.layers.MultiHeadAttention, with the
        # masking done once per block as an additive bias; see call()).
        self._query = keras.layers.EinsumDense(
            "btd,dnh->btnh", output_shape=(None, heads, key_dim), bias_axes="nh", name="query", **self._dense_kwargs()
        )
        self._key = keras.layers.EinsumDense(
            "btd,dnh->btnh", output_shape=(None, heads, key_dim), bias_axes="nh", name="key", **self._dense_kwargs()
        )
        self._value = keras.layers.EinsumDense(
            "btd,dnh->btnh", output_shape=(None, heads, key_dim), bias_axes="nh", name="value", **self._dense_kwargs()
        )
        for projection in (self._query, self._key, self._value):
            projection.build(inputs_shape)
        self._attention_output = keras.layers.EinsumDense(
            "btnh,nhd->btd", output_shape=(None, d_model), bias_axes="d", name="attention_output",
            **self._dense_kwargs(),
        )
        self._attention_output.build(tuple(inputs_shape[:2]) + (heads, key_dim))
        self._attention_weights_dropout = keras.layers.Dropout(
            self.dropout, name="attention_weights_dropout", dtype=self.dtype_policy
        )
        self._attention_dropout = keras.layers.Dropout(self.dropout, name="attention_dropout", dtype=self.dtype_policy)
        self._attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="attention_norm", dtype=self.dtype_policy
        )
        self._attention_norm.build(inputs_shape)
        self._ffn_intermediate = keras.layers.Dense(
            self.ff_dim, activation=self.activation, name="ffn_intermediate", **self._dense_kwargs()
        )
        self._ffn_intermediate.build(inputs_shape)
        self._ffn_output = keras.layers.Dense(d_model, name="ffn_output", **self._dense_kwargs())
        self._ffn_output.build(tuple(inputs_shape[:-1]) + (self.ff_dim,))
        self._ffn_dropout = keras.layers.Dropout(self.dropout, name="ffn_dropout", dtype=self.dtype_policy)
        self._ffn_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="ffn_norm", dtype=self.dtype_policy
        )
        self._ffn_norm.build(inputs_shape)

    def call(
        self,
        inputs,
        padding_mask=None,
        use_causal_mask=False,
        training=None,
        return_attention_scores=False,
        attention_mask=None,
    ):
        mask = merge_masks(inputs, padding_mask, use_causal_mask, attention_mask)

        x = inputs
        residual = x
        if self.norm_first:
            x = self._attention_norm(x)
        attended, scores, row_valid = self._attend(x, mask, training)
        if return_attention_scores and row_valid is not None:
            scores = scores * ops.expand_dims(row_valid, 1)  # empty rows: zeros, not a uniform row
        x = residual + self._attention_dropout(attended, training=training)
        if not self.norm_first:
            x = self._attention_norm(x)

        residual = x
        if self.norm_first:
            x = self._ffn_norm(x)
        x = self._ffn_output(self._ffn_intermediate(x))
        x = residual + self._ffn_dropout(x, training=training)
        if not self.norm_first:
            x = self._ffn_norm(x)

        if return_attention_scores:
            return x, scores
        return x

    def _attend(self, x, mask, training):
        """Scaled dot-product attention over all heads at once.

        Returns ``(output (batch, T, d_model), weights (batch, heads, T, T), row_valid)``, where
        ``row_valid`` is ``(batch, T, 1)`` (1 = the query row has a key to attend to) or ``None``
        without a mask. ``output`` is already zero on empty rows; ``weights`` are not.
        """
        query = self._query(x) * ops.cast(1.0 / (self.key_dim**0.5), x.dtype)  # (batch, T, heads, key_dim)
        key = self._key(x)
        value = self._value(x)
        logits = ops.einsum("btnh,bsnh->bnts", query, key)  # (batch, heads, T, T)
        row_valid = None
        if mask is not None:
            # One additive bias for every head: 0 where allowed, a large negative number where not,
            # so masked weights are exactly 0 after the softmax.
            large_negative = -3.0e4 if keras.backend.standardize_dtype(logits.dtype) == "float16" else -1.0e9
            bias = ops.where(mask, ops.zeros((), logits.dtype), ops.full((), large_negative, logits.dtype))
            logits = logits + ops.expand_dims(bias, 1)
            # Rows with nothing to attend to would get a uniform softmax: zero them instead.
            row_valid = ops.cast(ops.any(mask, axis=-1, keepdims=True), x.dtype)  # (batch, T, 1)
        weights = ops.softmax(logits, axis=-1)
        context = ops.einsum(
            "bnts,bsnh->btnh", self._attention_weights_dropout(weights, training=training), value
        )
        output = self._attention_output(context)
        if row_valid is not None:
            output = output * row_valid
        return output, weights, row_valid

    def compute_output_spec(self, inputs, padding_mask=None, use_causal_mask=False, training=None,
                            return_attention_scores=False, attention_mask=None):
        # Shapes are known without tracing the call (keeps building and loading models fast).
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        batch, length = inputs.shape[0], inputs.shape[1]
        return output, keras.KerasTensor((batch, self.num_heads, length, length), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "ff_dim": self.ff_dim,
                "dropout": self.dropout,
                "norm_first": self.norm_first,
                "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
