"""Keras layers of the regime classifier, one concept per module (keras-hub style).

Every layer subclasses ``keras.layers.Layer``, computes with ``keras.ops`` (TensorFlow, JAX or
PyTorch backend), is registered serializable under the package name ``"regimetry"`` (importing
this package registers them, so ``keras.saving.load_model`` can rebuild saved models), and returns
every constructor argument from ``get_config``.

Mask convention: ``padding_mask`` is boolean ``(batch, T)`` with True = a real step.
"""

from regimetry.layers.encoder import TransformerEncoderBlock
from regimetry.layers.inputs import FeatureSelect, WindowCentering
from regimetry.layers.masks import AttentionMask, NanPaddingMask, causal_mask, merge_masks
from regimetry.layers.pooling import ClsToken, SequencePooling
from regimetry.layers.positional import (
    LearnablePositionalEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)

__all__ = [
    "AttentionMask",
    "ClsToken",
    "FeatureSelect",
    "LearnablePositionalEmbedding",
    "NanPaddingMask",
    "SequencePooling",
    "SinusoidalPositionalEncoding",
    "TransformerEncoderBlock",
    "WindowCentering",
    "causal_mask",
    "merge_masks",
    "sinusoidal_table",
]
