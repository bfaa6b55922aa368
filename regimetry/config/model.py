"""``ModelConfig``: the architecture of the Transformer regime classifier."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from regimetry import registry
from regimetry.config.base import _ConfigBase, _err

__all__ = ["ACTIVATIONS", "ATTENTION_MASKS", "ENCODING_STYLES", "POOLINGS", "POSITIONAL_ENCODINGS", "ModelConfig"]

#: The registered names (``regimetry.registry``: the model builder and the tests read the same maps).
POSITIONAL_ENCODINGS = tuple(registry.POSITIONAL_ENCODINGS)
ENCODING_STYLES = ("interleaved", "stacked")
ATTENTION_MASKS = tuple(registry.ATTENTION_MASKS)
POOLINGS = tuple(registry.POOLINGS)
ACTIVATIONS = ("gelu", "relu", "swish", "tanh")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_ConfigBase):
    """Architecture of the Transformer regime classifier.

    Args:
        d_model: width of the residual stream (the input projection's units), ``>= 1``. Default 32.
        num_heads: attention heads per block, ``>= 1``. Default 4.
        key_dim: size of each head's queries/keys; ``None`` means ``d_model // num_heads``.
        ff_dim: hidden units of each block's feed-forward network. Default 64.
        num_layers: encoder depth (number of blocks), ``>= 1``. Default 2.
        dropout: dropout rate in ``[0, 1)`` for attention weights, residual branches and the head.
        positional_encoding: ``"sinusoidal"`` (Vaswani et al., 2017), ``"learnable"`` (a trained
            table) or ``"none"`` (control arm). Default ``"sinusoidal"``.
        encoding_style: for sinusoidal encodings, ``"interleaved"`` (sin/cos alternate across
            channels, as in the paper's equation) or ``"stacked"`` (all sines then all cosines).
        max_wavelength: the 10000 of the paper's equation.
        attention_mask: ``"none"`` (every step sees every step) or ``"causal"`` (look-ahead mask:
            step t sees steps <= t only).
        pooling: ``"mean"``, ``"max"``, ``"cls"``, ``"last"`` or ``"attention"``.
        head_units: hidden layer sizes of the MLP head before the softmax (``()`` = linear head).
        norm_first: pre-layer-norm blocks (``True``) or post-norm as in the paper (``False``).
        activation: feed-forward activation. Default ``"gelu"``.
        linear_shortcut: add a linear map of the window's last real step (the raw, preprocessed
            inputs) to the class logits, so that ``logits = W x_T + b + head(pooled encoding)`` and
            the encoder learns a residual over a HAR-like linear model (in the spirit of HARNet,
            Reisenhofer et al. 2022, which starts from HAR and learns the rest). Default ``False``.
        use_encoder: build the encoder (projection, positional encoding, blocks, pooling, head).
            ``False`` (with ``linear_shortcut=True``) gives the shortcut alone: a multinomial
            logistic regression on the last step's inputs, trained by the same code (the
            reference arm of ``experiments/07_encoder_value.py``). Default ``True``.
        shortcut_features: names of the input features the shortcut reads (e.g. the HAR-RV lags
            ``("log_rv_1", "log_rv_5", "log_rv_22")``, so that the shortcut is the HAR-RV logistic
            model of ``regimetry.baselines``; 03-07 add the range-based lags
            ``log_parkinson_1/5/22``); ``()`` = every feature. The model builder then needs
            the feature names (``regimetry.training.fit`` passes them). Default ``()``.
        center_windows: subtract each window's own per-feature mean before the input projection
            (``regimetry.layers.WindowCentering``, the normalisation half of RevIN, Kim et al. 2022),
            so the encoder sees shapes, never levels; levels then reach the class logits only through
            the linear shortcut, which extrapolates to unseen levels as HAR-RV does. Default ``False``.

    Raises:
        ValueError: a value out of range, naming the field. ``pooling="cls"`` with
            ``attention_mask="causal"`` is allowed: under a look-ahead mask the model places the
            CLS token after the last step, so that it sees the whole window (``regimetry.models``).
    """

    section: ClassVar[str] = "model"

    d_model: int = 32
    num_heads: int = 4
    key_dim: int | None = None
    ff_dim: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    positional_encoding: str = "sinusoidal"
    encoding_style: str = "interleaved"
    max_wavelength: float = 10000.0
    attention_mask: str = "none"
    pooling: str = "mean"
    head_units: tuple[int, ...] = ()
    norm_first: bool = False
    activation: str = "gelu"
    linear_shortcut: bool = False
    use_encoder: bool = True
    shortcut_features: tuple[str, ...] = ()
    center_windows: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("norm_first", "linear_shortcut", "use_encoder", "center_windows"):
            if not isinstance(getattr(self, field), bool):
                raise _err(name, field, f"expected true/false, got {getattr(self, field)!r}")
        if not self.use_encoder and not self.linear_shortcut:
            raise _err(name, "use_encoder", "False needs linear_shortcut=True (a model needs an encoder or a shortcut)")
        if not isinstance(self.shortcut_features, tuple) or not all(
                isinstance(f, str) and f for f in self.shortcut_features):
            raise _err(name, "shortcut_features", f"expected a tuple of feature names, got {self.shortcut_features!r}")
        if len(set(self.shortcut_features)) != len(self.shortcut_features):
            raise _err(name, "shortcut_features", f"names repeat: {self.shortcut_features}")
        for field in ("d_model", "num_heads", "ff_dim", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _err(name, field, f"must be a positive integer, got {value!r}")
        if self.key_dim is not None and (not isinstance(self.key_dim, int) or self.key_dim <= 0):
            raise _err(name, "key_dim", f"must be a positive integer or None, got {self.key_dim!r}")
        if self.key_dim is None and self.d_model // self.num_heads < 1:
            raise _err(
                name, "num_heads", f"d_model ({self.d_model}) // num_heads ({self.num_heads}) is 0; set key_dim"
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise _err(name, "dropout", f"must lie in [0, 1), got {self.dropout!r}")
        for field, allowed in (
            ("positional_encoding", POSITIONAL_ENCODINGS),
            ("encoding_style", ENCODING_STYLES),
            ("attention_mask", ATTENTION_MASKS),
            ("pooling", POOLINGS),
            ("activation", ACTIVATIONS),
        ):
            if getattr(self, field) not in allowed:
                raise _err(name, field, f"expected one of {list(allowed)}, got {getattr(self, field)!r}")
        if not (self.max_wavelength > 1):
            raise _err(name, "max_wavelength", f"must be > 1, got {self.max_wavelength!r}")
        for units in self.head_units:
            if not isinstance(units, int) or units <= 0:
                raise _err(name, "head_units", f"every entry must be a positive integer, got {self.head_units!r}")

    @property
    def resolved_key_dim(self) -> int:
        """``key_dim`` with ``None`` resolved to ``d_model // num_heads``."""
        return self.key_dim if self.key_dim is not None else self.d_model // self.num_heads
