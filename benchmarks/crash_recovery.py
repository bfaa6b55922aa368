"""Crash recovery of the ablation harness: ``kill -9`` at random moments, then an immediate re-run (issue 14).

For every storage (sqlite, journal, postgresql) one uninterrupted reference run of an experiment
script is made first. Then, for each of ``--kills`` kill points (spread over the storages in turn),
the same command starts in its own process group on a fresh storage and MLflow store, the whole
group (the main process and its worker processes) gets ``SIGKILL`` at a time drawn with a fixed seed
uniformly over the reference's wall time (so kills land in start-up, tuning and confirmation), and
the same command is re-run at once. The re-run must:

(a) exit 0;
(b) leave every arm's study at exactly its budget, COMPLETE + PRUNED = budget (no FAIL, nothing
    RUNNING or WAITING; the killed trials are counted apart as interrupted);
(c) report the same verdicts (the parent run's ``verdicts`` tag) and the same pooled metrics
    (every arm run's ``confirm/test/*`` metrics) as the reference, bit for bit;
(d) leave zero RUNNING trials in the storage and zero RUNNING runs in MLflow.

It also counts the FINISHED confirmation runs under the re-run's arms (must equal the reference's,
arms x blocks x seeds) and in the whole store (more = runs of the killed session duplicated).

``--workers N`` adds the several-machines case: N processes started at once with ``--stage tune``
on one storage, then ``--stage confirm``; every arm must have exactly its budget, trial ``i`` of
every arm the same nuisance configuration, equal to a ``--jobs 1`` reference (and the same scores
and verdicts as that reference).

Run by hand, never in the test suite (minutes per kill point on a 2-core machine)::

    python benchmarks/crash_recovery.py --kills 20 --workers 4 --worker-trials 8

The rows are markdown, ready for ``benchmarks/README.md``. PostgreSQL runs on a throwaway cluster
started as the test suite starts it (``tests/pg_cluster.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

STORAGES = ("sqlite", "journal", "postgresql")


def _command(script: Path, storage: str, tracking_uri: str, options: argparse.Namespace, *extra: str) -> list[str]:
    cmd = [sys.executable, str(script), "--smoke", "--dataset", options.dataset, "--no-report",
           "--seed", str(options.seed), "--jobs", str(options.jobs), "--storage", storage,
           "--tracking-uri", tracking_uri]
    if options.trials:
        cmd += ["--trials", str(options.trials)]
    if options.arms:
        cmd += ["--arms", options.arms]
    return [*cmd, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


class Place:
    """A fresh Optuna storage and MLflow store for one run (a new database on PostgreSQL)."""

    def __init__(self, root: Path, kind: str, postgres_url: str | None):
        from pg_cluster import fresh_database

        root.mkdir(parents=True)
        self.root, self.kind = root, kind
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        if kind == "sqlite":
            self.storage = f"sqlite:///{root / 'optuna.db'}"
        elif kind == "journal":
            self.storage = f"journal:///{root / 'optuna.log'}"
        else:
            self.storage = fresh_database(postgres_url)


def _run(cmd: list[str], cwd: Path, log: Path, jobs_note: str = "") -> tuple[int, float]:
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT).returncode
    return code, time.monotonic() - started


def _killed_run(cmd: list[str], cwd: Path, log: Path, at: float) -> tuple[str, float]:
    """Start ``cmd`` in its own process group, SIGKILL the group ``at`` seconds later; the stage it hit
    and the seconds it ran (``finished first``: it exited before the kill)."""
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=at)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the workers are in the group too: wait until none is left, so the re-run sees them dead
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    if finished or re.search(r"^== \S+: browse the runs", text, re.M):
        # its last line printed: the session was complete and only the interpreter was exiting, so a
        # re-run is a second session by design (it trains the confirmation again), not a recovery
        return "finished first", elapsed
    if re.search(r"^== \S+: confirming", text, re.M):
        done = len(re.findall(r"^\[confirm\] ", text, re.M))
        return f"confirm ({done} run(s) done)", elapsed
    if re.search(r"^== \S+: tuning", text, re.M):
        done = len(re.findall(r"^\[\S+\] trial \d+ ", text, re.M))
        return f"tune ({done} trial(s) done)", elapsed
    return "start-up", elapsed


def inspect(place: Place, experiment: str) -> dict:
    """What the storage and the MLflow store hold after a run (see the module docstring)."""
    import optuna

    from regimetry import studies, tracking

    storage = studies.resolve_storage(place.storage)
    budgets, running_trials, slots, scores = {}, 0, {}, {}
    for summary in optuna.get_all_study_summaries(storage):
        if not summary.study_name.startswith(f"{experiment}/"):
            continue
        arm = summary.study_name.split("/", 1)[1]
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = studies.budget_counts(study)
        budgets[arm] = (counts["COMPLETE"] + counts["PRUNED"], int(study.user_attrs.get("budget", -1)), counts)
        running_trials += counts["RUNNING"]
        done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        slots[arm] = sorted((t.user_attrs.get("slot"), tuple(sorted(t.params.items()))) for t in done)
        scores[arm] = sorted((t.user_attrs.get("slot"), t.state.name, t.value) for t in done)
    runs = tracking.search_runs(experiment, tracking_uri=place.tracking_uri)
    running_runs = int((runs["status"] == "RUNNING").sum()) if len(runs) else 0
    parents = runs[(runs.get("tags.stage") == "study") & (runs["status"] == "FINISHED")] if len(runs) else runs
    verdicts, pooled, confirms_here = None, {}, 0
    if len(parents):
        parent = parents.sort_values("start_time").iloc[-1]
        verdicts = parent.get("tags.verdicts")
        arms = runs[(runs.get("tags.stage") == "arm") & (runs.get("tags.mlflow.parentRunId") == parent["run_id"])]
        metric_columns = [c for c in runs.columns if c.startswith("metrics.confirm/test/")]
        for _, row in arms.iterrows():
            pooled[row["tags.arm"]] = {c: _exact(row[c]) for c in metric_columns}
        confirms = runs[(runs.get("tags.stage") == "confirm") & (runs["status"] == "FINISHED")]
        confirms_here = int(confirms["tags.mlflow.parentRunId"].isin(set(arms["run_id"])).sum())
    all_confirms = int(((runs.get("tags.stage") == "confirm") & (runs["status"] == "FINISHED")).sum()) if len(runs) else 0
    return {"budgets": budgets, "running_trials": running_trials, "running_runs": running_runs,
            "verdicts": verdicts, "pooled": pooled, "confirms_here": confirms_here, "confirms_all": all_confirms,
            "slots": slots, "scores": scores}


def _exact(value) -> str:
    """A float as its exact repr (NaN-safe), so that equal means bit-identical."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "nan" if math.isnan(value) else repr(value)


def budget_ok(state: dict) -> bool:
    """(b): every arm at exactly its budget, COMPLETE + PRUNED = budget, nothing left WAITING."""
    return bool(state["budgets"]) and all(
        done == total and counts["FAIL"] == counts["WAITING"] == counts["RUNNING"] == 0
        for done, total, counts in state["budgets"].values())


def _budget_text(state: dict) -> str:
    return ", ".join(f"{done}/{total}" for done, total, _ in state["budgets"].values()) or "-"


def _fmt(ok: bool) -> str:
    return "ok" if ok else "**FAIL**"


def kill_points(options, script: Path, work: Path, postgres_url: str | None) -> int:
    """References, then the kill points; prints one markdown row per point. Returns the failures."""
    import numpy as np

    experiment = script.stem
    if options.kills == 0:
        return 0
    references, walls = {}, {}
    print("| storage | reference wall (s) | budget | confirmation runs |\n|---|---|---|---|", flush=True)
    for kind in options.storages:
        place = Place(work / f"reference_{kind}", kind, postgres_url)
        references[kind], walls[kind] = _reference(place, script, options, experiment, "the reference run")
        print(f"| {kind} | {walls[kind]:.0f} | {_budget_text(references[kind])} | {references[kind]['confirms_here']} |",
              flush=True)
    rng = np.random.default_rng(options.kill_seed)
    print("\n| # | storage | kill at (s) | stage hit | re-run wall (s) | (a) exit 0 | (b) budget | "
          "(c) verdicts + pooled metrics | (d) RUNNING trials / runs | confirm runs (re-run / store) |\n"
          "|---|---|---|---|---|---|---|---|---|---|", flush=True)
    failures, stages = 0, {}
    for k in range(options.kills):
        kind = options.storages[k % len(options.storages)]
        at = float(rng.uniform(0.02, 0.98) * walls[kind])
        for attempt in range(4):
            place = Place(work / f"kill_{k:02d}_{kind}{'_' + str(attempt) if attempt else ''}", kind, postgres_url)
            cmd = _command(script, place.storage, place.tracking_uri, options)
            stage, ran = _killed_run(cmd, place.root, place.root / "killed.txt", at)
            if stage != "finished first":
                break
            # Faster than the reference (the load changed): not a kill point. Draw again over this run's
            # own wall time, on fresh stores, so that every point is a real kill.
            print(f"(kill point {k + 1}: the run finished in {ran:.0f} s, before the kill at {at:.1f} s; drawn again)",
                  flush=True)
            _drop(place)
            at = float(rng.uniform(0.02, 0.98) * ran)
        code, wall = _run(cmd, place.root, place.root / "rerun.txt")
        ref = references[kind]
        try:
            state = inspect(place, experiment)
        except Exception as exc:  # noqa: BLE001 - a store the re-run left unreadable is a failed point, not the end
            state = {"budgets": {}, "running_trials": -1, "running_runs": -1, "verdicts": None, "pooled": {},
                     "confirms_here": -1, "confirms_all": -1, "slots": {}, "scores": {}}
            print(f"(kill point {k + 1}: the stores cannot be read: {type(exc).__name__}: {str(exc)[:300]})", flush=True)
        checks = {"a": code == 0, "b": budget_ok(state),
                  "c": state["verdicts"] == ref["verdicts"] and state["pooled"] == ref["pooled"] and bool(ref["pooled"]),
                  "d": state["running_trials"] == 0 and state["running_runs"] == 0,
                  # every planned confirmation run under the re-run's arms, and none left behind elsewhere
                  "confirms": state["confirms_here"] == ref["confirms_here"] == state["confirms_all"]}
        failures += not all(checks.values())
        stages[stage.split(" ")[0]] = stages.get(stage.split(" ")[0], 0) + 1
        print(f"| {k + 1} | {kind} | {at:.1f} | {stage} | {wall:.0f} | {_fmt(checks['a'])} | "
              f"{_fmt(checks['b'])} {_budget_text(state)} | {_fmt(checks['c'])} | "
              f"{_fmt(checks['d'])} {state['running_trials']} / {state['running_runs']} | "
              f"{_fmt(checks['confirms'])} {state['confirms_here']} / {state['confirms_all']} |", flush=True)
        if all(checks.values()) and not options.keep:
            _drop(place)
    hit = ", ".join(f"{n} {s}" for s, n in sorted(stages.items()))
    print(f"\n**Total: {options.kills - failures}/{options.kills} kill points passed every check** "
          f"(stages hit: {hit}).", flush=True)
    return failures


def simultaneous_workers(options, script: Path, work: Path, postgres_url: str | None) -> int:
    """``--workers`` processes at once with ``--stage tune``, then ``--stage confirm``, per storage."""
    experiment = script.stem
    print(f"\n| storage | {options.workers} tuning processes (wall s) | exit codes ({options.workers} x tune, confirm) | "
          "budget | "
          "same configuration per slot in every arm | = `--jobs 1` reference (configurations / scores / verdicts) | "
          "RUNNING trials / runs |\n|---|---|---|---|---|---|---|", flush=True)
    failures = 0
    # more trials than workers, so that the processes really contend for the slots
    options = argparse.Namespace(**{**vars(options), "trials": options.worker_trials or options.trials})
    jobs1 = argparse.Namespace(**{**vars(options), "jobs": 1})
    for kind in options.worker_storages:
        reference = Place(work / f"workers_reference_{kind}", kind, postgres_url)
        ref, _ = _reference(reference, script, jobs1, experiment, "the --jobs 1 reference")
        place = Place(work / f"workers_{kind}", kind, postgres_url)
        cmd = _command(script, place.storage, place.tracking_uri, jobs1, "--stage", "tune")
        started = time.monotonic()
        logs = [open(place.root / f"tune_{i}.txt", "w") for i in range(options.workers)]
        procs = [subprocess.Popen(cmd, cwd=place.root, env=_env(), stdout=log, stderr=subprocess.STDOUT) for log in logs]
        codes = [p.wait() for p in procs]
        wall = time.monotonic() - started
        for log in logs:
            log.close()
        code, _ = _run(_command(script, place.storage, place.tracking_uri, options, "--stage", "confirm"),
                       place.root, place.root / "confirm.txt")
        codes.append(code)
        state = inspect(place, experiment)
        arms = list(state["slots"].values())
        paired = bool(arms) and all(a == arms[0] for a in arms) and len(arms[0]) == ref["budgets"][next(iter(ref["budgets"]))][1]
        same = (state["slots"] == ref["slots"], state["scores"] == ref["scores"],
                state["verdicts"] == ref["verdicts"] and state["pooled"] == ref["pooled"])
        checks = [all(c == 0 for c in codes), budget_ok(state), paired, all(same),
                  state["running_trials"] == 0 and state["running_runs"] == 0]
        failures += not all(checks)
        print(f"| {kind} | {wall:.0f} | {_fmt(checks[0])} {codes} | {_fmt(checks[1])} {_budget_text(state)} | "
              f"{_fmt(checks[2])} | {_fmt(checks[3])} {' / '.join('yes' if s else 'no' for s in same)} | "
              f"{_fmt(checks[4])} {state['running_trials']} / {state['running_runs']} |", flush=True)
        if all(checks) and not options.keep:
            _drop(place)
            _drop(reference)
    return failures


def _drop(place: Place) -> None:
    shutil.rmtree(place.root, ignore_errors=True)


def _reference(place, script, options, experiment: str, what: str) -> tuple[dict, float]:
    """Run an uninterrupted reference at ``place``; its inspection and wall seconds (exit on failure)."""
    code, wall = _run(_command(script, place.storage, place.tracking_uri, options), place.root, place.root / "out.txt")
    if code != 0:
        raise SystemExit(f"error: {what} on {place.kind} exited {code}; see {place.root / 'out.txt'}")
    return inspect(place, experiment), wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="kill points, spread over --storages in turn (default 20)")
    parser.add_argument("--storages", default=",".join(STORAGES), help="comma-separated: sqlite,journal,postgresql")
    parser.add_argument("--kill-seed", type=int, default=0, help="seed of the kill times (default 0)")
    parser.add_argument("--workers", type=int, default=0,
                        help="also start this many --stage tune processes at once per --worker-storages (0: skip)")
    parser.add_argument("--worker-storages", default="sqlite,postgresql", help="storages of the --workers check")
    parser.add_argument("--worker-trials", type=int,
                        help="--trials of the --workers check (default: --trials; 8 makes 4 workers contend)")
    parser.add_argument("--script", default="03_encoding_ablation", help="experiment script (stem) to run, with --smoke")
    parser.add_argument("--dataset", default="synthetic", help="its --dataset (default synthetic)")
    parser.add_argument("--trials", type=int, help="its --trials (default: the smoke budget)")
    parser.add_argument("--arms", help="its --arms, a comma-separated subset (default: every arm)")
    parser.add_argument("--jobs", type=int, default=2, help="its --jobs (default 2: worker processes get killed too)")
    parser.add_argument("--seed", type=int, default=0, help="its --seed (default 0)")
    parser.add_argument("--workdir", help="where the stores go (default: a temporary directory, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the stores of passing points too")
    options = parser.parse_args(argv)
    options.storages = [s.strip() for s in options.storages.split(",") if s.strip()]
    options.worker_storages = [s.strip() for s in options.worker_storages.split(",") if s.strip()]
    for kind in options.storages + options.worker_storages:
        if kind not in STORAGES:
            parser.error(f"unknown storage {kind!r}; choose from {', '.join(STORAGES)}")
    if options.kills < 0 or options.workers < 0:
        parser.error("--kills and --workers must be >= 0")
    script = ROOT / "experiments" / f"{options.script}.py"
    if not script.exists():
        parser.error(f"no experiment script {script}")
    print(f"`python benchmarks/crash_recovery.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
          f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; experiment "
          f"`{' '.join(_command(script, 'URL', 'URI', options)[1:]).replace(str(ROOT) + '/', '')}`)\n",
          flush=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = Path(options.workdir) if options.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="crash_recovery_", ignore_cleanup_errors=True)))
        work.mkdir(parents=True, exist_ok=True)
        postgres_url = None
        if "postgresql" in options.storages + (options.worker_storages if options.workers else []):
            from pg_cluster import PostgresUnavailable, throwaway_postgres

            try:
                postgres_url = stack.enter_context(throwaway_postgres(work / "postgres"))
            except PostgresUnavailable as exc:
                raise SystemExit(f"error: PostgreSQL: {exc}; pass --storages sqlite,journal to run without it")
        failures = kill_points(options, script, work, postgres_url)
        if options.workers:
            failures += simultaneous_workers(options, script, work, postgres_url)
    print(f"\nwall {(time.monotonic() - started) / 60:.1f} min; load average {os.getloadavg()[0]:.1f} at the end",
          flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
