"""Shared machinery of the frozen configs: construction from mappings and YAML, overrides, flattening,
type coercion, and ``section.field=value`` command-line overrides."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

__all__ = ["load_yaml", "parse_overrides"]


def _err(cls_name: str, field: str, message: str) -> ValueError:
    return ValueError(f"{cls_name}.{field}: {message}")


class _ConfigBase:
    """Shared loading, overriding and flattening for the frozen config dataclasses."""

    section: ClassVar[str] = ""

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, **overrides: Any):
        """Build a config from a mapping plus keyword overrides (overrides win).

        Raises:
            ValueError: an unknown field (naming it and listing the valid ones) or an invalid value.
        """
        merged = dict(values or {})
        merged.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {unknown}; valid fields are {sorted(names)}"
            )
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(cls.__name__, k, v, hints[k]) for k, v in merged.items()}
        return cls(**coerced)  # type: ignore[call-arg]

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any):
        """Load the config from a YAML file (its ``section`` if present, else the whole file).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the YAML does not parse, is not a mapping, or holds an invalid field.
        """
        document = load_yaml(path)
        values = document.get(cls.section, document) if cls.section in document else document
        if not isinstance(values, Mapping):
            raise ValueError(f"{path}: section '{cls.section}' must be a mapping, got {type(values).__name__}")
        if cls.section not in document:
            # A flat file may hold other sections' keys too; keep only ours.
            names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            other_sections = {"data", "model", "train", "study"}
            values = {k: v for k, v in values.items() if k in names or k not in other_sections}
        return cls.from_dict(values, **overrides)

    def replace(self, **overrides: Any):
        """Return a copy with ``overrides`` applied (validated like a new config)."""
        return type(self).from_dict(self.to_dict(), **overrides)

    # -- export -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python mapping of every field (tuples stay tuples)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def flat(self, prefix: str | None = None) -> dict[str, Any]:
        """Flattened ``{"<section>.<field>": value}`` mapping, for experiment-tracking params.

        Sequences are rendered as JSON strings so that every value is a scalar.
        """
        prefix = self.section if prefix is None else prefix
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, (tuple, list, dict)):
                value = json.dumps(value, default=str)
            out[f"{prefix}.{key}" if prefix else key] = value
        return out


def _coerce(cls_name: str, field: str, value: Any, hint: Any) -> Any:
    """Coerce YAML / command-line values to the field's annotated type (lists -> tuples, etc.)."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for candidate in non_none:
            try:
                return _coerce(cls_name, field, value, candidate)
            except (TypeError, ValueError):
                continue
        raise _err(cls_name, field, f"cannot interpret {value!r} as {hint}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _err(cls_name, field, f"expected a list, got {value!r}")
        inner = args[0] if args else Any
        if inner is Any or inner is Ellipsis:
            return tuple(value)
        return tuple(_coerce(cls_name, field, v, inner) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _err(cls_name, field, f"expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise _err(cls_name, field, f"expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _err(cls_name, field, f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise _err(cls_name, field, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _err(cls_name, field, f"expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            # YAML parses 2013-01-02 into a date: keep the ISO string.
            if hasattr(value, "isoformat"):
                return value.isoformat()
            raise _err(cls_name, field, f"expected a string, got {value!r}")
        return value
    return value


class _StringDatesLoader(yaml.SafeLoader):
    """YAML safe loader that keeps dates as strings, so that a bad date such as ``2010-13-01`` reaches
    the config's validation (which names the field) instead of failing inside PyYAML."""


_StringDatesLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_StringDatesLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file does not parse or its top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        document = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(document).__name__}")
    return document


def parse_overrides(items: list[str] | tuple[str, ...], section: str | None = None,
                    option: str = "override") -> dict[str, dict[str, Any]]:
    """Parse ``section.field=value`` strings (``model.d_model=64``) into per-section dicts.

    Values are parsed as YAML scalars/lists (``64`` -> int, ``[5,21]`` -> list, ``a=b`` -> "a=b").

    Args:
        items: the strings as given on the command line.
        section: the one section the caller accepts (``"data"`` for the experiment scripts), used only to
            word the example of the error for an item without a prefix; None (default) for any section.
        option: how the errors name an item's origin (``"--set"`` on a command line).

    Raises:
        ValueError: an item without ``=`` or without a ``section.`` prefix.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{option} {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        if "." not in key:
            example = (f"{section}.{key.strip()}={raw}" if section and key.strip() and raw
                       else f"{section}.window_size=30" if section == "data" else "model.d_model=64")
            raise ValueError(f"{option} {item!r}: expected section.field=value (e.g. {example})")
        prefix, field = key.split(".", 1)
        try:
            value = _yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.setdefault(prefix.strip(), {})[field.strip()] = value
    return out
