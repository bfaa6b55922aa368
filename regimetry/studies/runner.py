"""One ablation run: validate, tune every arm, confirm every arm's best configuration, summarise, report.

:func:`run_ablation` validates everything it can before anything is written (the arms, the data, the
Optuna storage, the MLflow store, the stored studies' identity), then opens the MLflow parent run and
one child run per arm and one pool of ``--jobs`` worker processes (:func:`regimetry.processes.worker_pool`)
that serves both stages: tuning workers (:mod:`regimetry.studies.tuning`), then, once every arm's budget
is complete, the confirmation runs (:mod:`regimetry.studies.confirm`); finally it renders the papermill
report (:mod:`regimetry.reports`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import warnings
from typing import Any

from regimetry import processes, records, reports, tracking
from regimetry.config import DataConfig, redact_url
from regimetry.data.splits import FoldsStartOutsideData
from regimetry.studies import backend
from regimetry.studies.confirm import confirm_and_summarize
from regimetry.studies.context import WorkerContext, evaluation_blocks, init_worker
from regimetry.studies.spec import Ablation, Arm, Budget, ReportFailed, RunOptions, data_config, study_name, validate_arms
from regimetry.studies.summary import plural
from regimetry.studies.tuning import check_budget_complete, run_worker

__all__ = ["run_ablation", "SMOKE_REPORTS"]

#: Where a ``--smoke`` run renders its report (``<SMOKE_REPORTS>/<experiment>/``), so that it never
#: replaces the full run's ``reports/<experiment>/``.
SMOKE_REPORTS = "reports/smoke"


def run_ablation(ablation: Ablation, options: RunOptions) -> dict[str, Any]:
    """Tune every arm, confirm every arm's best configuration, summarise and log. Returns the summary."""
    started = time.monotonic()
    budget, config, arm_list, tracking_uri, storage_url = _validated(ablation, options)
    options = dataclasses.replace(options, storage=storage_url)  # workers and confirmation open the same storage
    if options.stage == "tune" and backend.tuning_finished(backend.resolve_storage(storage_url), ablation, arm_list,
                                                           budget.trials_per_arm):
        # fresh-user finding: a re-run used to open a parent run and one run per arm that stayed empty
        print(f"== {ablation.name}: every arm's tuning budget is already finished in {redact_url(storage_url)}; "
              "nothing to tune (no MLflow run opened). Run --stage confirm with the same --storage for the "
              "verdicts, or a larger --trials to extend the budget", flush=True)
        return {}
    with tracking.run(ablation.name, run_name=f"{ablation.name} ({options.stage})",
                      tags=_parent_tags(ablation, options, config, arm_list, storage_url)) as parent, \
            processes.worker_pool(options.jobs, init_worker, (tracking_uri,)) as pool:
        ctx = _open_session(ablation, options, budget, config, arm_list, parent.run_id)
        names = [a.name for a in arm_list]
        if options.stage in ("all", "tune"):
            print(f"== {ablation.name}: tuning {plural(len(arm_list), 'arm')} x "
                  f"{plural(budget.trials_per_arm, 'trial')} "
                  f"(storage {redact_url(storage_url)}, {options.jobs} process(es))", flush=True)
            _tune(pool, options.jobs, ctx, names)
        if options.stage == "tune":
            print(f"== {ablation.name}: tuning done in this process; once every tuning process has finished, run "
                  f"--stage confirm with the same --storage for the verdicts", flush=True)
            print(f"== {ablation.name}: browse the runs: {tracking.browse_hint(parent.experiment_id, tracking_uri)}",
                  flush=True)
            return {}
        check_budget_complete(backend.resolve_storage(storage_url), ctx, arm_list)
        print(f"== {ablation.name}: confirming best configurations ({plural(budget.folds, 'block')} x "
              f"{plural(budget.seeds, 'seed')})",
              flush=True)
        summary = confirm_and_summarize(ctx, arm_list, tracking_uri, pool)
        if pool is not None:
            # Every worker task is done: the workers exit (TensorFlow's teardown, ~2-3 s) while this
            # process logs and renders the report; leaving the pool's context waits for them.
            pool.shutdown(wait=False)
        for arm_run_id in ctx.arm_run_ids.values():  # an arm's run spans its trials and confirmation runs
            tracking.extend_end_time(arm_run_id)
        tracking.set_tags({records.WALL_SECONDS: f"{time.monotonic() - started:.0f}"})
        tracking.log_metrics({records.WALL_SECONDS: time.monotonic() - started})
        summary["parent_run_id"] = parent.run_id
        report_error = _render_report(ablation, options, summary, tracking_uri, storage_url, parent.run_id)
    print(f"== {ablation.name}: browse the runs: {tracking.browse_hint(parent.experiment_id, tracking_uri)}", flush=True)
    if report_error is not None:
        raise ReportFailed(f"the report failed to render (re-render with: python -m regimetry.reports "
                           f"{ablation.name}): {report_error}")
    return summary


def _validated(ablation: Ablation, options: RunOptions) -> tuple[Budget, DataConfig, list[Arm], str, str]:
    """Check the arms, the data (prepared), the MLflow store, the Optuna storage and the stored studies'
    identity, in that order, before any MLflow run, study, trial or worker process exists: a bad input fails
    with one clear message and costs no budget."""
    budget = options.budget(ablation)
    validate_arms(ablation, budget, options.seed)
    try:
        config = data_config(ablation, options, budget)
    except ValueError as exc:  # name the option the user typed, not the DataConfig field behind it
        if not options.folds_start or "DataConfig.folds_start" not in str(exc):
            raise
        raise ValueError(str(exc).replace("DataConfig.folds_start", "--folds-start")) from None
    storage_url = options.storage or (backend.SMOKE_STORAGE if options.smoke else backend.DEFAULT_STORAGE)
    backend.check_storage(storage_url)  # its form and file, before the data are prepared or any store exists
    arm_list = [a for a in ablation.arms if options.arms is None or a.name in options.arms]
    local_file = backend.storage_file(storage_url)
    if options.stage == "confirm" and local_file is not None and not local_file.exists():
        # nothing was tuned there: refuse before creating this file or the MLflow store (fresh-user finding)
        backend.refuse_untuned([a.name for a in arm_list], f"({local_file.resolve()} does not exist)")
    # Prepare (and so validate) the data first: a bad CSV, feature name or option fails with one clear
    # message before any MLflow store, run, Optuna study, trial or worker process exists.
    blocks = _blocks(config, options, budget)
    tracking_uri = tracking.configure(options.tracking_uri)  # validates the store before anything is written
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    print(f"== {ablation.name}: {config.dataset_name}, {len(blocks)} evaluation block(s); tuning on block 0 "
          f"({len(blocks[0].train)} train / {len(blocks[0].val)} validation windows of "
          f"{blocks[0].window_size} x {blocks[0].num_features})", flush=True)
    # Open (and so validate) the storage too, creating its schema once before any worker starts:
    # a bad --storage fails here, before any MLflow run exists; so does a stored study of another definition.
    is_new = local_file is not None and not local_file.exists()
    backend.check_identity(backend.resolve_storage(storage_url), ablation, arm_list, config, storage_url, budget)
    if is_new:  # say so: a mistyped --storage path would otherwise start from scratch silently
        print(f"== {ablation.name}: new Optuna storage {local_file.resolve()} (no such file before)", flush=True)
    if options.stage == "confirm":
        backend.check_tuned(backend.resolve_storage(storage_url), ablation, arm_list, storage_url)
    tuned = backend.check_budgets(backend.resolve_storage(storage_url), ablation, arm_list, options.stage,
                                  budget.trials_per_arm)
    if tuned is not None and tuned != budget.trials_per_arm:  # logged and reported as what the arms were tuned with
        print(f"== {ablation.name}: the stored studies hold {plural(tuned, 'trial')} per arm (this run's --trials: "
              f"{budget.trials_per_arm}); the summary and the run's budget.trials_per_arm report {tuned}", flush=True)
        budget = dataclasses.replace(budget, trials_per_arm=tuned)
    ended = tracking.end_orphaned_runs(ablation.name, tracking_uri=tracking_uri)
    if ended:
        print(f"== {ablation.name}: ended {len(ended)} MLflow run(s) KILLED whose process is gone", flush=True)
    return budget, config, arm_list, tracking_uri, storage_url


def _blocks(config: DataConfig, options: RunOptions, budget: Budget) -> list:
    """The evaluation blocks; a ``--folds-start`` the user gave outside the data's period is refused (the data
    layer falls back to the first 40 % of the samples with a warning, for default dates on simulated paths)."""
    with warnings.catch_warnings():
        if options.folds_start:
            warnings.simplefilter("error", FoldsStartOutsideData)
        try:
            return evaluation_blocks(config, options, budget)
        except FoldsStartOutsideData as exc:
            # the first day itself leaves nothing before the test blocks to tune on (fresh-user finding: it was
            # called "outside" a period that starts on it)
            raise ValueError(f"--folds-start {options.folds_start}: lies outside the samples' period ({exc.first} .. "
                             f"{exc.last}) or on its first day; give a date after the first day, up to the last (or "
                             "leave the option out)") from None
        except ValueError as exc:
            if not options.folds_start or not str(exc).startswith("fold 0:"):
                raise
            reason = re.split(r" \(|; ", str(exc))[0]  # e.g. "fold 0: the validation split is empty after ..."
            raise ValueError(f"--folds-start {options.folds_start}: too little data before the first test block "
                             f"({reason}); start the folds later") from None


def _parent_tags(ablation: Ablation, options: RunOptions, config: DataConfig, arm_list: list[Arm],
                 storage_url: str) -> dict[str, str]:
    return {
        records.STAGE: records.STAGE_STUDY, records.DATASET: config.dataset_name,
        records.SCIENTIFIC: ablation.scientific, records.OPTUNA_STORAGE: redact_url(storage_url),
        records.OPTUNA_STUDIES: json.dumps([study_name(ablation, a) for a in arm_list]),
        records.QUESTION: ablation.question[:4000], records.SEED: str(options.seed),
    }


def _open_session(ablation: Ablation, options: RunOptions, budget: Budget, config: DataConfig, arm_list: list[Arm],
                  parent_run_id: str) -> WorkerContext:
    """Log the protocol on the parent run and open one child run per arm; the context workers share."""
    tracking.log_params({**{f"{records.BUDGET_PARAM}{k}": v for k, v in dataclasses.asdict(budget).items()},
                         **config.flat(), f"{records.OPTIONS_PARAM}jobs": options.jobs,
                         f"{records.OPTIONS_PARAM}smoke": options.smoke})
    tracking.log_dict({"arms": [dataclasses.asdict(a) | {"overrides": dict(a.overrides)} for a in arm_list],
                       "nuisance": ablation.nuisance.describe(), "fixed": dict(ablation.fixed)},
                      records.ABLATION_SPEC)
    arm_run_ids = {}
    for arm in arm_list:
        with tracking.run(ablation.name, run_name=arm.name, parent_run_id=parent_run_id,
                          tags={records.STAGE: records.STAGE_ARM, records.ARM: arm.name,
                                records.DATASET: config.dataset_name,
                                records.OPTUNA_STUDY: study_name(ablation, arm)}) as arm_run:
            tracking.log_params({f"{records.ARM_PARAM}{k}": v for k, v in arm.overrides.items()})
            arm_run_ids[arm.name] = arm_run.run_id
    return WorkerContext(ablation, options, budget, config, arm_run_ids, parent_run_id)


def _render_report(ablation: Ablation, options: RunOptions, summary: dict[str, Any], tracking_uri: str,
                   storage_url: str, parent_run_id: str) -> Exception | None:
    """Render the papermill report (when ``options.report``); returns the error of a failed report.

    The runs and tables are complete and stay FINISHED; a failed report is flagged on the parent run
    (``report_error``) and the command exits non-zero, so nobody mistakes a missing report for a good one.
    """
    if not options.report:
        return None
    # A smoke run's report has a directory of its own: it must not replace the full run's (fresh-user finding).
    root = SMOKE_REPORTS if options.smoke else "reports"
    print(f"== {ablation.name}: rendering the report into {root}/{ablation.name}/", flush=True)
    try:
        paths = reports.render_ablation_report(ablation.name, tracking_uri=tracking_uri, storage=storage_url,
                                               parent_run_id=parent_run_id, output_dir=root)
    except (reports.ReportError, ValueError) as exc:
        tracking.set_tags({records.REPORT_ERROR: str(exc)[:4000]})
        return exc
    summary["report"] = paths
    print(f"== {ablation.name}: report {paths.html} (notebook {paths.notebook.name} beside it)", flush=True)
    return None


def _tune(pool, jobs: int, ctx: WorkerContext, names: list[str]) -> None:
    """Every worker of the pool claims and runs trials until no slot is left (in-process without a pool)."""
    if pool is None:
        run_worker(ctx, names)
        return
    for future in [processes.submit(pool, run_worker, ctx, names) for _ in range(jobs)]:
        processes.worker_result(future)
