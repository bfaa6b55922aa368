"""Unsupervised regime discovery from encoder embeddings: clustering, label alignment, statistics.

The pipeline (``experiments/02_regime_discovery.py``):

1. pooled embeddings of every window from an encoder (``regimetry.models.embed``), trained or untrained;
2. standardised with a scaler fitted on the training windows only;
3. clustered by a model fitted on the training windows only (:func:`fit_clustering`: spectral
   clustering with a nearest-neighbour affinity, k-means or a Gaussian mixture), then every window of
   train / val / test assigned to a cluster;
4. cluster ids aligned to a reference labelling with the Hungarian algorithm on matching timestamps
   (:func:`align_labels`), so that regime ids mean the same thing across runs, encoders and methods;
   a reference itself is put in canonical order by a score such as trailing volatility
   (:func:`order_by_score`: regime 0 = the calmest);
5. regime statistics (:func:`regime_statistics`: transition matrix, stickiness, row entropy, mean
   duration) and, on synthetic data, agreement with the true regimes (:func:`external_scores`:
   adjusted Rand index, normalized mutual information);
6. figures (:func:`plot_regime_timeline`, :func:`plot_projection` of a t-SNE map, :func:`tsne_projection`).

Spectral clustering has no out-of-sample rule. :class:`ClusterModel` therefore assigns new windows
with a k-nearest-neighbour classifier (same ``n_neighbors`` as the affinity graph) fitted on the
training embeddings and their spectral assignments: a new point joins the regime of its nearest
training neighbours, which is what the nearest-neighbour affinity graph would mostly connect it to.
k-means assigns by nearest centroid and the Gaussian mixture by the most probable component.

References:
    von Luxburg, U. (2007). A tutorial on spectral clustering. Statistics and Computing 17(4).
    Kuhn, H. W. (1955). The Hungarian method for the assignment problem.
    Hubert, L. and Arabie, P. (1985). Comparing partitions (adjusted Rand index).
    van der Maaten, L. and Hinton, G. (2008). Visualizing data using t-SNE. JMLR 9.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

__all__ = [
    "CLUSTERING_METHODS",
    "ClusterModel",
    "RegimeStatistics",
    "align_labels",
    "alignment_mapping",
    "external_scores",
    "fit_clustering",
    "order_by_score",
    "plot_projection",
    "plot_regime_timeline",
    "regime_statistics",
    "transition_counts",
    "tsne_projection",
]

CLUSTERING_METHODS = ("spectral", "kmeans", "gmm")


# ------------------------------------------------------------------------------------------------
# Clustering fitted on the training period
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ClusterModel:
    """A clustering fitted on training embeddings, able to assign any embedding to a regime.

    Attributes:
        method: ``"spectral"``, ``"kmeans"`` or ``"gmm"``.
        n_clusters: number of regimes.
        scaler: ``StandardScaler`` fitted on the training embeddings.
        estimator: the fitted sklearn clustering (``KMeans`` / ``GaussianMixture`` /
            ``SpectralClustering``).
        assigner: the object whose ``predict`` assigns standardised embeddings (the estimator itself
            for k-means and GMM; a ``KNeighborsClassifier`` on the training assignments for spectral).
        train_labels: int64 ``(n_train,)`` assignments of the training windows.
    """

    method: str
    n_clusters: int
    scaler: StandardScaler
    estimator: Any
    assigner: Any
    train_labels: np.ndarray

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Regime ids ``(n,)`` int64 of float ``(n, d_model)`` embeddings.

        Raises:
            ValueError: wrong width (naming the expected ``d_model``) or non-finite values.
        """
        Z = _check_embeddings(embeddings, "embeddings")
        if Z.shape[1] != self.scaler.n_features_in_:
            raise ValueError(
                f"ClusterModel.predict: embeddings have width {Z.shape[1]}, the model was fitted on "
                f"width {self.scaler.n_features_in_}"
            )
        with threadpool_limits(limits=1):
            return np.asarray(self.assigner.predict(self.scaler.transform(Z)), dtype=np.int64)


def _check_embeddings(embeddings: np.ndarray, name: str) -> np.ndarray:
    Z = np.asarray(embeddings, dtype=np.float64)
    if Z.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_windows, d_model), got shape {Z.shape}")
    if not np.all(np.isfinite(Z)):
        raise ValueError(f"{name}: contains NaN or inf")
    return Z


def fit_clustering(
    train_embeddings: np.ndarray,
    method: str = "kmeans",
    n_clusters: int = 3,
    *,
    seed: int = 0,
    n_neighbors: int = 10,
) -> ClusterModel:
    """Standardise training embeddings and cluster them.

    Args:
        train_embeddings: float ``(n_train, d_model)`` pooled embeddings of the training windows.
        method: ``"spectral"`` (nearest-neighbour affinity graph, ``assign_labels="cluster_qr"``),
            ``"kmeans"`` (10 initialisations) or ``"gmm"`` (full covariances, 3 initialisations).
        n_clusters: number of regimes, ``>= 2``.
        seed: random state of the clustering.
        n_neighbors: neighbours in the spectral affinity graph and in the out-of-sample kNN rule.

    Returns:
        :class:`ClusterModel`; its ``predict`` assigns val/test embeddings without refitting.

    Raises:
        ValueError: unknown method, ``n_clusters < 2``, or fewer training windows than clusters.
    """
    if method not in CLUSTERING_METHODS:
        raise ValueError(f"fit_clustering: method must be one of {list(CLUSTERING_METHODS)}, got {method!r}")
    if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 2:
        raise ValueError(f"fit_clustering: n_clusters must be an integer >= 2, got {n_clusters!r}")
    Z = _check_embeddings(train_embeddings, "train_embeddings")
    if Z.shape[0] <= n_clusters:
        raise ValueError(f"fit_clustering: {Z.shape[0]} training windows for {n_clusters} clusters")
    with threadpool_limits(limits=1):  # see _SINGLE_THREAD
        return _fit_clustering(Z, method, int(n_clusters), seed, n_neighbors)


_SINGLE_THREAD = """Small fits run with one BLAS/OpenMP thread: on a small shared CPU, multithreaded BLAS and
OpenMP spin-waiting made k-means, spectral embedding and t-SNE many times slower (t-SNE of 400
points: ~90 s under load with threads vs a few seconds single-threaded)."""


def _fit_clustering(Z: np.ndarray, method: str, n_clusters: int, seed: int, n_neighbors: int) -> ClusterModel:
    scaler = StandardScaler().fit(Z)
    Zs = scaler.transform(Z)
    if method == "kmeans":
        est = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(Zs)
        labels, assigner = est.labels_, est
    elif method == "gmm":
        est = GaussianMixture(
            n_components=n_clusters, covariance_type="full", n_init=3, reg_covar=1e-4, random_state=seed
        ).fit(Zs)
        labels, assigner = est.predict(Zs), est
    else:
        k = int(min(n_neighbors, Z.shape[0] - 1))
        est = SpectralClustering(
            n_clusters=n_clusters, affinity="nearest_neighbors", n_neighbors=k,
            assign_labels="cluster_qr", random_state=seed,
        ).fit(Zs)
        labels = est.labels_
        assigner = KNeighborsClassifier(n_neighbors=k).fit(Zs, labels)
    return ClusterModel(method, n_clusters, scaler, est, assigner, np.asarray(labels, dtype=np.int64))


# ------------------------------------------------------------------------------------------------
# Label alignment
# ------------------------------------------------------------------------------------------------
def alignment_mapping(labels: np.ndarray, reference: np.ndarray) -> dict[int, int]:
    """Hungarian matching of cluster ids to reference ids maximising the number of agreements.

    Args:
        labels: int ``(n,)`` cluster ids of a run.
        reference: int ``(n,)`` reference ids at the same timestamps.

    Returns:
        ``{run_id: reference_id}`` for every id in ``labels``. Ids left over when the run has more
        clusters than the reference get fresh ids above the reference's largest id (in order of
        size), so that the mapping stays one-to-one.

    Raises:
        ValueError: different lengths, empty inputs or negative ids.
    """
    a = np.asarray(labels)
    b = np.asarray(reference)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"alignment_mapping: labels {a.shape} and reference {b.shape} must be equal 1-D shapes")
    if a.size == 0:
        raise ValueError("alignment_mapping: no common timestamps to align on")
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    if a.min() < 0 or b.min() < 0:
        raise ValueError("alignment_mapping: regime ids must be non-negative integers")
    run_ids = np.unique(a)
    ref_ids = np.unique(b)
    table = np.zeros((len(run_ids), len(ref_ids)))
    np.add.at(table, (np.searchsorted(run_ids, a), np.searchsorted(ref_ids, b)), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = {int(run_ids[r]): int(ref_ids[c]) for r, c in zip(rows, cols)}
    leftover = [int(i) for i in run_ids if int(i) not in mapping]
    leftover.sort(key=lambda i: -int((a == i).sum()))
    next_id = int(b.max()) + 1
    for i in leftover:
        mapping[i] = next_id
        next_id += 1
    return mapping


def align_labels(labels: pd.Series, reference: pd.Series) -> tuple[pd.Series, dict[int, int]]:
    """Relabel a run's regimes so that they agree best with a reference run on shared timestamps.

    Args:
        labels: int regime ids indexed by timestamp (a window's last bar).
        reference: int regime ids of the reference run indexed by timestamp; only timestamps present
            in both are used to fit the mapping; the mapping is then applied to every label.

    Returns:
        ``(aligned, mapping)``: ``labels`` with ids replaced through ``mapping`` (same index) and the
        ``{run_id: reference_id}`` mapping (see :func:`alignment_mapping`). A run id that does not
        occur on the shared timestamps keeps a fresh id above the reference's ids.

    Raises:
        ValueError: no shared timestamps, or duplicated timestamps in either series.
    """
    for name, s in (("labels", labels), ("reference", reference)):
        if not isinstance(s, pd.Series):
            raise ValueError(f"align_labels: {name} must be a pandas Series indexed by timestamp")
        if s.index.has_duplicates:
            raise ValueError(f"align_labels: {name} has duplicated timestamps, e.g. {s.index[s.index.duplicated()][0]}")
    common = labels.index.intersection(reference.index)
    if len(common) == 0:
        raise ValueError(
            f"align_labels: no shared timestamps (labels {labels.index.min()}..{labels.index.max()}, "
            f"reference {reference.index.min()}..{reference.index.max()})"
        )
    mapping = alignment_mapping(labels.loc[common].to_numpy(), reference.loc[common].to_numpy())
    next_id = max([*mapping.values(), int(reference.max())]) + 1
    for i in sorted(set(int(v) for v in labels.unique()) - set(mapping)):
        mapping[i] = next_id
        next_id += 1
    aligned = labels.map(lambda v: mapping[int(v)]).astype(np.int64)
    return aligned, mapping


def order_by_score(labels: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Canonical ids: renumber regimes by ascending mean ``score`` (e.g. trailing volatility).

    Makes a reference labelling interpretable and reproducible (regime 0 = lowest mean score)
    regardless of the arbitrary ids the clustering returned.

    Args:
        labels: int ``(n,)`` regime ids. score: float ``(n,)`` (NaNs ignored in the means).

    Returns:
        ``(relabelled (n,) int64, {old_id: new_id})``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    if labels.shape != score.shape:
        raise ValueError(f"order_by_score: labels {labels.shape} and score {score.shape} differ")
    ids = np.unique(labels)
    means = [np.nanmean(score[labels == i]) if np.isfinite(score[labels == i]).any() else np.inf for i in ids]
    mapping = {int(ids[j]): new for new, j in enumerate(np.argsort(means, kind="stable"))}
    return np.array([mapping[int(v)] for v in labels], dtype=np.int64), mapping


# ------------------------------------------------------------------------------------------------
# Regime statistics
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RegimeStatistics:
    """Summary of a regime sequence.

    Attributes:
        transition_matrix: float ``(K, K)`` row-stochastic estimate ``P(s_{t+1}=j | s_t=i)`` from
            consecutive windows (rows of regimes never left are NaN).
        stickiness: float ``(K,)`` the diagonal: probability of staying in the regime one more step.
        row_entropy: float ``(K,)`` entropy of each row in bits (0 = deterministic, log2 K = uniform).
        mean_duration: float ``(K,)`` mean length of uninterrupted runs in steps (windows; bars when
            ``stride == 1``); NaN for a regime that never occurs.
        expected_duration: float ``(K,)`` ``1 / (1 - stickiness)``, the duration implied by a Markov
            chain with this transition matrix.
        occupancy: float ``(K,)`` fraction of steps spent in each regime.
        counts: int ``(K, K)`` transition counts.
    """

    transition_matrix: np.ndarray
    stickiness: np.ndarray
    row_entropy: np.ndarray
    mean_duration: np.ndarray
    expected_duration: np.ndarray
    occupancy: np.ndarray
    counts: np.ndarray

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{prefix + "stickiness/<k>": value, ...}`` finite floats for tracking."""
        out: dict[str, float] = {}
        for name in ("stickiness", "row_entropy", "mean_duration", "expected_duration", "occupancy"):
            for k, v in enumerate(getattr(self, name)):
                if np.isfinite(v):
                    out[f"{prefix}{name}/{k}"] = float(v)
        return out


def _segments(labels: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        return [labels.astype(np.int64)]
    return [np.asarray(s, dtype=np.int64).ravel() for s in labels]


def transition_counts(labels: np.ndarray | Sequence[np.ndarray], n_regimes: int) -> np.ndarray:
    """Counts of ``i -> j`` transitions between consecutive steps.

    Args:
        labels: int ``(n,)`` regime sequence, or a list of sequences (e.g. train / val / test, which
            an embargo separates): transitions are counted within each sequence only.
        n_regimes: K.

    Returns:
        int64 ``(K, K)``.

    Raises:
        ValueError: an id outside ``[0, K)``.
    """
    counts = np.zeros((n_regimes, n_regimes), dtype=np.int64)
    for seq in _segments(labels):
        if seq.size and (seq.min() < 0 or seq.max() >= n_regimes):
            raise ValueError(f"transition_counts: regime ids must lie in [0, {n_regimes - 1}], got {seq.min()}..{seq.max()}")
        np.add.at(counts, (seq[:-1], seq[1:]), 1)
    return counts


def regime_statistics(labels: np.ndarray | Sequence[np.ndarray], n_regimes: int) -> RegimeStatistics:
    """Transition matrix, stickiness, row entropy (bits), durations and occupancy of a regime path.

    Args:
        labels: as in :func:`transition_counts`.
        n_regimes: K.

    Returns:
        :class:`RegimeStatistics`.
    """
    segs = _segments(labels)
    counts = transition_counts(segs, n_regimes)
    rows = counts.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        P = np.where(rows > 0, counts / np.where(rows > 0, rows, 1), np.nan)
        plogp = np.where(P > 0, P * np.log2(np.where(P > 0, P, 1)), 0.0)
        entropy = np.where(rows[:, 0] > 0, -plogp.sum(axis=1), np.nan)
        stick = np.diag(P).copy()
        expected = 1.0 / (1.0 - stick)
    run_lengths: list[list[int]] = [[] for _ in range(n_regimes)]
    total = np.zeros(n_regimes)
    for seq in segs:
        if seq.size == 0:
            continue
        total += np.bincount(seq, minlength=n_regimes)[:n_regimes]
        change = np.flatnonzero(np.diff(seq)) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [seq.size]])
        for s, e in zip(starts, ends):
            run_lengths[int(seq[s])].append(int(e - s))
    mean_dur = np.array([np.mean(r) if r else np.nan for r in run_lengths])
    occupancy = total / total.sum() if total.sum() else np.full(n_regimes, np.nan)
    return RegimeStatistics(P, stick, entropy, mean_dur, expected, occupancy, counts)


def external_scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Agreement with known regimes (synthetic data): ``{"ari": ..., "nmi": ...}``.

    Both are invariant to permutations of the ids, so no alignment is needed. ARI is 0 in
    expectation for random labels and 1 for a perfect match; NMI (arithmetic normalisation) lies in
    [0, 1].

    Raises:
        ValueError: different lengths or empty inputs.
    """
    a, b = np.asarray(labels).ravel(), np.asarray(truth).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"external_scores: labels {a.shape} and truth {b.shape} must be equal, non-empty")
    return {"ari": float(adjusted_rand_score(b, a)), "nmi": float(normalized_mutual_info_score(b, a))}


# ------------------------------------------------------------------------------------------------
# Projection and figures
# ------------------------------------------------------------------------------------------------
def tsne_projection(
    embeddings: np.ndarray,
    *,
    seed: int = 0,
    max_points: int = 2000,
    perplexity: float = 30.0,
    max_iter: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE map of standardised embeddings (for figures only; nothing is fitted on it).

    Args:
        embeddings: float ``(n, d_model)``.
        seed: random state of the subsample and of t-SNE.
        max_points: evenly spaced subsample above this size (t-SNE is quadratic-ish).
        perplexity: t-SNE perplexity, lowered automatically to ``(n - 1) / 3`` for tiny inputs.
        max_iter: optimisation iterations (sklearn's minimum is 250).

    Returns:
        ``(xy (m, 2) float64, rows (m,) int64)``: the map and the rows of ``embeddings`` it shows.
    """
    Z = _check_embeddings(embeddings, "embeddings")
    rows = np.arange(Z.shape[0])
    if Z.shape[0] > max_points:
        rows = np.linspace(0, Z.shape[0] - 1, max_points).round().astype(np.int64)
    Zs = StandardScaler().fit_transform(Z[rows])
    perp = float(min(perplexity, max(1.0, (len(rows) - 1) / 3.0)))
    with threadpool_limits(limits=1):
        xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, n_jobs=1,
                  max_iter=max(int(max_iter), 250)).fit_transform(Zs)
    return np.asarray(xy, dtype=np.float64), rows.astype(np.int64)


def _colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_regime_timeline(
    price: pd.Series,
    labels: pd.Series,
    *,
    title: str = "",
    n_regimes: int | None = None,
    boundaries: Sequence[pd.Timestamp] = (),
):
    """Price (log scale) with the background shaded by regime.

    Args:
        price: close prices indexed by timestamp.
        labels: int regime ids indexed by timestamp (window last bars); gaps (embargo) stay white.
        title: figure title.
        n_regimes: number of colours (default: ``max(labels) + 1``).
        boundaries: timestamps drawn as dashed vertical lines (e.g. the val / test starts).

    Returns:
        ``matplotlib.figure.Figure`` (object-oriented API, not registered with pyplot).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    k = int(n_regimes if n_regimes is not None else labels.max() + 1)
    colors = _colors(k)
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(price.index, price.to_numpy(dtype=float), color="black", lw=0.8)
    if (price > 0).all():
        ax.set_yscale("log")
    idx = labels.index
    values = labels.to_numpy()
    if len(values):
        # One span per run of equal labels on consecutive timestamps.
        change = np.flatnonzero(np.diff(values)) + 1
        starts = np.concatenate([[0], change])
        steps = np.diff(idx.asi8) if len(idx) > 1 else np.zeros(0)
        gap = 5 * np.median(steps) if steps.size else 0
        # Split runs at gaps (the embargo between splits) so that a span never covers one.
        cuts = np.flatnonzero(steps > gap) + 1 if steps.size else np.zeros(0, dtype=int)
        starts = np.union1d(starts, cuts)
        ends = np.concatenate([starts[1:], [len(values)]])
        cut_set = set(cuts.tolist())
        for s, e in zip(starts, ends):
            right = idx[e] if e < len(idx) and e not in cut_set else idx[e - 1]
            ax.axvspan(idx[s], right, color=colors[int(values[s]) % k], alpha=0.3, lw=0)
    for b in boundaries:
        ax.axvline(b, color="grey", ls="--", lw=1)
    ax.legend(handles=[Patch(color=colors[i], alpha=0.4, label=f"regime {i}") for i in range(k)],
              loc="upper left", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel("close")
    return fig


def plot_projection(xy: np.ndarray, labels: np.ndarray, *, title: str = "", n_regimes: int | None = None):
    """Scatter of a 2-D projection coloured by regime. Returns a ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure

    labels = np.asarray(labels, dtype=np.int64)
    k = int(n_regimes if n_regimes is not None else labels.max() + 1)
    colors = _colors(k)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    for i in range(k):
        m = labels == i
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=colors[i], label=f"regime {i}", alpha=0.7)
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
