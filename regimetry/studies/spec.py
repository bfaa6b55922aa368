"""The declaration language of an ablation: what is compared, under which budget (no optuna here).

An experiment script declares an :class:`Ablation`: the question, the scientific hyperparameter and its
:class:`Arm` values, the nuisance :class:`SearchSpace` tuned separately and identically in every arm,
the fixed settings and the :class:`Budget`. :class:`RunOptions` holds the command-line options shared
by every script (:mod:`regimetry.studies.cli`); :func:`data_config` resolves the data of a run and
:func:`study_key` the identity of an arm's study (data, arm, fixed settings, nuisance space).
:func:`validate_arms` resolves every arm before any budget is spent. The control tasks' budget and
:func:`control_ablation` (an ablation turned into its positive/null control) are declarations too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

from regimetry.config import SYNTHETIC_FEATURES, DataConfig, ModelConfig, TrainConfig
from regimetry.data.controls import control_data_overrides, get_control

logger = logging.getLogger("regimetry.studies")

METRICS_OF_RECORD = ("balanced_accuracy", "macro_f1", "log_loss")
#: Classical references every arm is compared with, on the same folds (issue 11): HAR-RV (Corsi 2009) and
#: persistence (today's trailing realized vol, bucketed at the label thresholds).
REFERENCE_BASELINES = ("har_rv", "persistence")
DEFAULT_JOBS = max(1, min(2, os.cpu_count() or 1))

__all__ = ["Float", "Int", "Categorical", "SearchSpace", "Arm", "Budget", "Ablation", "RunOptions",
           "DEFAULT_NUISANCE", "HAR_SHORTCUT_FEATURES", "RESIDUAL_MODEL", "CONTROL_BUDGET", "control_ablation",
           "data_config", "study_name", "study_key", "validate_arms"]


class NoCompleteTrial(RuntimeError):
    """An arm's study has no COMPLETE trial, so there is no configuration to confirm."""


class BudgetIncomplete(RuntimeError):
    """An arm's tuning budget is not finished (trials still waiting or running elsewhere), so no
    verdict may be printed: comparing arms tuned with unequal budgets is not the experiment."""


class ReportFailed(RuntimeError):
    """The experiment finished but its papermill report did not render."""


# ================================================================================================
# Search space
# ================================================================================================
# ``trial`` below is an ``optuna.Trial`` handed in by the backend (regimetry.studies.backend); this
# module only calls its ``suggest_*`` methods and never imports optuna.
@dataclasses.dataclass(frozen=True)
class _Param:
    """Base of a nuisance hyperparameter. ``name`` is ``section.field`` of a config (``model.d_model``,
    ``train.learning_rate``) or a free name read by :meth:`Ablation.resolve`. ``when`` makes it
    conditional: ``("head", "mlp")`` samples it only when param ``head`` equals ``"mlp"``."""

    name: str
    when: tuple[str, Any] | None = None

    def active(self, params: Mapping[str, Any]) -> bool:
        return self.when is None or params.get(self.when[0]) == self.when[1]


@dataclasses.dataclass(frozen=True)
class Float(_Param):
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    def suggest(self, trial: Any) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def position(self, value: float) -> float:
        """Where ``value`` sits in the range, 0 = low edge, 1 = high edge (log scale if ``log``)."""
        lo, hi, v = (math.log(self.low), math.log(self.high), math.log(value)) if self.log else (self.low, self.high, value)
        return (v - lo) / (hi - lo) if hi > lo else 0.5


@dataclasses.dataclass(frozen=True)
class Int(_Param):
    low: int = 0
    high: int = 1
    log: bool = False

    def suggest(self, trial: Any) -> int:
        return trial.suggest_int(self.name, self.low, self.high, log=self.log)

    def position(self, value: int) -> float:
        return Float(self.name, low=self.low, high=self.high, log=self.log).position(value)


@dataclasses.dataclass(frozen=True)
class Categorical(_Param):
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def position(self, value: Any) -> float | None:
        """For ordered numeric choices, the index position in [0, 1]; ``None`` for unordered ones."""
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.choices)
        if not numeric or len(self.choices) < 3:
            return None
        ordered = sorted(self.choices)
        return ordered.index(value) / (len(ordered) - 1)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """An ordered list of nuisance hyperparameters, sampled in order (so conditions can refer back)."""

    params: tuple[_Param, ...]

    def sample(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.name] = param.suggest(trial)
        return values

    def edge_warnings(self, best: Mapping[str, Any], tolerance: float = 0.05) -> list[str]:
        """Parameters of the best trial within ``tolerance`` of a range edge (or at the first/last
        of ordered numeric choices): the optimum may lie outside the space searched."""
        warnings = []
        for param in self.params:
            if param.name not in best:
                continue
            position = param.position(best[param.name])  # type: ignore[attr-defined]
            if position is None:
                continue
            if position <= tolerance or position >= 1 - tolerance:
                edge = "lower" if position <= tolerance else "upper"
                warnings.append(f"{param.name}={best[param.name]} is at the {edge} edge of the search space")
        return warnings

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for p in self.params:
            row = {"name": p.name, "type": type(p).__name__}
            row.update({k: v for k, v in dataclasses.asdict(p).items() if k not in ("name",)})
            rows.append(row)
        return rows




#: The HAR lags (Corsi 2009: 1, 5 and 22 bars) of two volatility estimators: log realized volatility
#: of close-to-close returns (the HAR-RV regressors) and log Parkinson (1980) range-based volatility
#: (a HAR on realized range, as in Martens & van Dijk 2007). Chosen on the tuning period only (inner
#: walk-forward 2003-2007, 3 seeds; benchmarks/README.md, "Range-based HAR lags"): the residual model
#: scored .693 / .662 (S&P 500 / NASDAQ, mean of 3 inner folds) with both sets, against .679 / .656
#: with the HAR-RV lags alone and .636 / .659 with the range lags alone (HAR-RV .679 / .679).
HAR_SHORTCUT_FEATURES = ("log_rv_1", "log_rv_5", "log_rv_22", "log_parkinson_1", "log_parkinson_5", "log_parkinson_22")
#: The model 03-06 fix (issue 11): a linear shortcut on the HAR lags of the window's last step,
#: warm-started to a logistic regression (HAR-RV's model on these lags), plus a Transformer encoder on
#: per-window centred inputs that learns a residual over it; early stopping and trial choice on
#: validation balanced accuracy. Measured on an inner walk-forward inside the tuning period (S&P 500,
#: test blocks 2003-2007, fixed configuration, 2 seeds; benchmarks/README.md): this setup
#: .594/.990/.459 balanced accuracy per fold (HAR-RV .587/1.000/.450, persistence .508/1.000/.371);
#: the same with early stopping on validation log loss .437/.990/.479 (fold 0 seeds .289 and .585,
#: against .604 and .585 here); without centring (shortcut on every feature) .206/.478/.460; no
#: shortcut .248/.053/.437; centring with the shortcut on every feature .313/.680/.497; the HAR-lag
#: shortcut alone .613/.985/.437 (inputs log_rv_1/5/22).
#: Measured and not adopted (benchmarks/README.md, "The warm start as an early-stopping candidate"):
#: keeping the warm-started linear model unless an epoch beats it on validation
#: (``train.warm_start_candidate``, strictly or by one standard error, ``train.warm_start_margin``)
#: scored the same as restoring the best epoch, inside the tuning period (.680 vs .681) and in two full
#: 03 runs (pooled .576-.594 against .579-.598), so the model of the published proof runs stays.
RESIDUAL_MODEL = {"model.linear_shortcut": True, "model.center_windows": True,
                  "model.shortcut_features": HAR_SHORTCUT_FEATURES, "train.monitor": "val_balanced_accuracy"}
_SHORTCUT_FALLBACK_LOGGED: set = set()

#: The nuisance space shared by every arm of every ablation unless an experiment overrides it.
DEFAULT_NUISANCE = SearchSpace(
    (
        Float("train.learning_rate", low=1e-4, high=3e-3, log=True),
        Float("train.weight_decay", low=1e-6, high=1e-2, log=True),
        Float("model.dropout", low=0.0, high=0.3),
        Categorical("model.d_model", choices=(16, 32, 64)),
        Categorical("model.num_heads", choices=(2, 4)),
        Categorical("model.ff_dim", choices=(32, 64, 128)),
        Categorical("train.batch_size", choices=(32, 64, 128)),
        Categorical("head", choices=("linear", "mlp")),
        Categorical("head_units", choices=(16, 32, 64), when=("head", "mlp")),
    )
)


# ================================================================================================
# Declarations
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class Arm:
    """One value of the scientific hyperparameter.

    Args:
        name: short identifier (used in study names, MLflow tags and tables).
        overrides: ``section.field -> value`` settings that define the arm.
        min_window_fraction: if set, every window (train, val and test) is shortened to a random
            length in ``[ceil(fraction * window_size), window_size]`` bars (fixed per window by the
            seed) and NaN-padded, so the model sees variable-length windows through its padding mask.
        seed_offset: added to every training seed of the arm (trials and confirmation). ``0`` for a
            real arm; the A/A null control enters one arm twice, the copy with another offset, so the
            two are independent replicates of the same procedure (``experiments/00_positive_controls.py``).
    """

    name: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    min_window_fraction: float | None = None
    seed_offset: int = 0


@dataclasses.dataclass(frozen=True)
class Budget:
    """Equal budget of every arm.

    Args:
        trials_per_arm: Optuna trials per arm.
        max_epochs: epoch cap of every trial and confirmation run.
        patience: early-stopping patience (epochs). 2 on market data: on the tuning period's inner
            walk-forward (bars before 2008) every 03 arm scored higher than with 4, the long runs being the
            ones that drifted from the warm-started linear model on validation noise, and a default 03 run
            costs 1.45x less CPU (benchmarks/README.md, "Sixth round"). The controls keep 4
            (``CONTROL_BUDGET``: they train without the warm-started shortcut; the order control also
            passes all its checks at 2).
        seeds: confirmation seeds per fold.
        folds: walk-forward folds used for confirmation (the first one is also the tuning fold).
        pruner_startup_trials / pruner_warmup_epochs: median pruner settings (identical per arm): the
            first ``pruner_startup_trials`` budget slots and the first ``pruner_warmup_epochs`` epochs
            are never pruned; later slots are compared with the lower slots at the same epoch
            (``regimetry.studies.backend.SlotOrderedMedianPruner``, independent of ``--jobs``).
    """

    trials_per_arm: int = 8
    max_epochs: int = 15
    patience: int = 2
    seeds: int = 3
    folds: int = 5
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 3


SMOKE_BUDGET = Budget(trials_per_arm=2, max_epochs=2, patience=1, seeds=1, folds=2,
                      pruner_startup_trials=1, pruner_warmup_epochs=1)


@dataclasses.dataclass(frozen=True)
class Ablation:
    """A question answered by comparing arms under an equal tuning budget.

    Args:
        name: experiment name (by convention the script's stem, e.g. ``03_encoding_ablation``).
        question: the question, in one sentence.
        scientific: the scientific hyperparameter's name.
        arms: the arms (values of the scientific hyperparameter).
        nuisance: search space tuned separately, identically, in every arm.
        fixed: ``section.field -> value`` settings fixed for every arm and trial.
        budget: the default budget; ``smoke_budget`` for ``--smoke``.
    """

    name: str
    question: str
    scientific: str
    arms: tuple[Arm, ...]
    nuisance: SearchSpace = DEFAULT_NUISANCE
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    budget: Budget = Budget()
    smoke_budget: Budget = SMOKE_BUDGET

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"Ablation.arms: need at least two arms with distinct names, got {names}")

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ValueError(f"unknown arm {name!r}; arms are {[a.name for a in self.arms]}")

    def resolve(self, arm: Arm, params: Mapping[str, Any], budget: Budget, seed: int,
                feature_names: Sequence[str] | None = None) -> tuple[ModelConfig, TrainConfig]:
        """Model and training configs of one trial: defaults < fixed < sampled nuisance < arm.

        The arm is applied last, so a nuisance parameter can never undo the scientific one. With
        ``feature_names`` (the data's input columns), a ``model.shortcut_features`` setting naming
        columns the data lacks keeps those it has (e.g. the HAR-RV lags when a user's ``--features``
        leave out the range-based ones) and falls back to ``()`` when it has none (the HAR lags on
        synthetic data or a CSV without them): the shortcut then reads every feature (logged once
        per run).

        Raises:
            ValueError: an invalid combination (e.g. ``d_model`` not divisible by ``num_heads``
                when ``key_dim`` is derived), naming the field.
        """
        sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        free = {}
        for source in (self.fixed, params, arm.overrides):
            for key, value in source.items():
                if "." in key:
                    section, field = key.split(".", 1)
                    if section == "data":
                        continue
                    if section not in sections:
                        raise ValueError(f"{key}: unknown section {section!r} (expected model., train. or data.)")
                    sections[section][field] = value
                else:
                    free[key] = value
        if free.get("head") == "mlp":
            sections["model"]["head_units"] = (int(free["head_units"]),)
        elif free.get("head") == "linear":
            sections["model"]["head_units"] = ()
        sections["train"].update(max_epochs=budget.max_epochs, patience=budget.patience, seed=seed)
        wanted = tuple(sections["model"].get("shortcut_features", ()))
        if wanted and feature_names is not None and not set(wanted) <= set(feature_names):
            present = tuple(f for f in wanted if f in feature_names)
            if (self.name, wanted) not in _SHORTCUT_FALLBACK_LOGGED:
                _SHORTCUT_FALLBACK_LOGGED.add((self.name, wanted))
                logger.info("shortcut_features %s not all among the inputs %s: the shortcut reads %s",
                            list(wanted), list(feature_names), list(present) if present else "every feature")
            sections["model"]["shortcut_features"] = present
        return ModelConfig.from_dict(sections["model"]), TrainConfig.from_dict(sections["train"])

    def data_overrides(self) -> dict[str, Any]:
        return {k.split(".", 1)[1]: v for k, v in self.fixed.items() if k.startswith("data.")}



def validate_arms(ablation: Ablation, budget: Budget, seed: int = 0) -> None:
    """Resolve every arm (defaults < fixed settings < arm) before any budget is spent.

    A typo in an arm's value (``"tAPE"``, not a registered encoding) used to burn the arm's whole tuning budget as
    FAIL trials; here it fails at once. The nuisance values are left at their defaults: a nuisance
    configuration that fails is a FAIL trial of the study, an arm that cannot resolve is no experiment.

    Raises:
        ValueError: one line naming the arm and the invalid setting (with its allowed values).
    """
    for arm in ablation.arms:
        try:
            ablation.resolve(arm, {}, budget, seed)
        except ValueError as exc:
            raise ValueError(f"arm {arm.name!r} of {ablation.name}: {' '.join(str(exc).split())}") from None


# ================================================================================================
# Identity of a study
# ================================================================================================
def study_name(ablation: Ablation, arm: Arm) -> str:
    return f"{ablation.name}/{arm.name}"


def study_direction(ablation: Ablation) -> str:
    """``maximize`` for accuracy-like monitors, ``minimize`` for ``val_loss`` (fixed ``train.monitor``)."""
    monitor = ablation.fixed.get("train.monitor", TrainConfig().monitor)
    return "minimize" if TrainConfig(monitor=monitor).monitor_mode == "min" else "maximize"


def data_key(config: DataConfig) -> str:
    """What a study's trials were tuned on (the resolved data configuration), as stable JSON."""
    return json.dumps(config.flat(), sort_keys=True, default=str)


def study_key(ablation: Ablation, arm: Arm, config: DataConfig) -> str:
    """A study's identity: the resolved data configuration, the arm's definition, the fixed settings
    and the nuisance space, as stable JSON. A stored study with another key refuses to resume
    (:func:`regimetry.studies.backend.ensure_study`), so editing an arm never silently confirms configurations tuned for the old one."""
    identity = dict(config.flat())
    identity.update({"arm.overrides": json.dumps(dict(arm.overrides), sort_keys=True, default=str),
                     "arm.min_window_fraction": arm.min_window_fraction,
                     "ablation.fixed": json.dumps(dict(ablation.fixed), sort_keys=True, default=str),
                     "ablation.nuisance": json.dumps(ablation.nuisance.describe(), sort_keys=True, default=str)})
    return json.dumps(identity, sort_keys=True, default=str)


# ================================================================================================
# Options and data
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Command-line options shared by every experiment script (see :func:`regimetry.studies.cli.build_parser`)."""

    dataset: str = "sp500"
    csv: str | None = None
    target: str | None = None
    trials: int | None = None
    max_epochs: int | None = None
    patience: int | None = None
    seeds: int | None = None
    folds: int | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    seed: int = 0
    smoke: bool = False
    report: bool = True
    jobs: int = 1
    stage: str = "all"
    arms: tuple[str, ...] | None = None
    paths: int = 3
    folds_start: str | None = None
    #: ``data.<field>`` settings from ``--set`` (e.g. ``label_buckets``, ``timezone``), applied last.
    data_settings: tuple[tuple[str, Any], ...] = ()

    def budget(self, ablation: Ablation) -> Budget:
        base = ablation.smoke_budget if self.smoke else ablation.budget
        updates = {k: v for k, v in (("trials_per_arm", self.trials), ("max_epochs", self.max_epochs),
                                     ("patience", self.patience), ("seeds", self.seeds), ("folds", self.folds))
                   if v is not None}
        budget = dataclasses.replace(base, **updates)
        for field in ("trials_per_arm", "max_epochs", "patience", "seeds", "folds"):
            if getattr(budget, field) < 1:
                raise ValueError(f"--{field.replace('_per_arm', '').replace('_', '-')}: must be >= 1, got {getattr(budget, field)}")
        return budget



def data_config(ablation: Ablation, options: RunOptions, budget: Budget) -> DataConfig:
    """The resolved data configuration of a run (dataset, target, folds, fixed data settings)."""
    values: dict[str, Any] = {"source": options.dataset, "num_folds": budget.folds}
    if options.dataset == "csv":
        if not options.csv:
            raise ValueError("--csv PATH is required with --dataset csv")
        values["csv_path"] = options.csv
    if options.target:
        values["target"] = options.target
    if options.folds_start:
        values["folds_start"] = options.folds_start
    values.update(ablation.data_overrides())
    values.update(dict(options.data_settings))
    if options.dataset == "synthetic":
        # The simulator's range/volume columns carry the current regime directly; the Hamilton-filter
        # ceiling sees returns only. Inputs [r, |r|] keep "fraction of the ceiling" meaningful.
        values.setdefault("features", SYNTHETIC_FEATURES)
        if options.smoke:
            values.setdefault("synthetic_bars", 1500)
    elif options.smoke and options.dataset in ("sp500", "nasdaq"):
        # Smoke runs exercise the whole protocol on the last eight years only (two 2-year test blocks).
        values.setdefault("start", "2011-01-01")
        values.setdefault("folds_start", "2015-01-01")
    return DataConfig.from_dict(values)


# ================================================================================================
# Positive and null controls
# ================================================================================================
#: The control budget: every arm of a control ablation gets the same, smaller budget than on market
#: data (the tasks are easy for the right arm, impossible for the wrong one by construction).
CONTROL_BUDGET = Budget(trials_per_arm=4, max_epochs=12, patience=4, seeds=2, folds=2,
                        pruner_startup_trials=2, pruner_warmup_epochs=3)
#: Seed offset of the A/A copy arm: far from any real seed, so the copy trains on other seeds.
AA_SEED_OFFSET = 10_000
#: Smoke runs of a control: few segments (fast), the same protocol.
CONTROL_SMOKE_SEGMENTS = 400


def control_ablation(ablation: Ablation, task: str, *, smoke: bool = False) -> tuple[Ablation, str]:
    """The ablation ``ablation`` run on the control task ``task`` with an A/A copy arm.

    The control's ``fixed`` settings (what its theory needs, e.g. no positional encoding) override the
    ablation's; its data settings (:func:`regimetry.data.controls.control_data_overrides`) enter as
    ``data.*``; the arms are the ablation's own plus ``<first winner>_copy``, the same arm with
    training seeds offset by :data:`AA_SEED_OFFSET` (an A/A null control: two independent replicates
    of one procedure, between which no difference exists).

    Returns:
        ``(control ablation named "00_control_<task>", name of the copy arm)``.

    Raises:
        ValueError: an unknown task, or a task that checks another ablation (naming both).
    """
    control = get_control(task)
    if control.ablation != ablation.name:
        raise ValueError(f"control task {control.name!r} checks {control.ablation}, not {ablation.name}")
    data = {f"data.{k}": v for k, v in control_data_overrides(control.name).items() if k != "source"}
    if smoke:
        data["data.synthetic_bars"] = control.window_size * CONTROL_SMOKE_SEGMENTS
    winners = control.winners_among([arm.name for arm in ablation.arms])
    for name in winners + control.at_chance:
        ablation.arm(name)  # the registry names real arms
    if not winners:
        raise ValueError(f"control task {control.name!r}: no arm of {ablation.name} is predicted to win")
    winner = ablation.arm(winners[0])
    copy = dataclasses.replace(winner, name=f"{winner.name}_copy", seed_offset=AA_SEED_OFFSET)
    controlled = dataclasses.replace(
        ablation, name=f"00_control_{control.name}", question=f"[control {control.name}] {control.question}",
        arms=ablation.arms + (copy,), fixed={**ablation.fixed, **control.fixed, **data},
        budget=CONTROL_BUDGET,
    )
    return controlled, copy.name
