"""``TrainConfig``: how a classifier is fitted."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from regimetry.config.base import _ConfigBase, _err

__all__ = ["MONITORS", "TrainConfig"]

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
