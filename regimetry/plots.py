"""Matplotlib figures: attention heat maps, confusion matrix, training curves, regime timeline.

Every function returns a new ``matplotlib.figure.Figure`` built with the object-oriented API
(``matplotlib.figure.Figure``, not ``pyplot``), so figures never register with pyplot's global
state: nothing needs closing and thousands of figures do not leak memory. ``regimetry.tracking``
logs them and then calls ``close`` anyway, which also handles pyplot figures passed in by users.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "attention_heatmaps",
    "close",
    "confusion_matrix_figure",
    "regime_timeline",
    "training_curves",
]


def close(fig) -> None:
    """Release a figure (pyplot-managed or not)."""
    import matplotlib.pyplot as plt

    if fig is not None and plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)


def attention_heatmaps(
    scores: Sequence[np.ndarray],
    window: int = 0,
    *,
    title: str | None = None,
    panel_size: float = 1.8,
) -> Figure:
    """Attention weights of one window: one row per encoder block, one panel per head.

    Args:
        scores: per block, an array ``(batch, heads, T_q, T_k)`` of attention weights (rows sum to
            1; ``regimetry.models.attention_scores``).
        window: which batch element to draw.
        title: figure title (e.g. the window's date).
        panel_size: inches per panel.

    Returns:
        A Figure with ``len(scores)`` rows and ``heads`` columns; x = key step, y = query step.

    Raises:
        ValueError: no blocks, an array that is not 4-D, or ``window`` out of range.
    """
    if len(scores) == 0:
        raise ValueError("attention_heatmaps: scores is empty (no encoder blocks)")
    arrays = [np.asarray(s) for s in scores]
    for b, s in enumerate(arrays):
        if s.ndim != 4:
            raise ValueError(f"attention_heatmaps: block {b} has shape {s.shape}, expected (batch, heads, T, T)")
        if not 0 <= window < s.shape[0]:
            raise ValueError(f"attention_heatmaps: window {window} out of range for batch size {s.shape[0]}")
    n_blocks = len(arrays)
    n_heads = max(s.shape[1] for s in arrays)
    # Manual layout (no constrained layout) and sparse ticks: text layout dominates savefig time
    # for many small panels (measured 3-5 s per figure with constrained layout, see benchmarks/).
    width, height = panel_size * n_heads + 1.2, panel_size * n_blocks + 0.7
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.9 / width, bottom=0.45 / height,
                        top=1 - 0.45 / height, wspace=0.15, hspace=0.3)
    axes = fig.subplots(n_blocks, n_heads, squeeze=False, sharex=True, sharey=True)
    # One colour scale shared by all panels, up to the largest weight shown (uniform attention over
    # T steps is 1/T, so a fixed 0..1 scale would leave long windows almost black).
    vmax = max(float(s[window].max()) for s in arrays) or 1.0
    image = None
    for b, s in enumerate(arrays):
        steps = s.shape[-1]
        for h in range(n_heads):
            ax = axes[b, h]
            if h >= s.shape[1]:
                ax.set_visible(False)
                continue
            image = ax.imshow(s[window, h], vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto",
                              interpolation="nearest")
            ax.set_title(f"block {b} head {h}", fontsize=7, pad=2)
            ax.set_xticks([0, steps - 1])
            ax.set_yticks([0, steps - 1])
            ax.tick_params(labelsize=6, length=2)
            if h == 0:
                ax.set_ylabel("query step", fontsize=7)
            if b == n_blocks - 1:
                ax.set_xlabel("key step", fontsize=7)
    if image is not None:
        cax = fig.add_axes((1 - 0.75 / width, 0.45 / height, 0.15 / width, 1 - 0.9 / height))
        fig.colorbar(image, cax=cax)
        cax.tick_params(labelsize=6)
        cax.set_ylabel("attention weight", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.12 / height)
    return fig


def confusion_matrix_figure(
    confusion: np.ndarray,
    class_names: Sequence[str],
    *,
    normalize: bool = True,
    title: str | None = None,
) -> Figure:
    """Confusion matrix heat map (rows = true class, columns = predicted), with counts.

    Args:
        confusion: int ``(k, k)`` counts.
        class_names: ``k`` names.
        normalize: colour by row share (recall per class); the text shows counts and shares.

    Raises:
        ValueError: ``confusion`` is not ``(k, k)`` with ``k = len(class_names)``.
    """
    cm = np.asarray(confusion)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion_matrix_figure: expected shape ({k}, {k}), got {cm.shape}")
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
    fig = Figure(figsize=(1.2 * k + 1.8, 1.1 * k + 1.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share if normalize else cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=30)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="row share" if normalize else "count")
    if title:
        ax.set_title(title)
    return fig


def training_curves(
    history: Mapping[str, Sequence[float]],
    *,
    best_epoch: int | None = None,
    title: str | None = None,
) -> Figure:
    """Loss (left) and validation scores (right) per epoch from ``TrainResult.history``.

    Args:
        history: ``{"train/loss": [...], "val/loss": [...], "val/balanced_accuracy": [...], ...}``.
        best_epoch: draws a vertical line at the restored epoch.

    Raises:
        ValueError: an empty history.
    """
    if not history or not any(len(v) for v in history.values()):
        raise ValueError("training_curves: empty history")
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax_loss, ax_score = fig.subplots(1, 2)
    for key, values in history.items():
        if key.startswith("time/"):
            continue
        target = ax_loss if key.endswith("loss") else ax_score
        target.plot(range(len(values)), values, marker=".", label=key)
    for ax, label in ((ax_loss, "cross-entropy"), (ax_score, "score")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if best_epoch is not None and best_epoch >= 0:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label="restored epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def regime_timeline(
    index,
    y_true: np.ndarray,
    y_pred: np.ndarray | None = None,
    *,
    price=None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Price (optional, log scale) with the true regime shaded, and true vs predicted regime steps.

    Args:
        index: ``DatetimeIndex`` ``(n,)`` of the windows' last bars.
        y_true: int ``(n,)``; y_pred: optional int ``(n,)``.
        price: optional ``pd.Series`` of closes (reindexed onto ``index``).
        class_names: names for the y axis ticks.

    Raises:
        ValueError: mismatched lengths.
    """
    y_true = np.asarray(y_true)
    if len(index) != len(y_true) or (y_pred is not None and len(y_pred) != len(y_true)):
        raise ValueError("regime_timeline: index, y_true and y_pred must have the same length")
    k = int(max(y_true.max(initial=0), np.max(y_pred, initial=0) if y_pred is not None else 0)) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    rows = 2 if price is not None else 1
    fig = Figure(figsize=(10, 2.2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    if price is not None:
        ax = axes[0]
        values = np.asarray(price.reindex(index), dtype=float)
        ax.plot(index, values, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("close")
        cmap = _regime_colors(len(names))
        lo, hi = np.nanmin(values), np.nanmax(values)
        if math.isfinite(lo) and math.isfinite(hi):
            for c in range(len(names)):
                ax.fill_between(index, lo, hi, where=y_true == c, color=cmap[c], alpha=0.25, lw=0, label=names[c])
            ax.legend(fontsize=7, loc="upper left")
    ax = axes[-1]
    ax.step(index, y_true, where="post", label="true", color="black", lw=1)
    if y_pred is not None:
        ax.step(index, y_pred, where="post", label="predicted", color="tab:orange", lw=1, alpha=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylabel("regime")
    ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


def _regime_colors(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn_r"]
    return [cmap(i / max(k - 1, 1)) for i in range(k)]
