"""Cell-level parsing of a user's CSV, shared by ``regimetry.data.sources``: raw string cells to floats,
booleans and column kinds; timestamps (ISO 8601 first, one UTC offset or one zone's daylight-saving
pair, naive local times) to a ``DatetimeIndex``; the strictly-increasing check. Every error names the
file, column, line (the header is line 1) and value. The rules are documented in
``regimetry.data.sources``' module docstring.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

_BOOL_TOKENS = {"true": 1.0, "false": 0.0}
_NUMERIC_MISSING = {"na", "n/a", "nan", "null", "none", "#n/a"}
_KIND_SHARE = 0.9
_OFFSET_RE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


def _line(i: int) -> str:
    return f"line {i + 2}"


def _cells(series: pd.Series) -> list[str | None]:
    """Raw cells as stripped strings (None = blank), independent of object / str / bool dtype."""
    out: list[str | None] = []
    for v in series.astype(object).tolist():
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
        else:
            s = str(v).strip()
            out.append(s if s else None)
    return out


def _to_float(cells: list[str | None], where: str, column: str, index: pd.Index | None) -> np.ndarray:
    out = np.full(len(cells), np.nan)
    for i, c in enumerate(cells):
        if c is None or c.lower() in _NUMERIC_MISSING:
            continue
        try:
            value = float(c)
        except ValueError:
            stamp = f" ({index[i]})" if index is not None else ""
            raise ValueError(
                f"{where}: column {column!r}, {_line(i)}{stamp}: {c!r} is not a number (the column is numeric)"
            ) from None
        if not np.isfinite(value):
            stamp = f" ({index[i]})" if index is not None else ""
            raise ValueError(f"{where}: column {column!r}, {_line(i)}{stamp}: {c!r} is not finite (inf/nan not allowed)")
        out[i] = value
    return out


def _is_number(c: str) -> bool:
    try:
        float(c)
        return True
    except ValueError:
        return False


def _classify(cells: list[str | None]) -> str | None:
    """``boolean`` / ``numeric`` / ``categorical`` from non-blank cells; ``None`` if all blank."""
    present = [c for c in cells if c is not None]
    if not present:
        return None
    n = len(present)
    if sum(c.lower() in _BOOL_TOKENS for c in present) >= _KIND_SHARE * n:
        return "boolean"
    numeric_like = [c for c in present if c.lower() not in _NUMERIC_MISSING]
    if numeric_like and sum(_is_number(c) for c in numeric_like) >= _KIND_SHARE * len(numeric_like):
        return "numeric"
    return "categorical"


def _offset_minutes(offset: str) -> int:
    if offset == "Z":
        return 0
    digits = offset[1:].replace(":", "")
    return (1 if offset[0] == "+" else -1) * (int(digits[:2]) * 60 + int(digits[2:]))


def _is_daylight_saving_pair(offsets: list[str]) -> bool:
    """Two offsets one hour apart that change only a few times a year: one zone across DST."""
    minutes = [_offset_minutes(o) for o in offsets]
    distinct = sorted(set(minutes))
    if len(distinct) != 2 or distinct[1] - distinct[0] != 60:
        return False
    changes = int(np.count_nonzero(np.diff(minutes)))
    return changes <= 2 * (len(minutes) // 120 + 1)  # <= 2 changes per ~120 bars (a daily file: per half year)


def _stray_in_daylight_saving_file(offsets: list[str | None]) -> tuple[int, str] | None:
    """``(row, "-05:00/-04:00")`` when the aware rows form one zone's daylight-saving pair
    (:func:`_is_daylight_saving_pair`) and some row has no offset or a third one: the first such row,
    which is the one to report (a plain "first row that differs" would blame the DST change itself)."""
    aware = [o for o in offsets if o is not None]
    common = sorted({_offset_minutes(o) for o in aware}, key=[_offset_minutes(o) for o in aware].count)[-2:]
    if len(common) != 2 or abs(common[0] - common[1]) != 60:
        return None
    fits = [o for o in aware if _offset_minutes(o) in common]
    if not _is_daylight_saving_pair(fits):
        return None
    bad = next((i for i, o in enumerate(offsets) if o is None or _offset_minutes(o) not in common), None)
    if bad is None:
        return None
    shown = sorted({o for o in fits}, key=_offset_minutes)
    return bad, "/".join(dict.fromkeys(shown))


def _parse_timestamps(cells: list[str | None], where: str, column: str,
                      timezone: str | None = None) -> pd.DatetimeIndex:
    for i, c in enumerate(cells):
        if c is None:
            raise ValueError(f"{where}: timestamp column {column!r} is blank at {_line(i)}")
    offsets = [m.group(1) if (m := _OFFSET_RE.search(c)) else None for c in cells]  # type: ignore[union-attr]
    normalised = {None if o is None else ("+00:00" if o == "Z" else (o if ":" in o else f"{o[:3]}:{o[3:]}"))
                  for o in offsets}
    aware = None not in normalised
    # Aware timestamps checked against a given zone, or one zone's local times across daylight saving:
    # both are stored in UTC.
    if aware and (timezone is not None or (len(normalised) > 1 and _is_daylight_saving_pair(offsets))):  # type: ignore[arg-type]
        index = _to_utc_index(cells, where, column)
        if timezone is not None:
            local = index.tz_convert(timezone)
            expected = [int(t.utcoffset().total_seconds() // 60) for t in local]
            written = [_offset_minutes(o) for o in offsets]  # type: ignore[arg-type]
            bad = next((i for i, (e, w) in enumerate(zip(expected, written)) if e != w), None)
            if bad is not None:
                raise ValueError(
                    f"{where}: timestamp column {column!r}: {_line(bad)} ({cells[bad]!r}) has offset "
                    f"{offsets[bad]} but {timezone} (DataConfig.timezone) was at "
                    f"{local[bad].strftime('%z')} then; fix the zone or the file")
        return _check_order(index, where)
    if normalised == {None} and timezone is not None:
        index = _check_order(_naive_index(cells, where, column), where)
        try:
            return index.tz_localize(timezone, ambiguous="raise", nonexistent="raise").tz_convert("UTC")
        except Exception as exc:  # noqa: BLE001 - pytz/zoneinfo raise several types for DST gaps and overlaps
            raise ValueError(f"{where}: timestamp column {column!r}: a local time does not exist or is ambiguous "
                             f"in {timezone} (DataConfig.timezone; a daylight-saving change): {exc}; write the "
                             f"timestamps with their UTC offset") from None
    if len(normalised) > 1:
        hint = ("a file in one zone's local time across daylight saving loads as is, or set DataConfig.timezone "
                "(e.g. 'America/New_York')" if timezone is None else f"DataConfig.timezone is {timezone!r}")
        stray = _stray_in_daylight_saving_file(offsets)
        if stray is not None:  # one zone across DST, plus rows that fit neither of its offsets
            bad, pair = stray
            raise ValueError(
                f"{where}: timestamp column {column!r} mixes UTC offsets: the file is in one zone's local time "
                f"across daylight saving ({pair}) except {_line(bad)} ({cells[bad]!r}), which has "
                f"{offsets[bad] or 'no offset'}; fix that row ({hint})")
        first = offsets[0]
        bad = next(i for i, o in enumerate(offsets) if (o is None) != (first is None) or (
            o is not None and first is not None and
            ("+00:00" if o == "Z" else o).replace(":", "") != ("+00:00" if first == "Z" else first).replace(":", "")))
        raise ValueError(
            f"{where}: timestamp column {column!r} mixes UTC offsets: {_line(0)} has "
            f"{first or 'no offset'} but {_line(bad)} ({cells[bad]!r}) has {offsets[bad] or 'no offset'}; "
            f"convert every timestamp to one offset (e.g. UTC) first; {hint}"
        )
    return _check_order(_naive_index(cells, where, column), where)


def _to_utc_index(cells: list[str], where: str, column: str) -> pd.DatetimeIndex:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(pd.Series(cells, dtype=object), format="mixed", errors="coerce", utc=True)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: timestamp column {column!r}: cannot parse {cells[i]!r} at {_line(i)} as a date/time")
    return pd.DatetimeIndex(parsed, name="timestamp")


def _naive_index(cells: list[str], where: str, column: str) -> pd.DatetimeIndex:
    """Timestamps of one offset (or none): ISO 8601 first, then a format inferred from the first value."""
    series = pd.Series(cells, dtype=object)
    parsed = None
    for kwargs in ({"format": "ISO8601"}, {}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(series, **kwargs)
            break
        except (ValueError, TypeError, OverflowError):
            continue
    if parsed is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coerced = pd.to_datetime(series, format="mixed", errors="coerce", utc=True)
        bad = np.flatnonzero(coerced.isna().to_numpy())
        i = int(bad[0]) if bad.size else 0
        raise ValueError(f"{where}: timestamp column {column!r}: cannot parse {cells[i]!r} at {_line(i)} as a date/time")
    return pd.DatetimeIndex(parsed, name="timestamp")


def _check_order(index: pd.DatetimeIndex, where: str) -> pd.DatetimeIndex:
    """Strictly increasing timestamps, or an error naming the first offending line."""
    values = index.asi8
    steps = np.diff(values)
    if np.any(steps == 0):
        i = int(np.flatnonzero(steps == 0)[0]) + 1
        raise ValueError(
            f"{where}: duplicate timestamp {index[i]} at {_line(i)} (same as {_line(i - 1)}); timestamps must be unique"
        )
    if np.any(steps < 0):
        i = int(np.flatnonzero(steps < 0)[0]) + 1
        raise ValueError(
            f"{where}: timestamps are not in increasing order: {_line(i)} ({index[i]}) is earlier than "
            f"{_line(i - 1)} ({index[i - 1]}); sort the file by time (rows are never reordered silently)"
        )
    return index
