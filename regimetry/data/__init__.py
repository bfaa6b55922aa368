"""Leakage-free data layer: sources -> causal features -> regime labels -> windows -> splits.

Entry points:

* :func:`prepare` ``(config) -> Splits``: one chronological train / validation / test partition
  with purge and embargo; everything fitted on the training period only.
* :func:`prepare_folds` ``(config) -> list[Splits]``: expanding walk-forward folds, each refitted.
* :func:`load_bars` ``(config) -> DataFrame``: the raw bars (``DatetimeIndex``, ``log_return``).

Modules: ``sources`` (S&P 500 / NASDAQ from ``arch``, CSV, simulator), ``features``, ``labels``,
``windows``, ``splits``, ``synthetic``, ``controls`` (control tasks with a known ablation winner,
``DataConfig.source = "control:<task>"``), ``preprocessing``, ``types``.
"""

from regimetry.data.controls import CONTROLS, control_ceiling, control_data_overrides
from regimetry.data.features import compute_features
from regimetry.data.sources import RegimetryDataWarning, SourceData, load_bars, load_source
from regimetry.data.splits import fold_positions, prepare, prepare_folds, split_positions
from regimetry.data.synthetic import (
    MarkovSwitchingParams,
    SyntheticPath,
    hamilton_filter,
    simulate_markov_switching,
)
from regimetry.data.types import SplitData, Splits

__all__ = [
    "prepare",
    "prepare_folds",
    "load_bars",
    "load_source",
    "compute_features",
    "split_positions",
    "fold_positions",
    "MarkovSwitchingParams",
    "SyntheticPath",
    "simulate_markov_switching",
    "hamilton_filter",
    "CONTROLS",
    "control_data_overrides",
    "control_ceiling",
    "RegimetryDataWarning",
    "SourceData",
    "SplitData",
    "Splits",
]
