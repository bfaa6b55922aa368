"""The main job from two git revisions, side by side on one machine: wall and CPU time, and whether the
results are the same (issue 17).

Each revision is checked out into a temporary ``git worktree`` and runs
``python experiments/03_encoding_ablation.py`` (plus the options after ``--``) with that tree first on
``PYTHONPATH``, into its own temporary MLflow store and Optuna storage. Runs alternate
(base, head, head, base, ... with ``--repeats``) so that a load that drifts during the benchmark hits
both alike. CPU seconds are those of the run and its worker processes (``getrusage(RUSAGE_CHILDREN)``).
"Same results" compares everything the run prints from its results table on (pooled metrics with
intervals, verdicts, per-fold table), which covers every number of the summary.

    python benchmarks/side_by_side.py --base 01e7fe7 --head HEAD                 # default budget, ~30-45 min
    python benchmarks/side_by_side.py --base 01e7fe7 --head HEAD -- --smoke --jobs 1

Figures go to ``benchmarks/README.md`` with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Lines that legitimately differ between two runs (paths, timings, progress, the MLflow address).
VOLATILE = re.compile(r"elapsed|browse the runs|storage |report |rendering|wall|\[confirm\]|trial \d+ (COMPLETE|PRUNED|FAIL)")


def _results(output: str) -> str:
    """The printed results: from the table header to the end, minus volatile lines."""
    start = output.find("| arm |")
    if start < 0:
        return ""
    return "\n".join(line for line in output[start:].splitlines() if not VOLATILE.search(line)).strip()


def _run(tree: Path, script_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(tree / "experiments" / "03_encoding_ablation.py"), *script_args,
               "--tracking-uri", f"sqlite:///{tmp}/mlruns/mlflow.db", "--storage", f"sqlite:///{tmp}/optuna.db"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(tree), "MPLBACKEND": "Agg"})
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {"wall": wall, "cpu": cpu, "results": _results(proc.stdout)}


def _sha(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision before the change")
    parser.add_argument("--head", default="HEAD", help="git revision after the change (default HEAD)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per revision (alternating; default 1)")
    parser.add_argument("script_args", nargs="*", help="options of 03 (after --)")
    args = parser.parse_args()
    shas = {"base": _sha(args.base), "head": _sha(args.head)}
    print(f"base {shas['base']}, head {shas['head']}; 03 {' '.join(args.script_args) or '(default budget)'}; "
          f"load average {os.getloadavg()[0]:.2f} at start, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for name, sha in shas.items():
            trees[name] = Path(tmp) / name
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(trees[name]), sha], cwd=ROOT, check=True)
        try:
            order = [("base", "head") if i % 2 == 0 else ("head", "base") for i in range(args.repeats)]
            runs: dict[str, list[dict]] = {"base": [], "head": []}
            for pair in order:
                for name in pair:
                    run = _run(trees[name], args.script_args)
                    runs[name].append(run)
                    print(f"{name} {shas[name]}: wall {run['wall']:.0f} s, CPU {run['cpu']:.0f} s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    mean = {k: (sum(r["wall"] for r in v) / len(v), sum(r["cpu"] for r in v) / len(v)) for k, v in runs.items()}
    same = len({r["results"] for v in runs.values() for r in v}) == 1 and bool(runs["base"][0]["results"])
    print(f"\n| revision | wall s (mean of {args.repeats}) | CPU s |\n|---|---:|---:|")
    for name in ("base", "head"):
        print(f"| {name} `{shas[name]}` | {mean[name][0]:.0f} | {mean[name][1]:.0f} |")
    print(f"\nspeed-up: wall {mean['base'][0] / mean['head'][0]:.2f}x, CPU {mean['base'][1] / mean['head'][1]:.2f}x; "
          f"results identical: {'yes' if same else 'NO'}; load average {os.getloadavg()[0]:.2f} at the end")
    if not same:
        import difflib

        print("\n".join(difflib.unified_diff(runs["base"][0]["results"].splitlines(),
                                             runs["head"][0]["results"].splitlines(), "base", "head", lineterm="")))


if __name__ == "__main__":
    main()
