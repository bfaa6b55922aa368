"""00 - Can the harness see an effect that is known to exist, and call none where none exists?

Question: every ablation (03 encoding, 04 mask, 05 depth, 06 pooling) is run, with the same harness,
tuning protocol and statistics as on market data, on a control task whose winner theory fixes before
anything runs (``regimetry.data.controls``):

- ``order`` (03): rising vs falling volatility inside a window; without a positional encoding a
  mean-pooled, unmasked encoder is permutation invariant and sits at chance (Zaheer et al. 2017).
- ``event_order`` (04): which of two markers came first; without positional encoding and with
  last-step pooling only the look-ahead mask can tell (Haviv et al. 2022).
- ``induction`` (05): associative recall; one block stays at chance, two or more solve it
  (Olsson et al. 2022; Sanford, Hsu & Telgarsky 2024).
- ``recency`` (06): the regime at the window's end; only last-step pooling can read it.

Each control also holds an A/A null: the first predicted winner enters twice (``<arm>_copy``: the
same procedure with other training seeds), and the harness must call no difference between the
two. The checks (``regimetry.studies.control_checks``): every winner's pooled balanced accuracy
interval above chance, every at-chance arm's interval covering chance, every winner - at-chance paired
difference positive with its 95 % interval above zero, and the A/A difference not detected (with the
minimum detectable effect of that comparison at 80 % power).

- Budget (equal per arm, ``regimetry.studies.CONTROL_BUDGET``): 4 Sobol trials per arm on the first
  simulated data set (about 4,800 training / 1,600 validation windows), at most 12 epochs; each arm's
  best configuration confirmed on 2 independently simulated data sets x 2 seeds (1,600 test windows
  each). Nuisance space as in 03-06; the control's own fixed settings override the ablation's. This is
  smaller than the market budget (8 trials, 15 epochs, 3 seeds) so that a control runs in about a
  quarter of an hour on 2 cores; ``--trials 8 --max-epochs 15 --seeds 3`` runs the market budget.
- Each ablation script runs its own control directly too (``python experiments/03_encoding_ablation.py
  --dataset control:order``): the same studies, settings and arms, without this script's table.

Reproduce: ``python experiments/00_positive_controls.py`` (all four; ``--controls order,recency`` for
some; ``--smoke`` for a quick run that checks the plumbing, not the verdicts). Writes
``reports/00_positive_controls/checks.md`` (``reports/smoke/...`` with ``--smoke``), ``checks.csv`` and the papermill report
``controls_report.html`` (``notebooks/controls_report.ipynb``), and logs them to each control's
MLflow parent run.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from regimetry import records, reports, tracking
from regimetry.config import CONTROL_TASKS
from regimetry.data.controls import get_control
from regimetry.studies import DEFAULT_JOBS, ReportFailed, RunOptions, control_ablation, control_checks, run_ablation
from regimetry.studies.cli import run_with_exit_codes

HERE = Path(__file__).resolve().parent


def load_ablation(name: str):
    """The ``ABLATION`` of ``experiments/<name>.py`` (the scripts' names start with digits)."""
    spec = importlib.util.spec_from_file_location(f"regimetry_experiment_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python experiments/00_positive_controls.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--controls", default=",".join(CONTROL_TASKS),
                        help=f"comma-separated control tasks (default all: {','.join(CONTROL_TASKS)})")
    parser.add_argument("--trials", type=int, help="Optuna trials per arm (default 4)")
    parser.add_argument("--max-epochs", type=int, help="epoch cap per training run (default 12)")
    parser.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 4)")
    parser.add_argument("--seeds", type=int, help="confirmation seeds per data set (default 2)")
    parser.add_argument("--paths", type=int, default=2, help="independently simulated data sets (default 2)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///mlruns/optuna.db; sqlite:///mlruns/optuna_smoke.db with --smoke)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, sampler, training and bootstrap")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help=f"worker processes (default {DEFAULT_JOBS})")
    parser.add_argument("--smoke", action="store_true", help="tiny budget and data: checks the plumbing only")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the papermill reports")
    parser.add_argument("--output-dir", help="where checks.md/csv and the controls report go (default "
                                             "reports/00_positive_controls, reports/smoke/00_positive_controls "
                                             "with --smoke, so that a smoke run never replaces a full run's checks)")
    return parser


def _markdown(checks: pd.DataFrame, header: list[str]) -> str:
    lines = header + ["", "| control | check | arm | vs | expected | estimate [95 % CI] | MDE (80 %) | passed |",
                      "|---|---|---|---|---|---|---|---|"]
    for r in checks.to_dict("records"):
        mde = f"{r['mde']:.3f}" if pd.notna(r["mde"]) else "-"
        lines.append(f"| {r['control']} | {r['check']} | {r['arm']} | {r['b']} | {r['expected']} | "
                     f"{r['estimate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {mde} | "
                     f"{'yes' if r['passed'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("regimetry.controls").setLevel(logging.INFO)
    return run_with_exit_codes(lambda: run_controls(args))


def run_controls(args: argparse.Namespace) -> pd.DataFrame:
    """Run every control of ``args.controls``, then write and report the checks table."""
    tasks = [t.strip() for t in args.controls.split(",") if t.strip()]
    for task in tasks:
        get_control(task)
    for name, value in (("--jobs", args.jobs), ("--paths", args.paths)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")
    all_checks, header, parents = [], ["# 00_positive_controls", ""], []
    for task in tasks:
        checks, line, parent_run_id = _run_control(task, args)
        all_checks.append(checks)
        header.append(line)
        parents.append(parent_run_id)
    table = pd.concat(all_checks, ignore_index=True)
    out = Path(args.output_dir or ("reports/smoke/00_positive_controls" if args.smoke else "reports/00_positive_controls"))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "checks.csv", index=False)
    aa = table[table["check"] == "aa_null"]
    header.append(f"- A/A null controls: {int((~aa['passed'].astype(bool)).sum())} false call(s) in {len(aa)} "
                  "comparison(s) of an arm with its own copy")
    (out / "checks.md").write_text(_markdown(table, header))
    if args.report:  # the one table as a papermill report, logged beside each control's own report
        try:
            paths = reports.render_controls_report(out / "checks.csv", out)
        except reports.ReportError as exc:
            raise ReportFailed(f"controls report: {exc} (checks.md and checks.csv are written)") from None
        for parent_run_id in parents:
            for path in (paths.notebook, paths.html):
                tracking.log_artifact(path, records.CONTROLS_DIR, run_id=parent_run_id)
        print(f"controls report: {paths.html}", flush=True)
    print(f"checks: {out / 'checks.md'} ({int(table['passed'].sum())}/{len(table)} passed; A/A false calls: "
          f"{int((~aa['passed'].astype(bool)).sum())} of {len(aa)})", flush=True)
    return table


def _run_control(task: str, args: argparse.Namespace) -> tuple[pd.DataFrame, str, str]:
    """One control: its ablation run, its checks (logged on its parent run) and its line of checks.md."""
    control = get_control(task)
    ablation, copy_arm = control_ablation(load_ablation(control.ablation), task, smoke=args.smoke)
    options = RunOptions(dataset=f"control:{task}", trials=args.trials, max_epochs=args.max_epochs,
                         patience=args.patience, seeds=args.seeds, storage=args.storage, tracking_uri=args.tracking_uri,
                         seed=args.seed, smoke=args.smoke, report=args.report, jobs=args.jobs,
                         paths=args.paths)
    started = time.monotonic()
    summary = run_ablation(ablation, options)
    wall = time.monotonic() - started
    checks = control_checks(summary, task, copy_arm)
    checks.insert(0, "control", task)
    passed = int(checks["passed"].sum())
    line = (f"- `{task}` ({control.ablation}): {passed}/{len(checks)} checks passed, chance "
            f"{control.chance:.3f}, Bayes ceiling ~{control.ceiling_estimate:.3f}, wall {wall / 60:.1f} min; "
            f"{control.question}")
    print(line, flush=True)
    print(checks.drop(columns=["control"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    parent = summary["parent_run_id"]
    tracking.log_text(checks.to_csv(index=False), records.CONTROL_CHECKS_ARTIFACT, run_id=parent)
    tracking.set_tags({records.CONTROL_CHECKS_PASSED: f"{passed}/{len(checks)}"}, run_id=parent)
    return checks, line, parent


if __name__ == "__main__":
    sys.exit(main())
