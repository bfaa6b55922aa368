"""Figures (regimetry.plots): layout, input checks, and no pyplot state left behind."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from regimetry import plots  # noqa: E402


def _scores(blocks=2, batch=3, heads=4, T=6, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.random((blocks, batch, heads, T, T))
    return list(raw / raw.sum(axis=-1, keepdims=True))


def test_attention_heatmaps_one_panel_per_block_and_head():
    scores = _scores()
    fig = plots.attention_heatmaps(scores, window=2, title="w")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 * 4  # blocks x heads (plus one colorbar axis)
    first = images[0].images[0].get_array()
    np.testing.assert_allclose(first, scores[0][2, 0])  # window 2, block 0, head 0
    assert first.shape == (6, 6)
    assert plt.get_fignums() == []  # not registered with pyplot


@pytest.mark.parametrize("bad, message", [([], "empty"), ([np.zeros((3, 6, 6))], "expected"),
                                          (_scores(batch=1), "out of range")])
def test_attention_heatmaps_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        plots.attention_heatmaps(bad, window=2)


def test_confusion_matrix_figure_counts_and_shape_check():
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    fig = plots.confusion_matrix_figure(cm, ["low", "mid", "high"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0] == "5\n83%" and len(texts) == 9
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        plots.confusion_matrix_figure(cm, ["a", "b"])


def test_training_curves_and_timeline():
    history = {"train/loss": [1.0, 0.8, 0.7], "val/loss": [1.1, 0.9, 0.95],
               "val/balanced_accuracy": [0.4, 0.5, 0.45], "time/epoch_seconds": [1, 1, 1]}
    fig = plots.training_curves(history, best_epoch=1)
    loss_ax, score_ax = fig.axes[:2]
    assert {line.get_label() for line in loss_ax.lines} >= {"train/loss", "val/loss"}
    assert "time/epoch_seconds" not in {line.get_label() for line in score_ax.lines}
    with pytest.raises(ValueError, match="empty"):
        plots.training_curves({})
    index = pd.bdate_range("2020-01-01", periods=7)
    y = np.array([0, 0, 1, 2, 2, 1, 0])
    fig = plots.regime_timeline(index, y, y[::-1], price=pd.Series(np.arange(1.0, 8.0), index=index),
                                class_names=["low", "mid", "high"])
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="same length"):
        plots.regime_timeline(index, y[:3])
    assert plt.get_fignums() == []


def test_close_handles_pyplot_figures():
    fig = plt.figure()
    plots.close(fig)
    plots.close(None)
    assert plt.get_fignums() == []
