"""Tuning: workers claim the WAITING trials of every arm's study and run them until none is left.

Each trial is one MLflow run under its arm's run (tags ``stage=trial``, ``optuna_trial``,
``optuna_state``; status FINISHED / KILLED for PRUNED / FAILED). A trial that raises is recorded as
FAIL and the study goes on; a trial interrupted by Ctrl-C or SIGTERM gives its budget slot back
(:func:`regimetry.studies.backend.hand_back`), so the budget of finished trials stays exact. Pruning
reads the per-epoch validation metric. Any number of worker processes (here or on other machines, on
one storage) finish exactly the budget.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from typing import Any, Mapping, Sequence

from regimetry import processes, records, run_record, tracking, training
from regimetry.config import TrainConfig
from regimetry.studies import backend
from regimetry.studies.context import WorkerContext, apply_arm_to_splits, arm_study, evaluation_blocks
from regimetry.studies.spec import Arm, Budget, BudgetIncomplete
from regimetry.studies.summary import timing

logger = logging.getLogger("regimetry.studies")

__all__ = ["run_worker", "check_budget_complete"]


def run_worker(ctx: WorkerContext, arm_names: Sequence[str] | None = None) -> None:
    """Claim and run WAITING trials of every arm's study until none is left (safe in many processes)."""
    storage = backend.resolve_storage(ctx.options.storage)
    # Prepare the data before claiming any trial: a data error must never leave a claimed trial behind.
    tuning_blocks = evaluation_blocks(ctx.data_config, ctx.options, ctx.budget)[0]
    for arm in ctx.ablation.arms:
        if arm_names is not None and arm.name not in arm_names:
            continue
        study = arm_study(storage, ctx, arm)
        backend.recover_orphaned_trials(study)
        backend.fail_stale_trials(study)
        arm_splits = apply_arm_to_splits(arm, tuning_blocks, ctx.options.seed)
        while True:
            trial = None
            try:
                # Ctrl-C / SIGTERM wait until the claimed trial is in hand, so it can always be handed back.
                with processes.signals_deferred():
                    trial = backend.claim_waiting_trial(study)
                if trial is None:
                    break
                training.set_global_seed(ctx.options.seed)
                _run_trial(ctx, study, trial, arm, arm_splits)
            except KeyboardInterrupt:
                if trial is not None:
                    _hand_back(study, trial)
                raise


def _run_trial(ctx: WorkerContext, study, trial, arm: Arm, splits) -> None:
    """One claimed trial as one MLflow run; its state goes to the study and the run's tags."""
    trial_seed = ctx.options.seed + arm.seed_offset
    tags = {
        records.STAGE: records.STAGE_TRIAL,
        records.ARM: arm.name,
        records.SEED: str(trial_seed),
        records.OPTUNA_TRIAL: str(trial.number),
        records.OPTUNA_STUDY: study.study_name,
        records.OPTUNA_STATE: "RUNNING",
    }
    heartbeat = backend.Heartbeat(study, trial._trial_id)
    state = "FAIL"
    run_id = None
    try:
        # short names: the arm is the parent run (and a tag), so MLflow's table never cuts them
        with tracking.run(ctx.ablation.name, run_name=f"trial {trial.number}",
                          parent_run_id=ctx.arm_run_ids.get(arm.name), tags=tags) as active:
            run_id = active.run_id
            try:
                state = _fit_trial(ctx, study, trial, arm, splits, active)
            except backend.SlotYield as why:
                # A lower slot this trial's pruning needs was retried and waits for a worker: run it first,
                # this trial goes back to the queue (same configuration and seed, so the same result).
                active.set_status("KILLED")
                _hand_back(study, trial, run_id)
                tracking.set_tags({records.YIELDED: str(why)[:500]}, run_id=run_id)
                logger.info("%s trial %d handed back: %s", arm.name, trial.number, why)
                return
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the study
                logger.warning("%s trial %d failed: %s: %s", arm.name, trial.number, type(exc).__name__, exc)
                trial.set_user_attr(records.ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
                tracking.set_tags({records.OPTUNA_STATE: "FAIL", records.ERROR: f"{type(exc).__name__}: {exc}"[:500]})
                backend.finish_trial(study, trial, "FAIL")
                active.set_status("FAILED")
    except KeyboardInterrupt:
        _hand_back(study, trial, run_id)
        raise
    finally:
        heartbeat.stop()
    _progress(study, arm, trial.number, state, ctx.budget)


def _fit_trial(ctx: WorkerContext, study, trial, arm: Arm, splits, active) -> str:
    """Resolve, train and score one trial inside its MLflow run; returns its state (COMPLETE / PRUNED)."""
    trial_seed = ctx.options.seed + arm.seed_offset
    params = ctx.ablation.nuisance.sample(trial)
    model_cfg, train_cfg = ctx.ablation.resolve(arm, params, ctx.budget, trial_seed, feature_names=splits.feature_names)
    trial.set_user_attr(records.MODEL_CONFIG_ATTR, json.dumps(model_cfg.to_dict()))
    trial.set_user_attr(records.TRAIN_CONFIG_ATTR, json.dumps(train_cfg.to_dict()))
    trial.set_user_attr(records.MLFLOW_RUN_ATTR, active.run_id)
    tracking.log_params({records.OPTUNA_TRIAL_PARAM: trial.number,
                         **{f"{records.NUISANCE_PARAM}{k}": v for k, v in params.items()}})

    epochs: list[tuple[int, dict[str, float]]] = []  # what a pruned trial logs: the epochs it trained

    def on_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        epochs.append((epoch, dict(metrics)))
        value = metrics.get(monitor_key(train_cfg))
        if value is not None and math.isfinite(value):
            backend.report_epoch(trial, value, epoch)

    try:
        result = training.fit(splits, model_cfg, train_cfg, epoch_callback=on_epoch)
    except backend.TrialPruned:
        for epoch, metrics in epochs:  # so MLflow's charts show why it was pruned
            tracking.log_metrics(metrics, step=epoch)
        active.set_status("KILLED")
        tracking.set_tags({records.OPTUNA_STATE: "PRUNED"})
        backend.finish_trial(study, trial, "PRUNED")
        return "PRUNED"
    # No figures for trials (about 0.7 s of a 10 s trial, benchmarks/README.md): their per-epoch metrics
    # (MLflow's charts) and JSON confusion matrix are logged; the report draws confirmation runs only.
    tracking.log_training_run(run_record.build(result, splits, model_cfg, train_cfg, stage=records.STAGE_TRIAL,
                                               arm=arm.name, seed=trial_seed, test=False, figures=False,
                                               attention=False))
    value = float(result.val_metrics[monitor_metric(train_cfg)])
    if not math.isfinite(value):
        raise FloatingPointError(f"validation {train_cfg.monitor} is {value}")
    tracking.set_tags({records.OPTUNA_STATE: "COMPLETE"})
    backend.finish_trial(study, trial, "COMPLETE", value)
    return "COMPLETE"


def _hand_back(study, trial, run_id: str | None = None) -> None:
    """Give an interrupted trial's budget slot back (:func:`regimetry.studies.backend.hand_back`) and
    mark its MLflow run."""
    if backend.hand_back(study, trial) and run_id is not None:
        tracking.set_tags({records.OPTUNA_STATE: "FAIL", records.INTERRUPTED: "true"}, run_id=run_id)


def monitor_key(train_cfg: TrainConfig) -> str:
    """The per-epoch history key of the monitor (``val/loss``, ``val/balanced_accuracy``, ...)."""
    return training.MONITOR_KEYS[train_cfg.monitor]


def monitor_metric(train_cfg: TrainConfig) -> str:
    """The key of the monitor in ``FitResult.val_metrics`` (``log_loss`` for ``val_loss``)."""
    metric = monitor_key(train_cfg).split("/", 1)[1]
    return "log_loss" if metric == "loss" else metric


def _progress(study, arm: Arm, number: int, state: str, budget: Budget) -> None:
    done, total, best, first_start = backend.progress(study, budget.trials_per_arm)
    best_text = "-" if best is None else f"{best:.4f}"
    elapsed = (datetime.datetime.now() - first_start).total_seconds() if first_start is not None else float("nan")
    print(f"[{study.study_name}] trial {number} {state:<8} | {done}/{total} done | best val {best_text} | "
          f"{timing(elapsed, done, total)}", flush=True)


def check_budget_complete(storage, ctx: WorkerContext, arm_list: Sequence[Arm]) -> None:
    """Recover the trials of dead processes, then require every arm's budget to read n/n (that the arms'
    budgets are equal was checked before the run: :func:`regimetry.studies.backend.check_budgets`).

    Raises:
        BudgetIncomplete: naming each short arm with its WAITING and RUNNING counts.
    """
    short = []
    for arm in arm_list:
        study = arm_study(storage, ctx, arm)
        backend.recover_orphaned_trials(study)
        counts: dict[str, Any] = backend.budget_counts(study)
        done, total = backend.finished(counts), int(study.user_attrs[records.BUDGET_ATTR])
        if done < total:
            short.append(f"{arm.name} {done}/{total} ({counts['RUNNING']} running, {counts['WAITING']} waiting)")
    if short:
        raise BudgetIncomplete(
            f"the tuning budget is not finished: {'; '.join(short)}; no verdict is printed on a short budget. "
            + ("Run --stage tune (or --stage all) with the same --storage to finish it"
               if ctx.options.stage == "confirm" else "Re-run the same command to finish it")
            + " (trials running in another live process finish there; then run --stage confirm)")
