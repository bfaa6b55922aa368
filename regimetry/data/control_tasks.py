"""The four control tasks' samplers and exact Bayes posteriors (order, recency, event_order, induction).

Pure NumPy: each ``sample_<task>(n, window_size, rng)`` draws ``n`` windows with their labels and the
exact posterior ``P(class | window)``, from which the Bayes ceiling of the task follows. What each task
tests, and the theory behind its predicted winner, is in ``regimetry.data.controls`` (the registry that
turns these into data sources).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["ControlBatch", "sample_order", "sample_recency", "sample_event_order", "sample_induction", "order_sigma", "order_posterior", "recency_posterior", "event_order_posterior", "induction_posterior"]

ORDER_RATIO = 2.0  # sigma_max / sigma_min across the window
ORDER_CHANNELS = 2
RECENCY_MU = 1.5  # |mean| of the signal channel in either regime (unit noise)
RECENCY_NOISE_CHANNELS = 2
EVENT_NOISE_CHANNELS = 2
INDUCTION_VALUES = 3


@dataclasses.dataclass(frozen=True)
class ControlBatch:
    """Windows drawn from a control task.

    Attributes:
        X: float64 ``(n, W, C)`` raw inputs.
        y: int64 ``(n,)`` labels in ``0 .. K-1``.
        posterior: float64 ``(n, K)`` Bayes posterior of the label given the window.
        channels: the ``C`` channel names.
        info: generator internals, arrays of length ``n`` (switch points, marker positions, ...).
    """

    X: np.ndarray
    y: np.ndarray
    posterior: np.ndarray
    channels: tuple[str, ...]
    info: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# order (03): volatility rising vs falling
# ------------------------------------------------------------------------------------------------
def _check_window(task: str, window_size: int, minimum: int) -> int:
    if not isinstance(window_size, (int, np.integer)) or isinstance(window_size, bool) or window_size < minimum:
        raise ValueError(f"DataConfig.window_size: control:{task} needs an integer window_size >= {minimum}, "
                         f"got {window_size!r}")
    return int(window_size)


def _check_n(n: int) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"control sampler: n must be an integer >= 0, got {n!r}")
    return int(n)


def order_sigma(window_size: int, ratio: float = ORDER_RATIO) -> np.ndarray:
    """The two volatility profiles of ``order``: float64 ``(2, W)``.

    Row 0 (``rising``) goes log-linearly from ``ratio ** -0.5`` to ``ratio ** 0.5``; row 1
    (``falling``) is row 0 reversed.

    Raises:
        ValueError: ``window_size < 2`` or ``ratio <= 1``.
    """
    W = _check_window("order", window_size, 2)
    if not ratio > 1:
        raise ValueError(f"order_sigma: ratio must be > 1, got {ratio!r}")
    rising = np.exp(np.log(ratio) * (np.arange(W) / (W - 1) - 0.5))
    return np.stack([rising, rising[::-1]])


def order_posterior(X: np.ndarray, ratio: float = ORDER_RATIO) -> np.ndarray:
    """Exact Bayes posterior of ``order`` (equal priors): float64 ``(n, 2)`` from raw ``X (n, W, C)``.

    ``log p(x | k) = sum_{t,c} (-log sigma_k[t] - x[t,c]^2 / (2 sigma_k[t]^2))``; the log-sigma sums
    are equal for both classes, so the log-odds of class 1 are
    ``sum_{t,c} x[t,c]^2 / 2 * (1 / sigma_0[t]^2 - 1 / sigma_1[t]^2)``.
    """
    X = np.asarray(X, dtype=np.float64)
    sigma = order_sigma(X.shape[1], ratio)
    weights = 0.5 * (1.0 / sigma[0] ** 2 - 1.0 / sigma[1] ** 2)
    log_odds = np.einsum("ntc,t->n", X ** 2, weights)
    p1 = 1.0 / (1.0 + np.exp(-np.clip(log_odds, -700, 700)))
    return np.stack([1.0 - p1, p1], axis=1)


def sample_order(n: int, window_size: int, rng: np.random.Generator, *, channels: int = ORDER_CHANNELS,
                 ratio: float = ORDER_RATIO) -> ControlBatch:
    """Draw ``n`` windows of the ``order`` control (module docstring), balanced in expectation.

    Returns:
        :class:`ControlBatch` with ``X (n, W, channels)``, ``y`` (0 = rising, 1 = falling) and the
        exact posterior; ``info["z"]`` holds the standard-normal draws (so that
        ``X = order_sigma(W)[y][:, :, None] * z``).
    """
    n = _check_n(n)
    sigma = order_sigma(window_size, ratio)
    y = rng.integers(0, 2, size=n).astype(np.int64)
    z = rng.standard_normal((n, sigma.shape[1], channels))
    X = sigma[y][:, :, None] * z
    return ControlBatch(X=X, y=y, posterior=order_posterior(X, ratio),
                        channels=tuple(f"x_{c}" for c in range(channels)), info={"z": z})


# ------------------------------------------------------------------------------------------------
# recency (06): the regime at the window's end
# ------------------------------------------------------------------------------------------------
def recency_posterior(X: np.ndarray, mu: float = RECENCY_MU) -> np.ndarray:
    """Exact Bayes posterior of ``recency``'s label ``B`` given raw ``X (n, W, C)``: float64 ``(n, 2)``.

    Enumerates the switch point ``s`` (uniform on ``1..W-1``) and ``A`` (``B = 1 - A``, equal
    priors): with ``S_s = x_0 + ... + x_{s-1}`` and ``S = S_W`` on the signal channel (channel 0),
    ``log p(x | B=1, s) = mu (S - 2 S_s) + const`` and ``log p(x | B=0, s) = -mu (S - 2 S_s) + const``.
    """
    X = np.asarray(X, dtype=np.float64)
    signal = X[:, :, 0]
    W = signal.shape[1]
    partial = np.cumsum(signal, axis=1)[:, : W - 1]  # S_s for s = 1 .. W-1
    total = partial[:, -1:] + signal[:, -1:]
    ll1 = mu * (total - 2.0 * partial)
    log1 = _logsumexp(ll1)
    log0 = _logsumexp(-ll1)
    p1 = 1.0 / (1.0 + np.exp(np.clip(log0 - log1, -700, 700)))
    return np.stack([1.0 - p1, p1], axis=1)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    return top + np.log(np.exp(a - top[:, None]).sum(axis=1))


def sample_recency(n: int, window_size: int, rng: np.random.Generator, *, mu: float = RECENCY_MU,
                   noise_channels: int = RECENCY_NOISE_CHANNELS) -> ControlBatch:
    """Draw ``n`` windows of the ``recency`` control (module docstring).

    Returns:
        :class:`ControlBatch` with ``X (n, W, 1 + noise_channels)`` (``signal``, ``noise_*``),
        ``y = B`` (0 = ``ends_minus``, 1 = ``ends_plus``), the exact posterior and
        ``info["switch"]`` (``s``), ``info["regimes"]`` (``(n, W)`` regime per step).
    """
    n = _check_n(n)
    W = _check_window("recency", window_size, 2)
    first = rng.integers(0, 2, size=n)
    switch = rng.integers(1, W, size=n)
    regimes = np.where(np.arange(W)[None, :] < switch[:, None], first[:, None], 1 - first[:, None])
    X = rng.standard_normal((n, W, 1 + noise_channels))
    X[:, :, 0] += mu * (2.0 * regimes - 1.0)
    y = (1 - first).astype(np.int64)
    return ControlBatch(X=X, y=y, posterior=recency_posterior(X, mu),
                        channels=("signal",) + tuple(f"noise_{c}" for c in range(noise_channels)),
                        info={"switch": switch.astype(np.int64), "regimes": regimes.astype(np.int64)})


# ------------------------------------------------------------------------------------------------
# event_order (04): which marker came first
# ------------------------------------------------------------------------------------------------
def event_order_posterior(X: np.ndarray) -> np.ndarray:
    """The exact (0/1) posterior of ``event_order`` from raw ``X (n, W, C)``: float64 ``(n, 2)``.

    Channels 0 and 1 are the noise-free markers ``A`` and ``B``; class 1 iff ``A`` comes first.
    """
    X = np.asarray(X, dtype=np.float64)
    a = X[:, :, 0].argmax(axis=1)
    b = X[:, :, 1].argmax(axis=1)
    p1 = (a < b).astype(np.float64)
    return np.stack([1.0 - p1, p1], axis=1)


def sample_event_order(n: int, window_size: int, rng: np.random.Generator, *,
                       noise_channels: int = EVENT_NOISE_CHANNELS) -> ControlBatch:
    """Draw ``n`` windows of the ``event_order`` control (module docstring).

    Returns:
        :class:`ControlBatch` with ``X (n, W, 3 + noise_channels)`` (``marker_a``, ``marker_b``,
        ``query``, ``noise_*``), ``y`` (1 = ``a_before_b``), the 0/1 posterior and
        ``info["pos_a"]``, ``info["pos_b"]``.
    """
    n = _check_n(n)
    W = _check_window("event_order", window_size, 5)  # two distinct positions in the second half
    start = W - math.ceil(W / 2)  # the half that every truncated window keeps
    span = W - 1 - start  # candidate positions start..W-2
    pos_a = start + rng.integers(0, span, size=n)
    pos_b = start + (pos_a - start + rng.integers(1, span, size=n)) % span  # uniform on the span minus pos_a
    X = np.zeros((n, W, 3 + noise_channels))
    rows = np.arange(n)
    X[rows, pos_a, 0] = 1.0
    X[rows, pos_b, 1] = 1.0
    X[:, -1, 2] = 1.0
    X[:, :, 3:] = rng.standard_normal((n, W, noise_channels))
    y = (pos_a < pos_b).astype(np.int64)
    return ControlBatch(X=X, y=y, posterior=event_order_posterior(X),
                        channels=("marker_a", "marker_b", "query") + tuple(f"noise_{c}" for c in range(noise_channels)),
                        info={"pos_a": pos_a.astype(np.int64), "pos_b": pos_b.astype(np.int64)})


# ------------------------------------------------------------------------------------------------
# induction (05): the value after the earlier occurrence of the query key
# ------------------------------------------------------------------------------------------------
def _induction_sizes(window_size: int, num_values: int) -> int:
    W = _check_window("induction", window_size, 5)
    if W % 2 == 0:
        raise ValueError(f"DataConfig.window_size: control:induction needs an odd window_size (key/value pairs plus "
                         f"the query), got {W}")
    pairs = (W - 1) // 2
    if num_values < 2 or pairs % num_values:
        raise ValueError(f"DataConfig.window_size: control:induction's {pairs} key/value pairs must split evenly "
                         f"over its {num_values} values (balanced value counts); use window_size = "
                         f"2 * m * {num_values} + 1, e.g. {2 * 2 * num_values + 1}")
    return pairs


def induction_posterior(X: np.ndarray, num_values: int = INDUCTION_VALUES) -> np.ndarray:
    """The exact (0/1) posterior of ``induction`` from raw one-hot ``X (n, W, n_pairs + V)``: ``(n, V)``.

    ``q`` is the key at the last step, ``p`` its earlier position, the label the value at ``p + 1``.
    """
    X = np.asarray(X, dtype=np.float64)
    n, W, _ = X.shape
    pairs = (W - 1) // 2
    keys = X[:, :, :pairs].argmax(axis=2)
    values = X[:, :, pairs:pairs + num_values].argmax(axis=2)
    matches = keys[:, :-1] == keys[:, -1:]
    matches[:, 1::2] = False  # value slots hold no key
    p = matches.argmax(axis=1)
    label = values[np.arange(n), p + 1]
    return np.eye(num_values)[label]


def sample_induction(n: int, window_size: int, rng: np.random.Generator, *,
                     num_values: int = INDUCTION_VALUES) -> ControlBatch:
    """Draw ``n`` windows of the ``induction`` control (module docstring).

    Returns:
        :class:`ControlBatch` with one-hot ``X (n, W, n_pairs + num_values)`` (``key_*``,
        ``value_*``), ``y`` = the value after the earlier ``q`` (``value_<y>``), the 0/1 posterior,
        ``info["tokens"]`` (``(n, W)`` token ids: keys ``0..n_pairs-1``, values
        ``n_pairs..n_pairs+V-1``) and ``info["query_position"]`` (``p``).

    Raises:
        ValueError: an even ``window_size`` or pairs that do not split evenly over the values.
    """
    n = _check_n(n)
    pairs = _induction_sizes(window_size, num_values)
    W = 2 * pairs + 1
    keys = rng.permuted(np.tile(np.arange(pairs), (n, 1)), axis=1)
    bag = np.repeat(np.arange(num_values), pairs // num_values)
    values = rng.permuted(np.tile(bag, (n, 1)), axis=1)
    which = rng.integers(0, pairs, size=n)
    rows = np.arange(n)
    tokens = np.empty((n, W), dtype=np.int64)
    tokens[:, 0:-1:2] = keys
    tokens[:, 1::2] = pairs + values
    tokens[:, -1] = keys[rows, which]
    X = np.eye(pairs + num_values)[tokens]
    y = values[rows, which].astype(np.int64)
    return ControlBatch(X=X, y=y, posterior=induction_posterior(X, num_values),
                        channels=tuple(f"key_{k}" for k in range(pairs)) + tuple(f"value_{v}" for v in range(num_values)),
                        info={"tokens": tokens, "query_position": (2 * which).astype(np.int64)})

