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
    axis. Attention uses ``keras.layers.MultiHeadAttention`` with one combined boolean mask
    ``(batch, T, T)`` shared by all heads (see :func:`regimetry.layers.masks.merge_masks`).

    Masking: padded steps are masked as keys and as queries. A query row left with nothing to attend
    to (a padded step, or a fully padded window) gets an attention output of exactly zero and
    attention scores of exactly zero, never NaN, and so does its gradient (Keras' masked softmax would
    give a uniform row there; this layer zeroes such rows of the attention output and the scores).
    Scores of masked keys (e.g. above the diagonal under the look-ahead mask) are exactly 0.

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
        self._self_attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            dropout=self.dropout,
            name="self_attention",
            **self._dense_kwargs(),
        )
        self._self_attention.build(inputs_shape, inputs_shape)
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
        mask = None
        native_causal = False
        if padding_mask is None and attention_mask is None and use_causal_mask:
            # Causal only: every row sees at least itself, so MultiHeadAttention's own (fused,
            # when possible) causal path is exact and no row needs zeroing.
            native_causal = True
        else:
            mask = merge_masks(inputs, padding_mask, use_causal_mask, attention_mask)

        x = inputs
        residual = x
        if self.norm_first:
            x = self._attention_norm(x)
        if native_causal:
            attended = self._self_attention(
                x, x, use_causal_mask=True, training=training, return_attention_scores=return_attention_scores
            )
        else:
            attended = self._self_attention(
                x, x, attention_mask=mask, training=training, return_attention_scores=return_attention_scores
            )
        scores = None
        if return_attention_scores:
            attended, scores = attended
        if mask is not None:
            # Rows with nothing to attend to: zero (Keras' masked softmax leaves them uniform).
            row_valid = ops.any(mask, axis=-1)  # (batch, T)
            attended = ops.where(ops.expand_dims(row_valid, -1), attended, ops.zeros_like(attended))
            if scores is not None:
                scores = ops.where(
                    ops.expand_dims(ops.expand_dims(row_valid, 1), -1), scores, ops.zeros_like(scores)
                )
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
