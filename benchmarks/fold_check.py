"""Fixed-configuration check of the classifier against persistence and HAR-RV, fold by fold.

Trains one fixed configuration (no tuning) per walk-forward fold and seed, and prints the test
balanced accuracy per fold next to the two classical references on the same folds. Used to choose
the defaults of issue 11 (features, linear shortcut, tuning period, early-stopping monitor); the
figures it printed are quoted in ``benchmarks/README.md``.

``--tuning-only`` scores on the first fold's VALIDATION block instead of test blocks. ``--end 2007-12-31
--folds-start 2003-01-01 --folds 3`` runs an inner walk-forward inside the tuning period (all bars before
the first default test block, 2008-01): the evidence allowed for choosing defaults.

Examples::

    python benchmarks/fold_check.py --features default --shortcut on --monitor val_loss
    python benchmarks/fold_check.py --features legacy --shortcut off --folds-start 2004-01-01
    python benchmarks/fold_check.py --tuning-only --features har --shortcut on
    python benchmarks/fold_check.py --end 2007-12-31 --folds-start 2003-01-01 --folds 3 --seeds 3 \
        --from-study 03_encoding_ablation/learnable --storage sqlite:///mlruns/optuna.db [--patience 2]

``--from-study`` trains the configuration an ablation's confirmation retrains (the study's best trial:
model and training settings as recorded, the seed replaced by 0 .. --seeds-1) instead of the options'
fixed one; ``--features`` must then be the feature set the study ran on (the default set by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from regimetry import baselines, data, training  # noqa: E402
from regimetry.config import DEFAULT_FEATURES, DataConfig, ModelConfig, TrainConfig  # noqa: E402

FEATURE_SETS = {
    "default": DEFAULT_FEATURES,
    "legacy": ("log_return", "abs_return", "range", "close_location", "rv_5", "rv_21", "rv_63", "volume_z"),
    "har": ("log_return", "abs_return", "range", "close_location", "log_rv_1", "log_rv_5", "log_rv_22",
            "volume_z"),
    "har63": ("log_return", "abs_return", "range", "close_location", "log_rv_1", "log_rv_5", "log_rv_22",
              "log_rv_63", "volume_z"),
    "har_only": ("log_rv_1", "log_rv_5", "log_rv_22"),
    # the default inputs plus range-based (Parkinson) log volatility at the HAR lags and momentum
    # (the leverage effect's sign): candidates for the shortcut, chosen on the tuning period only
    # (since git 037bd7d DEFAULT_FEATURES holds the log_parkinson lags itself: dict.fromkeys drops repeats)
    "default_pk3": tuple(dict.fromkeys(DEFAULT_FEATURES + ("log_parkinson_1", "log_parkinson_5", "log_parkinson_22"))),
    "default_pk": tuple(dict.fromkeys(DEFAULT_FEATURES + ("log_parkinson_1", "log_parkinson_5", "log_parkinson_22",
                                                         "mom_5", "mom_22"))),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="sp500")
    parser.add_argument("--features", default="default", choices=sorted(FEATURE_SETS))
    parser.add_argument("--shortcut", default="on", choices=("on", "off", "only"))
    parser.add_argument("--monitor", default="val_loss")
    parser.add_argument("--folds-start", default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--end", default=None, help="last bar used (e.g. 2007-12-31: an inner walk-forward "
                                                     "inside the tuning period, never touching test blocks)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=None,
                        help="early-stopping patience (default 4; with --from-study the study's, unless given)")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--shortcut-features", default="", help="comma-separated shortcut inputs (default all)")
    parser.add_argument("--center", action="store_true", help="center each window before the encoder")
    parser.add_argument("--tuning-only", action="store_true")
    parser.add_argument("--warm-start-candidate", action="store_true",
                        help="keep the warm-started shortcut unless an epoch beats it on validation")
    parser.add_argument("--warm-start-margin", type=float, default=0.0,
                        help="standard errors an epoch must beat the warm start by (1 = one-SE rule)")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--from-study", help="an ablation arm's study (e.g. 03_encoding_ablation/learnable): train "
                                             "its best trial's configuration instead of the fixed one")
    parser.add_argument("--storage", help="the Optuna storage of --from-study (default sqlite:///mlruns/optuna.db)")
    args = parser.parse_args()

    values = {"source": args.dataset, "features": FEATURE_SETS[args.features], "num_folds": args.folds}
    if args.folds_start:
        values["folds_start"] = args.folds_start
    if args.end:
        values["end"] = args.end
    folds = data.prepare_folds(DataConfig.from_dict(values))
    if args.tuning_only:
        folds = folds[:1]
    model_cfg = ModelConfig(d_model=args.d_model, num_layers=args.num_layers, pooling=args.pooling, linear_shortcut=args.shortcut != "off",
                            use_encoder=args.shortcut != "only", center_windows=args.center,
                            shortcut_features=tuple(f for f in args.shortcut_features.split(",") if f))
    study_train_cfg = None
    if args.from_study:
        from regimetry.studies.backend import best_configurations

        number, model_dict, train_dict = best_configurations(args.from_study, args.storage)
        model_cfg, study_train_cfg = ModelConfig.from_dict(model_dict), TrainConfig.from_dict(train_dict)
        if args.patience is not None:  # the study's configuration with another patience (issue 17's power study)
            study_train_cfg = dataclasses.replace(study_train_cfg, patience=args.patience)
        print(json.dumps({"study": args.from_study, "best_trial": number, "model": model_dict, "train": train_dict}),
              flush=True)
    rows = []
    t0 = time.perf_counter()
    for splits in folds:
        part = splits.val if args.tuning_only else splits.test
        row = {"fold": splits.fold, "start": str(part.index[0].date()), "n": len(part)}
        for name in ("persistence", "har_rv"):
            result = baselines.run_baseline(name, splits)
            row[name] = result.val_metrics["balanced_accuracy"] if args.tuning_only else result.test_metrics["balanced_accuracy"]
        scores, best_epochs = [], []
        for seed in range(args.seeds):
            train_cfg = (dataclasses.replace(study_train_cfg, seed=seed) if study_train_cfg is not None else
                         TrainConfig(max_epochs=args.epochs, patience=args.patience or 4, monitor=args.monitor, seed=seed,
                                     warm_start_candidate=args.warm_start_candidate,
                                     warm_start_margin=args.warm_start_margin))
            result = training.fit(splits, model_cfg, train_cfg)
            best_epochs.append(result.best_epoch)
            probs = training.predict_proba(result.model, part.X)
            scores.append(training.metrics_from_probs(part.y, probs, splits.class_names).metrics["balanced_accuracy"])
        row["model"] = float(np.mean(scores))
        row["model_seeds"] = [round(s, 3) for s in scores]
        row["best_epochs"] = best_epochs  # -1: the warm-started shortcut was kept
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"args": vars(args), "mean_model": float(np.mean([r["model"] for r in rows])),
                      "mean_har_rv": float(np.mean([r["har_rv"] for r in rows])),
                      "mean_persistence": float(np.mean([r["persistence"] for r in rows])),
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
