"""Chronological splits with purge and embargo, walk-forward folds, and the ``prepare`` pipeline.

Samples
    A sample is a window end position t (a bar) with complete inputs over ``t-W+1..t`` (``W`` =
    ``window_size``; the feature warm-up is dropped first) and a label at t. Ends advance by
    ``stride`` bars from the first complete window (``regimetry.data.windows``).

Single split (:func:`split_positions`)
    The samples are cut chronologically into blocks A (train), B (validation), C (test): by count
    (``round(train_fraction * n)``, ``round(val_fraction * n)``, the rest) or, when ``val_start`` /
    ``test_start`` are given, by the timestamp of the sample's last bar (``< val_start``,
    ``< test_start``, the rest). Let ``b0``/``c0`` be the first sample of B/C, ``h`` = ``horizon``,
    ``e`` = ``resolved_embargo``. Then:

    * purge: a training sample t is kept only if its label period ``[t+1, t+h]`` ends before the
      first bar of B's first window: ``t + h < b0 - W + 1``; likewise validation samples must
      satisfy ``t + h < c0 - W + 1``;
    * embargo: validation keeps samples with ``t >= b0 + e`` and test keeps ``t >= c0 + e``
      (``e`` bars, i.e. ``e`` samples when ``stride = 1``).

    So no training (or validation) label period overlaps any later split's window.

Walk-forward folds (:func:`fold_positions`)
    The samples whose timestamps lie in ``[folds_start, folds_end]`` (``folds_end=None``: up to the
    last sample) are cut into ``num_folds`` contiguous blocks of (almost) equal count
    (``numpy.array_split``); they are the test blocks and, being untrimmed, exactly cover that
    period. ``folds_start=None`` starts after the first 30 % of samples; a ``folds_start`` outside
    the samples' time range (e.g. 2004 for a simulated path that starts in 2040) falls back to
    starting after the first 40 % of samples, with a warning. For fold k with test block starting
    at ``c0``, the pre-test samples satisfying ``t + h + e < c0 - W + 1`` (purge plus an
    ``e``-bar embargo, placed on the validation side so the test blocks stay whole) are split into
    validation = the last ``round(val_fraction * n_pre)`` of them (>= 1; 15 % by default, about a
    year of daily bars for the middle S&P 500 folds) and training = everything before (expanding),
    purged and embargoed against validation exactly as in the single split.

Everything fitted -- the imputer, scaler, one-hot categories (``regimetry.data.preprocessing``)
and the volatility thresholds or label classes (``regimetry.data.labels``) -- is fitted on the
training period only: the bars ``train[0] - W + 1 .. train[-1]``, which every training window
covers, and the training samples' labels. Input columns that are constant over that period (one
distinct value, blanks counted as a value) carry no information and are dropped with a
``RegimetryDataWarning``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from regimetry.config import DataConfig
from regimetry.data import audit as _audit
from regimetry.data import labels as _labels
from regimetry.data.features import compute_features
from regimetry.data.preprocessing import Preprocessor
from regimetry.data.sources import RegimetryDataWarning, SourceData, load_source, usable_features
from regimetry.data.types import SplitData, Splits
from regimetry.data.windows import make_windows, window_end_positions

__all__ = ["prepare", "prepare_folds", "split_positions", "fold_positions", "purge_and_embargo", "FoldsStartOutsideData"]


class FoldsStartOutsideData(RegimetryDataWarning):
    """``DataConfig.folds_start`` lies outside the samples' period (``first`` .. ``last``, dates), so the test
    blocks start after the first 40 % of samples instead: a fallback for default dates on simulated paths,
    a mistake for a date the user typed (the study CLI turns it into an error naming ``--folds-start``)."""

    def __init__(self, message: str, first, last) -> None:
        super().__init__(message)
        self.first, self.last = first, last


# ------------------------------------------------------------------------------------------------
# positions
# ------------------------------------------------------------------------------------------------
def purge_and_embargo(
    train: np.ndarray, val: np.ndarray, test: np.ndarray, *, window_size: int, horizon: int, embargo: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the purge and embargo of the module docstring to three consecutive sample blocks.

    Args:
        train, val, test: int64 sample positions (bars), increasing, blocks in this order; val and
            test non-empty.
        window_size, horizon, embargo: ``W``, ``h``, ``e`` in bars.

    Returns:
        ``(train, val, test)`` after the purge and embargo (possibly empty).
    """
    b0, c0 = int(val[0]), int(test[0])
    train = train[train + horizon < b0 - window_size + 1]
    val = val[(val >= b0 + embargo) & (val + horizon < c0 - window_size + 1)]
    test = test[test >= c0 + embargo]
    return train, val, test


def _stamp(value: str, index: pd.DatetimeIndex) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if index.tz is not None and stamp.tz is None:
        stamp = stamp.tz_localize(index.tz)
    elif index.tz is None and stamp.tz is not None:
        stamp = stamp.tz_convert(None)
    return stamp


def split_positions(
    candidates: np.ndarray, index: pd.DatetimeIndex, config: DataConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test sample positions for one chronological split.

    Args:
        candidates: increasing int64 sample positions (bars) in ``index``.
        index: the bars' timestamps.
        config: fractions or dates, ``window_size``, ``horizon``, ``resolved_embargo``.

    Returns:
        ``(train, val, test)`` int64 positions after purge and embargo (module docstring).

    Raises:
        ValueError: a block is empty before or after purge/embargo (naming the sizes involved).
    """
    n = candidates.size
    if config.val_start is not None and config.test_start is not None:
        stamps = index[candidates]
        a = int(np.sum(stamps < _stamp(config.val_start, index)))
        b = int(np.sum(stamps < _stamp(config.test_start, index)))
        how = f"val_start={config.val_start}, test_start={config.test_start}"
    else:
        a = int(round(config.train_fraction * n))
        b = a + int(round(config.val_fraction * n))
        how = f"train_fraction={config.train_fraction}, val_fraction={config.val_fraction}"
    blocks = candidates[:a], candidates[a:b], candidates[b:]
    for name, block in zip(("train", "validation", "test"), blocks):
        if block.size == 0:
            raise ValueError(
                f"the {name} split has no sample ({n} labelled samples in total, split by {how}); "
                f"use more bars or move the split points"
            )
    out = purge_and_embargo(*blocks, window_size=config.window_size, horizon=config.horizon,
                            embargo=config.resolved_embargo)
    _check_nonempty(out, n, config)
    return out


def _check_nonempty(parts, n: int, config: DataConfig, fold: int | None = None) -> None:
    for name, part in zip(("train", "validation", "test"), parts):
        if part.size == 0:
            where = f"fold {fold}: " if fold is not None else ""
            raise ValueError(
                f"{where}the {name} split is empty after the purge and embargo ({n} labelled samples; window_size="
                f"{config.window_size}, horizon={config.horizon}, embargo={config.resolved_embargo} bars); use more "
                f"bars or a smaller window_size / horizon / embargo"
            )


def fold_positions(
    candidates: np.ndarray, index: pd.DatetimeIndex, config: DataConfig
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    """Walk-forward (expanding) folds' sample positions (module docstring).

    Returns:
        ``(folds, period)``: ``folds[k] = (train, val, test)`` int64 positions; ``period`` the
        samples the test blocks cover together (their concatenation).

    Raises:
        ValueError: fewer samples in the fold period than ``num_folds``, a ``folds_end`` before
            the period start, or an empty split in some fold (naming the fold).
    """
    n = candidates.size
    stamps = index[candidates]
    if config.folds_start is None:
        first = int(0.3 * n)
    else:
        start = _stamp(config.folds_start, index)
        if start <= stamps[0] or start > stamps[-1]:
            first = int(0.4 * n)
            warnings.warn(FoldsStartOutsideData(
                f"DataConfig.folds_start={config.folds_start} lies outside the samples' period "
                f"({stamps[0].date()} .. {stamps[-1].date()}); the test blocks start after the first 40 % of samples "
                f"({stamps[first].date()}) instead", stamps[0].date(), stamps[-1].date()), stacklevel=3)
        else:
            first = int(np.searchsorted(stamps, start, side="left"))
    last = n
    if config.folds_end is not None:
        last = int(np.searchsorted(stamps, _stamp(config.folds_end, index), side="right"))
        if last <= first:
            raise ValueError(f"DataConfig.folds_end={config.folds_end} lies before the folds' start "
                             f"({stamps[min(first, n - 1)].date()})")
    period = candidates[first:last]
    # each test block needs two bootstrap blocks (of the label horizon, in windows) for its intervals
    min_block = 2 * max(1, math.ceil(config.horizon / config.stride))
    if period.size < config.num_folds * min_block:
        fewer = period.size // min_block
        remedy = (f"use at most {fewer} folds" if fewer >= 1 else
                  "even one fold is too short: give more data (a longer file or period), an earlier --folds-start, "
                  "or a shorter horizon")
        raise ValueError(
            f"--folds / DataConfig.num_folds={config.num_folds}: the fold period ({index[int(period[0])].date()} .. "
            f"{index[int(period[-1])].date()}) holds {period.size} windows, so test blocks of about "
            f"{period.size // config.num_folds}; each needs at least {min_block} (two label horizons) for the block "
            f"bootstrap: {remedy}")
    W, h, e = config.window_size, config.horizon, config.resolved_embargo
    folds = []
    for k, test in enumerate(np.array_split(period, config.num_folds)):
        c0 = int(test[0])
        pre = candidates[candidates + h + e < c0 - W + 1]
        if pre.size < 2:
            raise ValueError(
                f"fold {k}: only {pre.size} samples before its test block (starting {index[c0].date()}) after the purge "
                f"and embargo; start the folds later (DataConfig.folds_start) or use fewer folds"
            )
        n_val = min(max(1, int(round(config.val_fraction * pre.size))), pre.size - 1)
        train_block, val_block = pre[:-n_val], pre[-n_val:]
        b0 = int(val_block[0])
        train = train_block[train_block + h < b0 - W + 1]
        val = val_block[val_block >= b0 + e]
        parts = (train, val, test.copy())
        _check_nonempty(parts, n, config, fold=k)
        folds.append(parts)
    return folds, period


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Base:
    """Everything before any fitting: shared by a single split and all folds."""

    config: DataConfig
    source: SourceData
    raw: pd.DataFrame  # per-bar raw inputs: computed features then user inputs
    kinds: dict[str, str]
    warmup: int
    label_base: np.ndarray | None  # forward vol (float) or true regimes; None for a column target
    candidates: np.ndarray


def _build_base(config: DataConfig, source: SourceData | None) -> _Base:
    source = load_source(config) if source is None else source
    bars = source.bars
    n_bars = len(bars)
    names = usable_features(source, config.features)
    feats = compute_features(bars, names)
    clash = sorted(set(names) & set(source.inputs.columns))
    if clash:
        raise ValueError(f"{source.name}: input column(s) {clash} have the names of computed features; rename them or "
                         f"list them in DataConfig.exclude_columns")
    raw = pd.concat([feats, source.inputs], axis=1)
    kinds = {**{name: "numeric" for name in names}, **source.kinds}
    if not kinds:
        raise ValueError(f"{source.name}: no input columns: no computable feature (the data has bar columns "
                         f"{list(bars.columns)}) and no indicator column")
    warmup = 0
    if names:
        complete = feats.notna().all(axis=1).to_numpy()
        if not complete.any():
            raise ValueError(f"{source.name}: {n_bars} bars are too few for the features' lookback {names}; "
                             f"add bars or drop long-lookback features")
        warmup = int(np.argmax(complete))
        gaps = np.flatnonzero(~complete[warmup:])
        if gaps.size:
            row = warmup + int(gaps[0])
            bad = [c for c in names if np.isnan(feats[c].iloc[row])]
            raise ValueError(f"{source.name}: feature(s) {bad} undefined at {bars.index[row]} (row {row}) after the "
                             f"warm-up; check the bars around that row")

    target = config.resolved_target
    if target == "forward_vol_regime":
        if "log_return" not in bars.columns:
            raise ValueError(f"{source.name}: target 'forward_vol_regime' needs a close (or adj close) column")
        label_base = _labels.forward_realized_vol(bars["log_return"], config.horizon).to_numpy()
        labelled = np.isfinite(label_base)
    elif target == "true_regime":
        if source.regimes is None:
            raise ValueError(f"{source.name}: target 'true_regime' needs the synthetic source")
        label_base = source.regimes.astype(np.float64)
        labelled = np.ones(n_bars, dtype=bool)
    else:
        label_base = None
        labelled = source.label_values.notna().to_numpy()
    ends = window_end_positions(warmup, n_bars - 1, config.window_size, config.stride)
    candidates = ends[labelled[ends]] if ends.size else ends
    if candidates.size < 3:
        raise ValueError(
            f"{source.name}: {n_bars} bars give {candidates.size} labelled windows: the feature warm-up takes {warmup} "
            f"bars, a window {config.window_size}, the label horizon {config.horizon}, and three splits with purge and "
            f"embargo ({config.resolved_embargo}) need many more; use at least a few times "
            f"{warmup + config.window_size + 3 * (config.horizon + config.resolved_embargo + config.window_size)} bars"
        )
    return _Base(config=config, source=source, raw=raw, kinds=kinds, warmup=warmup, label_base=label_base,
                  candidates=candidates)


def _fingerprint(config: DataConfig, parts: list[SplitData], fold: int | None) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(fold).encode())
    for part in parts:
        for array in (part.X, part.y, part.positions):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]


def _assemble(base: _Base, train: np.ndarray, val: np.ndarray, test: np.ndarray, fold: int | None,
              extras: dict[str, Any] | None = None) -> Splits:
    config, source = base.config, base.source
    bars = source.bars
    W = config.window_size
    fit_rows = base.raw.iloc[int(train[0]) - W + 1: int(train[-1]) + 1]
    constant = [c for c in base.kinds if fit_rows[c].nunique(dropna=False) <= 1]
    if constant:
        warnings.warn(
            f"{source.name}: dropping input column(s) {constant}: constant over the training period "
            f"({bars.index[int(train[0]) - W + 1]} .. {bars.index[int(train[-1])]})",
            RegimetryDataWarning,
            stacklevel=3,
        )
    kinds = {c: k for c, k in base.kinds.items() if c not in constant}
    if not kinds:
        raise ValueError(f"{source.name}: every input column is constant over the training period")
    preprocessor = Preprocessor(kinds).fit(fit_rows[list(kinds)])
    matrix = preprocessor.transform(base.raw.iloc[base.warmup:][list(kinds)])
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{source.name}: preprocessing produced non-finite values; check the input columns")

    target = config.resolved_target
    thresholds = None
    if target == "forward_vol_regime":
        thresholds = _labels.vol_thresholds(base.label_base[train], config.num_regimes)
        codes = _labels.bucket(base.label_base, thresholds)
        class_names = _labels.vol_class_names(config.num_regimes)
    elif target == "true_regime":
        codes = base.label_base
        class_names = list(source.extras["params"].names) if "params" in source.extras else [
            f"regime_{i}" for i in range(int(np.nanmax(codes)) + 1)]
    elif config.label_buckets is not None:
        codes, class_names, thresholds = _labels.bucket_column_labels(
            source.label_values, train, config.label_buckets, target[len("column:"):])
    else:
        codes, class_names = _labels.encode_column_labels(
            source.label_values, train, np.concatenate([val, test]), target[len("column:"):])
    present = np.unique(codes[train])
    if present.size < 2:
        raise ValueError(
            f"{source.name}: the training split holds a single class ({class_names[int(present[0])]!r}, "
            f"{train.size} samples); a classifier needs at least two; use a longer training period"
        )

    parts = []
    for positions in (train, val, test):
        positions = np.asarray(positions, dtype=np.int64)
        parts.append(
            SplitData(
                X=make_windows(matrix, positions, W, row_offset=base.warmup),
                y=codes[positions].astype(np.int64),
                index=pd.DatetimeIndex(bars.index[positions]),
                positions=positions,
            )
        )
    all_extras = dict(source.extras)
    all_extras.update({"warmup_bars": base.warmup, "dropped_constant_columns": constant,
                       "input_kinds": dict(kinds), "fit_period": (bars.index[int(train[0]) - W + 1],
                                                                   bars.index[int(train[-1])])})
    all_extras.update(extras or {})
    return Splits(
        train=parts[0],
        val=parts[1],
        test=parts[2],
        feature_names=list(preprocessor.feature_names_),
        class_names=list(class_names),
        config=config,
        bars=bars.copy(),
        labels=pd.Series(codes, index=bars.index, name="label", dtype=np.float64),
        preprocessor=preprocessor,
        label_thresholds=thresholds,
        fingerprint=_fingerprint(config, parts, fold),
        fold=fold,
        extras=all_extras,
    )


def prepare(config: DataConfig, source: SourceData | None = None) -> Splits:
    """Load, featurise, label, window and split the data: the data layer's one entry point.

    Args:
        config: the data settings (``DataConfig``).
        source: an already loaded :class:`~regimetry.data.sources.SourceData` to use instead of
            loading ``config.source`` (for tests and for perturbed copies of a data set).

    Returns:
        :class:`~regimetry.data.types.Splits` with ``train``/``val``/``test`` windows ``X`` float32
        ``(n, window_size, n_features)``, ``y`` int64, ``index`` and ``positions``; the fitted
        ``preprocessor``, ``feature_names``, ``class_names``, ``label_thresholds`` (annualised
        volatility fractions, ``forward_vol_regime`` only), ``bars``, per-bar ``labels``,
        ``fingerprint`` and ``extras`` (synthetic: ``params``, ``true_regimes``,
        ``filter_posterior``; always ``warmup_bars``, ``dropped_constant_columns``,
        ``input_kinds``, ``fit_period``).

    Raises:
        FileNotFoundError: a missing CSV.
        ValueError: bad input (see ``regimetry.data.sources``), an unknown feature, too few bars
            for the window, horizon and splits, an empty split, or a single-class training split.
    """
    base = _build_base(config, source)
    train, val, test = split_positions(base.candidates, base.source.bars.index, config)
    return _assemble(base, train, val, test, fold=None, extras=_audit_inputs(base, train))


def prepare_folds(config: DataConfig, source: SourceData | None = None) -> list[Splits]:
    """Walk-forward folds: ``config.num_folds`` full :class:`Splits`, each refitted on its own training period.

    Fold k's test block is the k-th of ``num_folds`` contiguous blocks covering the fold period;
    it trains on everything before its validation block (expanding window). See the module
    docstring for the period, validation size, purge and embargo. Each ``Splits`` has ``fold=k``
    and ``extras["folds"] = {"period_start", "period_end", "num_folds"}``.

    Raises:
        As :func:`prepare`, plus fold-specific errors from :func:`fold_positions`.
    """
    base = _build_base(config, source)
    index = base.source.bars.index
    folds, period = fold_positions(base.candidates, index, config)
    info = {"folds": {"period_start": index[int(period[0])], "period_end": index[int(period[-1])],
                      "num_folds": config.num_folds}}
    # The audit runs on the longest training period, the last fold's: on the first fold's alone (often
    # two years) it had too few rows to see a centred or forward volatility (2 of 3 canaries missed on a
    # 2005-2012 file). It fits nothing a model uses: it only warns about, or refuses, columns of the file.
    info.update(_audit_inputs(base, folds[-1][0]))
    return [_assemble(base, *parts, fold=k, extras=info) for k, parts in enumerate(folds)]


def _audit_inputs(base: _Base, train: np.ndarray) -> dict[str, Any]:
    """The leakage audit (:mod:`regimetry.data.audit`) of a CSV's numeric and boolean input columns
    on the training period's bars: a ``RegimetryDataWarning`` (or, with ``leakage_check="error"``,
    a ValueError) per flagged column; ``{"leakage_audit": [...]}`` for ``Splits.extras``."""
    config, source = base.config, base.source
    if config.leakage_check == "off" or config.source != "csv":
        return {}
    results = _audit.audit_source(source, int(train[-1]) + 1, config.horizon)
    if not results:
        return {}
    flagged = [a for a in results if a.flagged]
    if flagged:
        message = (f"{source.name}: input column(s) look into the future: "
                   + "; ".join(a.evidence for a in flagged)
                   + " (regimetry.data.audit; exclude them with DataConfig.exclude_columns, or set "
                     "data.leakage_check=off if you are sure)")
        if config.leakage_check == "error":
            raise ValueError(message)
        _warn_once(message)
    return {"leakage_audit": [dataclasses.asdict(a) for a in results]}


#: Leakage warnings already shown by this process.
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Show a leakage warning once per process and message: a study prepares the same file for every
    trial, fold and seed, and the same finding repeated hundreds of times buries everything else.
    Python's own once-per-location filter does not hold here: every ``warnings.catch_warnings`` block
    (scikit-learn, the metrics) resets it."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    warnings.warn(message, RegimetryDataWarning, stacklevel=4)
