"""Build the Transformer regime classifier from a ``ModelConfig``; extract attention and embeddings.

Architecture (layer names in brackets; every name is stable, later code finds layers by name)::

    windows (batch, window_size, num_features) float32, NaN-padded steps allowed
      -> [input_mask]            NanPaddingMask: padding mask (batch, T) from all-NaN steps, NaN -> 0
      -> [window_centering]      WindowCentering, only for center_windows=True (window mean removed)
      -> [projection]            Dense(d_model)
      -> [positional_encoding]   regimetry.registry.POSITIONAL_ENCODINGS[name] (none: no layer)
      -> [cls_token]             ClsToken, only for pooling="cls" (first; LAST under a causal mask)
      -> [attention_mask]        AttentionMask: one (batch, T', T') mask for every block and head
      -> [encoder_block_0 .. encoder_block_{L-1}]  TransformerEncoderBlock
      -> [final_norm]            LayerNormalization, only for pre-norm blocks (norm_first=True)
      -> [pooling]               SequencePooling(mode)
      -> [head_dense_i, head_dropout_i] for each entry of head_units (activation = config.activation)
      -> [regime_probabilities]  Dense(num_classes, softmax), float32 (batch, num_classes)

With ``linear_shortcut=True`` the head ends in logits instead, and a linear map of the window's last
real step is added before the softmax (a HAR-like linear model the encoder refines)::

      [input_mask] -> [shortcut_last_step] SequencePooling("last")
        -> [shortcut_features] FeatureSelect, only when ModelConfig.shortcut_features names columns
        -> [linear_shortcut] Dense(num_classes)
      pooled encoding -> head -> [regime_logits] Dense(num_classes)
      [shortcut_add] Add -> [regime_probabilities] Softmax, float32 (batch, num_classes)

With ``use_encoder=False`` only the shortcut path exists (a multinomial logistic regression on the
last step's inputs): ``attention_scores`` and ``embed`` then raise ``ValueError``.

Variable-length windows: feed windows NaN-padded at the END (see :func:`pad_windows`). The model
turns all-NaN steps into a padding mask, so one model takes fixed windows (no NaN) and padded ones,
and a padded window gives the same prediction as the same window truncated to its real steps.

The CLS token under a look-ahead mask: placed first it could attend to nothing but itself, so the
model places it after the last step when ``attention_mask="causal"`` (and first otherwise).
"""

from __future__ import annotations

import weakref
from typing import Callable

import numpy as np
import keras

from regimetry import registry
from regimetry.config import ModelConfig
from regimetry.layers import (
    ClsToken,
    FeatureSelect,
    NanPaddingMask,
    SequencePooling,
    TransformerEncoderBlock,
    WindowCentering,
)

__all__ = ["attention_scores", "build_classifier", "check_windows", "embed", "pad_windows"]

def _check_positive_int(where: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _encode(get: Callable[[str], keras.layers.Layer | None], windows, return_scores: bool = False):
    """Run windows through the encoder part of the graph, layer by layer (shared by build and
    extraction so that the two can never disagree). Returns ``(pooled, scores_per_block)``."""
    x, padding_mask = get("input_mask")(windows)
    centering = get("window_centering")
    if centering is not None:
        x = centering(x, padding_mask=padding_mask)
    x = get("projection")(x)
    encoding = get("positional_encoding")
    if encoding is not None:
        x = encoding(x)
    cls = get("cls_token")
    if cls is not None:
        x, padding_mask = cls(x, padding_mask=padding_mask)
    mask = get("attention_mask")(x, padding_mask=padding_mask)
    scores = []
    index = 0
    while (block := get(f"encoder_block_{index}")) is not None:
        if return_scores:
            x, block_scores = block(x, attention_mask=mask, return_attention_scores=True)
            scores.append(block_scores)
        else:
            x = block(x, attention_mask=mask)
        index += 1
    if index == 0:
        raise ValueError("the model has no layer named 'encoder_block_0': not a regimetry classifier")
    final_norm = get("final_norm")
    if final_norm is not None:
        x = final_norm(x)
    pooled = get("pooling")(x, padding_mask=padding_mask)
    return pooled, scores


def build_classifier(config: ModelConfig, window_size: int, num_features: int, num_classes: int,
                     feature_names=None) -> keras.Model:
    """Build (do not compile) the Transformer regime classifier described by ``config``.

    Args:
        config: the architecture (:class:`regimetry.config.ModelConfig`).
        window_size: bars per window ``T`` (>= 1); the learnable position table has ``T`` rows.
        num_features: input features per bar (>= 1).
        num_classes: regimes (>= 2).
        feature_names: the ``num_features`` input names, in order; needed only when
            ``config.shortcut_features`` names the shortcut's inputs.

    Returns:
        An uncompiled functional ``keras.Model`` named ``regime_classifier``: input float32
        ``(batch, window_size, num_features)`` (steps whose features are all NaN are padding),
        output float32 softmax probabilities ``(batch, num_classes)``. The layer names are listed in
        the module docstring. Pooling ``"cls"`` adds a ``cls_token`` layer, placed first, or last
        when ``config.attention_mask == "causal"`` (a first token would see only itself).

    Raises:
        TypeError: ``config`` is not a ``ModelConfig``.
        ValueError: ``window_size``, ``num_features`` or ``num_classes`` out of range; a
            ``shortcut_features`` name missing from ``feature_names`` (or no ``feature_names``); a
            positional encoding, attention mask or pooling not in ``regimetry.registry`` (the
            message lists the registered names).
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_classifier: config must be a regimetry.config.ModelConfig, got {type(config).__name__}")
    window_size = _check_positive_int("build_classifier", "window_size", window_size)
    num_features = _check_positive_int("build_classifier", "num_features", num_features)
    num_classes = _check_positive_int("build_classifier", "num_classes", num_classes, minimum=2)
    indices = _shortcut_indices(config, num_features, feature_names)
    if not config.use_encoder:
        return _shortcut_only(window_size, num_features, num_classes, indices)
    # Every option comes from its registry (an unregistered name raises, listing the registered ones).
    # The layers are constructed in this order whatever the options: the seeded weights depend on it.
    make_encoding = registry.lookup("positional_encoding", config.positional_encoding)
    make_mask = registry.lookup("attention_mask", config.attention_mask)
    make_pooling = registry.lookup("pooling", config.pooling)
    layers: dict[str, keras.layers.Layer] = {
        "input_mask": NanPaddingMask(name="input_mask"),
        "projection": keras.layers.Dense(config.d_model, name="projection"),
        **({"window_centering": WindowCentering(name="window_centering")} if config.center_windows else {}),
        "attention_mask": make_mask(config, window_size, "attention_mask"),
    }
    causal = bool(layers["attention_mask"].use_causal_mask)
    layers["pooling"] = make_pooling(config, causal, "pooling")
    encoding = make_encoding(config, window_size, "positional_encoding")
    if encoding is not None:
        layers["positional_encoding"] = encoding
    if config.pooling == "cls":
        layers["cls_token"] = ClsToken(position="last" if causal else "first", name="cls_token")
    for i in range(config.num_layers):
        layers[f"encoder_block_{i}"] = TransformerEncoderBlock(
            num_heads=config.num_heads,
            key_dim=config.resolved_key_dim,
            ff_dim=config.ff_dim,
            dropout=config.dropout,
            norm_first=config.norm_first,
            activation=config.activation,
            name=f"encoder_block_{i}",
        )
    if config.norm_first:
        layers["final_norm"] = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")

    windows = keras.Input(shape=(window_size, num_features), dtype="float32", name="windows")
    x, _ = _encode(layers.get, windows)
    for i, units in enumerate(config.head_units):
        x = keras.layers.Dense(units, activation=config.activation, name=f"head_dense_{i}")(x)
        x = keras.layers.Dropout(config.dropout, name=f"head_dropout_{i}")(x)
    if not config.linear_shortcut:
        probabilities = keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="regime_probabilities"
        )(x)
        return keras.Model(windows, probabilities, name="regime_classifier")
    # Zero-initialised: the model starts as its shortcut (training.warm_start_shortcut sets that to a
    # logistic regression), and the encoder learns a residual over it.
    logits = keras.layers.Dense(num_classes, dtype="float32", kernel_initializer="zeros",
                                name="regime_logits")(x)
    shortcut = _shortcut_logits(layers["input_mask"], windows, num_classes, indices)
    logits = keras.layers.Add(dtype="float32", name="shortcut_add")([logits, shortcut])
    probabilities = keras.layers.Softmax(dtype="float32", name="regime_probabilities")(logits)
    return keras.Model(windows, probabilities, name="regime_classifier")


def _shortcut_indices(config: ModelConfig, num_features: int, feature_names) -> tuple[int, ...] | None:
    """Column indices of ``config.shortcut_features`` (``None``: the shortcut reads every feature)."""
    if not config.linear_shortcut or not config.shortcut_features:
        return None
    if feature_names is None:
        raise ValueError(f"build_classifier: ModelConfig.shortcut_features={config.shortcut_features} needs "
                         "feature_names (the input columns' names, in order)")
    names = list(feature_names)
    if len(names) != num_features:
        raise ValueError(f"build_classifier: feature_names has {len(names)} names for num_features={num_features}")
    missing = [f for f in config.shortcut_features if f not in names]
    if missing:
        raise ValueError(f"ModelConfig.shortcut_features: {missing} not among the input features {names}; add them "
                         "to DataConfig.features")
    return tuple(names.index(f) for f in config.shortcut_features)


def _shortcut_logits(input_mask: keras.layers.Layer, windows, num_classes: int, indices=None):
    """Class logits of a linear map of each window's last real step (padding skipped), reading the
    feature columns ``indices`` only when given (layer ``shortcut_features``)."""
    x, padding_mask = input_mask(windows)
    last = SequencePooling("last", name="shortcut_last_step")(x, padding_mask=padding_mask)
    if indices is not None:
        last = FeatureSelect(indices, name="shortcut_features")(last)
    return keras.layers.Dense(num_classes, dtype="float32", name="linear_shortcut")(last)


def _shortcut_only(window_size: int, num_features: int, num_classes: int, indices=None) -> keras.Model:
    windows = keras.Input(shape=(window_size, num_features), dtype="float32", name="windows")
    logits = _shortcut_logits(NanPaddingMask(name="input_mask"), windows, num_classes, indices)
    probabilities = keras.layers.Softmax(dtype="float32", name="regime_probabilities")(logits)
    return keras.Model(windows, probabilities, name="regime_classifier")


# ------------------------------------------------------------------------------------------------
# Variable-length windows
# ------------------------------------------------------------------------------------------------
def pad_windows(X, lengths) -> np.ndarray:
    """NaN-pad windows to variable lengths: keep the last ``lengths[i]`` steps of window ``i``.

    Window ``i`` keeps its ``lengths[i]`` most recent steps (those nearest the label bar) and moves
    them to the FRONT of the output window; the remaining ``T - lengths[i]`` steps at the END are
    all-NaN padding::

        X[i]      = [x0, x1, x2, x3, x4, x5]        lengths[i] = 3
        padded[i] = [x3, x4, x5, nan, nan, nan]

    Why the end: the real steps keep positional indices ``0 .. L-1``, exactly those of the same
    window truncated to ``L`` steps, so sinusoidal and learnable encodings see the same positions
    whatever the padding; under the look-ahead mask a real step only ever looks back at real steps
    (the padding lies in its future and is masked anyway), so causal attention is unchanged; and the
    CLS token appended under a causal mask still sees every real step. Together with the padding
    mask the model therefore gives a padded window the same prediction as the truncated window.
    ``SequencePooling(mode="last")`` reads the last *real* step, wherever the padding starts.

    Args:
        X: array ``(n_windows, T, n_features)`` of finite values.
        lengths: integer array-like ``(n_windows,)``, each in ``[1, T]``.

    Returns:
        float32 array ``(n_windows, T, n_features)``; a new array (``X`` is not modified).

    Raises:
        ValueError: ``X`` not 3-D or holding NaN, ``lengths`` of the wrong shape, not integers or
            out of ``[1, T]`` (naming the first offending window).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"pad_windows: X must be (n_windows, T, n_features), got shape {X.shape}")
    if np.isnan(X).any():
        i, t = np.argwhere(np.isnan(X).any(axis=2))[0]
        raise ValueError(f"pad_windows: X already holds NaN (window {i}, step {t}); pad unpadded windows")
    raw = np.asarray(lengths)
    n, T = X.shape[0], X.shape[1]
    if raw.shape != (n,):
        raise ValueError(f"pad_windows: lengths must have shape ({n},) (one per window), got {raw.shape}")
    if n and not (np.issubdtype(raw.dtype, np.integer) or np.all(np.mod(raw, 1) == 0)):
        raise ValueError(f"pad_windows: lengths must be integers, got {raw[:5]!r}...")
    lengths = raw.astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > T))
    if bad.size:
        raise ValueError(
            f"pad_windows: lengths must lie in [1, {T}] (the window size); window {bad[0]} has {lengths[bad[0]]}"
        )
    steps = np.arange(T)[None, :]  # output step j
    source = steps + (T - lengths)[:, None]  # input step that lands at output step j
    real = steps < lengths[:, None]
    padded = np.take_along_axis(X, np.minimum(source, T - 1)[:, :, None], axis=1)
    padded[~real] = np.nan
    return padded


def check_windows(X, window_size: int | None = None, num_features: int | None = None) -> np.ndarray:
    """Validate windows for the classifier and return them as float32.

    Accepts fixed windows and NaN-padded ones (a step whose features are all NaN is padding).

    Args:
        X: array ``(n_windows, T, n_features)``.
        window_size: expected ``T`` (``None``: not checked).
        num_features: expected ``n_features`` (``None``: not checked).

    Returns:
        ``X`` as a float32 array.

    Raises:
        ValueError: wrong rank or sizes; an infinite value; a step with some but not all features
            NaN (naming the window and step).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"windows must be a 3-D array (n_windows, window_size, n_features), got shape {X.shape}")
    if window_size is not None and X.shape[1] != window_size:
        raise ValueError(f"windows have {X.shape[1]} steps, the model expects window_size={window_size}")
    if num_features is not None and X.shape[2] != num_features:
        raise ValueError(f"windows have {X.shape[2]} features, the model expects num_features={num_features}")
    if np.isinf(X).any():
        i, t, f = np.argwhere(np.isinf(X))[0]
        raise ValueError(f"windows hold an infinite value at window {i}, step {t}, feature {f}")
    nan = np.isnan(X)
    partial = nan.any(axis=2) & ~nan.all(axis=2)
    if partial.any():
        i, t = np.argwhere(partial)[0]
        raise ValueError(
            f"window {i}, step {t} has NaN in some features but not all: a padded step must be all NaN "
            "(see regimetry.models.pad_windows); impute missing features in the data layer"
        )
    return X


# ------------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------------
_EXTRACTORS: "weakref.WeakKeyDictionary[keras.Model, dict[str, keras.Model]]" = weakref.WeakKeyDictionary()


def _layer_getter(model: keras.Model) -> Callable[[str], keras.layers.Layer | None]:
    names = {layer.name: layer for layer in model.layers}
    return names.get


class _Extractor(keras.Model):
    """Runs a classifier's own layers (found by name, weights shared, nothing copied) up to the
    pooling, returning the pooled vectors or every block's attention scores.

    A subclassed model rather than a functional one: Keras 3.15 cannot build a functional graph
    from a layer whose earlier node had a different output structure (the blocks are called without
    ``return_attention_scores`` in the classifier), so the forward pass is run directly instead.
    """

    def __init__(self, get, kind, **kwargs):
        super().__init__(**kwargs)
        self._get = get
        self._kind = kind

    def call(self, windows):
        pooled, scores = _encode(self._get, windows, return_scores=(self._kind == "scores"))
        return scores if self._kind == "scores" else pooled


def _extractor(model: keras.Model, kind: str) -> keras.Model:
    cache = _EXTRACTORS.setdefault(model, {})
    if kind not in cache:
        get = _layer_getter(model)
        if get("linear_shortcut") is not None and get("encoder_block_0") is None:
            raise ValueError(
                f"model {model.name!r} has no encoder (a shortcut-only model, ModelConfig.use_encoder=False, "
                "no encoder_block_0): it has no attention scores or pooled embedding"
            )
        for required in ("input_mask", "projection", "attention_mask", "pooling", "encoder_block_0"):
            if get(required) is None:
                raise ValueError(
                    f"model {model.name!r} has no layer named {required!r}: pass a model built by "
                    "regimetry.models.build_classifier (or loaded from one)"
                )
        cache[kind] = _Extractor(get, kind, name=f"{model.name}_{kind}")
    return cache[kind]


_EAGER_BATCHES = 4


def _run_batched(extractor: keras.Model, X: np.ndarray, batch_size: int):
    """Run ``extractor`` over ``X`` in batches of ``batch_size``, in inference mode.

    A few batches run eagerly (compiling a graph would cost more than it saves); more go through
    ``predict``, which compiles the forward pass once and streams the batches through it.
    """
    if len(X) > _EAGER_BATCHES * batch_size:
        return extractor.predict(X, batch_size=batch_size, verbose=0)
    parts = [extractor(X[i:i + batch_size], training=False) for i in range(0, max(len(X), 1), batch_size)]
    if isinstance(parts[0], (list, tuple)):
        return [np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(len(parts[0]))]
    return np.concatenate([np.asarray(p) for p in parts])


def _model_input_sizes(model: keras.Model) -> tuple[int | None, int | None]:
    shape = tuple(model.inputs[0].shape)
    return shape[1], shape[2]


def attention_scores(model: keras.Model, X, batch_size: int = 256) -> list[np.ndarray]:
    """Attention weights of every encoder block, in inference mode.

    Works on a model from :func:`build_classifier`, one reloaded from a ``.keras`` file, or one
    loaded through MLflow's keras flavor: the layers are found by name and run (weights shared) by
    a small sub-model cached per model, in batches (``predict`` beyond a few batches).

    Args:
        model: the classifier.
        X: windows ``(n_windows, window_size, num_features)``, NaN-padded steps allowed.
        batch_size: windows per forward pass (>= 1).

    Returns:
        One float32 array ``(n_windows, num_heads, T', T')`` per block, in depth order, where
        ``T' = window_size + 1`` when the model has a CLS token (last index under a causal mask,
        index 0 otherwise) and ``window_size`` otherwise. Row ``q`` holds query step ``q``'s
        weights over the keys; rows of padded steps are zero.

    Raises:
        ValueError: ``model`` is not a regimetry classifier, or ``X`` is malformed (see
            :func:`check_windows`).
    """
    X = check_windows(X, *_model_input_sizes(model))
    batch_size = _check_positive_int("attention_scores", "batch_size", batch_size)
    outputs = _run_batched(_extractor(model, "scores"), X, batch_size)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(o, dtype=np.float32) for o in outputs]


def embed(model: keras.Model, X, batch_size: int = 256) -> np.ndarray:
    """The pooled representation (the ``pooling`` layer's output) of each window, in inference mode.

    This is the vector the head classifies; it feeds regime clustering. Works on built, reloaded
    (``.keras``) and MLflow-loaded models alike.

    Args:
        model: the classifier.
        X: windows ``(n_windows, window_size, num_features)``, NaN-padded steps allowed.
        batch_size: windows per forward pass (>= 1).

    Returns:
        float32 array ``(n_windows, d_model)``.

    Raises:
        ValueError: ``model`` is not a regimetry classifier, or ``X`` is malformed (see
            :func:`check_windows`).
    """
    X = check_windows(X, *_model_input_sizes(model))
    batch_size = _check_positive_int("embed", "batch_size", batch_size)
    return np.asarray(_run_batched(_extractor(model, "embed"), X, batch_size), dtype=np.float32)
