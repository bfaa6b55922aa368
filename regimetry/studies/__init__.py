"""The ablation harness: one Optuna study per arm with equal budgets, then confirmation over seeds.

An experiment script declares an :class:`Ablation` (the question, the scientific hyperparameter and its
arms, the nuisance search space shared by every arm, the fixed settings, the budget) and calls
:func:`main`. The protocol follows the deep learning tuning playbook (Godbole et al., 2023, "Deep
Learning Tuning Playbook"):

1. **Tuning.** Each arm gets its own study, named ``<experiment>/<arm>``, with the same sampler
   (quasi-random Sobol points, scrambled with the same seed: :class:`optuna.samplers.QMCSampler`),
   the same number of trials and the same median pruner (slot-ordered: trial ``i`` is compared with
   trials ``0 .. i-1`` at the same epoch, so pruning does not depend on the number of workers or
   their timing; :class:`~regimetry.studies.backend.SlotOrderedMedianPruner`). Quasi-random search is the fair default for
   comparisons: it explores the nuisance space evenly and, with one seed, proposes the *same* nuisance
   configurations to every arm (a paired design), whereas an adaptive sampler would spend each arm's
   budget differently. Tuning uses the earliest walk-forward fold only (its train and validation
   blocks), so later test blocks are never seen while choosing hyperparameters. Pruning reads the
   per-epoch validation metric. A trial that raises is recorded as FAIL and the study goes on.
2. **Confirmation.** The best configuration of every arm is retrained for every walk-forward fold and
   every seed, and evaluated once on each fold's test block. Predictions are pooled over the test
   blocks (concatenated), and the metrics of record come with 95 % circular block-bootstrap intervals
   (block length = the label horizon) and paired block-bootstrap differences between arms and against
   the strongest classical baseline (HAR-RV). A comparison is called only when its paired interval
   excludes zero (:func:`regimetry.evaluation.verdict`).

Storage and concurrency: studies live in an Optuna storage (default ``sqlite:///mlruns/optuna.db``;
``--storage`` takes any RDB URL such as PostgreSQL or MySQL, or ``journal:///path/file.log`` for a
journal file). The first process that creates a study enqueues exactly ``trials_per_arm`` empty
trials; every worker claims WAITING trials with the storage's atomic check-and-set
(``set_trial_state_values``), so any number of processes on any number of machines finish exactly the
budget, and re-running the same command resumes: only trials not yet run are run. A trial interrupted
by Ctrl-C is marked FAIL (user attribute ``interrupted``) and replaced by a new WAITING trial, so the
budget of finished trials stays exact. On RDB storages a heartbeat marks trials of a killed process
as FAIL after a grace period and enqueues their retry (Optuna's ``RetryHeartbeatStaleTrialCallback``).
A process on the same host does not wait for it: trials and MLflow runs record their owner process,
and a re-run retries a dead owner's trials at once (:func:`backend.recover_orphaned_trials`), finishes
a study whose creator died before recording its budget, and takes over the confirmation runs a killed
invocation finished (``confirm._resume_confirmations``), so a ``kill -9`` at any moment followed by a
re-run gives the budget and verdicts of an uninterrupted run (``benchmarks/crash_recovery.py``).

MLflow: experiment = the ablation's name (by convention the script's stem); a parent run per invocation, a child run per arm, and under
each arm a child run per trial and per confirmation fold and seed; every key is named in
:mod:`regimetry.records`.

The package, one job per file, data flowing one way (spec -> backend -> tuning/confirm -> summary ->
tracking -> reports):

- :mod:`~regimetry.studies.spec`: the declarations (Ablation, Arm, SearchSpace, Budget, RunOptions,
  the fixed model settings, the study identity); imports no optuna.
- :mod:`~regimetry.studies.backend`: the only optuna importer (storages, exact-budget claims,
  heartbeats, crash recovery, read access for the reports).
- :mod:`~regimetry.studies.context`, :mod:`~regimetry.studies.tuning`, :mod:`~regimetry.studies.confirm`,
  :mod:`~regimetry.studies.runner`: worker context, tuning, confirmation, the whole run.
- :mod:`~regimetry.studies.summary`: pure pooled metrics, paired differences, verdicts, markdown.
- :mod:`~regimetry.studies.cli`: the options every experiment script shares, and :func:`main`.

The names below are loaded on first use (PEP 562), so importing one submodule (the reports read
:mod:`~regimetry.studies.backend`) never loads the runner.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Submodule -> the public names it defines.
_EXPORTS = {
    "spec": ("Float", "Int", "Categorical", "SearchSpace", "Arm", "Budget", "Ablation", "RunOptions",
             "DEFAULT_NUISANCE", "HAR_SHORTCUT_FEATURES", "RESIDUAL_MODEL", "SMOKE_BUDGET", "CONTROL_BUDGET",
             "AA_SEED_OFFSET", "METRICS_OF_RECORD", "REFERENCE_BASELINES", "DEFAULT_JOBS", "NoCompleteTrial",
             "BudgetIncomplete", "ReportFailed", "control_ablation", "data_config", "data_key", "study_key",
             "study_name", "validate_arms"),
    "backend": ("DEFAULT_STORAGE", "SMOKE_STORAGE", "OWNER_ATTR", "CREATOR_ATTR", "resolve_storage", "ensure_study",
                "draw_configurations", "recover_orphaned_trials", "budget_counts", "study_names",
                "study_trials_frame", "param_importances"),
    "context": ("evaluation_blocks", "apply_arm_to_splits"),
    "tuning": ("run_worker", "check_budget_complete"),
    "summary": ("ArmConfirmation", "summarize", "control_checks"),
    "runner": ("run_ablation",),
    "cli": ("build_parser", "main"),
    # moved to regimetry.processes (also used by ``python -m regimetry``); kept importable from here
    "regimetry.processes": ("interrupt_on_sigterm",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'regimetry.studies' has no attribute {name!r}")
    path = module if module.startswith("regimetry.") else f"regimetry.studies.{module}"
    value = getattr(importlib.import_module(path), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
