"""The Optuna backend of the harness, and the only module that imports optuna.

Storages: :func:`resolve_storage` opens any SQLAlchemy URL (sqlite, postgresql, mysql) or a journal
file; SQLite transactions take the write lock up front (``BEGIN IMMEDIATE``, :class:`_SQLiteStorage`)
so the check-and-set of a claim is atomic between processes. Exact budgets: the process that creates an
arm's study enqueues exactly ``trials_per_arm`` trials, each with its pre-drawn nuisance configuration
(:func:`ensure_study`, :func:`draw_configurations`); workers claim WAITING trials atomically
(:func:`claim_waiting_trial`). Liveness: claimed trials record their owner process and send RDB
heartbeats (:class:`Heartbeat`); a re-run retries the trials of a dead owner at once
(:func:`recover_orphaned_trials`) and finishes a study whose creator died before recording its budget
(:func:`_take_over_creation`). Read access for the reports: :func:`study_trials_frame`,
:func:`param_importances`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna import TrialPruned
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy import event

from regimetry import processes, records
from regimetry.config import (DataConfig, check_credentials, connect_args, driver_hint, is_foreign_file, mask_password, one_line, redact_url,
                              sqlite_store_kind)
from regimetry.studies.spec import (Ablation, Arm, Budget, NoCompleteTrial, SearchSpace, study_direction, study_key,
                                    study_name)

logger = logging.getLogger("regimetry.studies")
# QMCSampler, heartbeats and fail_stale_trials are stable in practice but still flagged experimental.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
#: ``--smoke`` runs' default storage: their studies use other data than the default run's, so in one storage
#: whichever came second would be refused (fresh-user finding: a smoke run first locked out the main job).
SMOKE_STORAGE = "sqlite:///mlruns/optuna_smoke.db"
OWNER_ATTR = records.OWNER_ATTR
CREATOR_ATTR = records.CREATOR_ATTR

__all__ = ["DEFAULT_STORAGE", "SMOKE_STORAGE", "TrialPruned", "check_storage", "resolve_storage", "ensure_study", "arm_study", "check_identity", "check_budgets", "refuse_untuned",
           "draw_configurations", "claim_waiting_trial", "recover_orphaned_trials", "budget_counts", "finished", "Heartbeat",
           "study_names", "study_trials_frame", "param_importances", "storage_file", "best_configurations"]


# ================================================================================================
# Storages
# ================================================================================================
def storage_file(url: str | None) -> Path | None:
    """The local file of a sqlite or journal storage URL (``None`` for a server database)."""
    url = url or DEFAULT_STORAGE
    if url.startswith("journal:"):
        path = url[len("journal:"):].lstrip("/")
        return Path("/" + path if url.startswith("journal:///") else path)
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def check_storage(url: str | None) -> None:
    """The checks of a storage URL that need neither writing nor a connection, so that a run makes them
    before anything exists (data prepared, MLflow store, study): the URL's form, a directory where a
    file is expected, an existing file that is not a SQLite database.

    Raises:
        ValueError: naming ``--storage`` (password masked) and what was expected.
    """
    url = url or DEFAULT_STORAGE
    shown = redact_url(url)
    path = storage_file(url)
    if url.startswith("journal:"):
        if path.is_dir():
            raise ValueError(f"--storage {shown!r}: {path} is a directory; a journal storage is a file "
                             "(journal:///path/file.log)")
        return
    if "://" not in url:
        raise ValueError(f"--storage {shown!r}: expected a database URL (sqlite:///file.db, postgresql://...) "
                         "or journal:///path/file.log")
    check_credentials(url, "--storage")
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--storage {shown!r}: {path} is a directory; expected a SQLite file path")
    if is_foreign_file(path):
        raise ValueError(f"--storage {shown!r}: {path.resolve()} exists and is not a SQLite database; "
                         "point --storage at a new file or at the storage an experiment ran with")
    if sqlite_store_kind(path) == "MLflow tracking store":
        raise ValueError(f"--storage {shown!r}: {path.resolve()} is an MLflow tracking store (give it as "
                         "--tracking-uri); point --storage at the Optuna storage, e.g. sqlite:///mlruns/optuna.db")


def resolve_storage(url: str | None, read_only: bool = False) -> optuna.storages.BaseStorage:
    """Optuna storage from a URL: any SQLAlchemy URL (sqlite, postgresql, mysql) or
    ``journal:///path/file.log`` for a journal file. ``None`` gives ``sqlite:///mlruns/optuna.db``.

    SQLite gets a 60 s busy timeout so that several local processes can share one file; RDB storages
    get a heartbeat (60 s, grace 180 s) so trials of killed processes are failed and retried.

    Args:
        url: the storage URL (``--storage``).
        read_only: the caller only reads (reports): a sqlite or journal file that does not exist is an
            error instead of a new, empty storage (and no directory is created).

    Raises:
        ValueError: an unparseable URL, a directory where a file is expected, a missing file with
            ``read_only``, or a storage that cannot be opened, naming the (password-masked) URL.
    """
    url = url or DEFAULT_STORAGE
    shown = redact_url(url)
    check_storage(url)
    if url.startswith("journal:"):
        path = str(storage_file(url))
        _refuse_non_storage_for_readers(Path(path), shown, read_only)
        _make_parent(Path(path), shown)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    timeout = connect_args(url)
    engine_kwargs: dict[str, Any] = {"connect_args": timeout} if timeout else {}
    if url.startswith("sqlite:///"):
        db_path = storage_file(url)
        _refuse_non_storage_for_readers(db_path, shown, read_only, sqlite=True)
        _make_parent(db_path, shown)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    # Several processes opening a new database at once race to create its schema (one of them gets
    # an IntegrityError on alembic_version); the loser simply opens the now-created schema again.
    last_error: Exception | None = None
    storage_class = _SQLiteStorage if url.startswith("sqlite:") else optuna.storages.RDBStorage
    for attempt in range(6):
        try:
            return storage_class(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=60,
                grace_period=180,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors vary by backend
            last_error = exc
            if not any(word in str(exc) for word in ("IntegrityError", "UNIQUE constraint", "locked", "already exists")):
                break
            time.sleep(0.5 * (attempt + 1))
    message = mask_password(one_line(last_error), url)
    if isinstance(last_error, ImportError) or "Failed to import DB access module" in message:
        message += f"; the database driver is not installed: {driver_hint(url)}"
    raise ValueError(f"--storage {shown!r}: cannot open the Optuna storage: {message}") from None


def _begin_immediate(engine) -> None:
    """Make every transaction on a SQLite engine start with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented
    pysqlite recipe: the driver's own implicit BEGIN is turned off and the engine emits its own).

    Why: pysqlite opens a transaction only at the first write, and SQLite ignores ``SELECT ... FOR
    UPDATE``, so Optuna's read-then-write updates are not atomic between processes: two workers could
    both move one WAITING trial to RUNNING (measured: 70 claims of 60 trials by 4 processes), run it
    twice and crash on the second ``tell``. Taking SQLite's write lock when a transaction begins makes
    each such update atomic; the 60 s busy timeout lets the other processes wait their turn.
    """
    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections opened before the listeners existed


class _SQLiteStorage(optuna.storages.RDBStorage):
    """An Optuna RDB storage on SQLite whose transactions take the write lock up front
    (:func:`_begin_immediate`), also after pickling into a worker process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _begin_immediate(self.engine)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        _begin_immediate(self.engine)


def _refuse_non_storage_for_readers(path: Path, shown: str, read_only: bool, sqlite: bool = False) -> None:
    """A reader must not create or alter the storage it was asked to read: a missing file, or a SQLite
    file without Optuna's tables (an empty file, another program's database), is refused, because
    opening it through Optuna would create its schema there and read as 'no studies'."""
    if not read_only:
        return
    if not path.is_file():
        raise ValueError(f"--storage {shown!r}: no Optuna storage at {path.resolve()} (the file does not exist); "
                         "pass the --storage the experiment ran with")
    if sqlite:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)) as connection:
                tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"--storage {shown!r}: {path.resolve()} is not a SQLite database ({exc})") from None
        if not {"studies", "trials", "version_info"} <= tables:
            raise ValueError(f"--storage {shown!r}: {path.resolve()} is not an Optuna storage (no Optuna tables"
                             f"{'; it is empty' if not tables else ''}); pass the --storage the experiment ran with")


def _make_parent(path: Path, shown: str) -> None:
    """Create the directory a storage file goes in, or fail naming the option (a path under a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--storage {shown!r}: cannot create the directory {path.parent}: "
                         f"{exc.strerror or exc}") from None


def _sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(
        qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False, warn_asynchronous_seeding=False
    )


def draw_configurations(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    """The first ``n`` nuisance configurations of the sampler with ``seed``, drawn once, up front.

    The points come from the same scrambled Sobol sampler as always (:func:`_sampler`, Optuna's
    ``QMCSampler``), asked one after another in a private in-memory study, so the draw never depends
    on other workers, their timing or the order in which they claim trials. Every arm's study
    enqueues these configurations with their parameters, so trial ``i`` of every arm gets
    configuration ``i`` by construction (the paired design), with any number of workers. The first
    ``k`` configurations of a larger ``n`` equal those of ``n = k`` (a budget can grow on a re-run).

    Returns:
        ``n`` dicts ``{param name: value}`` (conditional parameters only where active).
    """
    study = optuna.create_study(sampler=_sampler(seed), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.sample(trial))
        study.tell(trial, 0.0)
    return out


def _pruner(budget: Budget) -> optuna.pruners.BasePruner:
    return SlotOrderedMedianPruner(n_startup_trials=budget.pruner_startup_trials,
                                   n_warmup_steps=budget.pruner_warmup_epochs)


class SlotYield(Exception):
    """A lower budget slot whose value this trial's pruning decision needs is WAITING for a worker: the
    trial gives its slot back (:func:`hand_back`) so that its worker runs the lower slot first."""


class SlotOrderedMedianPruner(optuna.pruners.BasePruner):
    """Median pruning whose decisions do not depend on the number of workers, their timing or a resume.

    Optuna's ``MedianPruner`` compares a trial with the trials that are COMPLETE at the moment it asks,
    so with several workers whether a trial is pruned depends on which others happened to finish
    first (and so do the budget's scores and the best trial). Here the trial of budget slot ``i``
    (:func:`ensure_study`) at epoch ``k`` is compared only with the trials of slots ``0 .. i-1``, each
    with its value at epoch ``k`` whatever its later fate (the rule of successive halving, Jamieson &
    Talwalkar 2016, where every trial that reached a rung counts); a lower slot that is still running
    below epoch ``k`` is waited for (it was claimed earlier, :func:`claim_waiting_trial`). Trials are
    deterministic functions of their slot's configuration and the seed, so every decision is the same
    with ``--jobs 1``, ``--jobs N`` and after a crash.

    Rule (Optuna's median rule otherwise): slots ``< n_startup_trials`` and epochs ``< n_warmup_steps``
    are never pruned; else a trial is pruned when its best value so far is worse (by the study's
    direction) than the median of the lower slots' values at this epoch (NaN values ignored; a NaN
    best value is pruned), and not pruned when no lower slot reached this epoch.

    Raises (from :meth:`prune`):
        SlotYield: a lower slot needed here is WAITING (its trial was retried after an interrupt or a
            crash): run it first.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0, poll_seconds: float = 0.2,
                 recover_every: float = 5.0) -> None:
        self._n_startup_trials = n_startup_trials
        self._n_warmup_steps = n_warmup_steps
        self._poll = poll_seconds
        self._recover_every = recover_every
        self._fallback = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                                     n_warmup_steps=n_warmup_steps)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        slot = trial.user_attrs.get(records.SLOT_ATTR)
        if slot is None:  # a trial not enqueued by the harness (e.g. study.optimize): Optuna's rule
            return self._fallback.prune(study, trial)
        step = trial.last_step
        if step is None or slot < self._n_startup_trials or step < self._n_warmup_steps:
            return False
        values = np.asarray(list(trial.intermediate_values.values()), dtype=float)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = np.nanmax(values) if maximize else np.nanmin(values)
        if np.isnan(best):
            return True
        peers = [v for v in self._lower_slot_values(study, slot, step) if not np.isnan(v)]
        if not peers:
            return False
        median = float(np.median(peers))
        return bool(best < median) if maximize else bool(best > median)

    def _lower_slot_values(self, study: optuna.Study, slot: int, step: int) -> list[float]:
        """The values at ``step`` of the current trial of every slot below ``slot``, waiting for those
        still running below ``step``."""
        last_recovery = time.monotonic()
        waited_since, announced = time.monotonic(), False
        while True:
            current: dict[int, optuna.trial.FrozenTrial] = {}
            for t in study.get_trials(deepcopy=False):
                s = t.user_attrs.get(records.SLOT_ATTR)
                if s is not None and s < slot and (s not in current or t.number > current[s].number):
                    current[s] = t  # the highest number is the slot's latest retry
            values, pending = [], []
            for s, t in sorted(current.items()):
                if step in t.intermediate_values:
                    values.append(float(t.intermediate_values[step]))
                elif t.state == TrialState.WAITING:
                    raise SlotYield(f"slot {s} (trial {t.number}) waits for a worker")
                elif not t.state.is_finished():
                    pending.append(s)  # RUNNING below this epoch; a finished trial ended before it
            if not pending:
                return values
            if time.monotonic() - last_recovery > self._recover_every:
                recover_orphaned_trials(study)  # a lower slot's owner may be dead: its retry waits
                fail_stale_trials(study)
                last_recovery = time.monotonic()
            if not announced and time.monotonic() - waited_since > 60:
                logger.info("%s slot %d: waiting for slot(s) %s to reach epoch %d (pruning compares with them)",
                            study.study_name, slot, pending, step)
                announced = True
            time.sleep(self._poll)


# ================================================================================================
# Studies and exact budgets
# ================================================================================================
def ensure_study(storage, name: str, budget: Budget, seed: int, direction: str = "maximize",
                 wait_seconds: float = 120.0, data_key: str | None = None,
                 space: SearchSpace | None = None) -> optuna.Study:
    """Create the study and enqueue exactly ``budget.trials_per_arm`` trials, or load it.

    Creation is atomic in the storage, so when several processes start at once exactly one enqueues;
    the others wait until the budget is recorded. The creator records itself first (host, pid, start
    time): if it was killed before recording the budget, a process on its host finishes the enqueue
    at once (:func:`_take_over_creation`). A larger budget on a re-run enqueues the difference (do that
    from one process). With ``space``, each enqueued trial carries its nuisance configuration
    (:func:`draw_configurations`), so trial ``i`` is the same in every arm and run.

    Raises:
        ValueError: the stored study was tuned on other data (``data_key`` differs): resuming it would
            mix trials of two datasets; use another ``--storage`` or delete the study.
        RuntimeError: the budget was never recorded and its creator cannot be checked (another host,
            or it died before recording itself), naming the study to delete.
    """
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                    sampler=_sampler(seed), pruner=_pruner(budget))
        study.set_user_attr(CREATOR_ATTR, processes.owner())
        if data_key is not None:
            study.set_user_attr(records.IDENTITY_ATTR, data_key)
        _enqueue_slots(study, space, seed, 0, budget.trials_per_arm)
        study.set_user_attr(records.BUDGET_ATTR, budget.trials_per_arm)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(seed), pruner=_pruner(budget))
    deadline = time.monotonic() + wait_seconds
    while records.BUDGET_ATTR not in study.user_attrs:
        if processes.owner_is_dead(study.user_attrs.get(CREATOR_ATTR)) and _take_over_creation(
                study, budget, space, seed, data_key):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {name!r} exists but its budget was never recorded (its creator died while "
                               f"creating it?); delete it (optuna delete-study --study-name {name!r} --storage ...) "
                               "and re-run")
        time.sleep(0.5)
    changed = _identity_changes(study.user_attrs.get(records.IDENTITY_ATTR), data_key)
    if changed:
        _refuse_other_identity({name: changed})
    recorded = int(study.user_attrs[records.BUDGET_ATTR])
    if budget.trials_per_arm > recorded:
        _enqueue_slots(study, space, seed, recorded, budget.trials_per_arm)
        study.set_user_attr(records.BUDGET_ATTR, budget.trials_per_arm)
    return study


def _take_over_creation(study: optuna.Study, budget: Budget, space: SearchSpace | None, seed: int,
                        data_key: str | None, settle: float = 1.0) -> bool:
    """Finish creating a study whose creator died before recording its budget (``kill -9`` during start-up).

    This process records itself as the creator, waits ``settle`` seconds and goes on only if the record is
    still its own: when several processes find the same dead creator, the last one to write wins and the
    others go back to waiting. It then enqueues the budget slots not yet enqueued (by their ``slot``
    attribute, so no slot is doubled) and records the budget.

    Returns:
        Whether this process finished the creation.
    """
    me = processes.owner()
    study.set_user_attr(CREATOR_ATTR, me)
    time.sleep(settle)
    fresh = optuna.load_study(study_name=study.study_name, storage=study._storage)
    if fresh.user_attrs.get(CREATOR_ATTR) != me:
        return False
    if data_key is not None and records.IDENTITY_ATTR not in fresh.user_attrs:
        study.set_user_attr(records.IDENTITY_ATTR, data_key)
    enqueued = {t.user_attrs.get(records.SLOT_ATTR) for t in fresh.get_trials(deepcopy=False)}
    configs = draw_configurations(space, budget.trials_per_arm, seed) if space is not None else [{}] * budget.trials_per_arm
    for slot, params in enumerate(configs):
        if slot not in enqueued:
            study.enqueue_trial(params, user_attrs={records.BUDGET_SLOT_ATTR: True, records.SLOT_ATTR: slot})
    study.set_user_attr(records.BUDGET_ATTR, budget.trials_per_arm)
    logger.info("%s: its creator process is gone; finished enqueueing its %d trials", study.study_name,
                budget.trials_per_arm)
    return True


def _enqueue_slots(study: optuna.Study, space: SearchSpace | None, seed: int, start: int, stop: int) -> None:
    """Enqueue budget slots ``start .. stop-1``, each with its pre-drawn configuration when ``space`` is given."""
    configs = draw_configurations(space, stop, seed)[start:] if space is not None else [{}] * (stop - start)
    for slot, params in enumerate(configs, start=start):
        study.enqueue_trial(params, user_attrs={records.BUDGET_SLOT_ATTR: True, records.SLOT_ATTR: slot})


def claim_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    """Atomically move the WAITING trial of the lowest budget slot to RUNNING (storage check-and-set)
    and record its owner process (:mod:`regimetry.processes`); ``None`` when none is left."""
    storage = study._storage
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # Lowest budget slot first (a retry before later slots), so that a trial's pruning never waits
    # for a lower slot nobody has claimed (SlotOrderedMedianPruner).
    waiting.sort(key=lambda t: (t.user_attrs.get(records.SLOT_ATTR, float("inf")), t.number))
    for frozen in waiting:
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                storage.set_trial_system_attr(frozen._trial_id, OWNER_ATTR, processes.owner())
                return optuna.trial.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _retry_slot(study: optuna.Study, frozen: optuna.trial.FrozenTrial, **attrs: Any) -> None:
    """Give a lost trial's budget slot back: an identical WAITING trial (same configuration, slot)."""
    fixed = frozen.system_attrs.get("fixed_params", {})
    study.enqueue_trial(dict(fixed), user_attrs={records.BUDGET_SLOT_ATTR: True,
                                                 records.SLOT_ATTR: frozen.user_attrs.get(records.SLOT_ATTR),
                                                 records.RETRY_OF_ATTR: frozen.number, **attrs})



def recover_orphaned_trials(study: optuna.Study) -> list[int]:
    """Retry at once the RUNNING trials whose owner process on this host is gone (``kill -9``, OOM).

    Each such trial becomes FAIL with the user attribute ``stale`` (counted apart by
    :func:`budget_counts`, never as a failure) and an identical WAITING trial takes its budget slot,
    so the budget still reads n/n. Trials of live processes and of other hosts are left to the
    storage heartbeat (RDB storages: failed after the grace period and retried).

    Returns:
        The numbers of the trials recovered.
    """
    storage = study._storage
    recovered = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not processes.owner_is_dead(frozen.system_attrs.get(OWNER_ATTR)):
            continue
        try:
            storage.set_trial_user_attr(frozen._trial_id, records.STALE_ATTR, True)
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process recovered it first
        _retry_slot(study, frozen)
        recovered.append(frozen.number)
    if recovered:
        logger.info("%s: retrying trial(s) %s of a process that is gone", study.study_name, recovered)
    return recovered


def finished(counts: dict[str, int]) -> int:
    """Trials of a study's budget that are done, from :func:`budget_counts` (complete, pruned or failed)."""
    return counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]


def budget_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, interrupted ones (replaced by a retry) counted apart."""
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0, "INTERRUPTED": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and (t.user_attrs.get(records.INTERRUPTED_ATTR) or t.user_attrs.get(records.STALE_ATTR)):
            counts["INTERRUPTED"] += 1
        else:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


class Heartbeat:
    """Records the RDB heartbeat of a running trial every interval (Optuna's own optimize loop does
    this; claimed trials run outside it)."""

    def __init__(self, study: optuna.Study, trial_id: int):
        storage = study._storage
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        self._active = interval is not None and hasattr(storage, "record_heartbeat")
        self._stop = threading.Event()
        if self._active:
            storage.record_heartbeat(trial_id)
            self._thread = threading.Thread(
                target=self._beat, args=(storage, trial_id, interval), daemon=True
            )
            self._thread.start()

    def _beat(self, storage, trial_id: int, interval: int) -> None:
        while not self._stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed beat only risks a retry
                pass

    def stop(self) -> None:
        self._stop.set()


# ================================================================================================
# Options, data and arms


def arm_study(storage, ablation: Ablation, arm: Arm, budget: Budget, seed: int, config: DataConfig) -> optuna.Study:
    """The arm's study in ``storage`` (created with its enqueued budget on first use): the one place
    that names a study, its direction, data identity and nuisance space."""
    return ensure_study(storage, study_name(ablation, arm), budget, seed, direction=study_direction(ablation),
                        data_key=study_key(ablation, arm, config), space=ablation.nuisance)


def check_identity(storage, ablation: Ablation, arms, config: DataConfig, storage_url: str | None = None,
                   budget: Budget | None = None) -> None:
    """Refuse, before anything is written, to resume a stored study of another definition or, with ``budget``,
    whose trials trained with another epoch cap or patience (:data:`TRAINING_BUDGET_OPTIONS`).

    ``storage_url`` (password redacted) goes into the suggested ``optuna delete-study`` commands.

    Raises:
        ValueError: an arm's stored study was tuned on other data or for another definition of the arm,
            its fixed settings or nuisance space (:func:`regimetry.studies.spec.study_key`), saying how
            to start a new study; or its trials trained with another ``max_epochs`` or ``patience`` than
            ``budget``'s, naming the options and the stored values.
    """
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    refused = {}
    for arm in arms:
        name = study_name(ablation, arm)
        if name not in existing:
            continue
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(records.IDENTITY_ATTR)
        changed = _identity_changes(stored, study_key(ablation, arm, config))
        if changed:
            refused[name] = changed
    if refused:
        _refuse_other_identity(refused, storage_url)
    if budget is not None:
        _check_training_budget(storage, [study_name(ablation, arm) for arm in arms if study_name(ablation, arm) in existing],
                               budget, storage_url)


#: The budget fields every trial of a study trains with (``TrainConfig`` fields set from :class:`Budget`), each
#: with the option that sets it. Trials of one study must share them: a resumed study whose trials trained
#: 15 epochs would otherwise take trials of 5 under ``--max-epochs 5``, and its confirmation runs would
#: silently keep the stored trials' 15 (they retrain the best trial's configuration).
TRAINING_BUDGET_OPTIONS = {"max_epochs": "--max-epochs", "patience": "--patience"}


def _effective_budget(fields: dict, warm_start_candidate: bool) -> dict:
    """The budget fields as they act on training. ``training``'s early stopping stops a run after
    ``patience`` epochs without a better validation score; the first epoch always beats "nothing yet"
    (unless ``TrainConfig.warm_start_candidate`` makes the linear start the first candidate), so a run can
    stop early only when ``patience < max_epochs - 1`` (``< max_epochs`` with the candidate). Every patience
    from that bound up is the same budget and is compared as the bound."""
    patience, max_epochs = fields.get("patience"), fields.get("max_epochs")
    if isinstance(patience, int) and isinstance(max_epochs, int):
        return {**fields, "patience": min(patience, max_epochs if warm_start_candidate else max_epochs - 1)}
    return dict(fields)


def _check_training_budget(storage, names: list[str], budget: Budget, storage_url: str | None) -> None:
    """Refuse to resume stored studies whose trials trained with another epoch cap or patience.

    Raises:
        ValueError: naming the first such study, each option that differs with its stored and new value,
            and how to go on (the stored values, a new ``--storage``, or deleting the studies).
    """
    refused: dict[str, dict[str, tuple]] = {}
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        stored = next((json.loads(t.user_attrs[records.TRAIN_CONFIG_ATTR]) for t in study.get_trials(deepcopy=False)
                       if records.TRAIN_CONFIG_ATTR in t.user_attrs), None)
        if stored is None:  # no trial has trained yet: nothing to mix
            continue
        candidate = bool(stored.get("warm_start_candidate", False))  # the ablation's fixed setting: same in both
        stored = {field: stored.get(field) for field in TRAINING_BUDGET_OPTIONS}
        new = {field: getattr(budget, field) for field in TRAINING_BUDGET_OPTIONS}
        old, now = _effective_budget(stored, candidate), _effective_budget(new, candidate)
        # a field counts when it acts differently; it is named only where its value differs too (a patience of
        # 1 means 1 epoch at --max-epochs 1 and 3: only the epoch cap is named)
        if old != now:
            changed = {option: (stored[field], new[field])
                       for field, option in TRAINING_BUDGET_OPTIONS.items()
                       if old[field] != now[field] and stored[field] != new[field]}
            refused[name] = changed
    if not refused:
        return
    changed = next(iter(refused.values()))
    asked = ", ".join(f"{option} {new} (its trials: {old})" for option, (old, new) in changed.items())
    same = " ".join(f"{option} {old}" for option, (old, _) in changed.items())
    _refuse_resume(refused, storage_url, f"was tuned with another training budget: this run asks {asked}",
                   "trials of two budgets", f"Re-run with {same}, give")


def check_tuned(storage, ablation: Ablation, arms, storage_url: str) -> None:
    """``--stage confirm`` needs every arm's tuning study: refuse before anything is written.

    Raises:
        ValueError: arms without a stored study, naming them, the storage and the stage to run first.
    """
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    missing = [arm.name for arm in arms if study_name(ablation, arm) not in existing]
    if missing:
        refuse_untuned(missing, f"in {redact_url(storage_url)}")


def check_budgets(storage, ablation: Ablation, arms, stage: str, trials_per_arm: int) -> int | None:
    """Before anything is written: ``--stage confirm`` does not tune, so a ``--trials`` above what the stored
    studies hold is refused (it used to queue trials in every study before failing); and the arms a
    confirmation compares must end up with equal budgets (``--stage all`` extends each study to ``--trials``,
    never shrinks one).

    Returns:
        The trials per arm every arm holds once this run's tuning is done (the budget the verdicts rest on,
        which may exceed ``--trials``: a study is never shrunk), or None for ``--stage tune`` or no stored study.

    Raises:
        ValueError: naming the arms' stored budgets and the command that evens them.
    """
    if stage == "tune":  # arms may be extended one at a time (--arms), e.g. by several machines
        return None
    stored = {name: int(study.user_attrs.get(records.BUDGET_ATTR, 0))
              for name, study in _stored_studies(storage, ablation, arms).items()}
    if not stored:
        return None
    listed = ", ".join(f"{name} {total}" for name, total in stored.items())
    if stage == "confirm" and max(stored.values()) < trials_per_arm:
        raise ValueError(f"--trials {trials_per_arm}: the stored studies hold {listed} trials, and --stage confirm "
                         f"does not tune; run --stage tune --trials {trials_per_arm} (with the same other options) "
                         "first, or leave --trials out")
    after = {name: total if stage == "confirm" else max(total, trials_per_arm) for name, total in stored.items()}
    if stage == "all":
        after.update({arm.name: trials_per_arm for arm in arms if arm.name not in stored})
    if len(set(after.values())) > 1:
        raise ValueError(f"the arms' studies hold unequal tuning budgets ({listed} trials); the verdicts compare "
                         f"arms tuned with equal budgets. Run --stage tune --trials {max(after.values())} for every "
                         "arm (with the same other options) to even them, then --stage confirm")
    return next(iter(after.values()))


def tuning_finished(storage, ablation: Ablation, arms, trials_per_arm: int) -> bool:
    """Has every arm's stored study its whole budget (at least ``trials_per_arm``) finished, with no trial
    waiting or running? Then a ``--stage tune`` run has nothing to do (and opens no MLflow run)."""
    studies = _stored_studies(storage, ablation, arms)
    if len(studies) < len(arms):
        return False
    for study in studies.values():
        counts = budget_counts(study)
        total = int(study.user_attrs.get(records.BUDGET_ATTR, 0))
        if total < trials_per_arm or counts["WAITING"] or counts["RUNNING"] or finished(counts) < total:
            return False
    return True


def _stored_studies(storage, ablation: Ablation, arms) -> dict[str, optuna.Study]:
    """The arms' studies that exist in ``storage``, by arm name (loaded, none created)."""
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    return {arm.name: optuna.load_study(study_name=study_name(ablation, arm), storage=storage)
            for arm in arms if study_name(ablation, arm) in existing}


def refuse_untuned(arm_names: list[str], where: str) -> None:
    """Raise the one-line refusal of ``--stage confirm`` for arms without a tuning study (``where``: why)."""
    raise ValueError(f"--stage confirm: no tuning study for arm(s) {arm_names} {where}; run --stage tune (or "
                     "--stage all) with the same --storage first")


def _identity_changes(stored: str | None, key: str | None) -> dict[str, tuple]:
    """What differs between a stored study identity and this run's, as ``{field: (stored, now)}``."""
    if key is None or stored is None or stored == key:
        return {}
    old, new = json.loads(stored), json.loads(key)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _refuse_other_identity(refused: dict[str, dict[str, tuple]], storage_url: str | None = None) -> None:
    """Raise for the studies of another definition, naming each and how to start every one of them anew."""
    changed = next(iter(refused.values()))
    _refuse_resume(refused, storage_url, f"was tuned on other data or another arm definition ({changed} as (stored, now))",
                   "trials of two experiments")


def _refuse_resume(refused: dict[str, Any], storage_url: str | None, why: str, mixed: str, give: str = "Give") -> None:
    """Raise the one-line refusal to resume the studies ``refused`` (the first named with ``why``): what
    resuming would mix, and how to go on: its own ``--storage``, or runnable delete commands for each."""
    name, *others = refused
    where = redact_url(storage_url) if storage_url else "..."
    also = f" (and {', '.join(repr(n) for n in others)}, likewise)" if others else ""
    deletes = "; ".join(f"optuna delete-study --study-name {shlex.quote(n)} --storage {shlex.quote(where)}"
                        for n in refused)
    raise ValueError(
        f"Optuna study {name!r} in {where if storage_url else 'this storage'} {why}{also}; resuming would mix "
        f"{mixed}. {give} this run its own --storage (and --tracking-uri), or delete "
        f"{'them' if others else 'the study'}, losing their trials ({deletes})."
    )


# ================================================================================================
# Trials: claim, report, finish, give back
# ================================================================================================
def report_epoch(trial: optuna.Trial, value: float, epoch: int) -> None:
    """Report a trial's validation value after ``epoch``; raises :class:`TrialPruned` when the pruner says so."""
    trial.report(float(value), epoch)
    if trial.should_prune():
        raise TrialPruned(f"pruned at epoch {epoch}")


def finish_trial(study: optuna.Study, trial: optuna.Trial, state: str, value: float | None = None) -> None:
    """Tell the study a trial ended: ``COMPLETE`` with ``value``, or ``PRUNED`` / ``FAIL``."""
    if state == "COMPLETE":
        study.tell(trial, value)
    else:
        study.tell(trial, state=TrialState[state])


def hand_back(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Give an interrupted trial's budget slot back: the trial becomes FAIL (user attribute
    ``interrupted``, not counted as a failure) and an identical WAITING trial replaces it.

    Returns:
        ``False`` (and does nothing) when the trial already finished (an interrupt after its ``tell``).
    """
    if study._storage.get_trial(trial._trial_id).state.is_finished():
        return False
    study._storage.set_trial_user_attr(trial._trial_id, records.INTERRUPTED_ATTR, True)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    _retry_slot(study, study._storage.get_trial(trial._trial_id))
    return True


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's heartbeat check: RUNNING trials whose heartbeat stopped become FAIL and are retried."""
    optuna.storages.fail_stale_trials(study)


def progress(study: optuna.Study, default_total: int) -> tuple[int, int, float | None, Any]:
    """``(finished trials, budget, best value or None, start of the first trial or None)``."""
    done = finished(budget_counts(study))
    try:
        best = study.best_value
    except ValueError:
        best = None
    total = int(study.user_attrs.get(records.BUDGET_ATTR, default_total))
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]
    return done, total, best, (min(starts) if starts else None)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The study's best COMPLETE trial.

    Raises:
        NoCompleteTrial: every trial was pruned or failed, naming the study.
    """
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not completed:
        raise NoCompleteTrial(f"study {study.study_name!r} has no COMPLETE trial to confirm (all pruned or failed; "
                              "the trials' MLflow runs hold their errors): re-run with a larger --trials, or "
                              "delete the study to start over")
    # Ties (balanced accuracy on a small block ties often) go to the lowest budget slot, not to whichever
    # trial the storage lists first: the choice must not depend on claim order or retries.
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return min(completed, key=lambda t: (-sign * t.value, t.user_attrs.get(records.SLOT_ATTR, float("inf")), t.number))


def best_configurations(name: str, storage_url: str | None = None) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """The best trial of a stored study, the one its confirmation retrains (:func:`best_trial`).

    Returns:
        ``(trial number, ModelConfig dict, TrainConfig dict)`` as the trial recorded them.

    Raises:
        ValueError: no such storage or study (naming it); NoCompleteTrial: no COMPLETE trial.
    """
    storage = resolve_storage(storage_url or DEFAULT_STORAGE, read_only=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ValueError(f"no Optuna study {name!r} in {redact_url(storage_url or DEFAULT_STORAGE)}") from None
    best = best_trial(study)
    return (best.number, json.loads(best.user_attrs[records.MODEL_CONFIG_ATTR]),
            json.loads(best.user_attrs[records.TRAIN_CONFIG_ATTR]))


def quiet_logging() -> None:
    """Optuna's own log lines at WARNING (the harness prints its progress lines)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# ================================================================================================
# Read access for reports
# ================================================================================================
def study_names(experiment: str, storage_url: str | None = None) -> list[str]:
    """Names of the stored studies of an experiment (``<experiment>/<arm>``), in creation order."""
    storage = resolve_storage(storage_url, read_only=True)
    return [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(f"{experiment}/")]


def study_trials_frame(name: str, storage_url: str | None = None) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value``, ``params_*``, durations (Optuna's dataframe).

    Raises:
        ValueError: no study of that name in the storage.
    """
    storage = resolve_storage(storage_url, read_only=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ValueError(f"no Optuna study named {name!r} in {redact_url(storage_url or DEFAULT_STORAGE)}") from None
    return study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))


def param_importances(name: str, storage_url: str | None = None) -> dict[str, float]:
    """fANOVA parameter importances of a study's COMPLETE trials (empty when fewer than 2 or no spread)."""
    storage = resolve_storage(storage_url, read_only=True)
    study = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:
        logger.warning("parameter importances unavailable for %s: %s", name, exc)
        return {}
