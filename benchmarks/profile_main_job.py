"""Where the main job's time goes: wall time by phase for one trial and one confirmation run, and for
the whole ``python experiments/03_encoding_ablation.py`` run (issue 17).

Two parts, both run by hand (never in tests):

* ``runs`` (default): in this process, exactly what a tuning trial and a confirmation run of 03 do
  (``training.fit`` on the first evaluation block of the default S&P 500 data, then
  ``run_record.build`` + ``tracking.log_training_run`` with the harness's arguments, in a run of a temporary MLflow store),
  with every phase timed by wrapping the library function that does it. Times are *exclusive* (a
  phase's time excludes the phases nested in it), so the rows add up to the run's wall time. The
  start-up cost of a worker process (interpreter + imports) is measured in a fresh subprocess.
* ``whole``: the real script as a subprocess (``--` `` passes its options, e.g. ``--smoke``); each of
  its output lines is time-stamped on arrival, which splits the run into data preparation, tuning,
  confirmation (with the summary and bootstrap) and report; CPU seconds of the run and its workers
  come from ``getrusage(RUSAGE_CHILDREN)``.

    python benchmarks/profile_main_job.py                        # one trial + one confirmation run
    python benchmarks/profile_main_job.py --part whole           # the default main job (~15-25 min)
    python benchmarks/profile_main_job.py --part whole -- --smoke

Figures go to ``benchmarks/README.md`` ("Profile of the main job") with the git sha and the load.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (module, attribute, phase): the library functions whose wall time defines each phase. Methods are
#: given as ``Class.method``. Nested calls are charged to the innermost phase.
PHASES = [
    ("regimetry.studies", "evaluation_blocks", "data preparation (prepare_folds)"),
    ("regimetry.models", "build_classifier", "model build"),
    ("regimetry.training", "warm_start_shortcut", "shortcut warm start (logistic regression)"),
    ("regimetry.training", "compile_model", "compile"),
    ("keras", "Model.fit", "training steps (incl. graph tracing)"),
    # each name wrapped where it is called (a module that imported it holds its own binding)
    ("regimetry.training", "predict_proba", "prediction (per-epoch validation, final val, test)"),
    ("regimetry.scoring", "predict_proba", "prediction (per-epoch validation, final val, test)"),
    ("regimetry.training", "metrics_from_probs", "metrics (scikit-learn)"),
    ("regimetry.scoring", "metrics_from_probs", "metrics (scikit-learn)"),
    ("keras", "Model.get_weights", "best-weights snapshots"),
    ("regimetry.models", "attention_scores", "attention extraction"),  # run_record imports it when called
    ("regimetry.plots", "confusion_matrix_figure", "figure drawing"),
    ("regimetry.plots", "training_curves", "figure drawing"),
    ("regimetry.plots", "attention_heatmaps", "figure drawing"),
    ("regimetry.tracking.training_run", "log_figure", "figure saving + upload"),
    ("regimetry.tracking.training_run", "_log_model", "model saving (.keras, MLflow flavour)"),
    ("regimetry.tracking.training_run", "log_params", "MLflow params/metrics/tags/dicts"),
    ("regimetry.tracking.training_run", "log_metrics", "MLflow params/metrics/tags/dicts"),
    ("regimetry.tracking.training_run", "log_history", "MLflow params/metrics/tags/dicts"),
    ("regimetry.tracking.training_run", "log_dict", "MLflow params/metrics/tags/dicts"),
    ("regimetry.tracking.training_run", "set_tags", "MLflow params/metrics/tags/dicts"),
    ("regimetry.tracking.training_run", "git_info", "git / version tags"),
    ("regimetry.tracking.training_run", "version_tags", "git / version tags"),
]


class PhaseTimer:
    """Exclusive wall time per phase: a wrapped call's time minus the time of wrapped calls inside it."""

    def __init__(self) -> None:
        self.exclusive: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self._stack: list[list[float]] = []  # per open call: [time spent in nested phases]

    def wrap(self, fn, phase: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                nested = self._stack.pop()[0]
                self.exclusive[phase] += elapsed - nested
                self.calls[phase] += 1
                if self._stack:
                    self._stack[-1][0] += elapsed
        return timed

    @contextlib.contextmanager
    def installed(self, phases=PHASES):
        undo = []
        for module_name, attr, phase in phases:
            owner = importlib.import_module(module_name)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, name)
            setattr(owner, name, self.wrap(original, phase))
            undo.append((owner, name, original))
        try:
            yield self
        finally:
            for owner, name, original in reversed(undo):
                setattr(owner, name, original)

    def reset(self) -> None:
        self.exclusive.clear()
        self.calls.clear()


def _startup_seconds() -> float:
    """Wall time of a fresh interpreter importing what a worker process imports."""
    code = "import regimetry.studies, regimetry.tracking, regimetry.training, regimetry.models, keras, optuna, mlflow"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"})
    return time.perf_counter() - t0


def _table(rows: list[tuple[str, float, int]], total: float) -> str:
    lines = ["| phase | seconds | share | calls |", "|---|---:|---:|---:|"]
    for phase, seconds, calls in sorted(rows, key=lambda r: -r[1]):
        lines.append(f"| {phase} | {seconds:.2f} | {seconds / total:.0%} | {calls} |")
    lines.append(f"| **total (wall)** | **{total:.2f}** | 100% | |")
    return "\n".join(lines)


def profile_runs(dataset: str) -> None:
    import importlib.util

    from regimetry import run_record, studies, tracking, training

    spec = importlib.util.spec_from_file_location("exp03", ROOT / "experiments" / "03_encoding_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ablation = module.ABLATION
    options = studies.RunOptions(dataset=dataset)
    budget = options.budget(ablation)
    arm = ablation.arms[0]
    startup = _startup_seconds()
    timer = PhaseTimer()
    with tempfile.TemporaryDirectory() as tmp, timer.installed():
        tracking.configure(f"sqlite:///{tmp}/mlruns/mlflow.db")
        t0 = time.perf_counter()
        blocks = studies.evaluation_blocks(studies.data_config(ablation, options, budget), options, budget)
        prep = time.perf_counter() - t0
        splits = blocks[0]
        params = studies.draw_configurations(ablation.nuisance, budget.trials_per_arm, options.seed)[0]
        model_cfg, train_cfg = ablation.resolve(arm, params, budget, options.seed, feature_names=splits.feature_names)
        print(f"# {ablation.name}, arm {arm.name}, {dataset} block 0: {len(splits.train)} train / {len(splits.val)} "
              f"val / {len(splits.test)} test windows; config {params}; data preparation {prep:.1f} s "
              f"(once per process); worker start-up (interpreter + imports) {startup:.1f} s\n")
        for stage, kwargs in (("trial", dict(test=False)), ("confirm", dict(test=True, full_model=False))):
            timer.reset()
            t0 = time.perf_counter()
            with tracking.run("profile", run_name=stage):
                result = training.fit(splits, model_cfg, train_cfg)
                tracking.log_training_run(run_record.build(result, splits, model_cfg, train_cfg, stage=stage,
                                                           arm=arm.name, **kwargs))
                if stage == "confirm":  # what _confirm_one does after logging
                    training.predict_proba(result.model, splits.test.X)
            total = time.perf_counter() - t0
            epochs = result.history["time/epoch_seconds"]
            rows = [(p, s, timer.calls[p]) for p, s in timer.exclusive.items()]
            rows.append(("other (run open/close, Python glue)", total - sum(timer.exclusive.values()), 0))
            print(f"## one {stage} run: {result.epochs_run} epochs (first {epochs[0]:.2f} s, median of the rest "
                  f"{sorted(epochs[1:])[len(epochs[1:]) // 2] if len(epochs) > 1 else float('nan'):.2f} s: the "
                  "difference is mostly graph tracing)\n")
            print(_table(rows, total) + "\n")


STAGE_MARKERS = [
    (re.compile(r"evaluation block\(s\); tuning on block"), "data preparation + process start"),
    (re.compile(r": tuning \d+ arms"), "tuning"),
    (re.compile(r": confirming best configurations"), "confirmation + summary + bootstrap"),
    (re.compile(r": rendering the report"), "report (papermill)"),
]


def profile_whole(script_args: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "experiments" / "03_encoding_ablation.py"), *script_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    marks = [("process start + imports + data", 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        if not any(a.startswith("--tracking-uri") for a in script_args):
            cmd += ["--tracking-uri", f"sqlite:///{tmp}/mlruns/mlflow.db"]
        if not any(a.startswith("--storage") for a in script_args):
            cmd += ["--storage", f"sqlite:///{tmp}/optuna.db"]
        print("$ " + " ".join(cmd[1:]), flush=True)
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            now = time.perf_counter() - start
            for pattern, stage in STAGE_MARKERS[1:]:
                if pattern.search(line):
                    marks.append((stage, now))
            if line.startswith("== "):
                print(f"[{now:7.1f} s] {line.rstrip()}", flush=True)
        code = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    marks.append(("end", wall))
    rows = [(stage, marks[i + 1][1] - t, 1) for i, (stage, t) in enumerate(marks[:-1])]
    print(f"\nexit {code}; wall {wall:.0f} s; CPU (user+sys, all processes) {cpu:.0f} s; "
          f"CPU/wall {cpu / wall:.2f} on {os.cpu_count()} cores\n")
    print(_table(rows, wall))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("runs", "whole"), default="runs")
    parser.add_argument("--dataset", default="sp500", help="data of the in-process runs (default sp500)")
    parser.add_argument("script_args", nargs="*", help="options of 03 for --part whole (after --)")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    print(f"git {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}"
          f", load average {os.getloadavg()[0]:.2f} at start\n")
    if args.part == "runs":
        profile_runs(args.dataset)
    else:
        profile_whole(args.script_args)


if __name__ == "__main__":
    main()
