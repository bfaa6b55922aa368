"""Frozen, validated configuration dataclasses for data, model and training settings.

Every config is a frozen dataclass validated on construction: an invalid value raises
``ValueError`` whose message starts with the field name (``"DataConfig.window_size: ..."``), so
that a mistake in a YAML file or a command-line override points at the field to fix.

Configs load from YAML (``DataConfig.from_yaml("cfg.yaml", window_size=60)``), from a mapping
(``from_dict``) and from ``key=value`` strings given on a command line (``parse_overrides``). A YAML
file may hold one section per config (``data:``, ``model:``, ``train:``); ``from_yaml`` reads the
section whose name matches the config (``DataConfig.section == "data"``) or, when there is no such
section, the whole file.

Layout: ``base`` (loading, overriding, flattening, type coercion, YAML), ``data`` (``DataConfig``, the
sources and the options every experiment script shares), ``model`` (``ModelConfig``, whose options come
from :mod:`regimetry.registry`), ``train`` (``TrainConfig``), ``urls`` (credentials in storage and
tracking URLs kept out of messages). Every public name is importable from ``regimetry.config``.
"""

from __future__ import annotations

from regimetry.config.base import load_yaml, parse_overrides
from regimetry.config.data import (
    CONTROL_SOURCES,
    CONTROL_TASKS,
    DEFAULT_FEATURES,
    MAX_REGIMES,
    SOURCES,
    SYNTHETIC_FEATURES,
    DataConfig,
    add_data_arguments,
    check_data_arguments,
)
from regimetry.config.model import (
    ACTIVATIONS,
    ATTENTION_MASKS,
    ENCODING_STYLES,
    POOLINGS,
    POSITIONAL_ENCODINGS,
    ModelConfig,
)
from regimetry.config.train import MONITORS, TrainConfig
from regimetry.config.urls import (check_credentials, connect_args, driver_hint, has_password, is_foreign_file, mask_password, one_line, redact_url,
                                   sqlite_store_kind, url_scheme)

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_MASKS",
    "CONTROL_SOURCES",
    "CONTROL_TASKS",
    "DEFAULT_FEATURES",
    "ENCODING_STYLES",
    "MAX_REGIMES",
    "MONITORS",
    "POOLINGS",
    "POSITIONAL_ENCODINGS",
    "SOURCES",
    "SYNTHETIC_FEATURES",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "add_data_arguments",
    "check_data_arguments",
    "check_credentials",
    "has_password",
    "load_yaml",
    "mask_password",
    "driver_hint",
    "connect_args",
    "sqlite_store_kind",
    "url_scheme",
    "one_line",
    "parse_overrides",
    "redact_url",
]
