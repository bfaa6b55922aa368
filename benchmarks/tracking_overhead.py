"""Share of a trial's wall time spent in MLflow tracking, and the cost of the full Keras flavour.

A "trial" here is what the study harness does per Optuna trial: ``training.fit`` on prepared data,
then ``run_record.build`` and ``tracking.log_training_run`` in a run of a temporary SQLite store. Three logging variants:

* ``trial``: ``full_model=False, test=False`` (the ``.keras`` file, figures, attention maps);
* ``trial, no figures``: as above with ``figures=False, attention=False``;
* ``confirm``: ``full_model=True, test=True`` (MLflow Keras flavour with signature and example).

Run by hand (never in tests):

    python benchmarks/tracking_overhead.py                      # synthetic data, 3 repetitions
    python benchmarks/tracking_overhead.py --source sp500 --epochs 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from regimetry import run_record, tracking, training  # noqa: E402
from regimetry.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from regimetry.data import prepare  # noqa: E402

VARIANTS = {
    "trial": dict(full_model=False, test=False),
    "trial, no figures": dict(full_model=False, test=False, figures=False, attention=False),
    "confirm (full flavour)": dict(full_model=True, test=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()

    splits = prepare(DataConfig(source=args.source))
    model_config = ModelConfig()
    train_config = TrainConfig(max_epochs=args.epochs, patience=args.epochs)
    print(f"data {args.source}: train {len(splits.train)} / val {len(splits.val)} windows; "
          f"{model_config.d_model=} {model_config.num_layers=}; {args.epochs} epochs (no early stop)")
    with tempfile.TemporaryDirectory() as tmp:
        tracking.configure(f"sqlite:///{tmp}/mlruns/mlflow.db")
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
        for rep in range(args.repetitions):
            for name, kwargs in VARIANTS.items():
                t0 = time.perf_counter()
                result = training.fit(splits, model_config, train_config.replace(seed=rep))
                fit_s = time.perf_counter() - t0
                t1 = time.perf_counter()
                with tracking.run("overhead", run_name=f"{name} {rep}"):
                    tracking.log_training_run(run_record.build(result, splits, model_config, train_config,
                                                               stage="trial", arm="bench", **kwargs))
                log_s = time.perf_counter() - t1
                times[name].append((fit_s, log_s))
                print(f"  rep {rep} {name}: fit {fit_s:.1f} s, tracking {log_s:.2f} s", flush=True)
        for name, pairs in times.items():
            fit_med = statistics.median(p[0] for p in pairs)
            log_med = statistics.median(p[1] for p in pairs)
            print(f"{name}: fit {fit_med:.1f} s, tracking {log_med:.2f} s "
                  f"= {100 * log_med / (fit_med + log_med):.1f} % of the trial's wall time")


if __name__ == "__main__":
    main()
