"""Width benchmark: a user CSV of 1,273 input columns x 5,000 daily bars through the real CSV path.

Issue 15 asks whether regimetry copes with a wide indicator export: time and peak memory of
``regimetry.data.prepare``, then training throughput of the regimetry classifier against a plain
Keras model of the same size on the same arrays, side by side in one process.

What it does:

1. Writes a synthetic CSV into a temporary directory (deleted at the end, never committed):
   ``timestamp, open, high, low, close, volume`` (a random walk of daily bars) and ``--columns``
   input columns, by default 1,000 numeric (AR(1) series of varied persistence; a third start with a
   blank warm-up of up to 60 bars, a tenth carry 1 % scattered blanks), 173 boolean
   (``True``/``False``, a tenth with 1 % blanks) and 100 categorical (``Buy``/``Sell``/``None`` or
   ``Strong``/``Weak``/``Neutral``/``(blank)``). No label column: the target is the default
   ``forward_vol_regime`` computed from the closes.
2. ``prepare(DataConfig(source="csv", csv_path=...))`` with the default settings (leakage audit
   on): wall time, and the process's peak resident set size (``resource.getrusage(RUSAGE_SELF)
   .ru_maxrss``, the kernel's high-water mark of the whole process) before and after. TensorFlow is
   not imported before this step, so the increase is ``prepare``'s own peak.
3. One epoch of ``regimetry.training.fit`` (the real path: seeding, warm start, tf.data, validation
   pass), with the peak RSS after it: the memory ``prepare`` + one training epoch need.
4. Side by side: ``build_classifier(ModelConfig())`` (d_model 32, 2 blocks, ff 64, 4 heads, mean
   pooling, window 30) against ``benchmarks/throughput.reference_model`` of the same configuration,
   both compiled by ``training.compile_model`` and fed the same ``training.make_dataset`` of the
   training windows; one warm-up epoch each, then ``--repetitions`` interleaved epochs; median
   windows/s and the ratio regimetry / Keras.

Run by hand (never in tests)::

    python benchmarks/width.py                      # 1,273 columns x 5,000 bars, 3 repetitions
    python benchmarks/width.py --columns 200 --bars 2000 --repetitions 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from regimetry.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from regimetry.data import RegimetryDataWarning, prepare  # noqa: E402

GIB = 1024 ** 3


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def split_columns(total: int) -> tuple[int, int, int]:
    """Numeric, boolean and categorical column counts: 1,273 -> 1,000 / 173 / 100, scaled otherwise."""
    categorical = max(1, round(total * 100 / 1273))
    boolean = max(1, round(total * 173 / 1273))
    return total - boolean - categorical, boolean, categorical


def write_csv(path: Path, bars: int, columns: int, seed: int = 0) -> dict[str, int]:
    """Write the synthetic wide CSV (module docstring); returns the column counts per kind."""
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2000-01-03", periods=bars)
    vol = 0.01 * np.exp(np.cumsum(rng.normal(0, 0.05, bars)).clip(-1.5, 1.5))
    returns = rng.normal(0, 1, bars) * vol
    close = 100 * np.exp(np.cumsum(returns))
    open_ = close * np.exp(rng.normal(0, 0.002, bars))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, bars)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, bars)))
    frame = {"timestamp": index.strftime("%Y-%m-%d"), "open": open_.round(4), "high": high.round(4),
             "low": low.round(4), "close": close.round(4), "volume": rng.integers(1_000_000, 5_000_000, bars)}
    n_num, n_bool, n_cat = split_columns(columns)

    def ar1(phi: float) -> np.ndarray:
        noise = rng.normal(0, 1, bars)
        out = np.empty(bars)
        out[0] = noise[0]
        for t in range(1, bars):
            out[t] = phi * out[t - 1] + noise[t]
        return out

    base = [ar1(phi) for phi in np.linspace(0.0, 0.99, 20)]  # 20 shared persistence profiles
    for j in range(n_num):
        x = (base[j % 20] + 0.5 * rng.normal(0, 1, bars)) * 10 ** rng.uniform(-2, 3)
        cells = np.char.mod("%.6g", x).astype(object)
        if j % 3 == 0:
            cells[: int(rng.integers(1, 61))] = ""
        if j % 10 == 0:
            cells[rng.random(bars) < 0.01] = ""
        frame[f"num_{j:04d}"] = cells
    for j in range(n_bool):
        cells = np.where(base[j % 20] + rng.normal(0, 1, bars) > 0, "True", "False").astype(object)
        if j % 10 == 0:
            cells[rng.random(bars) < 0.01] = ""
        frame[f"sig_{j:03d}"] = cells
    for j in range(n_cat):
        x = base[j % 20] + rng.normal(0, 1, bars)
        if j % 2:
            cells = np.select([x < -0.5, x > 0.5], ["Sell", "Buy"], "None").astype(object)
        else:
            cells = np.select([x < -1, x < 0, x < 1], ["Weak", "Neutral", "Strong"], "").astype(object)
        frame[f"cat_{j:03d}"] = cells
    pd.DataFrame(frame).to_csv(path, index=False)
    return {"numeric": n_num, "boolean": n_bool, "categorical": n_cat}


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--columns", type=int, default=1273, help="input columns of the CSV")
    parser.add_argument("--bars", type=int, default=5000, help="daily bars")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved timed epochs per model")
    parser.add_argument("--keep-csv", type=Path, default=None, help="also copy the CSV here (debugging)")
    args = parser.parse_args()
    wall0 = time.perf_counter()
    print(f"git {git_sha()}; command: python {' '.join(sys.argv)}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="regimetry_width_"))
    try:
        csv = tmp / "wide.csv"
        t0 = time.perf_counter()
        kinds = write_csv(csv, args.bars, args.columns)
        print(f"CSV: {args.bars:,} bars x {args.columns:,} input columns {kinds}, {csv.stat().st_size / 2**20:.0f} MiB, "
              f"written in {time.perf_counter() - t0:.1f} s (not part of prepare)", flush=True)
        if args.keep_csv:
            shutil.copy(csv, args.keep_csv)

        # ---- prepare (TensorFlow not yet imported) -------------------------------------------
        assert "tensorflow" not in sys.modules, "TensorFlow imported before prepare: the RSS figure would mix both"
        rss0 = peak_rss_bytes()
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RegimetryDataWarning)
            splits = prepare(DataConfig(source="csv", csv_path=str(csv)))
        prepare_s = time.perf_counter() - t0
        rss1 = peak_rss_bytes()
        audit = splits.extras.get("leakage_audit", [])
        print(f"prepare: {prepare_s:.1f} s; peak RSS {rss0 / GIB:.2f} GiB before -> {rss1 / GIB:.2f} GiB after "
              f"(+{(rss1 - rss0) / GIB:.2f}); {splits.num_features:,} model inputs; windows train/val/test "
              f"{len(splits.train):,}/{len(splits.val):,}/{len(splits.test):,}; X train "
              f"{splits.train.X.nbytes / GIB:.2f} GiB float32; audited {sum(not a['note'] for a in audit):,} "
              f"columns, flagged {sum(a['flagged'] for a in audit)}; {len(caught)} data warning(s)", flush=True)
        for w in caught[:3]:
            print(f"  warning: {str(w.message)[:200]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- one epoch of the real training path --------------------------------------------------
    import keras

    from regimetry import training
    from regimetry.models import build_classifier

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import cpu_description, interleaved_rates, reference_model

    model_config = ModelConfig()
    train_config = TrainConfig(batch_size=args.batch_size, max_epochs=1)
    t0 = time.perf_counter()
    result = training.fit(splits, model_config, train_config)
    rss2 = peak_rss_bytes()
    print(f"training.fit, 1 epoch (incl. tracing, warm start, validation pass): {time.perf_counter() - t0:.1f} s; "
          f"peak RSS after prepare + 1 epoch {rss2 / GIB:.2f} GiB; val balanced accuracy "
          f"{result.val_metrics['balanced_accuracy']:.3f}", flush=True)
    del result

    # ---- side by side: regimetry classifier vs plain Keras of the same size ------------------------
    T, F, k = splits.window_size, splits.num_features, splits.num_classes
    n = len(splits.train)
    dataset = training.make_dataset(splits.train.X, splits.train.y, k, args.batch_size, shuffle_seed=0)
    steps = n // args.batch_size if n >= 2 * args.batch_size else -(-n // args.batch_size)
    windows = steps * args.batch_size if n >= 2 * args.batch_size else n
    training.set_global_seed(0)
    models = {"regimetry": build_classifier(model_config, T, F, k, feature_names=splits.feature_names),
              "keras": reference_model(model_config, T, F, k)}
    rates = interleaved_rates(models, dataset, train_config, args.repetitions, windows)
    rss3 = peak_rss_bytes()
    ours, ref = statistics.median(rates["regimetry"]), statistics.median(rates["keras"])
    params = {key: m.count_params() for key, m in models.items()}
    print(f"machine: {cpu_description()}; keras {keras.__version__}")
    print(f"training {windows:,} windows/epoch of {T} x {F:,}, batch {args.batch_size}, {args.repetitions} "
          f"interleaved epochs, median windows/s (min-max): regimetry {ours:,.0f} "
          f"({min(rates['regimetry']):,.0f}-{max(rates['regimetry']):,.0f}), keras {ref:,.0f} "
          f"({min(rates['keras']):,.0f}-{max(rates['keras']):,.0f}), ratio {ours / ref:.2f}; params "
          f"{params['regimetry']:,} vs {params['keras']:,}")
    print(f"peak RSS of the whole run {rss3 / GIB:.2f} GiB; wall {time.perf_counter() - wall0:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
