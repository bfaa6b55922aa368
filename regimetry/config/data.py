"""``DataConfig``: where the bars come from, which features and labels are built, how they are split;
and the command-line options every experiment script shares."""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from pathlib import Path
from typing import ClassVar

from regimetry.config.base import _ConfigBase, _err

__all__ = ["CONTROL_SOURCES", "CONTROL_TASKS", "DEFAULT_FEATURES", "MAX_REGIMES", "SOURCES", "SYNTHETIC_FEATURES",
           "DataConfig", "add_data_arguments", "check_data_arguments"]

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
#: Default inputs (issue 11): returns, range, close location, volume, realized volatility on the
#: LOG scale at the HAR-RV lags 1/5/22 plus 63 bars, and Parkinson range-based volatility on the log
#: scale at the same HAR lags. The log levels replaced rv_5/rv_21/rv_63: on the scale HAR-RV uses, a
#: linear model extrapolates to calmer periods than training saw; the range-based lags carry the
#: more efficient range estimator of each day's variance (Parkinson 1980). Both chosen on the tuning
#: period only, by an inner walk-forward 2003-2007 (benchmarks/README.md).
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
    "log_parkinson_1",
    "log_parkinson_5",
    "log_parkinson_22",
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
            realized volatility over 1/5/22/63 bars (the HAR lags and a quarter), volume z-score,
            log Parkinson range-based volatility over 1/5/22 bars.
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
        # In this order, so that the first problem of a config is the one reported.
        self._check_source()
        self._check_sizes()
        self._check_options()
        self._check_dates()
        self._check_target()

    def _check_source(self) -> None:
        name = type(self).__name__
        if self.source not in SOURCES and self.source not in CONTROL_SOURCES:
            raise _err(name, "source", f"expected one of {list(SOURCES)} or control:<task> with task in "
                                       f"{list(CONTROL_TASKS)}, got {self.source!r}")
        if self.source == "csv" and not self.csv_path:
            raise _err(name, "csv_path", "required when source='csv'")
        if self.csv_path and self.source != "csv":
            raise _err(name, "csv_path", f"is read only with source='csv', but source is {self.source!r}: set "
                                         f"data.source=csv to use {self.csv_path}, or drop csv_path")

    def _check_sizes(self) -> None:
        name = type(self).__name__
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

    def _check_options(self) -> None:
        name = type(self).__name__
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

    def _check_dates(self) -> None:
        name = type(self).__name__
        if (self.val_start is None) != (self.test_start is None):
            raise _err(name, "val_start", "give both val_start and test_start, or neither")
        for field in ("val_start", "test_start", "start", "end", "folds_start", "folds_end"):
            value = getattr(self, field)
            if value is not None:
                _check_date(name, field, value)
        if self.val_start is not None and self.test_start is not None and self.val_start >= self.test_start:
            raise _err(name, "test_start", f"must come after val_start ({self.val_start}), got {self.test_start}")

    def _check_target(self) -> None:
        name = type(self).__name__
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
    try:
        datetime.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise _err(cls_name, field, f"expected an ISO date YYYY-MM-DD, got {value!r}") from None


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
