"""Frozen, validated configuration dataclasses for data, model and training settings.

Every config is a frozen dataclass validated on construction: an invalid value raises
``ValueError`` whose message starts with the field name (``"DataConfig.window_size: ..."``), so
that a mistake in a YAML file or a command-line override points at the field to fix.

Configs load from YAML (``DataConfig.from_yaml("cfg.yaml", window_size=60)``), from a mapping
(``from_dict``) and from ``key=value`` strings given on a command line (``parse_overrides``). A YAML
file may hold one section per config (``data:``, ``model:``, ``train:``); ``from_yaml`` reads the
section whose name matches the config (``DataConfig.section == "data"``) or, when there is no such
section, the whole file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import zoneinfo
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "load_yaml",
    "parse_overrides",
    "has_password",
    "one_line",
    "redact_url",
]


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


def has_password(url: str | None) -> bool:
    """Whether a storage / tracking URL carries credentials (``scheme://user:pw@host/...``). Only the
    network location counts: ``sqlite:///data/a@b.db`` is a file name with an ``@``, not a password."""
    return bool(url) and "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]


def one_line(message: object, limit: int = 400) -> str:
    """A driver's (possibly multi-line) error message as one line: SQLAlchemy's "Background on this
    error" link dropped, whitespace collapsed, cut at ``limit`` characters."""
    lines = [line for line in str(message).splitlines() if not line.strip().startswith("(Background on this error")]
    text = " ".join(" ".join(lines).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``postgresql://u:***@host/db``), for every message,
    tag, log line and report; URLs without credentials come back unchanged."""
    if not has_password(url):
        return url
    scheme, rest = url.split("://", 1)
    netloc, slash, tail = rest.partition("/")
    creds, host = netloc.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}{slash}{tail}"


def mask_password(text: object, url: str | None) -> str:
    """``text`` (e.g. a database driver's error message, which may quote the URL) with the password of
    ``url`` replaced by ``***`` wherever it occurs."""
    text = str(text)
    if not has_password(url):
        return text
    password = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[0].partition(":")[2]
    return text.replace(password, "***") if password else text


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


def add_data_arguments(parser, *, seed_help: str, smoke_help: str, target_help: str | None = None) -> None:
    """The command-line options every experiment script shares: ``--dataset``, ``--csv``, ``--target``,
    ``--tracking-uri``, ``--seed``, ``--no-report``, ``--smoke`` (check them with
    :func:`check_data_arguments`)."""
    parser.add_argument("--dataset", choices=SOURCES + CONTROL_SOURCES, default="sp500",
                        help="data source (default sp500); control:<task> is a control task")
    parser.add_argument("--csv", metavar="PATH", help="bars CSV for --dataset csv")
    parser.add_argument("--target", default=None, help=target_help or
                        "forward_vol_regime | true_regime (synthetic) | column:<name> (csv); default by dataset")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="skip the papermill report (reports/<experiment>/)")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)


def check_data_arguments(parser, args) -> None:
    """``--dataset csv`` needs ``--csv``, and ``--csv`` is read only with ``--dataset csv`` (exit 2)."""
    if args.dataset == "csv" and not args.csv:
        parser.error("--dataset csv needs --csv PATH")
    if args.csv and args.dataset != "csv":
        parser.error("--csv is only used with --dataset csv")


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Parse ``section.field=value`` strings (``model.d_model=64``) into per-section dicts.

    Values are parsed as YAML scalars/lists (``64`` -> int, ``[5,21]`` -> list, ``a=b`` -> "a=b").

    Raises:
        ValueError: an item without ``=`` or without a ``section.`` prefix.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        if "." not in key:
            raise ValueError(f"override {item!r}: expected section.field=value (e.g. model.d_model=64)")
        section, field = key.split(".", 1)
        try:
            value = _yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.setdefault(section.strip(), {})[field.strip()] = value
    return out


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
SOURCES = ("sp500", "nasdaq", "csv", "synthetic")
#: Control tasks (``regimetry.data.controls``): synthetic data sets whose ablation winner theory fixes
#: in advance. ``DataConfig.source = "control:<task>"``; ``control_data_overrides(task)`` gives the
#: data settings each one needs (``features=()``, ``stride = window_size``, ...).
CONTROL_TASKS = ("order", "recency", "event_order", "induction")
CONTROL_SOURCES = tuple(f"control:{task}" for task in CONTROL_TASKS)
#: Inputs on synthetic data: the simulator's range/volume depend on the current regime directly, so
#: with them a window model could beat the returns-only Hamilton filter that defines the ceiling.
SYNTHETIC_FEATURES = ("log_return", "abs_return")
MAX_REGIMES = 20  # regime classes; more is not a regime model (and every per-class figure breaks)
#: Default inputs (issue 11): returns, range, close location, volume, and realized volatility on the
#: LOG scale at the HAR-RV lags 1/5/22 plus 63 bars. The log levels replaced rv_5/rv_21/rv_63: on the
#: scale HAR-RV uses, a linear model extrapolates to calmer periods than training saw (chosen on the
#: tuning period only, by an inner walk-forward 2003-2007; benchmarks/README.md).
DEFAULT_FEATURES = (
    "log_return",
    "abs_return",
    "range",
    "close_location",
    "log_rv_1",
    "log_rv_5",
    "log_rv_22",
    "log_rv_63",
    "volume_z",
)


@dataclasses.dataclass(frozen=True)
class DataConfig(_ConfigBase):
    """Where the bars come from, which features and labels are built, and how they are split.

    Args:
        source: ``"sp500"`` / ``"nasdaq"`` (daily OHLCV 1999-01-04..2018-12-31 shipped in ``arch``),
            ``"csv"`` (a user's bars + indicator signals, ``csv_path`` required) or ``"synthetic"``
            (Markov-switching simulator with known regimes), or ``"control:<task>"`` with task in
            ``CONTROL_TASKS`` (``order``, ``recency``, ``event_order``, ``induction``: synthetic
            control tasks with a known ablation winner, ``regimetry.data.controls``; they need
            ``features=()``, ``stride == window_size`` and take ``target="true_regime"``; see
            ``regimetry.data.controls.control_data_overrides``). Default ``"sp500"``.
        csv_path: path of the CSV for ``source="csv"``.
        timestamp_column: name of the CSV's timestamp column; ``None`` auto-detects one of
            ``timestamp``, ``datetime``, ``date``, ``time`` (case-insensitive).
        include_columns: CSV columns to keep as model inputs (besides OHLCV-derived features);
            ``None`` keeps all.
        exclude_columns: CSV columns to drop from the inputs.
        features: bar features to compute (see ``regimetry.data.features``). Default
            (``DEFAULT_FEATURES``): log return, absolute return, high-low range, close location, log
            realized volatility over 1/5/22/63 bars (the HAR lags and a quarter), volume z-score.
        target: ``"forward_vol_regime"`` (forward realized-volatility regime), ``"true_regime"``
            (synthetic source only) or ``"column:<name>"`` (a label column of the CSV). ``None``
            picks ``true_regime`` for synthetic data and ``forward_vol_regime`` otherwise.
        horizon: bars of forward realized volatility in the label (default 21 = one month).
        num_regimes: number of volatility classes, cut at training-period quantiles (default 3).
        window_size: bars per window, ``>= 1`` (default 30).
        stride: bars between consecutive windows' last bars, ``>= 1`` (default 1).
        train_fraction / val_fraction: chronological split by labelled-sample count; the test
            split gets the rest. Ignored when ``val_start`` and ``test_start`` are given.
        val_start / test_start: ISO dates starting the validation / test periods.
        start / end: optional ISO dates restricting the bars used.
        embargo: bars dropped at the start of validation and test beyond the purge, ``>= 0``;
            ``None`` means ``horizon``.
        num_folds: walk-forward (expanding window) folds for ``regimetry.data.prepare_folds``.
        folds_start / folds_end: the period the folds' test blocks cover together (ISO dates);
            ``None`` start means the first bar after the first 30 % of the samples. Default start
            2008-01-01: the ablations tune hyperparameters on the first fold's train/validation
            blocks, i.e. on the bars before it (S&P 500: train 1999-2006, validation 2006-07..2007-09,
            all three regimes present). With the older 2004 start the tuning fold had 879 training
            and 143 validation windows, and the first test block (2004-06) held one class only.
        label_buckets: for ``target="column:<name>"`` with a continuous column (e.g. a forward
            return or volatility you computed): bucket it into this many classes at the training
            period's quantiles, as ``forward_vol_regime`` does; ``None`` (default) takes the
            column's values as class labels.
        timezone: IANA zone of the CSV's timestamps (e.g. ``"America/New_York"``): naive timestamps
            are read as local times of that zone, and aware ones are checked against it. Without
            it, a file whose offsets differ only by daylight saving (two offsets one hour apart,
            changing a few times a year) loads as one zone. Either way the index is stored in UTC.
        leakage_check: the leakage audit of a CSV's numeric and boolean input columns
            (``regimetry.data.audit``: a column that future returns explain, such as a ``shift(-1)``
            return or a centred rolling volatility): ``"warn"`` (default, a
            ``RegimetryDataWarning`` naming the column and the evidence), ``"error"`` or ``"off"``.
        synthetic_bars / synthetic_seed: length and seed of the simulated path (for a control
            task: ``synthetic_bars // window_size`` independent segments of ``window_size`` bars).
    """

    section: ClassVar[str] = "data"

    source: str = "sp500"
    csv_path: str | None = None
    timestamp_column: str | None = None
    include_columns: tuple[str, ...] | None = None
    exclude_columns: tuple[str, ...] = ()
    features: tuple[str, ...] = DEFAULT_FEATURES
    target: str | None = None
    horizon: int = 21
    num_regimes: int = 3
    window_size: int = 30
    stride: int = 1
    train_fraction: float = 0.70
    val_fraction: float = 0.15
    val_start: str | None = None
    test_start: str | None = None
    start: str | None = None
    end: str | None = None
    embargo: int | None = None
    num_folds: int = 5
    folds_start: str | None = "2008-01-01"
    folds_end: str | None = None
    synthetic_bars: int = 6000
    synthetic_seed: int = 0
    label_buckets: int | None = None
    timezone: str | None = None
    leakage_check: str = "warn"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.source not in SOURCES and self.source not in CONTROL_SOURCES:
            raise _err(name, "source", f"expected one of {list(SOURCES)} or control:<task> with task in "
                                       f"{list(CONTROL_TASKS)}, got {self.source!r}")
        if self.source == "csv" and not self.csv_path:
            raise _err(name, "csv_path", "required when source='csv'")
        if self.csv_path and self.source != "csv":
            raise _err(name, "csv_path", f"is read only with source='csv', but source is {self.source!r}: set "
                                         f"data.source=csv to use {self.csv_path}, or drop csv_path")
        for field in ("horizon", "num_regimes", "window_size", "stride", "num_folds", "synthetic_bars"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _err(name, field, f"must be a positive integer, got {value!r}")
        if not 2 <= self.num_regimes <= MAX_REGIMES:
            raise _err(name, "num_regimes", f"must lie in [2, {MAX_REGIMES}], got {self.num_regimes}")
        if self.embargo is not None and (not isinstance(self.embargo, int) or self.embargo < 0):
            raise _err(name, "embargo", f"must be a non-negative integer or None, got {self.embargo!r}")
        for field in ("train_fraction", "val_fraction"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise _err(name, field, f"must lie in (0, 1), got {value!r}")
        if self.train_fraction + self.val_fraction >= 1.0:
            raise _err(
                name,
                "val_fraction",
                f"train_fraction + val_fraction must be < 1 to leave a test split, got "
                f"{self.train_fraction} + {self.val_fraction}",
            )
        if self.label_buckets is not None:
            if not isinstance(self.label_buckets, int) or isinstance(self.label_buckets, bool) or not (
                    2 <= self.label_buckets <= MAX_REGIMES):
                raise _err(name, "label_buckets", f"must be an integer in [2, {MAX_REGIMES}] or None, "
                                                  f"got {self.label_buckets!r}")
            if not self.resolved_target.startswith("column:"):
                raise _err(name, "label_buckets", f"buckets a CSV label column: needs target='column:<name>', "
                                                  f"got target={self.resolved_target!r}")
        if self.leakage_check not in ("warn", "error", "off"):
            raise _err(name, "leakage_check", f"expected 'warn', 'error' or 'off', got {self.leakage_check!r}")
        if self.timezone is not None:
            try:
                zoneinfo.ZoneInfo(str(self.timezone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise _err(name, "timezone", f"expected an IANA time zone such as 'America/New_York' or "
                                             f"'Europe/London', got {self.timezone!r}") from None
        if (self.val_start is None) != (self.test_start is None):
            raise _err(name, "val_start", "give both val_start and test_start, or neither")
        for field in ("val_start", "test_start", "start", "end", "folds_start", "folds_end"):
            value = getattr(self, field)
            if value is not None:
                _check_date(name, field, value)
        if self.val_start is not None and self.test_start is not None and self.val_start >= self.test_start:
            raise _err(name, "test_start", f"must come after val_start ({self.val_start}), got {self.test_start}")
        target = self.resolved_target
        if target == "true_regime" and self.source != "synthetic" and self.control_task is None:
            raise _err(name, "target", "'true_regime' exists only for source='synthetic' or a control:<task>")
        if self.control_task is not None:
            if target != "true_regime":
                raise _err(name, "target", f"a control task's label is its own: expected 'true_regime' (or None), "
                                           f"got {target!r}")
            if self.features:
                raise _err(name, "features", f"a control task brings its own input channels: expected () (see "
                                             f"regimetry.data.controls.control_data_overrides), got {self.features}")
            if self.stride != self.window_size:
                raise _err(name, "stride", f"a control task needs stride == window_size (one window per segment), "
                                           f"got stride={self.stride}, window_size={self.window_size}")
        if not (target in ("forward_vol_regime", "true_regime") or target.startswith("column:")):
            raise _err(
                name, "target", f"expected 'forward_vol_regime', 'true_regime' or 'column:<name>', got {target!r}"
            )
        if target.startswith("column:") and (self.source != "csv" or not target[len("column:"):]):
            raise _err(name, "target", "'column:<name>' needs source='csv' and a column name")
        if not self.features and self.source != "csv" and self.control_task is None:
            raise _err(name, "features", "at least one feature is needed")

    @property
    def resolved_target(self) -> str:
        """The label definition in force (``target`` with ``None`` resolved by source)."""
        if self.target is None:
            return "true_regime" if self.source == "synthetic" or self.control_task else "forward_vol_regime"
        return self.target

    @property
    def control_task(self) -> str | None:
        """The control task of a ``"control:<task>"`` source (e.g. ``"order"``), else ``None``."""
        return self.source[len("control:"):] if self.source.startswith("control:") else None

    @property
    def resolved_embargo(self) -> int:
        """Embargo in bars (``embargo`` with ``None`` resolved to ``horizon``)."""
        return self.horizon if self.embargo is None else self.embargo

    @property
    def dataset_name(self) -> str:
        """Short dataset tag for tracking: ``sp500``, ``nasdaq``, ``synthetic`` or ``csv:<file>``."""
        return f"csv:{Path(self.csv_path).name}" if self.source == "csv" and self.csv_path else self.source


def _check_date(cls_name: str, field: str, value: str) -> None:
    import datetime as _dt

    try:
        _dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise _err(cls_name, field, f"expected an ISO date YYYY-MM-DD, got {value!r}") from None


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
POSITIONAL_ENCODINGS = ("sinusoidal", "learnable", "none")
ENCODING_STYLES = ("interleaved", "stacked")
ATTENTION_MASKS = ("none", "causal")
POOLINGS = ("mean", "max", "cls", "last", "attention")
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
            model of ``regimetry.baselines``); ``()`` = every feature. The model builder then needs
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


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
MONITORS = ("val_balanced_accuracy", "val_loss", "val_macro_f1", "val_accuracy")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_ConfigBase):
    """How a classifier is fitted.

    Args:
        learning_rate: AdamW learning rate (> 0). Default 1e-3.
        weight_decay: AdamW decoupled weight decay (>= 0). Default 1e-4.
        batch_size: windows per step (>= 1). Default 64.
        max_epochs: upper bound on epochs (>= 1). Default 30.
        patience: epochs without improvement of ``monitor`` before early stopping (>= 1);
            the best epoch's weights are restored.
        monitor: validation metric for early stopping / pruning, one of ``val_balanced_accuracy``
            (default), ``val_macro_f1``, ``val_accuracy`` (maximised) or ``val_loss`` (minimised).
        class_weight: ``"none"`` or ``"balanced"`` (inverse training-class frequency).
        label_smoothing: in ``[0, 1)``. Default 0.
        clipnorm: clip of the global gradient norm over all weights (``None`` = off). Default 1.
        seed: seeds Python, NumPy and Keras (one seed controls all three).
        warm_start_candidate: when the model has a warm-started linear shortcut
            (``ModelConfig.linear_shortcut``), score the warm-started model on validation before the
            first step and let it compete with every epoch for the restored weights: training moves
            the model away from its linear start only when an epoch beats it strictly on ``monitor``
            (restored as ``best_epoch = -1``). No effect without a shortcut. Default off.
        warm_start_margin: with ``warm_start_candidate``, how many standard errors an epoch must beat
            the warm start by before it replaces it (>= 0; 0 = any strict improvement, 1 = the
            one-standard-error rule of Breiman et al. 1984, sec. 3.4.3, and Hastie, Tibshirani &
            Friedman 2009, sec. 7.10: keep the simpler model unless the complex one is better by more
            than one SE). The SE is that of the paired difference epoch minus warm start on the
            validation windows (circular block bootstrap, 200 replicates, blocks of one label horizon
            in windows). Default 0.
    """

    section: ClassVar[str] = "train"

    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 5
    monitor: str = "val_balanced_accuracy"
    class_weight: str = "balanced"
    label_smoothing: float = 0.0
    clipnorm: float | None = 1.0
    seed: int = 0
    warm_start_candidate: bool = False
    warm_start_margin: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.warm_start_candidate, bool):
            raise _err(name, "warm_start_candidate", f"must be true or false, got {self.warm_start_candidate!r}")
        if not (isinstance(self.warm_start_margin, (int, float)) and not isinstance(self.warm_start_margin, bool)
                and math.isfinite(self.warm_start_margin) and self.warm_start_margin >= 0):
            raise _err(name, "warm_start_margin", f"must be a finite number >= 0 (standard errors), got "
                                                  f"{self.warm_start_margin!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise _err(name, "learning_rate", f"must be a positive number, got {self.learning_rate!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise _err(name, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        for field in ("batch_size", "max_epochs", "patience"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _err(name, field, f"must be a positive integer, got {value!r}")
        if self.monitor not in MONITORS:
            raise _err(name, "monitor", f"expected one of {list(MONITORS)}, got {self.monitor!r}")
        if self.class_weight not in ("none", "balanced"):
            raise _err(name, "class_weight", f"expected 'none' or 'balanced', got {self.class_weight!r}")
        if not (0.0 <= self.label_smoothing < 1.0):
            raise _err(name, "label_smoothing", f"must lie in [0, 1), got {self.label_smoothing!r}")
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise _err(name, "clipnorm", f"must be > 0 or None, got {self.clipnorm!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2 ** 32:
            raise _err(name, "seed", f"must be an integer in [0, 2**32), got {self.seed!r}")

    @property
    def monitor_mode(self) -> str:
        """``"min"`` for ``val_loss``, ``"max"`` for the others."""
        return "min" if self.monitor == "val_loss" else "max"
