"""The model's options by name: one ``name -> factory`` map per part the ablations vary.

``regimetry.config.ModelConfig`` validates ``positional_encoding``, ``attention_mask`` and ``pooling``
against these maps, ``regimetry.models.build_classifier`` builds the layer a name maps to (an unknown
name raises an error listing the registered ones) and ``tests/test_models.py`` parametrizes over them.
Adding an option is therefore one layer (a class in ``regimetry/layers/``), one line here, one
``Arm`` in the experiment and one test file (the team's conventions, "Adding an option"; ``tests/test_data_controls.py`` shows a new encoding arm checked by the order control without a registry edit).

Factories take ``(config, window_size, name)`` (``config`` a ``ModelConfig``, ``window_size`` the
bars per window, ``name`` the layer name the builder gives it) and return a Keras layer, or ``None``
for "no layer" (the ``"none"`` control arm). Pooling factories take ``(config, causal, name)``, where
``causal`` says whether the attention mask is a look-ahead one (a CLS token is then placed last).

This module imports no Keras: the layer classes are looked up when a factory runs (:func:`_layer`),
so config validation and the command line stay light.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["ATTENTION_MASKS", "BY_FIELD", "POOLINGS", "POSITIONAL_ENCODINGS", "lookup"]


def _layer(module: str, name: str) -> Any:
    """The layer class ``regimetry.layers.<module>.<name>``, imported on first use (Keras)."""
    return getattr(importlib.import_module(f"regimetry.layers.{module}"), name)


#: ``ModelConfig.positional_encoding`` -> ``factory(config, window_size, name)`` (``None``: no layer).
POSITIONAL_ENCODINGS: dict[str, Callable[..., Any]] = {
    "sinusoidal": lambda config, window_size, name: _layer("positional", "SinusoidalPositionalEncoding")(
        style=config.encoding_style, max_wavelength=config.max_wavelength, name=name),
    "learnable": lambda config, window_size, name: _layer("positional", "LearnablePositionalEmbedding")(
        window_size, name=name),
    "none": lambda config, window_size, name: None,
}

#: ``ModelConfig.attention_mask`` -> ``factory(config, window_size, name)`` of the ``AttentionMask``.
ATTENTION_MASKS: dict[str, Callable[..., Any]] = {
    "none": lambda config, window_size, name: _layer("masks", "AttentionMask")(use_causal_mask=False, name=name),
    "causal": lambda config, window_size, name: _layer("masks", "AttentionMask")(use_causal_mask=True, name=name),
}


def _sequence_pooling(mode: str) -> Callable[..., Any]:
    return lambda config, causal, name: _layer("pooling", "SequencePooling")(
        mode, cls_position="last" if causal else "first", name=name)


#: ``ModelConfig.pooling`` -> ``factory(config, causal, name)``. ``"cls"`` also makes the builder add
#: a ``ClsToken`` (first, or last under a look-ahead mask).
POOLINGS: dict[str, Callable[..., Any]] = {
    "mean": _sequence_pooling("mean"),
    "max": _sequence_pooling("max"),
    "cls": _sequence_pooling("cls"),
    "last": _sequence_pooling("last"),
    "attention": _sequence_pooling("attention"),
}


#: ``ModelConfig`` field -> the registry its value must be a name of.
BY_FIELD: dict[str, dict[str, Callable[..., Any]]] = {
    "positional_encoding": POSITIONAL_ENCODINGS,
    "attention_mask": ATTENTION_MASKS,
    "pooling": POOLINGS,
}


def lookup(field: str, value: Any) -> Callable[..., Any]:
    """The factory registered under ``value`` for ``ModelConfig.<field>``.

    Raises:
        ValueError: ``value`` is not registered; the message lists the registered names.
    """
    registry = BY_FIELD[field]
    if value not in registry:
        raise ValueError(f"ModelConfig.{field}: expected one of {list(registry)} (regimetry.registry), "
                         f"got {value!r}")
    return registry[value]
