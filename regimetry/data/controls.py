"""Control tasks: synthetic data sets on which theory fixes an ablation's winner before anything runs.

An ablation verdict (does the positional encoding, the mask, the depth, the pooling matter?) is
believed only when the same harness finds the *known* answer on a matching control task. Each control
here is a data source (``DataConfig.source = "control:<task>"``) that goes through the ordinary
``regimetry.data.prepare`` path: same windows, splits and preprocessing as market data.

Layout (all controls)
    The path is ``num_segments = synthetic_bars // window_size`` independent segments of exactly
    ``W = window_size`` bars (a leftover ``synthetic_bars % W`` is not generated). The label of a
    segment is stored on every one of its bars (``true_regime``); with ``stride = W`` and no bar
    features (no warm-up) the windows are exactly the segments, and a window's label, the one at its
    last bar, is the segment's. Segment ``k`` sits on business day ``k`` from 2040-01-01 (first bar
    2040-01-02 00:00) and its step ``j`` at minute ``j`` of that day: one business day per bar would
    overflow pandas' timestamp range (year 2262) beyond ~58,000 bars, while a control needs
    ~100,000 bars (~8,000 segments). The bars frame holds ``segment`` and ``step`` (int64) and no
    OHLCV, so market baselines skip a control; the inputs are the control's own numeric channels.
    ``prepare`` with :func:`control_data_overrides` loses one segment to the purge at each split
    boundary (``horizon = 1``) and nothing to the embargo (``embargo = 0``).

The four controls (``CONTROLS``; ``W`` = window size, ``C`` = channels, ``K`` = classes)

``order`` (03 positional encoding; W 16, C 2, K 2, chance .5)
    ``x[t, c] = sigma_k[t] * z[t, c]``, ``z ~ N(0, 1)`` i.i.d.; ``log sigma`` goes linearly from
    ``-log(ratio)/2`` to ``+log(ratio)/2`` for class 0 (``rising``) and back for class 1
    (``falling``): class 1 is the time reversal of class 0, so the multiset of steps has the same
    distribution under both. An encoder without positional encoding, with full attention and mean
    pooling is permutation invariant, so it sits at chance; an encoding lets it weight ``x^2`` by
    position. Ceiling: the Bayes rule (Gaussian likelihood ratio of the two sigma profiles), exact
    per window (:func:`order_posterior`); about .948 with the defaults (``ratio = 2``).

``recency`` (06 pooling; W 16, C 3, K 2, chance .5)
    A switch point ``s`` uniform on ``1..W-1``; steps ``< s`` in regime ``A``, the rest in
    ``B = 1 - A``, ``A`` uniform on {0, 1}; label ``B`` (the regime at the window's end). Channel
    ``signal`` is ``N(+mu, 1)`` in regime 1 and ``N(-mu, 1)`` in regime 0, the others pure noise.
    The number of regime-1 steps is ``W - s`` under label 1 and ``s`` under label 0, both uniform on
    ``1..W-1``; given the counts the steps are i.i.d., so the multiset of steps has the same
    distribution under both labels and every permutation-invariant pooling (mean, max, attention,
    CLS without positional encoding and mask) sits at chance, while last-step pooling reads the
    last step (alone it gives ``Phi(mu)`` = .933 with ``mu = 1.5``). Ceiling: the Bayes posterior
    of ``B`` given the whole ordered window, exact by enumerating ``s`` (:func:`recency_posterior`),
    about .997; last-step pooling without positional encoding sees only the last step and the
    multiset of the others, so expect it between ``Phi(mu)`` and that ceiling.

``event_order`` (04 mask; W 16, C 5, K 2, chance .5, ceiling 1)
    Marker ``A`` and marker ``B`` (noise-free indicator channels) at distinct uniform positions in
    the second half of the window, ``W - ceil(W/2) .. W-2``, so that the padding arm's truncation
    (04 shortens windows to at least half their length, cutting the oldest steps) never removes a
    marker: with markers anywhere in ``0..W-2`` (the first proof run, git ``00a0df1``) a lone ``B``
    meant that ``A`` had been cut off first, the padding arm read the order from that and reached
    .675 instead of chance. The last step is the query step (``query = 1``), the same in both classes; two noise
    channels ``N(0, 1)`` on every step. Label: 1 (``a_before_b``) if ``A`` comes first. Swapping the
    two marker steps (whole step vectors) flips the label and keeps the multiset of steps, so an
    unmasked encoder without positional encoding and with last-step pooling, being invariant to the
    order of the other steps, sits at chance (so does the padding arm, unmasked as well); a
    look-ahead mask makes each step's state depend on its prefix, so with two blocks the last step
    can tell the order: causal attention carries position information (Haviv et al., 2022). With
    one block it could not (the last step attends to every step either way): ``num_layers = 2`` is
    fixed.

``induction`` (05 depth; W 13, C 9, K 3, chance 1/3, ceiling 1)
    Key/value pairs and a query (associative recall; Ba et al., 2016): ``k_0 v_0 k_1 v_1 ...
    k_{n-1} v_{n-1} q`` with ``n = (W - 1) / 2`` pairs (``W`` odd), one-hot channels ``key_0 ..
    key_{n-1}`` and ``value_0 .. value_{V-1}`` (``V = 3``). The keys are a random permutation of
    all ``n`` keys, so ``q = k_i`` (``i`` uniform) occurs exactly once before the last step, at
    ``p = 2i <= W - 3``; the values are a random permutation of a balanced bag (each value
    ``n / V`` times); the label is ``v_i``, the token after the earlier ``q``. Every window holds
    the same bag of tokens, and the label is independent of ``q`` and of every single (token,
    position) pair, so no count or position shortcut exists: the rule must compose "find the
    earlier q" with "read its successor", which takes two attention layers (previous-token head,
    then induction head; Olsson et al., 2022); one layer needs a width growing with ``W`` (Sanford
    et al., 2024). Fixed: sinusoidal encoding, last-step pooling and a look-ahead mask. The mask
    leaves the one-layer argument intact (the last step, the only one pooled, attends to every step
    under either mask) but gives the first layer a built-in recency structure from which the
    previous-token step is learned quickly. Unmasked, two blocks stayed at chance for 10-15 epochs
    (W 13 and 17; learning rates 1e-3 to 1e-2; sinusoidal or learnable positions) and at W 17 began
    to lift only after ~25 epochs: by construction no single step carries any signal to start
    from. Masked, depth 2 and 4 reach ~1.0 in 3-5 epochs and depth 1 stays at 1/3 (d_model 32-64,
    4,800 training windows).

Raw windows ``X`` in this module are float64 ``(n, W, C)`` before preprocessing (``prepare``
standardises every channel on the training period, an invertible per-channel map that leaves the
Bayes rule unchanged). Every control also stores its Bayes posterior as
``extras["filter_posterior"]`` (``(n_bars, K)``, defined at segment ends, NaN elsewhere), read by
:func:`control_ceiling` and the harness' ceiling table like the simulator's Hamilton filter.

References:
    Haviv, Ram, Press, Izsak, Levy (2022), "Transformer Language Models without Positional
    Encodings Still Learn Positional Information", Findings of EMNLP.
    Olsson et al. (2022), "In-context Learning and Induction Heads", Transformer Circuits Thread.
    Ba, Hinton, Mnih, Leibo, Ionescu (2016), "Using Fast Weights to Attend to the Recent Past",
    NeurIPS (associative retrieval task).
    Sanford, Hsu, Telgarsky (2024), "One-layer transformers fail to solve the induction heads
    task", arXiv:2408.14332.
    Zaheer et al. (2017), "Deep Sets", NeurIPS (permutation-invariant functions of sets).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from regimetry.config import CONTROL_TASKS
from regimetry.data.control_tasks import (  # noqa: F401  (re-exported: the samplers and posteriors)
    EVENT_NOISE_CHANNELS, INDUCTION_VALUES, ORDER_CHANNELS, ORDER_RATIO, RECENCY_MU, RECENCY_NOISE_CHANNELS,
    ControlBatch, event_order_posterior, induction_posterior, order_posterior, order_sigma, recency_posterior,
    sample_event_order, sample_induction, sample_order, sample_recency,
)

__all__ = [
    "CONTROLS",
    "OTHER_ARMS",
    "Control",
    "ControlBatch",
    "ControlParams",
    "ControlPath",
    "control_data_overrides",
    "control_ceiling",
    "bayes_ceiling",
    "get_control",
    "generate_control",
    "control_index",
    "sample_order",
    "sample_recency",
    "sample_event_order",
    "sample_induction",
    "order_sigma",
    "order_posterior",
    "recency_posterior",
    "event_order_posterior",
    "induction_posterior",
]

#: Segments generated by default (``synthetic_bars = W * DEFAULT_SEGMENTS``): with the 60/20/20 split
#: about 4,800 training, 1,600 validation and 1,600 test windows.
DEFAULT_SEGMENTS = 8000
START_DATE = "2040-01-01"


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Control:
    """A control task: its data, the ablation it checks and the outcome theory predicts.

    Attributes:
        name: the task (``DataConfig.source = "control:<name>"``).
        ablation: the experiment it checks (``03_encoding_ablation``, ...).
        question: what a correct harness must find, in one sentence.
        fixed: ``section.field -> value`` model settings the argument needs, fixed in every arm (they
            override the ablation's own ``fixed``; the arms still set the scientific one).
        winners: arms predicted to learn the task (well above chance, towards the ceiling), or
            :data:`OTHER_ARMS` when theory predicts it of every arm of the ablation not at chance
            (any positional encoding breaks permutation invariance; any depth >= 2 can form an
            induction head), so a new arm added to the experiment is checked without editing this
            registry. Resolve with :meth:`Control.winners_among`.
        at_chance: arms predicted to sit at chance (within sampling error).
        chance: accuracy (and balanced accuracy) of a guess: ``1 / num_classes``.
        ceiling: the Bayes accuracy when it is exact by construction (``1.0``), else ``None``: then
            the Bayes posterior is computed per window (:func:`control_ceiling`) and
            ``ceiling_estimate`` gives its value on a large simulated sample.
        ceiling_estimate: Bayes accuracy with the default settings (2 x 10^5 simulated windows).
        window_size: the default (recommended) ``W``.
        class_names: the ``K`` class names (index = label).
        sampler: ``f(n, window_size, rng) -> ControlBatch``.
        posterior: ``f(X_raw) -> (n, K)`` exact Bayes posterior on raw windows.
        references: the papers behind the argument.
    """

    name: str
    ablation: str
    question: str
    fixed: Mapping[str, Any]
    winners: tuple[str, ...]
    at_chance: tuple[str, ...]
    chance: float
    ceiling: float | None
    ceiling_estimate: float
    window_size: int
    class_names: tuple[str, ...]
    sampler: Callable[[int, int, np.random.Generator], ControlBatch]
    posterior: Callable[[np.ndarray], np.ndarray]
    references: tuple[str, ...] = ()

    def winners_among(self, arm_names) -> tuple[str, ...]:
        """The arms predicted to win among ``arm_names`` (an ablation's arms, in its order):
        ``winners`` itself, or with :data:`OTHER_ARMS` every name not in ``at_chance``."""
        if self.winners == OTHER_ARMS:
            return tuple(name for name in arm_names if name not in self.at_chance)
        return tuple(self.winners)

    @property
    def names(self) -> tuple[str, ...]:
        """Alias of ``class_names`` (the attribute ``prepare`` reads from ``extras["params"]``)."""
        return self.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def data_overrides(self) -> dict[str, Any]:
        """The ``DataConfig`` settings this control needs (:func:`control_data_overrides`)."""
        return control_data_overrides(self.name)


# The controls test the encoder itself: no linear shortcut (it would read the last step around the
# encoder) and no per-window centring (it would change what each theory argument assumes the encoder
# sees); the market ablations' residual setup (regimetry.studies.RESIDUAL_MODEL) is switched off.
#: ``Control.winners`` value: every arm of the checked ablation that is not in ``at_chance``.
OTHER_ARMS: tuple[str, ...] = ("<every arm not at chance>",)

_NO_SHORTCUT = {"model.linear_shortcut": False, "model.use_encoder": True, "model.center_windows": False,
                "model.shortcut_features": ()}

CONTROLS: dict[str, Control] = {
    c.name: c
    for c in (
        Control(
            name="order",
            ablation="03_encoding_ablation",
            question="Without a positional encoding a mean-pooled, unmasked encoder cannot tell rising from "
                     "falling volatility (the steps' multiset is the same); with one it can.",
            fixed={"model.pooling": "mean", "model.attention_mask": "none", **_NO_SHORTCUT},
            winners=OTHER_ARMS,  # every positional encoding: sinusoidal (both styles), learnable, ...
            at_chance=("none",),
            chance=0.5,
            ceiling=None,
            ceiling_estimate=0.948,
            window_size=16,
            class_names=("rising", "falling"),
            sampler=sample_order,
            posterior=order_posterior,
            references=("Zaheer et al. 2017, Deep Sets (permutation invariance)",),
        ),
        Control(
            name="recency",
            ablation="06_pooling_ablation",
            question="Without positional encoding or mask only last-step pooling can read the regime at the "
                     "window's end; mean, max, attention and CLS pooling see a label-free multiset.",
            fixed={"model.positional_encoding": "none", "model.attention_mask": "none", **_NO_SHORTCUT},
            winners=("last",),
            at_chance=("mean", "max", "cls", "attention"),
            chance=0.5,
            ceiling=None,
            ceiling_estimate=0.997,
            window_size=16,
            class_names=("ends_minus", "ends_plus"),
            sampler=sample_recency,
            posterior=recency_posterior,
            references=("Zaheer et al. 2017, Deep Sets (permutation invariance)",),
        ),
        Control(
            name="event_order",
            ablation="04_mask_ablation",
            question="Without positional encoding, with last-step pooling and two blocks, only the look-ahead "
                     "mask reveals which of two markers came first.",
            fixed={"model.positional_encoding": "none", "model.pooling": "last", "model.num_layers": 2,
                   **_NO_SHORTCUT},
            winners=("lookahead",),
            at_chance=("unmasked", "padding"),
            chance=0.5,
            ceiling=1.0,
            ceiling_estimate=1.0,
            window_size=16,
            class_names=("b_before_a", "a_before_b"),
            sampler=sample_event_order,
            posterior=event_order_posterior,
            references=("Haviv et al. 2022, Transformer LMs without positional encodings still learn positional "
                        "information",),
        ),
        Control(
            name="induction",
            ablation="05_depth_ablation",
            question="Recalling the value after the earlier occurrence of the query key composes two attention "
                     "steps: one block stays near chance, two or more blocks solve it.",
            fixed={"model.positional_encoding": "sinusoidal", "model.encoding_style": "interleaved",
                   "model.pooling": "last", "model.attention_mask": "causal", **_NO_SHORTCUT},
            winners=OTHER_ARMS,  # every depth >= 2 (depth_2, depth_4, depth_6, ...)
            at_chance=("depth_1",),
            chance=1.0 / INDUCTION_VALUES,
            ceiling=1.0,
            ceiling_estimate=1.0,
            window_size=13,
            class_names=tuple(f"value_{v}" for v in range(INDUCTION_VALUES)),
            sampler=sample_induction,
            posterior=induction_posterior,
            references=("Olsson et al. 2022, In-context learning and induction heads",
                        "Ba et al. 2016, Using fast weights to attend to the recent past (associative retrieval)",
                        "Sanford, Hsu, Telgarsky 2024, One-layer transformers fail to solve the induction heads task"),
        ),
    )
}
assert tuple(CONTROLS) == CONTROL_TASKS, "regimetry.config.CONTROL_TASKS and CONTROLS must list the same tasks"


def get_control(task: str) -> Control:
    """The registered :class:`Control` named ``task`` (``"order"`` or ``"control:order"``).

    Raises:
        ValueError: an unknown task, listing the valid ones.
    """
    name = task[len("control:"):] if isinstance(task, str) and task.startswith("control:") else task
    if name not in CONTROLS:
        raise ValueError(f"control task: expected one of {list(CONTROL_TASKS)}, got {task!r}")
    return CONTROLS[name]


def control_data_overrides(task: str) -> dict[str, Any]:
    """The ``DataConfig`` settings a control needs, as keyword arguments.

    ``source="control:<task>"``, ``window_size = stride = W`` (one window per segment),
    ``features=()`` (the control's channels are the inputs), ``horizon=1`` and ``embargo=0`` (the
    purge then drops one segment per split boundary and the embargo none; segments are independent,
    so nothing leaks), ``synthetic_bars = W * 8000`` (8,000 segments), ``train_fraction=0.6``,
    ``val_fraction=0.2`` (about 4,800 / 1,600 / 1,600 windows). ``synthetic_seed`` is left to the
    caller (different seeds give independent data sets).

    Raises:
        ValueError: an unknown task, listing the valid ones.
    """
    control = get_control(task)
    W = control.window_size
    return {"source": f"control:{control.name}", "window_size": W, "stride": W, "features": (), "horizon": 1,
            "embargo": 0, "synthetic_bars": W * DEFAULT_SEGMENTS, "train_fraction": 0.6, "val_fraction": 0.2}


# ------------------------------------------------------------------------------------------------
# a path for the data layer
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ControlParams:
    """What generated a control path (``extras["params"]``; ``names`` are the class names).

    Attributes:
        task, window_size, num_segments, seed: as generated.
        names: class names. channels: input channel names.
    """

    task: str
    window_size: int
    num_segments: int
    seed: int
    names: tuple[str, ...]
    channels: tuple[str, ...]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ControlPath:
    """A generated control path, bar by bar (``num_bars = num_segments * W``).

    Attributes:
        bars: DataFrame on the control index (:func:`control_index`) with int64 ``segment`` and
            ``step`` (position in the segment, ``0..W-1``).
        inputs: float64 DataFrame of the raw channels, same index.
        labels: int64 ``(num_bars,)``: the segment's label on each of its bars.
        posterior: float64 ``(num_bars, K)``: the Bayes posterior at segment ends, NaN elsewhere.
        params: :class:`ControlParams`.
        control: the :class:`Control`.
    """

    bars: pd.DataFrame
    inputs: pd.DataFrame
    labels: np.ndarray
    posterior: np.ndarray
    params: ControlParams
    control: Control


def control_index(num_segments: int, window_size: int, start: str = START_DATE) -> pd.DatetimeIndex:
    """Timestamps of a control path: segment ``k`` on business day ``k`` from ``start``, step ``j`` at minute ``j``.

    Returns:
        strictly increasing ``DatetimeIndex`` named ``timestamp``, length ``num_segments * window_size``.

    Raises:
        ValueError: ``window_size > 1440`` (a segment must fit in a day).
    """
    if window_size > 1440:
        raise ValueError(f"DataConfig.window_size: a control segment must fit in a day (<= 1440 steps), got {window_size}")
    days = pd.bdate_range(start=pd.Timestamp(start), periods=num_segments)
    minutes = pd.to_timedelta(np.tile(np.arange(window_size), num_segments), unit="min")
    return pd.DatetimeIndex(days.repeat(window_size) + minutes, name="timestamp")


def generate_control(task: str, num_bars: int, window_size: int, seed: int) -> ControlPath:
    """Generate ``num_bars // window_size`` independent segments of control ``task``.

    Same arguments give identical output; different seeds give independent paths.

    Raises:
        ValueError: an unknown task, a window size the task cannot use, or fewer bars than one segment.
    """
    control = get_control(task)
    control.sampler(0, window_size, np.random.default_rng(0))  # validates window_size for the task
    num_segments = int(num_bars) // int(window_size)
    if num_segments < 1:
        raise ValueError(f"DataConfig.synthetic_bars: control:{control.name} needs at least one segment of "
                         f"window_size={window_size} bars, got {num_bars}")
    rng = np.random.default_rng([int(seed), CONTROL_TASKS.index(control.name)])
    batch = control.sampler(num_segments, window_size, rng)
    W = int(window_size)
    index = control_index(num_segments, W)
    n_bars = num_segments * W
    bars = pd.DataFrame({"segment": np.repeat(np.arange(num_segments, dtype=np.int64), W),
                         "step": np.tile(np.arange(W, dtype=np.int64), num_segments)}, index=index)
    inputs = pd.DataFrame(batch.X.reshape(n_bars, -1), index=index, columns=list(batch.channels))
    posterior = np.full((n_bars, control.num_classes), np.nan)
    posterior[W - 1::W] = batch.posterior
    params = ControlParams(task=control.name, window_size=W, num_segments=num_segments, seed=int(seed),
                           names=control.class_names, channels=batch.channels)
    return ControlPath(bars=bars, inputs=inputs, labels=np.repeat(batch.y, W), posterior=posterior,
                       params=params, control=control)


# ------------------------------------------------------------------------------------------------
# ceilings
# ------------------------------------------------------------------------------------------------
def bayes_ceiling(y: np.ndarray, posterior: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy of the Bayes rule ``argmax posterior`` on labels ``y``.

    Args:
        y: int ``(n,)`` labels. posterior: ``(n, K)`` posteriors (e.g. ``Control.posterior(X_raw)``).

    Returns:
        ``{"accuracy", "balanced_accuracy", "n"}``; balanced accuracy is the mean recall over the
        classes present in ``y``.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(posterior).argmax(axis=1)
    recalls = [float(np.mean(pred[y == k] == k)) for k in np.unique(y)]
    return {"accuracy": float(np.mean(pred == y)) if y.size else float("nan"),
            "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"), "n": int(y.size)}


def control_ceiling(splits, part: str = "test") -> dict[str, float]:
    """The Bayes ceiling on one split of a prepared control data set.

    Args:
        splits: ``regimetry.data.prepare`` output for a ``control:<task>`` source.
        part: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        :func:`bayes_ceiling` of the posterior stored in ``extras["filter_posterior"]`` at the
        split's window ends.

    Raises:
        ValueError: ``splits`` does not come from a control source.
    """
    posterior = splits.extras.get("filter_posterior") if splits.extras else None
    if splits.config.control_task is None or posterior is None:
        raise ValueError(f"control_ceiling: needs splits of a control:<task> source, got source "
                         f"{splits.config.source!r}")
    split = getattr(splits, part)
    return bayes_ceiling(split.y, np.asarray(posterior)[split.positions])
