"""Fit a regime classifier on prepared ``Splits`` and compute the metrics of record.

The metrics of record (``metrics_from_probs``, ``evaluate``, ``evaluate_full``, ``predict_proba``)
live in :mod:`regimetry.scoring` and are re-exported here.

Training (``fit``):

* ``tf.data`` pipelines; only the training split is shuffled (seeded, reshuffled every epoch),
  validation and test keep their chronological order; batches are prefetched.
* AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization") with the learning
  rate, decoupled weight decay and gradient-norm clip of ``TrainConfig``.
* Categorical cross-entropy with optional label smoothing (Szegedy et al., 2016) and optional
  ``"balanced"`` class weights ``n / (k * n_c)`` (scikit-learn's ``compute_class_weight``) applied
  as per-window sample weights.
* After every epoch the whole validation split is predicted once and scored with scikit-learn;
  that score drives early stopping (``TrainConfig.monitor``, ``patience``) and is what
  ``epoch_callback`` receives (the study harness prunes on it). The weights of the best epoch are
  restored at the end.
* Linear shortcut (``ModelConfig.linear_shortcut``): before the first step the shortcut is set to a
  multinomial logistic regression on the training windows' last real step (scikit-learn, L2 with
  ``C = 1`` on the standardised inputs, the same class weights), and the encoder's head starts at
  zero (``regime_logits`` is zero-initialised). So training starts from a HAR-like linear model and
  the encoder learns a residual over it, as HARNet starts from HAR (Reisenhofer et al. 2022).
  With ``TrainConfig.warm_start_candidate`` that linear start is scored on validation before the
  first step and kept unless an epoch beats it strictly on ``monitor`` (``best_epoch = -1``), or by
  more than ``TrainConfig.warm_start_margin`` standard errors of the paired validation difference
  (the one-standard-error rule at 1; Breiman et al. 1984; Hastie, Tibshirani & Friedman 2009, 7.10).
* Seeded: ``set_global_seed`` seeds Python, NumPy, TensorFlow and Keras before the model is built.
  On CPU this alone gives bit-identical metrics for the same seed (measured; see
  ``set_global_seed``), so TensorFlow's op determinism is off by default.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight
from threadpoolctl import threadpool_limits

# Keras, TensorFlow and regimetry.models are imported inside the functions that train: the command line
# and the study harness's parent process import this module without paying for (or starting) TensorFlow.
from regimetry import evaluation
from regimetry.config import ModelConfig, TrainConfig
from regimetry.data.types import SplitData, Splits
# The metrics of record live in regimetry.scoring (no Keras); re-exported here, their historical home.
from regimetry.scoring import EvalResult, evaluate, evaluate_full, metrics_from_probs, predict_proba

__all__ = [
    "EvalResult",
    "TrainResult",
    "class_weights",
    "evaluate",
    "evaluate_full",
    "fit",
    "make_dataset",
    "metrics_from_probs",
    "predict_proba",
    "set_global_seed",
    "warm_start_shortcut",
]

EpochCallback = Callable[[int, dict[str, float]], None]

#: Maps ``TrainConfig.monitor`` to the history key it reads.
MONITOR_KEYS = {
    "val_balanced_accuracy": "val/balanced_accuracy",
    "val_macro_f1": "val/macro_f1",
    "val_accuracy": "val/accuracy",
    "val_loss": "val/loss",
}
#: Maps a history key of ``MONITOR_KEYS`` to the name ``metrics_from_probs`` gives that metric.
_METRIC_OF_MONITOR = {"val/balanced_accuracy": "balanced_accuracy", "val/macro_f1": "macro_f1",
                      "val/accuracy": "accuracy", "val/loss": "log_loss"}


# ------------------------------------------------------------------------------------------------
# Seeding
# ------------------------------------------------------------------------------------------------
def set_global_seed(seed: int, *, deterministic_ops: bool = False) -> None:
    """Seed Python's ``random``, NumPy, TensorFlow and Keras' global ``SeedGenerator``.

    Call it before building a model: Keras layers draw their initial weights and dropout seeds
    from the global seed at construction time.

    Args:
        seed: a non-negative integer.
        deterministic_ops: also call ``tf.config.experimental.enable_op_determinism()`` (process
            wide, cannot be undone). Not needed on CPU: the same seed gives bit-identical metrics
            without it (checked by ``tests/test_training.py``), and it costs throughput
            (``benchmarks/README.md``). Turn it on for GPU runs.

    Raises:
        ValueError: ``seed`` is not a non-negative integer.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"set_global_seed: seed must be a non-negative integer, got {seed!r}")
    import keras  # TensorFlow: imported where a model is trained (see the imports at the top)

    keras.utils.set_random_seed(int(seed))
    if deterministic_ops:
        import tensorflow as tf  # see the imports at the top

        tf.config.experimental.enable_op_determinism()


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """"Balanced" class weights ``n / (k_present * n_c)`` (scikit-learn), 0 for absent classes.

    Returns:
        float32 ``(num_classes,)``.
    """
    y = np.asarray(y)
    present = np.unique(y)
    weights = np.zeros(num_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return weights


def make_dataset(
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    sample_weight: np.ndarray | None = None,
):
    """A batched, prefetched ``tf.data.Dataset`` of ``(x, one_hot_y[, weight])``.

    Args:
        X: float32 ``(n, T, F)``; y: int ``(n,)``.
        shuffle_seed: shuffle the whole split (buffer = n) with this seed, reshuffled every
            epoch, and drop the ragged last batch when there are at least two full batches;
            ``None`` keeps the chronological order and every window (validation / test).
        sample_weight: optional float32 ``(n,)`` per-window loss weights.
    """
    import tensorflow as tf  # see the imports at the top

    y_onehot = np.eye(num_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]
    tensors: tuple = (np.asarray(X, dtype=np.float32), y_onehot)
    if sample_weight is not None:
        tensors = tensors + (np.asarray(sample_weight, dtype=np.float32),)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)
    # Training batches drop the ragged last batch (a different batch shape would trace the train
    # step a second time, ~1 s per model); reshuffling each epoch means no window is always left out.
    drop = shuffle_seed is not None and len(y) >= 2 * batch_size
    return ds.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass
class TrainResult:
    """Outcome of ``fit``.

    Attributes:
        model: the trained ``keras.Model`` with the best epoch's weights restored.
        history: per-epoch metrics, MLflow-style names: ``train/loss`` (the optimised loss, with
            class weights and label smoothing), ``train/accuracy``, ``val/loss`` (unweighted
            cross-entropy = log loss on the validation split), ``val/accuracy``,
            ``val/balanced_accuracy``, ``val/macro_f1``, ``time/epoch_seconds``. Index = epoch.
        best_epoch: 0-based epoch whose weights were restored; -1 when no epoch beat the
            warm-started model before the first step (``TrainConfig.warm_start_candidate``), whose
            weights are then restored.
        epochs_run: number of epochs trained.
        stopped_early: ``True`` when patience ran out before ``max_epochs``.
        fit_seconds: wall time of the whole fit (model build, training, restoring), seconds.
        val_metrics: metrics of record of the restored model on the validation split.
        val_confusion: its ``(num_classes, num_classes)`` confusion matrix.
        monitor: the history key early stopping watched; best_score: its best value.
        model_config, train_config: what was trained.
    """

    model: Any
    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    fit_seconds: float
    val_metrics: dict[str, float]
    val_confusion: np.ndarray
    monitor: str
    best_score: float
    model_config: ModelConfig | None = None
    train_config: TrainConfig | None = None


#: Bootstrap replicates behind the standard error of ``TrainConfig.warm_start_margin``.
WARM_START_BOOTSTRAP = 200


def _make_callback(val: SplitData, class_names, train_config: TrainConfig, epoch_callback, predict_batch,
                   block_length: int = 1):
    import keras  # TensorFlow: imported where a model is trained (see the imports at the top)

    monitor_key = MONITOR_KEYS[train_config.monitor]
    sign = -1.0 if train_config.monitor_mode == "min" else 1.0

    class _ValidationAndEarlyStopping(keras.callbacks.Callback):
        """Scores the whole validation split with scikit-learn after each epoch; early stopping."""

        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = {}
            self.best_score = -math.inf
            self.best_epoch = -1
            self.best_weights: list[np.ndarray] | None = None
            self.wait = 0
            self.stopped_early = False
            self.warm_start_metrics: dict[str, float] | None = None
            self.warm_start_probs: np.ndarray | None = None
            self._t0 = time.perf_counter()

        def start_at_warm_start(self, model) -> None:
            """Make the (warm-started) model before any step the first candidate for restoring
            (``TrainConfig.warm_start_candidate``): an epoch must beat it strictly."""
            probs = predict_proba(model, val.X, batch_size=predict_batch)
            self.warm_start_metrics = metrics_from_probs(val.y, probs, class_names).metrics
            self.best_score = sign * self.warm_start_metrics[_METRIC_OF_MONITOR[monitor_key]]
            self.best_weights = [np.array(w, copy=True) for w in model.get_weights()]
            self.warm_start_probs = probs

        def _beats_warm_start_by_margin(self, probs: np.ndarray) -> bool:
            """While the warm start is the best candidate: does this epoch beat it by more than
            ``warm_start_margin`` standard errors of the paired difference on validation?"""
            if self.best_epoch >= 0 or self.warm_start_probs is None or train_config.warm_start_margin == 0:
                return True
            metric = _METRIC_OF_MONITOR[monitor_key]
            uses_probs = metric == "log_loss"
            a = probs if uses_probs else probs.argmax(axis=1)
            b = self.warm_start_probs if uses_probs else self.warm_start_probs.argmax(axis=1)
            diff = evaluation.paired_block_bootstrap(
                metric, val.y, a, b, len(class_names), block_length=min(block_length, len(val.y)),
                n_boot=WARM_START_BOOTSTRAP, seed=train_config.seed, resample_seeds=False)
            gain = sign * diff.estimate
            se = diff.se if math.isfinite(diff.se) else 0.0
            return gain > train_config.warm_start_margin * se

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            probs = predict_proba(self.model, val.X, batch_size=predict_batch)
            scored = metrics_from_probs(val.y, probs, class_names).metrics
            metrics = {
                "train/loss": float(logs.get("loss", math.nan)),
                "train/accuracy": float(logs.get("accuracy", math.nan)),
                "val/loss": scored["log_loss"],
                "val/accuracy": scored["accuracy"],
                "val/balanced_accuracy": scored["balanced_accuracy"],
                "val/macro_f1": scored["macro_f1"],
                "time/epoch_seconds": time.perf_counter() - self._t0,
            }
            for key, value in metrics.items():
                self.history.setdefault(key, []).append(value)
            score = sign * metrics[monitor_key]
            if not math.isfinite(metrics["train/loss"]):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch}: train/loss = {metrics['train/loss']} "
                    "(lower TrainConfig.learning_rate or set clipnorm)"
                )
            if score > self.best_score and self._beats_warm_start_by_margin(probs):
                self.best_score, self.best_epoch, self.wait = score, epoch, 0
                self.best_weights = [np.array(w, copy=True) for w in self.model.get_weights()]
            else:
                self.wait += 1
                if self.wait >= train_config.patience:
                    self.stopped_early = epoch + 1 < train_config.max_epochs
                    self.model.stop_training = True
            if epoch_callback is not None:
                # Whatever this raises (e.g. optuna.TrialPruned) propagates out of fit().
                epoch_callback(int(epoch), dict(metrics))

    return _ValidationAndEarlyStopping()


def last_real_steps(X: np.ndarray) -> np.ndarray:
    """Each window's last real step: ``(n, T, F)`` windows (NaN-padded at the end) -> ``(n, F)``."""
    X = np.asarray(X)
    real = ~np.isnan(X).all(axis=2)
    last = np.where(real.any(axis=1), real.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1), 0)
    return np.nan_to_num(X[np.arange(X.shape[0]), last])


def warm_start_shortcut(model: Any, train: SplitData, num_classes: int, sample_weight: np.ndarray | None,
                        C: float = 1.0) -> bool:
    """Set a model's ``linear_shortcut`` layer to a multinomial logistic regression on the training
    windows' last real step (the ``shortcut_features`` columns when the model selects some;
    scikit-learn ``LogisticRegression``, L2 penalty ``C``, lbfgs, the given per-window weights). Classes absent from training get a very negative bias.

    Returns:
        ``True`` when the model has a shortcut (and it was set), ``False`` otherwise.
    """
    try:
        layer = model.get_layer("linear_shortcut")
    except ValueError:
        return False
    X = last_real_steps(train.X).astype(np.float64)
    try:
        X = X[:, list(model.get_layer("shortcut_features").indices)]
    except ValueError:
        pass  # the shortcut reads every feature
    y = np.asarray(train.y)
    present = np.unique(y)
    kernel = np.zeros((X.shape[1], num_classes), dtype=np.float32)
    bias = np.full((num_classes,), -10.0, dtype=np.float32)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on near-separable folds
        fitted = LogisticRegression(C=C, max_iter=500).fit(X, y, sample_weight=sample_weight)
    coef, intercept = fitted.coef_, fitted.intercept_
    if present.size == 2:  # binary: sklearn returns one logit difference
        coef = np.vstack([-coef / 2.0, coef / 2.0])
        intercept = np.array([-intercept[0] / 2.0, intercept[0] / 2.0])
    kernel[:, present] = coef.T
    bias[present] = intercept
    layer.set_weights([kernel, bias])
    return True


def compile_model(model: Any, train_config: TrainConfig) -> Any:
    """Compile ``model`` with AdamW, categorical cross-entropy (label smoothing) and accuracy.

    The optimizer's variables (moments, iteration) are created here for a built model, with the values
    ``fit`` would give them: created lazily inside the first traced train step instead, they make
    TensorFlow trace that step twice (a ``tf.function`` that creates variables is traced again
    without), about 2 s more per new model on a 2-core CPU (benchmarks/README.md).
    """
    import keras  # TensorFlow: imported where a model is trained (see the imports at the top)

    optimizer = keras.optimizers.AdamW(
        learning_rate=train_config.learning_rate,
        weight_decay=train_config.weight_decay,
        # One global-norm clip (Pascanu et al., 2013) rather than a clip per variable: the usual
        # choice for Transformers, and it traces ~0.5 s faster per model than per-variable clipping.
        global_clipnorm=train_config.clipnorm,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=False,  # XLA measured slower than graph mode on this CPU (RESEARCH_FACTS.md)
    )
    if model.built:
        optimizer.build(model.trainable_variables)
    return model


class _CompiledModelCache:
    """Compiled models kept per configuration, so that Keras traces their train and predict functions
    once per process rather than once per run (``fit(..., reuse_graphs=True)``).

    A new run's freshly built (seeded) model hands its variables to the kept model, whose optimizer
    is reset to the state it had right after it was built (iteration 0, zero moments, the same
    learning rate): the same starting point as compiling the fresh model, bit for bit.
    """

    def __init__(self, max_models: int = 8) -> None:
        self.max_models = max_models
        self._models: collections.OrderedDict = collections.OrderedDict()

    def compiled(self, key: tuple, fresh: Any, train_config: TrainConfig) -> Any:
        entry = self._models.get(key)
        if entry is not None:
            kept, optimizer_start = entry
            if [tuple(v.shape) for v in kept.variables] == [tuple(v.shape) for v in fresh.variables]:
                self._models.move_to_end(key)
                for target, source in zip(kept.variables, fresh.variables):
                    target.assign(source)
                for variable, value in zip(kept.optimizer.variables, optimizer_start):
                    variable.assign(value)
                return kept
        compile_model(fresh, train_config)  # builds the optimizer: its start state is kept below
        self._models[key] = (fresh, [np.array(v) for v in fresh.optimizer.variables])
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return fresh

    def clear(self) -> None:
        self._models.clear()


_COMPILED_MODELS = _CompiledModelCache()


def _check_splits(splits: Splits) -> None:
    if not isinstance(splits, Splits):
        raise TypeError(f"fit: expected regimetry.data.types.Splits, got {type(splits).__name__}")
    k = splits.num_classes
    for name in ("train", "val"):
        part: SplitData = getattr(splits, name)
        if len(part) == 0:
            raise ValueError(f"Splits.{name}: empty split; cannot train/validate (check the DataConfig dates)")
        if part.X.ndim != 3 or part.X.shape[0] != len(part):
            raise ValueError(f"Splits.{name}.X: expected (n={len(part)}, window, features), got {part.X.shape}")
        if part.X.shape[2] != splits.num_features:
            raise ValueError(
                f"Splits.{name}.X: {part.X.shape[2]} features but feature_names has {splits.num_features}"
            )
        if part.y.min() < 0 or part.y.max() >= k:
            raise ValueError(f"Splits.{name}.y: class ids must lie in [0, {k - 1}]")
        if np.isinf(part.X).any():
            raise ValueError(f"Splits.{name}.X: contains inf (NaN is allowed only as step padding)")


def fit(
    splits: Splits,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    epoch_callback: EpochCallback | None = None,
    verbose: int = 0,
    model: Any = None,
    predict_batch_size: int = 1024,
    reuse_graphs: bool = False,
) -> TrainResult:
    """Seed, build, compile and train a classifier on ``splits``; restore the best epoch.

    Args:
        splits: prepared data (``regimetry.data.prepare``); trains on ``.train``, early-stops on
            ``.val``; ``.test`` is never read.
        model_config: architecture, passed to ``regimetry.models.build_classifier``.
        train_config: optimiser, batch size, epochs, early stopping, class weights, seed.
        epoch_callback: ``f(epoch, metrics)`` called after every epoch (0-based) with that
            epoch's ``history`` entries; whatever it raises propagates out of ``fit`` (the study
            harness raises ``optuna.TrialPruned``).
        verbose: Keras progress output (0 = silent).
        model: an uncompiled softmax ``keras.Model`` to train instead of building one from
            ``model_config`` (built after seeding by the caller); mainly for tests/benchmarks.
        predict_batch_size: inference batch size for the per-epoch validation pass.
        reuse_graphs: train a compiled model kept from an earlier ``fit`` of this process with the
            same architecture, data shape and ``TrainConfig`` (seed aside) instead of compiling the
            new one: the new model is still built and seeded exactly as without reuse, and its
            variables (weights and dropout seed states) and a fresh optimizer state are copied into
            the kept model, so the results are identical (``tests/test_training.py``) while Keras'
            traced train and predict functions are reused (graph tracing is the largest overhead of
            a run, ``benchmarks/README.md``). The returned ``result.model`` is that kept model: a
            later ``fit`` of the same configuration overwrites it, so use it (predict, save) first.
            Ignored when ``model`` is given.

    Returns:
        ``TrainResult``.

    Raises:
        ValueError: empty / inconsistent splits.
        FloatingPointError: the training loss became NaN or inf.
    """
    _check_splits(splits)
    t0 = time.perf_counter()
    set_global_seed(train_config.seed)
    model = _compiled_model(splits, model_config, train_config, model, reuse_graphs)
    k = splits.num_classes
    weights = None
    if train_config.class_weight == "balanced":
        weights = class_weights(splits.train.y, k)[splits.train.y]
    warm_started = warm_start_shortcut(model, splits.train, k, weights)
    train_ds = make_dataset(
        splits.train.X, splits.train.y, k, train_config.batch_size,
        shuffle_seed=train_config.seed, sample_weight=weights,
    )
    horizon_windows = max(1, math.ceil(splits.config.horizon / splits.config.stride))
    callback = _make_callback(splits.val, splits.class_names, train_config, epoch_callback, predict_batch_size,
                              block_length=horizon_windows)
    if warm_started and train_config.warm_start_candidate:
        callback.start_at_warm_start(model)
    model.fit(train_ds, epochs=train_config.max_epochs, callbacks=[callback], verbose=verbose, shuffle=False)
    if callback.best_weights is not None:
        model.set_weights(callback.best_weights)
    final = evaluate_full(model, splits.val, splits.class_names, batch_size=predict_batch_size)
    return _train_result(model, callback, final, time.perf_counter() - t0, model_config, train_config)


def _compiled_model(splits: Splits, model_config: ModelConfig, train_config: TrainConfig, model: Any,
                    reuse_graphs: bool) -> Any:
    """The compiled model ``fit`` trains: ``model`` when given, else one built from ``model_config`` (the
    caller has seeded), or with ``reuse_graphs`` the kept compiled model of that configuration."""
    if model is not None:
        return compile_model(model, train_config)
    from regimetry.models import build_classifier  # Keras: see the imports at the top

    model = build_classifier(
        model_config,
        window_size=splits.window_size,
        num_features=splits.num_features,
        num_classes=splits.num_classes,
        feature_names=splits.feature_names,
    )
    if not reuse_graphs:
        return compile_model(model, train_config)
    key = (model_config, train_config.replace(seed=0), splits.window_size, splits.num_features,
           splits.num_classes, tuple(splits.feature_names or ()))
    return _COMPILED_MODELS.compiled(key, model, train_config)


def _train_result(model: Any, callback: Any, final: EvalResult, fit_seconds: float, model_config: ModelConfig,
                  train_config: TrainConfig) -> TrainResult:
    """The ``TrainResult`` of a finished fit (``callback``: its validation and early-stopping callback)."""
    monitor_key = MONITOR_KEYS[train_config.monitor]
    return TrainResult(
        model=model,
        history=callback.history,
        best_epoch=int(callback.best_epoch),
        epochs_run=len(callback.history.get("train/loss", [])),
        stopped_early=bool(callback.stopped_early),
        fit_seconds=fit_seconds,
        val_metrics=final.metrics,
        val_confusion=final.confusion,
        monitor=monitor_key,
        best_score=float(callback.history[monitor_key][callback.best_epoch] if callback.best_epoch >= 0
                         else callback.warm_start_metrics[_METRIC_OF_MONITOR[monitor_key]]),
        model_config=model_config,
        train_config=train_config,
    )


def history_frame(history: Mapping[str, Sequence[float]]):
    """The ``TrainResult.history`` as a ``pandas.DataFrame`` indexed by epoch."""
    frame = pd.DataFrame({k: list(v) for k, v in history.items()})
    frame.index.name = "epoch"
    return frame
