"""Positional encodings added to a ``(batch, T, d_model)`` sequence: sinusoidal or learnable.

The third arm of the encoding ablation, ``positional_encoding="none"``, is the absence of a layer
(:func:`regimetry.models.build_classifier` adds nothing), not a layer that adds zeros.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

__all__ = ["LearnablePositionalEmbedding", "SinusoidalPositionalEncoding", "sinusoidal_table"]

STYLES = ("interleaved", "stacked")


def _channel_layout(depth: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel frequency index ``i`` and whether the channel is a cosine, for both styles."""
    channel = np.arange(depth)
    pair = channel // 2  # the i of PE(pos, 2i) / PE(pos, 2i + 1)
    is_cos = channel % 2 == 1
    if style == "stacked":
        # The same channels reordered: every sine (even channel) first, then every cosine.
        order = np.concatenate([channel[~is_cos], channel[is_cos]])
        pair, is_cos = pair[order], is_cos[order]
    return pair, is_cos


def sinusoidal_table(length, depth: int, max_wavelength: float = 10000.0, style: str = "interleaved",
                     dtype="float32"):
    """The sinusoidal position table of Vaswani et al. (2017), Section 3.5, as a tensor.

    ``interleaved``: ``PE(pos, 2i) = sin(pos / max_wavelength^(2i/depth))`` and
    ``PE(pos, 2i+1) = cos(pos / max_wavelength^(2i/depth))``, the paper's equation.
    ``stacked``: the same ``ceil(depth/2)`` sines in channels ``0 .. ceil(depth/2)-1`` followed by
    the ``floor(depth/2)`` cosines, i.e. ``PE(pos, i) = sin(pos / w^(2i/depth))`` for
    ``i < ceil(depth/2)`` and ``PE(pos, ceil(depth/2) + i) = cos(pos / w^(2i/depth))`` for
    ``i < floor(depth/2)`` (a fixed permutation of the interleaved channels).

    An odd ``depth`` is fine: the last frequency then has its sine but no cosine (interleaved: the
    final channel ``depth-1`` is ``sin(pos / w^((depth-1)/depth))``; stacked: one more sine than
    cosines).

    Args:
        length: number of positions ``T`` (int or scalar tensor); positions are ``0 .. T-1``.
        depth: number of channels ``d_model`` (int, >= 1).
        max_wavelength: the 10000 of the paper (> 1).
        style: ``"interleaved"`` or ``"stacked"``.
        dtype: dtype of the result.

    Returns:
        Tensor ``(T, depth)`` of ``dtype``, values in ``[-1, 1]``.

    Raises:
        ValueError: an unknown ``style``.
    """
    if style not in STYLES:
        raise ValueError(f"style: expected one of {list(STYLES)}, got {style!r}")
    positions = ops.cast(ops.arange(length), "float32")
    return ops.cast(_table(positions, int(depth), max_wavelength, style, ops, "float32"), dtype)


def _table(positions, depth: int, max_wavelength: float, style: str, xp, dtype: str):
    """The one implementation of the sinusoid, for ``xp`` = ``numpy`` (a static length: the table is
    computed once, in float64, in ``build``) or ``keras.ops`` (a length known only at run time).

    ``positions``: ``(T,)`` positions of ``xp``; the frequencies are computed in float64 by NumPy and
    cast to ``dtype``, the angles and their sines and cosines in ``dtype``.
    """
    pair, is_cos = _channel_layout(depth, style)
    inv_freq = np.power(float(max_wavelength), -2.0 * pair / float(depth)).astype(dtype)
    constant = np.asarray if xp is np else ops.convert_to_tensor
    angles = xp.expand_dims(positions, 1) * constant(inv_freq[None, :])
    return xp.where(constant(is_cos[None, :]), xp.cos(angles), xp.sin(angles))


def _numpy_table(length: int, depth: int, max_wavelength: float, style: str) -> np.ndarray:
    positions = np.arange(length, dtype="float64")
    return _table(positions, depth, max_wavelength, style, np, "float64").astype("float32")


@keras.saving.register_keras_serializable(package="regimetry")
class SinusoidalPositionalEncoding(keras.layers.Layer):
    """Add the fixed sinusoidal position encoding to a sequence.

    The table (see :func:`sinusoidal_table`) is computed once in ``build()`` for the input's static
    length and kept as a constant, not a weight; for an input whose length is only known at run time
    it is computed with ``keras.ops`` in ``call``. The inputs are not rescaled by ``sqrt(d_model)``
    (the projection learns the scale). An odd ``d_model`` works (last frequency: sine only).

    Args:
        style: ``"interleaved"`` (sin/cos alternate across channels, the paper's equation) or
            ``"stacked"`` (all sines, then all cosines). Default ``"interleaved"``.
        max_wavelength: float > 1, the 10000 of the paper. Default 10000.

    Call arguments:
        inputs: float tensor ``(batch, T, d_model)``.

    Returns:
        ``inputs + PE[:T]``, same shape and dtype as ``inputs``.

    Raises:
        ValueError: an unknown ``style`` or ``max_wavelength <= 1`` (at construction); an input that
            is not 3-D (at build).

    References:
        Vaswani et al. (2017), "Attention Is All You Need", Section 3.5.
    """

    def __init__(self, style="interleaved", max_wavelength=10000.0, **kwargs):
        super().__init__(**kwargs)
        if style not in STYLES:
            raise ValueError(f"SinusoidalPositionalEncoding.style: expected one of {list(STYLES)}, got {style!r}")
        if not float(max_wavelength) > 1.0:
            raise ValueError(f"SinusoidalPositionalEncoding.max_wavelength: must be > 1, got {max_wavelength!r}")
        self.style = style
        self.max_wavelength = float(max_wavelength)
        self._table = None

    def build(self, inputs_shape):
        if len(inputs_shape) != 3:
            raise ValueError(
                f"SinusoidalPositionalEncoding expects (batch, T, d_model) inputs, got shape {tuple(inputs_shape)}"
            )
        length, depth = inputs_shape[1], inputs_shape[2]
        if length is not None and depth is not None:
            self._table = _numpy_table(int(length), int(depth), self.max_wavelength, self.style)

    def call(self, inputs):
        length = inputs.shape[1]
        if self._table is not None and length == self._table.shape[0]:
            table = ops.convert_to_tensor(self._table, dtype=inputs.dtype)
        else:
            table = sinusoidal_table(ops.shape(inputs)[1], inputs.shape[-1], self.max_wavelength, self.style,
                                     dtype=inputs.dtype)
        return inputs + ops.expand_dims(table, 0)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"style": self.style, "max_wavelength": self.max_wavelength})
        return config


@keras.saving.register_keras_serializable(package="regimetry")
class LearnablePositionalEmbedding(keras.layers.Layer):
    """Add a trained ``(sequence_length, d_model)`` position table to a sequence.

    Row ``t`` of the table is added to step ``t``; an input shorter than ``sequence_length`` uses the
    first ``T`` rows. The table is an ordinary trainable weight (named ``embeddings``): gradients
    reach it and it is saved and restored with the model.

    Args:
        sequence_length: int >= 1, the longest sequence the table covers (the window size; the
            CLS token is added after this layer and needs no row).
        initializer: initializer of the table (name, instance or config). Default
            ``"glorot_uniform"`` (as keras-hub's ``PositionEmbedding``).

    Call arguments:
        inputs: float tensor ``(batch, T, d_model)`` with ``T <= sequence_length``.

    Returns:
        ``inputs + table[:T]``, same shape and dtype as ``inputs``.

    Raises:
        ValueError: ``sequence_length`` not a positive integer; an input that is not 3-D or longer
            than ``sequence_length`` (at build or call).

    References:
        Gehring et al. (2017), "Convolutional Sequence to Sequence Learning"; Devlin et al. (2019),
        BERT (learned position embeddings).
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)) \
                or sequence_length < 1:
            raise ValueError(
                f"LearnablePositionalEmbedding.sequence_length: must be a positive integer, got {sequence_length!r}"
            )
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def _check_length(self, length):
        if isinstance(length, (int, np.integer)) and length > self.sequence_length:
            raise ValueError(
                f"LearnablePositionalEmbedding: input has {int(length)} steps but the table covers "
                f"sequence_length={self.sequence_length}; build the model with a larger window_size "
                f"or feed windows of at most {self.sequence_length} steps"
            )

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                "LearnablePositionalEmbedding expects (batch, T, d_model) inputs with a known d_model, "
                f"got shape {tuple(inputs_shape)}"
            )
        self._check_length(inputs_shape[1])
        self.embeddings = self.add_weight(
            shape=(self.sequence_length, int(inputs_shape[-1])),
            initializer=self.initializer,
            trainable=True,
            name="embeddings",
        )

    def call(self, inputs):
        length = inputs.shape[1]
        self._check_length(length)
        if length is None:
            length = ops.shape(inputs)[1]
        table = ops.slice(self.embeddings, (0, 0), (length, ops.shape(self.embeddings)[1]))
        return inputs + ops.expand_dims(ops.cast(table, inputs.dtype), 0)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
