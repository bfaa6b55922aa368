"""CSV source: typing of indicator columns, leakage-free preprocessing, and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regimetry.config import DataConfig
from regimetry.data import prepare
from regimetry.data.preprocessing import Preprocessor
from regimetry.data.sources import RegimetryDataWarning, read_csv_raw, source_from_frame

FIXTURE = Path(__file__).parent / "fixtures" / "signals.csv"
SMALL = dict(features=("log_return", "abs_return", "range", "rv_5"), window_size=6, horizon=3,
             train_fraction=0.6, val_fraction=0.2)


def cfg(path, **kw) -> DataConfig:
    return DataConfig(source="csv", csv_path=str(path), **{**SMALL, **kw})


def lines(path=FIXTURE) -> list[str]:
    return Path(path).read_text().splitlines()


def write(tmp_path, rows: list[str], name="bars.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(rows) + "\n")
    return p


def test_csv_prepare_kinds_shapes_and_none_category():
    s = prepare(cfg(FIXTURE))
    kinds = s.extras["input_kinds"]
    assert kinds["rsi_14"] == "numeric" and kinds["macd_cross"] == "boolean"
    assert kinds["trend_signal"] == "categorical" and kinds["strength"] == "categorical"
    assert "regime_label" in kinds  # not the target here, so an ordinary numeric input
    names = s.feature_names
    assert "trend_signal=None" in names and "trend_signal=(blank)" in names  # "None" is a category, not missing
    assert "macd_cross__missing" in names
    assert s.train.X.shape[1:] == (6, len(names)) and s.train.X.dtype == np.float32
    assert np.all(np.isfinite(s.train.X)) and np.all(np.isfinite(s.test.X))
    with_label = prepare(cfg(FIXTURE, target="column:regime_label"))
    assert with_label.class_names == ["0", "1", "2"]
    assert not any(n.startswith("regime_label") for n in with_label.feature_names)  # label never an input
    np.testing.assert_array_equal(with_label.train.y, pd.read_csv(FIXTURE)["regime_label"].to_numpy()[
        with_label.train.positions])


def test_include_exclude_columns():
    s = prepare(cfg(FIXTURE, include_columns=("trend_signal",), exclude_columns=("regime_label",)))
    assert [n for n in s.feature_names if not n.startswith("trend_signal")] == list(SMALL["features"])
    s = prepare(cfg(FIXTURE, exclude_columns=("trend_signal", "strength", "regime_label")))
    assert not any(n.startswith(("trend_signal", "strength")) for n in s.feature_names)


def test_string_dtype_and_object_dtype_give_the_same_matrix():
    config = cfg(FIXTURE)
    as_str = pd.read_csv(FIXTURE, dtype="str", keep_default_na=False, na_values=[""])
    as_obj = pd.read_csv(FIXTURE, dtype=object, keep_default_na=False, na_values=[""])
    assert isinstance(as_str["trend_signal"].dtype, pd.StringDtype) and as_obj["trend_signal"].dtype == object
    outs = []
    for frame in (as_str, as_obj, read_csv_raw(FIXTURE)):
        src = source_from_frame(frame, config, where="fixture")
        pre = Preprocessor(src.kinds).fit(src.inputs.iloc[:80])
        outs.append((pre.feature_names_, pre.transform(src.inputs)))
    for names, matrix in outs[1:]:
        assert names == outs[0][0]
        np.testing.assert_array_equal(matrix, outs[0][1])


def _perturbed_copy(tmp_path, first_row: int) -> Path:
    df = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(0)
    rows = np.arange(first_row, len(df))
    for c in ("Open", "High", "Low", "Close"):
        df.loc[rows, c] = (df.loc[rows, c].astype(float) * 1.7).round(4).astype(str)
    df.loc[rows, "Volume"] = (df.loc[rows, "Volume"].astype(float) * 9).astype(np.int64).astype(str)
    df.loc[rows, "rsi_14"] = np.round(rng.uniform(0, 100, rows.size), 2).astype(str)
    df.loc[rows, "macd_cross"] = np.where(rng.random(rows.size) < 0.5, "", "True")
    df.loc[rows, "trend_signal"] = "Neutral"  # a category never seen in training
    path = tmp_path / "perturbed.csv"
    df.to_csv(path, index=False)
    return path


def test_changing_val_and_test_rows_never_changes_what_was_fitted(tmp_path):
    base = prepare(cfg(FIXTURE))
    first_val_window_row = int(base.val.positions[0]) - 6 + 1
    assert base.train.positions[-1] + 3 < first_val_window_row  # purge: the label period ends before it
    other = prepare(cfg(_perturbed_copy(tmp_path, first_val_window_row)))
    a, b = base.preprocessor.fitted_state(), other.preprocessor.fitted_state()
    assert a["feature_names"] == b["feature_names"]
    for key in ("numeric_median", "numeric_mean", "numeric_scale"):
        np.testing.assert_array_equal(a[key], b[key])
    for ca, cb in zip(a["categories"], b["categories"]):
        np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(base.label_thresholds, other.label_thresholds)
    np.testing.assert_array_equal(base.train.X, other.train.X)
    np.testing.assert_array_equal(base.train.y, other.train.y)
    assert not np.array_equal(base.test.X, other.test.X)
    # the unseen category encodes as all zeros
    cols = [i for i, n in enumerate(other.feature_names) if n.startswith("trend_signal=")]
    assert np.all(other.test.X[:, :, cols] == 0)


def test_tz_aware_timestamps_and_auto_detection(tmp_path):
    rows = lines()
    header = rows[0].replace("Timestamp", "Date")
    body = [r.split(",", 1)[0] + "T09:30:00-05:00," + r.split(",", 1)[1] for r in rows[1:]]
    s = prepare(cfg(write(tmp_path, [header] + body)))
    assert s.bars.index.tz is not None and str(s.train.index[0].utcoffset()) == "-1 day, 19:00:00"


def _new_york_daily(tmp_path, start="2017-01-02", end="2019-12-31", naive=False):
    """A daily file as a New York export writes it: local midnight with -05:00 in winter, -04:00 in
    summer (DST starts the second Sunday of March, ends the first Sunday of November)."""
    days = pd.bdate_range(start, end)
    local = days.tz_localize("America/New_York")
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(days))))
    stamps = [str(d.date()) for d in days] if naive else [t.isoformat() for t in local]
    frame = pd.DataFrame({"timestamp": stamps, "open": close, "high": close * 1.01, "low": close * 0.99,
                          "close": close, "volume": rng.integers(1_000, 2_000, len(days)),
                          "fwd_vol": np.abs(rng.normal(0.15, 0.05, len(days)))})
    path = tmp_path / ("naive.csv" if naive else "new_york.csv")
    frame.to_csv(path, index=False)
    return path, days


def test_exchange_local_timestamps_across_daylight_saving_load_in_utc(tmp_path):
    """Issue 15: -05:00/-04:00 across the March and November changes load with no row lost, in UTC."""
    from regimetry.data import load_source

    path, days = _new_york_daily(tmp_path)
    text = path.read_text()
    assert "2017-03-10T00:00:00-05:00" in text and "2017-03-13T00:00:00-04:00" in text  # March change
    assert "2017-11-03T00:00:00-04:00" in text and "2017-11-06T00:00:00-05:00" in text  # November change
    source = load_source(DataConfig(source="csv", csv_path=str(path)))
    index = source.bars.index
    assert len(index) == len(days) and str(index.tz) == "UTC"
    local = index.tz_convert("America/New_York")
    assert (local.hour == 0).all() and list(local.date) == list(days.date)  # every bar on its own local day
    # the same with the zone named: checked against it; a wrong zone names the line and the offsets
    assert load_source(DataConfig(source="csv", csv_path=str(path), timezone="America/New_York")).bars.index.equals(index)
    with pytest.raises(ValueError, match=r"line 2 .*-05:00 but Europe/London .*\+0000"):
        load_source(DataConfig(source="csv", csv_path=str(path), timezone="Europe/London"))
    # naive local dates with a zone: the same UTC instants
    naive, _ = _new_york_daily(tmp_path, naive=True)
    assert load_source(DataConfig(source="csv", csv_path=str(naive), timezone="America/New_York")).bars.index.equals(index)
    with pytest.raises(ValueError, match="DataConfig.timezone: expected an IANA time zone"):
        DataConfig(source="csv", csv_path=str(naive), timezone="Mars/Olympus")


def test_a_stray_row_in_a_daylight_saving_file_is_the_row_named(tmp_path):
    """A new-user check: one +02:00 row, or one row without offset, in a New York file was reported as
    "line 2 has -05:00 but line 64 has -04:00" (the legitimate March change)."""
    from regimetry.data import load_source

    path, _ = _new_york_daily(tmp_path)
    rows = path.read_text().splitlines()
    for stray, shown in (("+02:00", r"\+02:00"), ("", "no offset")):
        edited = list(rows)
        stamp = edited[101].split(",", 1)[0]
        edited[101] = stamp[:-6] + stray + "," + edited[101].split(",", 1)[1]
        bad = tmp_path / "stray.csv"
        bad.write_text("\n".join(edited) + "\n")
        with pytest.raises(ValueError, match=rf"one zone's local time across daylight saving \(-05:00/-04:00\) "
                                             rf"except line 102 .*{shown}.*set DataConfig.timezone"):
            load_source(DataConfig(source="csv", csv_path=str(bad)))
        # with the zone named, the row is checked against it (an offset) or named (no offset), and the
        # message no longer asks for the zone that was given
        expected = (r"line 102 .*has offset \+02:00 but America/New_York" if stray else
                    r"except line 102 .*no offset; fix that row \(DataConfig.timezone is 'America/New_York'\)")
        with pytest.raises(ValueError, match=expected):
            load_source(DataConfig(source="csv", csv_path=str(bad), timezone="America/New_York"))


def test_continuous_label_column_gets_a_short_error_or_training_quantile_buckets(tmp_path):
    """Issue 15: a float label column is refused in one short line, or bucketed on request with
    thresholds fitted on the training samples only."""
    path, _ = _new_york_daily(tmp_path)
    base = dict(source="csv", csv_path=str(path), target="column:fwd_vol", features=("log_return", "abs_return"))
    with pytest.raises(ValueError) as info:
        prepare(DataConfig(**base))
    message = str(info.value)
    assert len(message) <= 300 and "'fwd_vol' looks continuous" in message and "label_buckets" in message
    s = prepare(DataConfig(**base, label_buckets=3))
    assert s.class_names == ["fwd_vol_q0", "fwd_vol_q1", "fwd_vol_q2"]
    assert np.bincount(s.train.y).max() - np.bincount(s.train.y).min() <= 1  # tertiles of training
    # no look-ahead: raising every validation/test label by 10 changes no training class
    frame = pd.read_csv(path)
    later = frame.index >= s.val.positions.min()
    frame.loc[later, "fwd_vol"] += 10
    changed = tmp_path / "changed.csv"
    frame.to_csv(changed, index=False)
    t = prepare(DataConfig(**{**base, "csv_path": str(changed)}, label_buckets=3))
    np.testing.assert_array_equal(s.train.y, t.train.y)
    assert (t.test.y == 2).all()  # all above the training thresholds now
    with pytest.raises(ValueError, match="label_buckets: buckets a CSV label column"):
        DataConfig(source="sp500", label_buckets=3)
    with pytest.raises(ValueError, match=r"label_buckets: must be an integer in \[2, "):
        DataConfig(**base, label_buckets=1)


# ------------------------------------------------------------------------------------------------
# bad input: each names the file / column / line / parameter
# ------------------------------------------------------------------------------------------------
def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        prepare(cfg(tmp_path / "nope.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv: the file is empty"):
        prepare(cfg(empty))
    header_only = write(tmp_path, [lines()[0]], "header.csv")
    with pytest.raises(ValueError, match="header.csv: the file has a header but no data rows"):
        prepare(cfg(header_only))


def _edit(rows, line_no, column, value):
    """Replace one cell (line numbers count the header as line 1)."""
    header = rows[0].split(",")
    cells = rows[line_no - 1].split(",")
    cells[header.index(column)] = value
    out = list(rows)
    out[line_no - 1] = ",".join(cells)
    return out


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: [r[0].replace("Timestamp", "when")] + r[1:], r"no timestamp column.*'when'"),
        (lambda r: _edit(r, 9, "Timestamp", "not-a-date"), r"cannot parse 'not-a-date' at line 9"),
        (lambda r: _edit(r, 9, "Timestamp", r[7].split(",")[0]), r"duplicate timestamp .* at line 9"),
        (lambda r: r[:1] + r[1:8] + [r[9], r[8]] + r[10:], r"not in increasing order: line 10 .* is earlier than line 9"),
        (lambda r: [r[0]] + [x.split(",", 1)[0] + "T00:00:00+01:00," + x.split(",", 1)[1] for x in r[1:20]]
         + [x.split(",", 1)[0] + "T00:00:00+05:30," + x.split(",", 1)[1] for x in r[20:]], r"mixes UTC offsets.*line 21"),
        # two offsets one hour apart, but alternating on every row: not daylight saving
        (lambda r: [r[0]] + [x.split(",", 1)[0] + ("T00:00:00+01:00," if i % 2 else "T00:00:00+02:00,")
                             + x.split(",", 1)[1] for i, x in enumerate(r[1:])], r"mixes UTC offsets.*line 3"),
        # naive rows among aware ones
        (lambda r: [r[0]] + [x.split(",", 1)[0] + "T00:00:00-05:00," + x.split(",", 1)[1] for x in r[1:30]]
         + r[30:], r"mixes UTC offsets.*line 31.*no offset"),
        (lambda r: _edit(r, 12, "rsi_14", "abc"), r"column 'rsi_14', line 12 .*'abc' is not a number"),
        (lambda r: _edit(r, 13, "rsi_14", "inf"), r"column 'rsi_14', line 13 .*not finite"),
        (lambda r: _edit(r, 14, "macd_cross", "Maybe"), r"column 'macd_cross', line 14 .*not True/False/blank"),
        (lambda r: _edit(r, 15, "Close", ""), r"bar column 'Close' is blank at line 15"),
        (lambda r: _edit(r, 16, "Close", "-3"), r"column 'Close', line 16 .*must be > 0"),
        (lambda r: [x + ("," if i else ",empty_col") for i, x in enumerate(r)], r"column 'empty_col' is blank on every row"),
    ],
)
def test_bad_csv_content(tmp_path, edit, message):
    path = write(tmp_path, edit(lines()))
    with pytest.raises(ValueError, match=message) as info:
        prepare(cfg(path))
    assert "bars.csv" in str(info.value) or "timestamp" in str(info.value).lower()


def test_bad_column_options(tmp_path):
    with pytest.raises(ValueError, match=r"include_columns names column\(s\) \['ghost'\]"):
        prepare(cfg(FIXTURE, include_columns=("ghost",)))
    with pytest.raises(ValueError, match=r"exclude_columns names column\(s\) \['ghost'\]"):
        prepare(cfg(FIXTURE, exclude_columns=("ghost",)))
    with pytest.raises(ValueError, match="label column 'ghost'"):
        prepare(cfg(FIXTURE, target="column:ghost"))
    with pytest.raises(ValueError, match="timestamp column 'ts'"):
        prepare(cfg(FIXTURE, timestamp_column="ts"))


def test_constant_column_in_training_is_dropped_with_warning(tmp_path):
    rows = lines()
    header = rows[0] + ",flag"
    body = [r + ("," + ("7" if i < 110 else str(i))) for i, r in enumerate(rows[1:])]
    with pytest.warns(RegimetryDataWarning, match=r"dropping input column\(s\) \['flag'\]"):
        s = prepare(cfg(write(tmp_path, [header] + body)))
    assert "flag" not in s.feature_names


def test_too_few_bars_and_single_class(tmp_path):
    with pytest.raises(ValueError, match=r"bars give \d+ labelled windows"):
        prepare(cfg(write(tmp_path, lines()[:15])))
    rows = lines()
    header = rows[0].split(",")
    k = header.index("regime_label")
    body = []
    for i, r in enumerate(rows[1:]):
        cells = r.split(",")
        cells[k] = "0" if i < 110 else str(i % 2)
        body.append(",".join(cells))
    with pytest.raises(ValueError, match="training split holds a single class"):
        prepare(cfg(write(tmp_path, [rows[0]] + body), target="column:regime_label"))


def test_label_unseen_in_training_names_column_and_timestamp(tmp_path):
    rows = lines()
    s = prepare(cfg(FIXTURE, target="column:regime_label"))
    line = int(s.test.positions[3]) + 2
    path = write(tmp_path, _edit(rows, line, "regime_label", "9"))
    with pytest.raises(ValueError, match=rf"label column 'regime_label': value '9' at .* \(line {line}\)"):
        prepare(cfg(path, target="column:regime_label"))


def test_bad_window_and_stride_rejected_by_config():
    for field in ("window_size", "stride"):
        for bad in (0, -2):
            with pytest.raises(ValueError, match=f"DataConfig.{field}"):
                cfg(FIXTURE, **{field: bad})


def test_missing_bar_columns_skip_features_with_warning(tmp_path):
    df = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False).drop(columns=["High", "Low", "Open", "Volume"])
    path = tmp_path / "close_only.csv"
    df.to_csv(path, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = prepare(cfg(path))
    assert any("skipping feature(s) ['range']" in str(w.message) for w in caught)
    assert "range" not in s.feature_names and "rv_5" in s.feature_names
