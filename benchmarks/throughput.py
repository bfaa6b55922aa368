"""Training throughput (windows / s) of regimetry's classifier vs a plain Keras reference.

The reference is written inline with stock Keras layers (Dense projection, fixed sinusoidal
encoding, post-norm encoder blocks of MultiHeadAttention + LayerNormalization + Dense feed-forward,
GlobalAveragePooling1D, softmax head): the same d_model / heads / ff_dim / depth / dropout as the
ModelConfig, so any gap is the cost of regimetry's layers (NaN padding masks, mask combination,
zeroed empty rows, masked pooling). Both models are compiled by ``regimetry.training.compile_model``
and fed by ``regimetry.training.make_dataset`` (identical optimiser, loss and pipeline), and are
timed in interleaved repetitions (ours, reference, ours, ...) after a warm-up epoch so that load
from other processes hits both alike.

Run by hand (never in tests):

    python benchmarks/throughput.py                       # 3 sizes, 5 repetitions
    python benchmarks/throughput.py --deterministic       # same, with TF op determinism on
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from regimetry import training  # noqa: E402
from regimetry.config import ModelConfig, TrainConfig  # noqa: E402
from regimetry.layers import sinusoidal_table  # noqa: E402  (the sinusoid exists once, in the layer file)
from regimetry.models import build_classifier  # noqa: E402

SIZES = {
    "small (d32, 2 blocks, ff64, 4 heads)": ModelConfig(d_model=32, num_heads=4, ff_dim=64, num_layers=2),
    "medium (d64, 3 blocks, ff128, 4 heads)": ModelConfig(d_model=64, num_heads=4, ff_dim=128, num_layers=3),
    "large (d128, 4 blocks, ff256, 8 heads)": ModelConfig(d_model=128, num_heads=8, ff_dim=256, num_layers=4),
}


def reference_model(config: ModelConfig, window: int, features: int, classes: int) -> keras.Model:
    """Plain Keras encoder classifier with the same architecture (post-norm, mean pooling)."""
    inputs = keras.Input((window, features))
    x = keras.layers.Dense(config.d_model)(inputs)
    x = x + keras.ops.expand_dims(sinusoidal_table(window, config.d_model), 0)
    x = keras.layers.Dropout(config.dropout)(x)
    for _ in range(config.num_layers):
        attn = keras.layers.MultiHeadAttention(config.num_heads, config.resolved_key_dim, dropout=config.dropout)(x, x)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(x + keras.layers.Dropout(config.dropout)(attn))
        ff = keras.layers.Dense(config.ff_dim, activation=config.activation)(x)
        ff = keras.layers.Dense(config.d_model)(ff)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(x + keras.layers.Dropout(config.dropout)(ff))
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def cpu_description() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        model = platform.processor() or "unknown"
    return f"{model}, {os.cpu_count()} logical cores"


def interleaved_rates(models: dict, dataset, train_config, repetitions: int, windows: int) -> dict[str, list[float]]:
    """Training windows/s of each model per epoch: compile, one warm-up epoch each (tracing), then
    ``repetitions`` rounds of one epoch per model, interleaved so that a drifting load hits all alike."""
    rates: dict[str, list[float]] = {k: [] for k in models}
    for model in models.values():
        training.compile_model(model, train_config)
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # warm-up: tracing
    for _ in range(repetitions):
        for key, model in models.items():
            t0 = time.perf_counter()
            model.fit(dataset, epochs=1, verbose=0, shuffle=False)
            rates[key].append(windows / (time.perf_counter() - t0))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=4096, help="training windows per epoch")
    parser.add_argument("--window-size", type=int, default=30)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--deterministic", action="store_true", help="enable TF op determinism first")
    parser.add_argument("--sizes", nargs="*", default=None, help="subset of size names (prefix match)")
    args = parser.parse_args()

    training.set_global_seed(0, deterministic_ops=args.deterministic)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.windows, args.window_size, args.features)).astype("float32")
    y = rng.integers(0, 3, size=args.windows)
    dataset = training.make_dataset(X, y, 3, args.batch_size, shuffle_seed=0)
    train_config = TrainConfig(batch_size=args.batch_size)
    print(f"machine: {cpu_description()}; keras {keras.__version__}; deterministic ops: {args.deterministic}")
    print(f"{args.windows} windows of {args.window_size} x {args.features}, batch {args.batch_size}, "
          f"{args.repetitions} interleaved repetitions, median windows/s (min-max)")
    for name, config in SIZES.items():
        if args.sizes and not any(name.startswith(s) for s in args.sizes):
            continue
        models = {
            "regimetry": build_classifier(config, args.window_size, args.features, 3),
            "keras reference": reference_model(config, args.window_size, args.features, 3),
        }
        rates = interleaved_rates(models, dataset, train_config, args.repetitions, args.windows)
        params = {k: m.count_params() for k, m in models.items()}
        ours, ref = statistics.median(rates["regimetry"]), statistics.median(rates["keras reference"])
        print(f"{name}: regimetry {ours:,.0f} ({min(rates['regimetry']):,.0f}-{max(rates['regimetry']):,.0f}), "
              f"reference {ref:,.0f} ({min(rates['keras reference']):,.0f}-{max(rates['keras reference']):,.0f}), "
              f"ratio {ours / ref:.2f}; params {params['regimetry']:,} vs {params['keras reference']:,}", flush=True)


if __name__ == "__main__":
    main()
