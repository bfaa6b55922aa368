"""Offline data sources: S&P 500 / NASDAQ (shipped in ``arch``), a user's CSV, the simulator.

Every source becomes a :class:`SourceData`: raw bars with lower-case ``open, high, low, close,
volume`` (where available) and ``log_return`` on a sorted, unique ``DatetimeIndex``, plus the
user's extra input columns with their kind, and the label column or true regimes where relevant.
Nothing here is fitted.

CSV format (the format regimetry users keep): one header line, then one row per bar.

* Timestamp column: ``DataConfig.timestamp_column`` or the first of ``timestamp``, ``datetime``,
  ``date``, ``time`` (case-insensitive). Naive or tz-aware: one UTC offset for the whole file, or
  one zone's local times across daylight-saving changes (two offsets one hour apart, e.g. New York's
  ``-05:00`` / ``-04:00``), stored in UTC; ``DataConfig.timezone`` reads naive timestamps as local
  times of a zone and checks aware ones against it. Genuinely mixed offsets, and naive rows among
  aware ones, are errors naming the first offending line.
  ISO 8601 is parsed first; other formats are inferred from the first value. Timestamps must be
  strictly increasing: unsorted or duplicate timestamps are rejected (never silently sorted),
  naming the first offending line.
* Bar columns (case-insensitive): ``open``, ``high``, ``low``, ``close``, ``adj close`` /
  ``adj_close`` / ``adjclose``, ``volume``. Returns use the adjusted close if present, else close.
  Present price columns must be complete, finite and positive, ``high >= low``, volume finite and
  ``>= 0``. Which bar features can be computed depends on the columns present; requested features
  whose columns are missing are skipped with a warning.
* Every other column (after ``include_columns`` / ``exclude_columns``, minus the label column) is
  an input, classified from its non-blank values:

  - **boolean** if >= 90 % are ``true/false`` (any case); encoded 1/0, blank = missing;
  - **numeric** if >= 90 % parse as numbers; blank and ``NA``, ``N/A``, ``NaN``, ``null``,
    ``None`` count as missing;
  - **categorical** otherwise: every distinct string is a category, *including* ``"None"``,
    ``"NA"`` and ``"null"``; only blank cells are missing (they become the category ``"(blank)"``).

  The file is read with every cell as a raw string (``dtype=str, keep_default_na=False``), so
  pandas never turns ``"None"`` into NaN, and the result is the same under pandas' ``str`` dtype
  and ``object`` dtype. A value in a boolean/numeric column that does not parse, or ``inf``, is an
  error naming the column, line and value. An all-blank column is an error (exclude it).
  Line numbers count the header as line 1.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regimetry.config import DataConfig
from regimetry.data import features as _features
from regimetry.data.controls import generate_control
from regimetry.data.csv_cells import _BOOL_TOKENS, _cells, _classify, _is_number, _line, _parse_timestamps, _to_float
from regimetry.data.synthetic import MarkovSwitchingParams, hamilton_filter, simulate_markov_switching

__all__ = [
    "SourceData",
    "RegimetryDataWarning",
    "load_source",
    "load_bars",
    "read_csv_raw",
    "source_from_frame",
    "TIMESTAMP_CANDIDATES",
]

TIMESTAMP_CANDIDATES = ("timestamp", "datetime", "date", "time")
_BAR_ALIASES = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "adj close": "adj_close",
    "adj_close": "adj_close",
    "adjclose": "adj_close",
    "adjusted close": "adj_close",
    "volume": "volume",
}


class RegimetryDataWarning(UserWarning):
    """A data issue handled by a documented rule (a dropped constant column, a skipped feature)."""


@dataclasses.dataclass(frozen=True)
class SourceData:
    """A loaded source, before any fitting.

    Attributes:
        name: dataset tag (``DataConfig.dataset_name``).
        bars: DataFrame on a strictly increasing ``DatetimeIndex`` with lower-case bar columns
            (``open, high, low, close, adj_close, volume`` where available) and ``log_return``.
        inputs: extra input columns aligned with ``bars`` (numeric as float64, boolean as
            1.0/0.0/NaN, categorical as object strings with NaN for blank).
        kinds: column -> ``"numeric"``, ``"boolean"`` or ``"categorical"`` for ``inputs``.
        label_values: raw label column for ``target="column:<name>"`` (float or object, NaN = none).
        regimes: int64 true regimes per bar (synthetic source), else ``None``.
        extras: source-specific extras (synthetic: ``params``, ``true_regimes``, ``filter_posterior``).
        path: the CSV path (``None`` for other sources).
    """

    name: str
    bars: pd.DataFrame
    inputs: pd.DataFrame
    kinds: dict[str, str]
    label_values: pd.Series | None = None
    regimes: np.ndarray | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = None




# ------------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------------
def read_csv_raw(path: str | Path) -> pd.DataFrame:
    """Read a CSV with every cell as a raw string (blank cells NaN, ``"None"``/``"NA"`` kept).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, has no data rows, or does not parse as CSV (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; expected a header line and one row per bar")
    try:
        # index_col=False: a row with more fields than the header is an error, not silently an index
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True,
                            index_col=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; expected a header line and one row per bar") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV file: {exc}") from None
    if frame.empty:
        raise ValueError(f"{path}: the file has a header but no data rows")
    stems = [re.sub(r"[.]\d+$", "", str(c)) for c in frame.columns]
    duplicated = sorted({stem for c, stem in zip(frame.columns, stems) if stem != str(c) and stem in frame.columns})
    if duplicated:
        raise ValueError(f"{path}: duplicate column name(s) in the header: {duplicated}")
    return frame


def source_from_frame(
    frame: pd.DataFrame,
    config: DataConfig,
    where: str = "CSV",
) -> SourceData:
    """Turn a raw CSV-like frame (one row per bar, every column as read) into :class:`SourceData`.

    Works the same whether the columns hold ``object`` or pandas ``str`` dtype (cells are read as
    stripped strings). The rules are in the module docstring.

    Args:
        frame: the raw table (a timestamp column, optional bar columns, indicator columns).
        config: supplies ``timestamp_column``, ``include_columns``, ``exclude_columns``,
            ``features``, ``resolved_target`` (for the label column).
        where: the file name, used to prefix error messages.

    Raises:
        ValueError: no timestamp column; blank / unparseable / duplicate / unsorted timestamps or
            mixed UTC offsets; a missing include/exclude/label column; incomplete or non-positive
            prices, ``high < low``, negative volume; junk or ``inf`` in a numeric or boolean column;
            an all-blank input column; no inputs at all. Each names the column and line.
    """
    columns = [str(c) for c in frame.columns]
    frame = frame.copy()
    frame.columns = columns
    ts_col = _timestamp_column(columns, config, where)
    index = _parse_timestamps(_cells(frame[ts_col]), where, ts_col, config.timezone)
    label_col = _label_column(columns, config, where)
    bars, bar_cols = _bar_frame(frame, ts_col, label_col, index, where)
    exclude = set(config.exclude_columns or ())
    candidates = [c for c in columns if c != ts_col and c != label_col and c not in bar_cols.values()]
    if config.include_columns is not None:
        candidates = [c for c in config.include_columns if c in candidates]
    input_frame, kinds = _input_frame(frame, [c for c in candidates if c not in exclude], index, where)
    label_values = None if label_col is None else _label_values(_cells(frame[label_col]), label_col, index, where)
    return SourceData(name=config.dataset_name, bars=bars, inputs=input_frame, kinds=kinds, label_values=label_values,
                      path=config.csv_path)


def _timestamp_column(columns: list[str], config: DataConfig, where: str) -> str:
    """``DataConfig.timestamp_column``, or the first column named like a timestamp (any case)."""
    if config.timestamp_column is not None:
        if config.timestamp_column not in columns:
            raise ValueError(
                f"{where}: timestamp column {config.timestamp_column!r} (DataConfig.timestamp_column) not found; "
                f"columns are {columns}"
            )
        return config.timestamp_column
    lower = {c.lower().strip(): c for c in columns}
    ts_col = next((lower[c] for c in TIMESTAMP_CANDIDATES if c in lower), None)
    if ts_col is None:
        raise ValueError(
            f"{where}: no timestamp column; expected one named {list(TIMESTAMP_CANDIDATES)} (any case) or set "
            f"DataConfig.timestamp_column; columns are {columns}"
        )
    return ts_col


def _label_column(columns: list[str], config: DataConfig, where: str) -> str | None:
    """The label column of ``target="column:<name>"`` (``None`` otherwise), after checking that it and
    every column ``include_columns`` / ``exclude_columns`` name exist, and that no input is the label."""
    target = config.resolved_target
    label_col = target[len("column:"):] if target.startswith("column:") else None
    if label_col is not None and label_col not in columns:
        raise ValueError(f"{where}: label column {label_col!r} (DataConfig.target) not found; columns are {columns}")
    for field in ("include_columns", "exclude_columns"):
        named = getattr(config, field) or ()
        missing = [c for c in named if c not in columns]
        if missing:
            raise ValueError(f"{where}: DataConfig.{field} names column(s) {missing} that the file does not have; "
                             f"columns are {columns}")
    if config.include_columns is not None and label_col in config.include_columns:
        raise ValueError(f"{where}: DataConfig.include_columns contains the label column {label_col!r}; a label "
                         f"cannot be an input")
    return label_col


def _bar_frame(frame: pd.DataFrame, ts_col: str, label_col: str | None, index: pd.DatetimeIndex,
               where: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The OHLCV columns (by alias) as checked floats, plus ``log_return`` of the (adjusted) close; and
    ``{canonical name: column}``."""
    bar_cols: dict[str, str] = {}
    for c in frame.columns:
        canonical = _BAR_ALIASES.get(c.lower().strip())
        if canonical is not None and c != ts_col and c != label_col:
            if canonical in bar_cols:
                raise ValueError(f"{where}: columns {bar_cols[canonical]!r} and {c!r} both look like {canonical!r}")
            bar_cols[canonical] = c
    bars = pd.DataFrame(index=index)
    for canonical, c in bar_cols.items():
        bars[canonical] = _bar_values(_to_float(_cells(frame[c]), where, c, index), canonical, c, index, where)
    if "high" in bars and "low" in bars:
        bad = np.flatnonzero(bars["high"].to_numpy() < bars["low"].to_numpy())
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{where}: {_line(i)} ({index[i]}): high {bars['high'].iloc[i]} < low {bars['low'].iloc[i]}")
    price = "adj_close" if "adj_close" in bars else ("close" if "close" in bars else None)
    if price is not None:
        bars["log_return"] = np.log(bars[price]).diff()
    return bars, bar_cols


def _bar_values(values: np.ndarray, canonical: str, c: str, index: pd.DatetimeIndex, where: str) -> np.ndarray:
    """One bar column, checked: complete, prices > 0, volume >= 0."""
    missing = np.flatnonzero(np.isnan(values))
    if missing.size:
        i = int(missing[0])
        raise ValueError(f"{where}: bar column {c!r} is blank at {_line(i)} ({index[i]}); bar columns must be complete")
    if canonical == "volume":
        bad = np.flatnonzero(values < 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{where}: column {c!r}, {_line(i)} ({index[i]}): volume {values[i]} is negative")
    else:
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{where}: column {c!r}, {_line(i)} ({index[i]}): price {values[i]} must be > 0")
    return values


def _input_frame(frame: pd.DataFrame, candidates: list[str], index: pd.DatetimeIndex,
                 where: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The input columns typed by their cells (numeric, boolean 0/1, categorical), and their kinds."""
    inputs: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for c in candidates:
        cells = _cells(frame[c])
        kind = _classify(cells)
        if kind is None:
            raise ValueError(f"{where}: column {c!r} is blank on every row; drop it or add it to "
                             f"DataConfig.exclude_columns")
        if kind == "numeric":
            inputs[c] = _to_float(cells, where, c, index)
        elif kind == "boolean":
            inputs[c] = _to_bool(cells, where, c, index)
        else:
            inputs[c] = np.array([np.nan if v is None else v for v in cells], dtype=object)
        kinds[c] = kind
    return pd.DataFrame(inputs, index=index), kinds


def _to_bool(cells, where: str, c: str, index: pd.DatetimeIndex) -> np.ndarray:
    """A boolean column's cells as 1.0 / 0.0 / NaN (blank)."""
    values = np.full(len(cells), np.nan)
    for i, v in enumerate(cells):
        if v is None:
            continue
        code = _BOOL_TOKENS.get(v.lower())
        if code is None:
            raise ValueError(f"{where}: column {c!r}, {_line(i)} ({index[i]}): {v!r} is not True/False/blank "
                             f"(the column is boolean)")
        values[i] = code
    return values


def _label_values(cells, label_col: str, index: pd.DatetimeIndex, where: str) -> pd.Series:
    """The label column's values: floats when every present cell is a finite number, else objects."""
    present = [v for v in cells if v is not None]
    if not present:
        raise ValueError(f"{where}: label column {label_col!r} is blank on every row")
    if all(_is_number(v) and math.isfinite(float(v)) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in cells], index=index, dtype=np.float64)
    return pd.Series([np.nan if v is None else v for v in cells], index=index, dtype=object)


# ------------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------------
def _arch_bars(name: str) -> pd.DataFrame:
    if name == "sp500":
        from arch.data import sp500 as module
    else:
        from arch.data import nasdaq as module
    raw = module.load()
    bars = pd.DataFrame(
        {
            "open": raw["Open"].astype(np.float64),
            "high": raw["High"].astype(np.float64),
            "low": raw["Low"].astype(np.float64),
            "close": raw["Close"].astype(np.float64),
            "adj_close": raw["Adj Close"].astype(np.float64),
            "volume": raw["Volume"].astype(np.float64),
        },
        index=pd.DatetimeIndex(raw.index, name="timestamp"),
    )
    bars["log_return"] = np.log(bars["adj_close"]).diff()
    return bars


def _restrict(source: SourceData, config: DataConfig) -> SourceData:
    if config.start is None and config.end is None:
        return source
    index = source.bars.index
    mask = np.ones(len(index), dtype=bool)
    for field, op in (("start", np.greater_equal), ("end", np.less_equal)):
        value = getattr(config, field)
        if value is not None:
            stamp = pd.Timestamp(value)
            if index.tz is not None and stamp.tz is None:
                stamp = stamp.tz_localize(index.tz)
            mask &= op(index, stamp)
    if not mask.any():
        raise ValueError(f"DataConfig.start/end: no bar of {source.name} lies between {config.start} and {config.end} "
                         f"(data covers {index[0]} .. {index[-1]})")
    positions = np.flatnonzero(mask)
    bars = source.bars.iloc[positions].copy()
    if "log_return" in bars and positions[0] > 0:
        # the first kept bar's return used the bar before `start`; keep it causal but inside the period
        bars.iloc[0, bars.columns.get_loc("log_return")] = np.nan
    extras = dict(source.extras)
    for key in ("true_regimes", "filter_posterior"):
        if key in extras:
            extras[key] = extras[key].iloc[positions]
    return dataclasses.replace(
        source,
        bars=bars,
        inputs=source.inputs.iloc[positions],
        label_values=None if source.label_values is None else source.label_values.iloc[positions],
        regimes=None if source.regimes is None else source.regimes[positions],
        extras=extras,
    )


def load_source(config: DataConfig) -> SourceData:
    """Load the source named by ``config.source`` (restricted to ``config.start``..``config.end``).

    * ``sp500`` / ``nasdaq``: ``arch.data.<name>.load()``; ``log_return`` from ``Adj Close``.
    * ``csv``: :func:`read_csv_raw` then :func:`source_from_frame`.
    * ``synthetic``: :func:`regimetry.data.synthetic.simulate_markov_switching` with the default
      parameters, ``config.synthetic_bars`` and ``config.synthetic_seed``; the simulator's noisy
      indicators (``ind_momentum_10``, ``ind_abs_return``) are inputs only when named in
      ``include_columns``. Extras: ``params``, ``true_regimes`` (Series) and ``filter_posterior``
      (DataFrame ``(T, K)``, the Hamilton filter with the true parameters: an oracle, not fitted).
    * ``control:<task>``: :func:`regimetry.data.controls.generate_control` with
      ``config.synthetic_bars``, ``window_size`` and ``synthetic_seed``: bars ``segment``/``step``
      only, the task's channels as numeric inputs (``include_columns``/``exclude_columns`` select
      among them), ``regimes`` = the segment labels. Extras: ``params``
      (:class:`~regimetry.data.controls.ControlParams`, ``.names`` = class names), ``control``
      (the :class:`~regimetry.data.controls.Control`), ``true_regimes`` and ``filter_posterior``
      (the Bayes posterior at segment ends, NaN elsewhere). A partial segment at the front (after
      ``start``) is dropped.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_csv_raw` / :func:`source_from_frame`, or a
            ``start``/``end`` window holding no bar.
    """
    if config.source in ("sp500", "nasdaq"):
        bars = _arch_bars(config.source)
        source = SourceData(name=config.dataset_name, bars=bars, inputs=pd.DataFrame(index=bars.index), kinds={})
    elif config.source == "csv":
        frame = read_csv_raw(config.csv_path)
        source = source_from_frame(frame, config, where=str(config.csv_path))
    elif config.source == "synthetic":
        params = MarkovSwitchingParams()
        path = simulate_markov_switching(params, config.synthetic_bars, config.synthetic_seed)
        indicator_cols = [c for c in path.bars.columns if c.startswith("ind_")]
        include = list(config.include_columns or ())
        unknown = [c for c in list(include) + list(config.exclude_columns) if c not in indicator_cols]
        if unknown:
            raise ValueError(f"DataConfig.include_columns/exclude_columns: synthetic data has no column(s) {unknown}; "
                             f"its indicator columns are {indicator_cols}")
        chosen = [c for c in include if c not in config.exclude_columns]
        bars = path.bars.drop(columns=indicator_cols)
        posterior = hamilton_filter(path.returns, params)
        source = SourceData(
            name=config.dataset_name,
            bars=bars,
            inputs=path.bars[chosen].astype(np.float64),
            kinds={c: "numeric" for c in chosen},
            regimes=path.regimes,
            extras={
                "params": params,
                "true_regimes": pd.Series(path.regimes, index=bars.index, name="true_regime"),
                "filter_posterior": pd.DataFrame(posterior, index=bars.index, columns=list(params.names)),
            },
        )
    elif config.control_task is not None:
        source = _control_source(config)
    else:  # pragma: no cover - DataConfig validates source
        raise ValueError(f"DataConfig.source: unknown source {config.source!r}")
    source = _restrict(source, config)
    if config.control_task is not None:
        source = _whole_segments(source)
    return source


def _control_source(config: DataConfig) -> SourceData:
    """A control task (``regimetry.data.controls``) as a source: its channels are the inputs."""
    path = generate_control(config.control_task, config.synthetic_bars, config.window_size, config.synthetic_seed)
    channels = list(path.inputs.columns)
    unknown = [c for c in list(config.include_columns or ()) + list(config.exclude_columns) if c not in channels]
    if unknown:
        raise ValueError(f"DataConfig.include_columns/exclude_columns: {config.source} has no column(s) {unknown}; "
                         f"its channels are {channels}")
    chosen = [c for c in (config.include_columns or channels) if c not in config.exclude_columns]
    index = path.bars.index
    return SourceData(
        name=config.dataset_name,
        bars=path.bars,
        inputs=path.inputs[chosen],
        kinds={c: "numeric" for c in chosen},
        regimes=path.labels,
        extras={
            "params": path.params,
            "control": path.control,
            "true_regimes": pd.Series(path.labels, index=index, name="true_regime"),
            "filter_posterior": pd.DataFrame(path.posterior, index=index, columns=list(path.params.names)),
        },
    )


def _whole_segments(source: SourceData) -> SourceData:
    """Drop a partial control segment that ``start`` left at the front, so windows stay segments."""
    steps = source.bars["step"].to_numpy()
    first = int(np.argmax(steps == 0)) if (steps == 0).any() else len(steps)
    if first == 0:
        return source
    if first == len(steps):
        raise ValueError(f"DataConfig.start/end: the period holds no whole segment of {source.name}")
    keep = np.arange(first, len(steps))
    extras = dict(source.extras)
    for key in ("true_regimes", "filter_posterior"):
        extras[key] = extras[key].iloc[keep]
    return dataclasses.replace(source, bars=source.bars.iloc[keep], inputs=source.inputs.iloc[keep],
                               regimes=source.regimes[keep], extras=extras)


def load_bars(config: DataConfig) -> pd.DataFrame:
    """Raw bars of ``config``'s source: ``DatetimeIndex``, bar columns and ``log_return``.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_source`.
    """
    return load_source(config).bars.copy()


def usable_features(source: SourceData, names: tuple[str, ...] | list[str]) -> list[str]:
    """Requested features that the source's bar columns allow; warns about the ones skipped.

    Raises:
        ValueError: an unknown feature name (listing the valid ones).
    """
    names = _features.check_feature_names(names)
    usable, skipped = [], []
    for name in names:
        needed = _features.required_columns(name)
        (usable if all(c in source.bars.columns for c in needed) else skipped).append(name)
    if skipped:
        warnings.warn(
            f"{source.name}: skipping feature(s) {skipped}: the data lacks the bar columns they need "
            f"(it has {list(source.bars.columns)})",
            RegimetryDataWarning,
            stacklevel=3,
        )
    return usable
