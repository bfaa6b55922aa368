"""02 - Unsupervised regime discovery from encoder embeddings.

Question:
    Do the pooled embeddings of our Transformer encoder organise market history into persistent,
    interpretable regimes - and more so than an untrained encoder of the same architecture? On
    synthetic data: how well do the discovered regimes recover the true hidden regimes?

What it runs:
    1. ``regimetry.data.prepare`` (one chronological train / val / test split with embargo).
    2. Encoders: ``trained`` (``regimetry.training.fit`` on the regime labels, default configs) and
       ``untrained`` (same architecture, random initial weights: the reference showing what the
       architecture alone gives).
    3. Pooled embeddings of every window (``regimetry.models.embed``) -> standardised with a scaler
       fitted on the training windows -> clustered with each method (``spectral`` with a
       nearest-neighbour affinity, ``kmeans``, ``gmm``) fitted on the training windows only; val
       and test windows are assigned without refitting (spectral: a kNN classifier on the training
       assignments, see ``regimetry.discovery``).
    4. Regime ids aligned across runs with the Hungarian algorithm on shared training-period
       timestamps (``regimetry.discovery.align_labels``). The reference is ``--reference PATH`` (a
       ``regimes.csv`` artifact of an earlier run: columns ``timestamp, regime``) or, by default,
       this invocation's first run (trained encoder, first method) with ids ordered by the mean
       trailing 21-bar realized volatility of its training windows (regime 0 = calmest).
    5. Regime statistics per split (transition matrix, stickiness, row entropy in bits, mean and
       implied duration in windows, occupancy); agreement with the supervised label (ARI / NMI vs
       the target classes) and, on synthetic data, with the true regimes (``ari``, ``nmi``).
    6. Figures: regime timeline over the price (val / test starts dashed) and a t-SNE map of the
       embeddings coloured by regime.

    Fixed: number of regimes = number of target classes (``--n-regimes`` to change), the default
    ``ModelConfig`` / ``TrainConfig`` (smoke: a tiny encoder, 2 epochs), ``n_neighbors`` = 10.

Tracking (MLflow, experiment ``02_regime_discovery``):
    a parent run per invocation (tags ``stage=discovery_session``, ``dataset``; the trained
    encoder's ``encoder/val/...`` metrics); a child run per encoder x method with tags
    ``stage=discovery``, ``dataset``, ``arm=<encoder>/<method>``, ``encoder``, ``method``,
    ``reference``; metrics ``{train,val,test}/stickiness/<k>``, ``.../row_entropy/<k>``,
    ``.../mean_duration/<k>``, ``.../expected_duration/<k>``, ``.../occupancy/<k>``,
    ``.../ari_vs_label``, ``.../nmi_vs_label`` and on synthetic data ``.../ari``, ``.../nmi``;
    artifacts ``regimes.csv`` (timestamp, split, regime: usable as ``--reference``),
    ``statistics.json`` (transition matrices, mapping), ``figures/timeline.png``,
    ``figures/tsne.png``.

Reproduce:
    python experiments/02_regime_discovery.py                       # S&P 500
    python experiments/02_regime_discovery.py --dataset synthetic   # with ARI / NMI vs the truth
    python experiments/02_regime_discovery.py --reference regimes.csv  # ids aligned to an earlier run
    python experiments/02_regime_discovery.py --smoke --dataset synthetic --tracking-uri sqlite:///tmp/m.db
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from regimetry import baselines, reports, tracking  # noqa: E402
from regimetry import discovery as D  # noqa: E402
from regimetry.config import DataConfig, ModelConfig, TrainConfig, add_data_arguments, check_data_arguments  # noqa: E402
from regimetry.data import prepare  # noqa: E402
from regimetry.training import fit, set_global_seed  # noqa: E402

EXPERIMENT = Path(__file__).stem
ENCODERS = ("trained", "untrained")
SPLITS = ("train", "val", "test")
log = logging.getLogger(EXPERIMENT)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, seed_help="seed of training, clustering and t-SNE", smoke_help="tiny and fast (< 1 minute)",
                       target_help="label the encoder is trained on: forward_vol_regime | true_regime | column:<name>")
    parser.add_argument("--methods", default=",".join(D.CLUSTERING_METHODS),
                        help=f"comma-separated clustering methods (default {','.join(D.CLUSTERING_METHODS)})")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated: trained,untrained")
    parser.add_argument("--n-regimes", type=int, default=None, help="clusters (default: number of target classes)")
    parser.add_argument("--reference", metavar="PATH", default=None,
                        help="regimes.csv of an earlier run (timestamp, regime) to align regime ids to")
    args = parser.parse_args(argv)
    check_data_arguments(parser, args)
    for option, given, valid in (("--methods", args.methods, D.CLUSTERING_METHODS), ("--encoders", args.encoders, ENCODERS)):
        unknown = sorted(set(given.split(",")) - set(valid))
        if unknown or not given:
            parser.error(f"{option}: unknown {unknown}; valid: {list(valid)}")
    if args.n_regimes is not None and args.n_regimes < 2:
        parser.error(f"--n-regimes must be >= 2, got {args.n_regimes}")
    if args.reference and not Path(args.reference).is_file():
        parser.error(f"--reference: file not found: {args.reference}")
    return args


def configs(args: argparse.Namespace) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    values: dict[str, Any] = {"source": args.dataset, "target": args.target, "synthetic_seed": args.seed}
    if args.dataset == "csv":
        values["csv_path"] = args.csv
    model = ModelConfig()
    train = TrainConfig(seed=args.seed)
    if args.smoke:
        if args.dataset == "synthetic":
            values["synthetic_bars"] = 1500
        elif args.dataset in ("sp500", "nasdaq"):
            values.update(start="2008-01-01", end="2013-12-31")
        model = ModelConfig(d_model=16, num_heads=4, ff_dim=32, num_layers=1)
        train = TrainConfig(seed=args.seed, max_epochs=2, batch_size=128)
    return DataConfig.from_dict(values), model, train


def load_reference(path: str) -> pd.Series:
    """``regimes.csv`` (columns ``timestamp``, ``regime``) -> int Series indexed by timestamp.

    Raises:
        ValueError: missing columns or unparsable values, naming the file.
    """
    frame = pd.read_csv(path)
    missing = {"timestamp", "regime"} - set(frame.columns)
    if missing:
        raise ValueError(f"--reference {path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}")
    try:
        index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"]))
        values = frame["regime"].astype(np.int64).to_numpy()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--reference {path}: cannot parse timestamp/regime: {exc}") from None
    return pd.Series(values, index=index, name="regime")


def encoder_embeddings(kind: str, splits, model_config: ModelConfig, train_config: TrainConfig):
    """``({split: (n, d_model) float32}, info metrics)`` for a trained or untrained encoder."""
    from regimetry.models import build_classifier, embed  # Keras/TensorFlow: loaded when an encoder is built

    info: dict[str, float] = {}
    if kind == "trained":
        result = fit(splits, model_config, train_config)
        model = result.model
        info = {f"encoder/val/{k}": float(v) for k, v in result.val_metrics.items()}
        info.update({"encoder/best_epoch": float(result.best_epoch), "encoder/fit_seconds": result.fit_seconds})
    else:
        set_global_seed(train_config.seed)
        model = build_classifier(model_config, splits.window_size, splits.num_features, splits.num_classes)
    return {s: embed(model, getattr(splits, s).X) for s in SPLITS}, info


def split_labels(splits, labels: dict[str, np.ndarray]) -> pd.Series:
    """Concatenate per-split labels into one Series indexed by window timestamps."""
    return pd.concat([pd.Series(labels[s], index=getattr(splits, s).index) for s in SPLITS])


class Discovery(NamedTuple):
    """What every encoder x method run of one invocation shares."""

    args: argparse.Namespace
    data_config: DataConfig
    splits: Any
    k: int
    close: pd.Series
    rv: np.ndarray
    truth: dict[str, np.ndarray] | None
    tags: dict[str, Any]


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the experiment; returns ``{arm: {metric: value}}``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    data_config, model_config, train_config = configs(args)
    d = _discovery(args, data_config)
    methods = args.methods.split(",")
    encoders = args.encoders.split(",")
    reference = load_reference(args.reference) if args.reference else None
    reference_name = f"file:{Path(args.reference).name}" if args.reference else None
    summary: dict[str, dict[str, float]] = {}

    with tracking.run(EXPERIMENT, run_name=f"{data_config.dataset_name}-discovery", tracking_uri=args.tracking_uri,
                      tags={"stage": "discovery_session", **d.tags, **tracking.version_tags()}) as parent:
        parent.log_params({**data_config.flat(), **model_config.flat(), **train_config.flat(),
                           "n_regimes": d.k, "methods": ",".join(methods), "encoders": ",".join(encoders),
                           "reference": reference_name or "first_run_ordered_by_trailing_vol"})
        for encoder in encoders:
            t1 = time.perf_counter()
            emb, info = encoder_embeddings(encoder, d.splits, model_config, train_config)
            if info:
                parent.log_metrics(info)
            log.info("%s encoder: embeddings %s in %.1fs", encoder, emb["train"].shape, time.perf_counter() - t1)
            all_emb = np.concatenate([emb[s] for s in SPLITS])
            xy, rows = D.tsne_projection(all_emb, seed=args.seed, max_points=200 if args.smoke else 1500,
                                         max_iter=250 if args.smoke else 1000)
            for method in methods:
                arm = f"{encoder}/{method}"
                t2 = time.perf_counter()
                metrics, n_ids, reference, reference_name = _discovery_run(d, encoder, method, emb, (xy, rows),
                                                                            reference, reference_name)
                summary[arm] = metrics
                extra = f"  test ARI {metrics['test/ari']:.3f} NMI {metrics['test/nmi']:.3f}" if d.truth is not None else ""
                stick = [metrics.get(f"test/stickiness/{i}", np.nan) for i in range(n_ids)]
                log.info("%-20s test stickiness %s  NMI vs label %.3f%s  (%.1fs)", arm, np.round(stick, 3),
                         metrics["test/nmi_vs_label"], extra, time.perf_counter() - t2)
        parent.log_metrics({"time/total_seconds": time.perf_counter() - t0})
        report_error = _report(args, data_config, parent.run_id)
    if report_error:
        raise SystemExit(report_error)
    return summary


def _discovery(args: argparse.Namespace, data_config: DataConfig) -> Discovery:
    splits = prepare(data_config)
    close = splits.bars["close"] if "close" in splits.bars.columns else np.exp(splits.bars["log_return"].fillna(0).cumsum())
    # Trailing realized vol at each window's last bar: the score that orders reference ids.
    rv = baselines.realized_vol(splits.bars["log_return"].to_numpy(dtype=np.float64, na_value=np.nan),
                                data_config.horizon, min_periods=1)
    truth = None
    if data_config.source == "synthetic" and "true_regimes" in splits.extras:
        true_all = np.asarray(splits.extras["true_regimes"], dtype=np.int64)
        truth = {s: true_all[getattr(splits, s).positions] for s in SPLITS}
    tags = {"dataset": data_config.dataset_name, "seed": args.seed, **tracking.git_info()}
    return Discovery(args, data_config, splits, args.n_regimes or splits.num_classes, close, rv, truth, tags)


def _discovery_run(d: Discovery, encoder: str, method: str, emb: dict[str, np.ndarray], projection,
                   reference: pd.Series | None, reference_name: str | None):
    """One encoder x method as one MLflow run: ``(metrics, regime ids, reference, reference name)`` (the
    first run becomes the reference of the later ones)."""
    arm, splits, k, t2 = f"{encoder}/{method}", d.splits, d.k, time.perf_counter()
    with tracking.run(EXPERIMENT, run_name=arm,
                      tags={"stage": "discovery", "arm": arm, "encoder": encoder, "method": method,
                            **d.tags}) as child:
        model = D.fit_clustering(emb["train"], method, k, seed=d.args.seed)
        raw = {"train": model.train_labels, "val": model.predict(emb["val"]), "test": model.predict(emb["test"])}
        labels = split_labels(splits, raw)
        aligned, mapping, how = _align(labels, raw, reference, splits, d.rv, k)
        if reference is None:
            reference, reference_name = aligned, f"run:{child.run_id}"
        n_ids = int(max(aligned.max() + 1, k))
        child.set_tags({"reference": reference_name, "alignment": how})
        metrics, stats_json = _regime_metrics(aligned, splits, n_ids, d.truth)
        stats_json = {"mapping": {str(a): b for a, b in mapping.items()}, **stats_json}
        metrics["time/seconds"] = time.perf_counter() - t2
        child.log_params({"method": method, "encoder": encoder, "n_regimes": k,
                          "n_neighbors": 10, "d_model": emb["train"].shape[1]})
        child.log_metrics(metrics)
        tracking.log_dict(stats_json, "statistics.json")
        frame = pd.DataFrame({"timestamp": aligned.index, "regime": aligned.to_numpy(),
                              "split": np.concatenate([[s] * len(getattr(splits, s)) for s in SPLITS])})
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        tracking.log_text(buf.getvalue(), "regimes.csv")
        xy, rows = projection
        tracking.log_figure(D.plot_regime_timeline(d.close, aligned, n_regimes=n_ids,
                                                   boundaries=[splits.val.index[0], splits.test.index[0]],
                                                   title=f"{d.data_config.dataset_name}: {arm} regimes"),
                            "figures/timeline.png")
        tracking.log_figure(D.plot_projection(xy, aligned.to_numpy()[rows], n_regimes=n_ids,
                                              title=f"t-SNE of {encoder} embeddings: {method} regimes"),
                            "figures/tsne.png")
    return metrics, n_ids, reference, reference_name


def _align(labels: pd.Series, raw: dict[str, np.ndarray], reference: pd.Series | None, splits, rv: np.ndarray,
           k: int) -> tuple[pd.Series, dict[int, int], str]:
    """Regime ids aligned to the reference (Hungarian on shared training timestamps) or, for the first
    run, ordered by the mean trailing vol of its training windows: ``(aligned ids, mapping, how)``."""
    if reference is None:
        # First run: canonical ids by mean trailing vol of its *training* windows.
        _, mapping = D.order_by_score(raw["train"], rv[splits.train.positions])
        for i in sorted(set(int(v) for v in labels.unique()) - set(mapping)):
            mapping[i] = len(mapping)  # an id unseen in train: a fresh id after the others
        return labels.map(lambda v: mapping[int(v)]).astype(np.int64), mapping, "ordered_by_trailing_vol"
    shared_train = splits.train.index.intersection(reference.index)
    basis = labels.loc[shared_train] if len(shared_train) else labels
    _, mapping = D.align_labels(basis, reference)
    next_id = max([*mapping.values(), k - 1]) + 1
    for i in sorted(set(int(v) for v in labels.unique()) - set(mapping)):
        mapping[i], next_id = next_id, next_id + 1
    how = "hungarian_on_train_timestamps" if len(shared_train) else "hungarian_on_shared_timestamps"
    return labels.map(lambda v: mapping[int(v)]).astype(np.int64), mapping, how


def _regime_metrics(aligned: pd.Series, splits, n_ids: int, truth) -> tuple[dict[str, float], dict[str, Any]]:
    """Regime statistics and agreement scores per split, and the transition matrices for statistics.json."""
    metrics: dict[str, float] = {}
    stats_json: dict[str, Any] = {}
    for s in SPLITS:
        seq = aligned.loc[getattr(splits, s).index].to_numpy()
        stats = D.regime_statistics(seq, n_ids)
        metrics.update(stats.as_metrics(f"{s}/"))
        stats_json[s] = {"transition_matrix": stats.transition_matrix, "counts": stats.counts}
        vs_label = D.external_scores(seq, getattr(splits, s).y)
        metrics.update({f"{s}/ari_vs_label": vs_label["ari"], f"{s}/nmi_vs_label": vs_label["nmi"]})
        if truth is not None:
            metrics.update({f"{s}/{m}": v for m, v in D.external_scores(seq, truth[s]).items()})
    return metrics, stats_json


def _report(args, config, parent_run_id: str) -> str | None:
    return reports.experiment_data_report_or_error(EXPERIMENT, config, parent_run_id) if args.report else None


if __name__ == "__main__":
    main()
