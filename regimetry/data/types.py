"""Containers that carry prepared data from the data layer to models, baselines and tracking."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from regimetry.config import DataConfig


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One chronological split of windows.

    Attributes:
        X: float32 array ``(n_windows, window_size, n_features)``; preprocessed inputs.
        y: int64 array ``(n_windows,)``; the regime label at each window's last bar.
        index: ``pd.DatetimeIndex`` of length ``n_windows``; timestamp of each window's last bar.
        positions: int64 array ``(n_windows,)``; row position of each window's last bar in
            ``Splits.bars`` (lets baselines compute their own inputs at the same bars).
    """

    X: np.ndarray
    y: np.ndarray
    index: pd.DatetimeIndex
    positions: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def class_counts(self) -> np.ndarray:
        """Windows per class, ``(num_classes_seen,)`` via ``np.bincount``."""
        return np.bincount(self.y) if len(self) else np.zeros(0, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Splits:
    """Everything ``regimetry.data.prepare`` returns for one train/val/test partition.

    Attributes:
        train, val, test: the three chronological splits (an embargo lies between neighbours).
        feature_names: names of the ``n_features`` input columns, in order.
        class_names: names of the ``num_classes`` regimes, index = class id.
        config: the ``DataConfig`` that produced this.
        bars: the raw bars (``DatetimeIndex``; ``open, high, low, close, volume`` where available,
            plus ``log_return``), before any fitting; for baselines and plots.
        labels: per-bar regime labels aligned with ``bars`` (float, NaN where undefined).
        preprocessor: the fitted input transformer (fitted on the training period only).
        label_thresholds: volatility thresholds (annualised, fraction) for ``forward_vol_regime``,
            fitted on the training period; ``None`` for other targets.
        fingerprint: short hex digest of the prepared arrays and config (tracking tag).
        fold: walk-forward fold number, or ``None`` for a single partition.
        extras: source-specific extras (synthetic: true parameters, regime path, filter posterior).
    """

    train: SplitData
    val: SplitData
    test: SplitData
    feature_names: list[str]
    class_names: list[str]
    config: DataConfig
    bars: pd.DataFrame
    labels: pd.Series
    preprocessor: Any = None
    label_thresholds: np.ndarray | None = None
    fingerprint: str = ""
    fold: int | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def window_size(self) -> int:
        return int(self.train.X.shape[1])
