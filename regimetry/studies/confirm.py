"""Confirmation: the best configuration of every arm retrained on every evaluation block and seed.

Each run is evaluated once on its block's test period (tag ``stage=confirm``) and logs its test
probabilities (:data:`regimetry.records.CONFIRM_PROBS_ARTIFACT`) before it ends FINISHED, so a re-run
after a crash pools the runs a killed invocation finished instead of training them again
(:func:`_resume_confirmations`). The pooled predictions of every arm, with the reference baselines'
predictions on the same windows, go to :func:`regimetry.studies.summary.summarize`; :func:`log_summary`
logs the result where :mod:`regimetry.records` says the report reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from regimetry import baselines, evaluation, processes, records, run_record, tracking, training
from regimetry.config import DataConfig, ModelConfig, TrainConfig, one_line, redact_url
from regimetry.studies import backend
from regimetry.studies.context import WorkerContext, apply_arm_to_splits, arm_study, evaluation_blocks
from regimetry.studies.spec import METRICS_OF_RECORD, REFERENCE_BASELINES, Arm, study_key, study_name
from regimetry.studies.summary import (ArmConfirmation, ceiling_table, markdown, predictions_frame, summarize,
                                       timing)

logger = logging.getLogger("regimetry.studies")

__all__ = ["confirm_and_summarize", "confirm_key", "confirm_tags", "log_summary", "log_test_probs"]


def confirm_and_summarize(ctx: WorkerContext, arm_list: list[Arm], tracking_uri: str,
                          pool: ProcessPoolExecutor | None = None) -> dict[str, Any]:
    """Confirm every arm's best configuration, summarise, log the summary and print its markdown.

    ``pool`` (:func:`regimetry.processes.worker_pool`) trains the confirmation runs in its worker
    processes, each taking the next run when it is free; ``None`` trains them in this process."""
    blocks = evaluation_blocks(ctx.data_config, ctx.options, ctx.budget)
    plan, bests = _plan(ctx, arm_list, len(blocks))
    results, todo = _resume_confirmations(ctx, plan)
    if results:
        print(f"== {ctx.ablation.name}: resuming {len(results)} confirmation run(s) an interrupted run finished; "
              f"{len(todo)} to run", flush=True)
    results += _run_confirmations(ctx, todo, len(plan), len(results), pool)
    confirmations = [_arm_confirmation(ctx, arm, bests[arm.name], results, len(blocks)) for arm in arm_list]
    references = _baseline_predictions(ctx, blocks)
    summary = summarize(ctx.ablation, confirmations, blocks[0].num_classes, ctx.data_config.horizon, references,
                        stride=ctx.data_config.stride, seed=ctx.options.seed)
    if _has_ceiling(ctx.data_config):
        summary["ceilings"] = ceiling_table(results, blocks)
    summary["predictions"] = predictions_frame(results, confirmations, references, blocks)
    text = markdown(summary, ctx.ablation, ctx.budget)
    log_summary(summary, confirmations, ctx.arm_run_ids, text, list(blocks[0].class_names))
    print()
    print(text, flush=True)
    return summary


def _plan(ctx: WorkerContext, arm_list: list[Arm], n_blocks: int) -> tuple[list[tuple], dict[str, tuple]]:
    """Every confirmation run to have, ``(arm, block, seed, model config, train config, key)``, and each
    arm's ``(study, best trial, model config, train config)``."""
    storage = backend.resolve_storage(ctx.options.storage)
    seeds = [ctx.options.seed + s for s in range(ctx.budget.seeds)]
    code = tracking.git_info()["git_sha"]
    plan, bests = [], {}
    for arm in arm_list:
        study = arm_study(storage, ctx, arm)
        best = backend.best_trial(study)
        model_cfg = ModelConfig.from_dict(json.loads(best.user_attrs[records.MODEL_CONFIG_ATTR]))
        train_cfg = TrainConfig.from_dict(json.loads(best.user_attrs[records.TRAIN_CONFIG_ATTR]))
        bests[arm.name] = (study, best, model_cfg, train_cfg)
        plan += [(arm.name, b, seed, model_cfg, train_cfg,
                  confirm_key(ctx, arm, best.number, model_cfg, train_cfg, b, seed, code))
                 for b in range(n_blocks) for seed in seeds]
    return plan, bests


def _run_confirmations(ctx: WorkerContext, todo: list[tuple], planned: int, resumed: int,
                       pool: ProcessPoolExecutor | None) -> list[dict[str, Any]]:
    """Train the runs still to do, in this process (no pool) or in the pool's worker processes."""
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    if pool is None:
        for task in todo:
            results.append(_confirm_one(ctx, *task))
            _confirm_progress(results[-1], resumed + len(results), planned, started)
        return results
    futures = [processes.submit(pool, _confirm_one, ctx, *task) for task in todo]
    for future in as_completed(futures):
        results.append(processes.worker_result(future))
        _confirm_progress(results[-1], resumed + len(results), planned, started)
    return results


def _arm_confirmation(ctx: WorkerContext, arm: Arm, best_configs: tuple, results: list[dict[str, Any]],
                      n_blocks: int) -> ArmConfirmation:
    """An arm's confirmation runs, pooled per block (seeds in order)."""
    study, best, model_cfg, train_cfg = best_configs
    counts = backend.budget_counts(study)
    total = max(1, backend.finished(counts))
    ys, probs, per_run = [], [], []
    for b in range(n_blocks):
        runs = sorted((r for r in results if r["arm"] == arm.name and r["fold"] == b), key=lambda r: r["seed"])
        ys.append(runs[0]["y_true"])
        probs.append(np.stack([r["probs"] for r in runs], axis=1))
        per_run += [{k: v for k, v in r.items() if k not in ("y_true", "probs", "index")} for r in runs]
    return ArmConfirmation(arm.name, best.number, float(best.value), model_cfg, train_cfg, ys, probs, per_run,
                           ctx.ablation.nuisance.edge_warnings(best.params), counts["PRUNED"] / total,
                           counts["FAIL"] / total)


def _confirm_progress(last: dict[str, Any], done: int, planned: int, started: float) -> None:
    print(f"[confirm] {done}/{planned} {last['arm']} fold {last['fold']} seed {last['seed']} done | "
          f"{timing(time.monotonic() - started, done, planned)}", flush=True)


def _confirm_one(ctx: WorkerContext, arm_name: str, block_index: int, seed: int,
                 model_cfg: ModelConfig, train_cfg: TrainConfig, key: str) -> dict[str, Any]:
    arm = ctx.ablation.arm(arm_name)
    blocks = evaluation_blocks(ctx.data_config, ctx.options, ctx.budget)
    splits = apply_arm_to_splits(arm, blocks[block_index], ctx.options.seed)
    seed = seed + arm.seed_offset
    train_cfg = train_cfg.replace(seed=seed)
    training.set_global_seed(seed)
    tags = confirm_tags(arm.name, block_index, seed, key, ctx.parent_run_id)
    with tracking.run(ctx.ablation.name, run_name=f"fold{block_index}/seed{seed}",
                      parent_run_id=ctx.arm_run_ids.get(arm.name), tags=tags) as active:
        # One kept compiled model per configuration and worker: its graphs are traced once, not once
        # per fold and seed; the runs stay bit-identical (training.fit, benchmarks/README.md).
        result = training.fit(splits, model_cfg, train_cfg, reuse_graphs=True)
        probs = training.predict_proba(result.model, splits.test.X)
        # The full MLflow model flavour costs 4-8 s a run (benchmarks/README.md), about a fifth of the
        # confirmation stage: only the most recent block's first seed logs it (the model a user would
        # deploy); every run still saves its .keras file, which load_model reads.
        full_model = block_index == len(blocks) - 1 and seed == ctx.options.seed + arm.seed_offset
        tracking.log_training_run(run_record.build(result, splits, model_cfg, train_cfg, stage=records.STAGE_CONFIRM,
                                                   arm=arm.name, seed=seed, test=True, full_model=full_model,
                                                   test_probs=probs))
        # Logged before the run ends FINISHED, so every FINISHED confirmation run holds its probabilities
        # and a re-run after a crash can pool them instead of training again (_resume_confirmations).
        log_test_probs(probs)
        run_id = active.run_id
    return _confirm_result(arm, block_index, seed, splits, probs, run_id)


def confirm_tags(arm: str, block_index: int, seed: int, key: str, session: str | None) -> dict[str, Any]:
    """The tags of a confirmation run (:mod:`regimetry.records`)."""
    return {records.STAGE: records.STAGE_CONFIRM, records.ARM: arm, records.SEED: str(seed),
            records.FOLD: str(block_index), records.CONFIRM_KEY_TAG: key, records.SESSION_TAG: session}


def log_test_probs(probs: np.ndarray) -> None:
    """Log a confirmation run's test probabilities (:data:`regimetry.records.CONFIRM_PROBS_ARTIFACT`)
    on the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(records.CONFIRM_PROBS_ARTIFACT).name
        np.save(path, probs)
        tracking.log_artifact(path, str(Path(records.CONFIRM_PROBS_ARTIFACT).parent))


def _confirm_result(arm: Arm, block_index: int, seed: int, splits, probs: np.ndarray, run_id: str) -> dict[str, Any]:
    """What the summary pools from one confirmation run (trained now or resumed)."""
    out = {"arm": arm.name, "fold": block_index, "seed": seed, "run_id": run_id,
           "y_true": splits.test.y, "probs": probs, "index": splits.test.index}
    if _has_ceiling(splits.config):
        out["ceiling"] = _ceiling_accuracy(splits)
    return out


def confirm_key(ctx: WorkerContext, arm: Arm, best_number: int, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 block_index: int, seed: int, code: str) -> str:
    """Everything that determines a confirmation run's result, hashed: the arm's study identity (data,
    arm, fixed settings, nuisance space), its best trial and configuration, the budget, the evaluation
    blocks, the block, the seed and the code version (git sha). Two runs with the same key train the
    same model on the same windows, so a re-run may pool a finished one instead of training again."""
    identity = {"study": study_name(ctx.ablation, arm), "identity": study_key(ctx.ablation, arm, ctx.data_config),
                "seed_offset": arm.seed_offset, "best_trial": best_number, "model": model_cfg.to_dict(),
                "train": train_cfg.to_dict(), "budget": dataclasses.asdict(ctx.budget),
                "blocks": [ctx.options.paths, ctx.options.smoke], "block": block_index, "seed": seed, "code": code}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _resume_confirmations(ctx: WorkerContext, plan: list[tuple]) -> tuple[list[dict[str, Any]], list[tuple]]:
    """Split ``plan`` into the runs an interrupted session already finished and the runs still to do.

    A FINISHED confirmation run is taken over when its key (:func:`confirm_key`) is planned and its
    session (parent run) ended KILLED or FAILED: a crashed or killed invocation, whose RUNNING runs
    :func:`regimetry.tracking.end_orphaned_runs` ended just before. It moves under this session's arm
    run (``mlflow.parentRunId``, :data:`regimetry.records.SESSION_TAG`; ``resumed_from`` names the old session), so each
    session holds exactly its blocks x seeds runs per arm and no confirmation run is duplicated. Runs of
    FINISHED sessions are never taken (a finished result stays its own), nor those of live sessions;
    when a finished session already holds every planned run, a notice says that this session trains
    them again and how to read the results without training.

    Returns:
        ``(results of the runs taken over, the tasks still to run)``.
    """
    wanted = {task[-1]: task for task in plan}
    runs = tracking.search_runs(ctx.ablation.name, f"tags.{records.STAGE} = '{records.STAGE_CONFIRM}' and attributes.status = 'FINISHED'",
                                order_by=["attribute.start_time ASC"])
    column = records.tag_column(records.CONFIRM_KEY_TAG)
    if runs.empty or column not in runs:
        return [], plan
    blocks = evaluation_blocks(ctx.data_config, ctx.options, ctx.budget)
    sessions: dict[str, str | None] = {}
    taken: dict[str, dict[str, Any]] = {}
    finished: dict[str, set] = {}  # FINISHED session -> planned keys it already confirmed
    for record in runs.to_dict("records"):
        key, session = record.get(column), record.get(records.tag_column(records.SESSION_TAG))
        if key not in wanted or key in taken or not isinstance(session, str) or session == ctx.parent_run_id:
            continue
        if session not in sessions:
            try:
                sessions[session] = tracking.run_status(session)
            except Exception:  # noqa: BLE001 - a deleted session: its runs are not taken
                sessions[session] = None
        if sessions[session] == "FINISHED":
            finished.setdefault(session, set()).add(key)
        if sessions[session] not in ("KILLED", "FAILED"):
            continue
        arm_name, block_index, seed = wanted[key][:3]
        arm = ctx.ablation.arm(arm_name)
        splits = apply_arm_to_splits(arm, blocks[block_index], ctx.options.seed)
        try:
            probs = np.load(tracking.download_artifacts(record["run_id"], records.CONFIRM_PROBS_ARTIFACT))
        except Exception as exc:  # noqa: BLE001 - an unreadable artifact: train the run again
            logger.warning("confirmation run %s: cannot read %s (%s); training it again", record["run_id"],
                           records.CONFIRM_PROBS_ARTIFACT, one_line(exc))
            continue
        if probs.shape[0] != len(splits.test):
            continue
        tracking.set_tags({records.PARENT_RUN: ctx.arm_run_ids[arm_name], records.SESSION_TAG: ctx.parent_run_id,
                           records.RESUMED_FROM: session}, run_id=record["run_id"])
        taken[key] = _confirm_result(arm, block_index, seed + arm.seed_offset, splits, probs, record["run_id"])
    done_before = max(finished.items(), key=lambda item: len(item[1]), default=None)
    if done_before and len(done_before[1]) == len(wanted):
        print(f"== {ctx.ablation.name}: a finished session (MLflow run {done_before[0]}) already confirmed all "
              f"{len(wanted)} runs of this plan; training them again as a new session (same seed and data: "
              f"the same numbers). To read the results without training: python -m regimetry.reports "
              f"{ctx.ablation.name}{_tracking_option(ctx)}", flush=True)
    return list(taken.values()), [task for task in plan if task[-1] not in taken]


def _tracking_option(ctx: WorkerContext) -> str:
    """`` --tracking-uri URI`` (password masked) when the run was given one, for a command to print."""
    return f" --tracking-uri {redact_url(ctx.options.tracking_uri)}" if ctx.options.tracking_uri else ""


def _has_ceiling(config: DataConfig) -> bool:
    """Whether the data's Bayes-optimal posterior is known (simulator, control task)."""
    return config.source == "synthetic" or config.control_task is not None


def _ceiling_accuracy(splits) -> dict[str, float] | None:
    """Accuracy and balanced accuracy of the Bayes-optimal posterior on the test windows (the Hamilton
    filter with the true parameters on synthetic data, the exact posterior of a control task)."""
    posterior = splits.extras.get("filter_posterior")
    if posterior is None:
        return None
    posterior = np.asarray(posterior)
    pred = posterior[splits.test.positions].argmax(axis=1)
    y = splits.test.y
    return {"accuracy": float(np.mean(pred == y)),
            "balanced_accuracy": evaluation.seed_averaged_metric("balanced_accuracy", y, pred, splits.num_classes)}


def _baseline_predictions(ctx: WorkerContext, blocks) -> list[dict[str, Any]]:
    """Test predictions per block of the reference baselines (:data:`REFERENCE_BASELINES`, refitted on
    each block's training period): ``[{"name", "per_block"}]``, probabilities where the baseline has
    them (HAR-RV), hard predictions otherwise (persistence). Empty when the target is not the
    forward volatility regime (the references predict volatility)."""
    if ctx.data_config.resolved_target != "forward_vol_regime":
        return []
    out = []
    for name in REFERENCE_BASELINES:
        preds = []
        for splits in blocks:
            try:
                result = baselines.run_baseline(name, splits)
            except Exception as exc:  # noqa: BLE001 - a baseline problem must not lose the ablation
                logger.warning("baseline %s failed on block %s: %s", name, splits.fold, exc)
                preds = None
                break
            probs = getattr(result, "test_probs", None)
            preds.append(probs if probs is not None else np.asarray(result.test_pred))
        if preds is not None:
            out.append({"name": name, "per_block": preds})
    return out


def log_summary(summary: dict[str, Any], confirmations: list[ArmConfirmation], arm_run_ids: dict[str, str],
                text: str, class_names: list[str]) -> None:
    """Log a summary: each arm's scores, tuned configuration and per-fold results on its arm run; the
    tables, verdicts and markdown on the active (parent) run (keys and paths: :mod:`regimetry.records`)."""
    for conf, (_, row) in zip(confirmations, summary["arms"].iterrows()):
        _log_arm(summary, conf, row, arm_run_ids[conf.arm])
    tracking.log_text(text, records.SUMMARY_MARKDOWN)
    tracking.log_text(summary["arms"].to_csv(index=False), records.SUMMARY_ARMS)
    tracking.log_text(summary["per_fold"].to_csv(index=False), records.SUMMARY_PER_FOLD)
    tracking.log_text(summary["differences"].to_csv(index=False), records.SUMMARY_DIFFERENCES)
    if len(summary["predictions"]):
        tracking.log_text(summary["predictions"].to_csv(index=False), records.SUMMARY_PREDICTIONS)
        tracking.log_dict({"class_names": class_names}, records.SUMMARY_CLASSES)
    if len(summary["references"]):
        tracking.log_text(summary["references"].to_csv(index=False), records.SUMMARY_REFERENCES)
        tracking.log_metrics({records.reference_metric(r["model"], m): float(r[f"{m}_pooled"])
                              for r in summary["references"].to_dict("records") for m in METRICS_OF_RECORD
                              if math.isfinite(r[f"{m}_pooled"])})
    tracking.log_text("\n".join(summary["verdicts"]) + "\n", records.SUMMARY_VERDICTS)
    if "ceilings" in summary:
        tracking.log_text(summary["ceilings"].to_csv(index=False), records.SUMMARY_CEILINGS)
    tracking.set_tags({records.VERDICTS: records.joined(summary["verdicts"]),
                       records.BLOCK_WARNINGS: records.joined(w["message"] for w in summary["block_warnings"])
                       or records.NONE})


def _log_arm(summary: dict[str, Any], conf: ArmConfirmation, row, arm_run: str) -> None:
    # Only test-block scores go under confirm/test/; the tuning-period numbers go under tuning/.
    tracking.log_metrics({records.confirm_metric(k): float(v) for k, v in row.items()
                          if isinstance(v, (int, float, np.floating)) and k not in records.TUNING_COLUMNS},
                         run_id=arm_run)
    # The tuned configuration as run parameters, so MLflow's compare view sets the arms side by side.
    tracking.log_params({records.best_param(section, k): v
                         for section, cfg in (("model", conf.model_config), ("train", conf.train_config))
                         for k, v in cfg.to_dict().items()}, run_id=arm_run)
    tracking.log_metrics({records.TUNING_BEST_VAL: conf.best_value, records.TUNING_FRACTION_PRUNED: conf.fraction_pruned,
                          records.TUNING_FRACTION_FAILED: conf.fraction_failed}, run_id=arm_run)
    tracking.set_tags({records.BEST_TRIAL: str(conf.best_trial),
                       records.EDGE_WARNINGS: row["edge_warnings"] or records.NONE}, run_id=arm_run)
    tracking.log_dict({"model": conf.model_config.to_dict(), "train": conf.train_config.to_dict()},
                      records.BEST_CONFIG, run_id=arm_run)
    # the MDE of every comparison this arm is part of (either side), so no arm shows NaN for a pair
    mdes = summary["differences"]
    mdes = mdes[((mdes["a"] == conf.arm) | (mdes["b"] == conf.arm)) & (mdes["metric"] == "balanced_accuracy")] \
        if len(mdes) else mdes
    tracking.log_metrics({records.mde_metric(r["b"] if r["a"] == conf.arm else r["a"]): float(r["mde"])
                          for r in mdes.to_dict("records") if math.isfinite(r["mde"])}, run_id=arm_run)
    for fold_row in summary["per_fold"][summary["per_fold"]["arm"] == conf.arm].to_dict("records"):
        tracking.log_metrics({records.fold_metric(fold_row["fold"], m): fold_row[m] for m in METRICS_OF_RECORD},
                             run_id=arm_run)
