"""Report figures (object-oriented matplotlib, as in :mod:`regimetry.plots`) and :func:`show`."""

from __future__ import annotations

import io
import math
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from regimetry import plots, records
from regimetry.reports.runs import AblationRuns


def regimes_over_time_figure(runs: AblationRuns, arm: str):
    """Price with the true regime shaded, and the true vs the arm's predicted regime over every test
    block (``summary/predictions.csv`` of the parent run); ``None`` when the run did not log it."""
    frame = runs.csv(runs.parent_run_id, records.SUMMARY_PREDICTIONS)
    if frame is None or f"pred.{arm}" not in frame:
        return None
    frame = frame.sort_values("timestamp").drop_duplicates("timestamp")
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True, format="mixed"))
    classes = (runs.json(runs.parent_run_id, records.SUMMARY_CLASSES) or {}).get("class_names")
    price = pd.Series(frame["close"].to_numpy(), index=index) if "close" in frame else None
    return plots.regime_timeline(index, frame["y_true"].to_numpy(int), frame[f"pred.{arm}"].to_numpy(int),
                                 price=price, class_names=classes,
                                 title=f"{arm}: true regime (shaded, black) and predicted regime (orange), test blocks")


def controls_figure(checks: pd.DataFrame):
    """Forest plot of the controls' paired comparisons (``winner_beats`` and ``aa_null`` rows of
    00's ``checks.csv``): estimate and 95 % interval per comparison, zero marked, failed checks red;
    ``None`` when there is none."""
    rows = checks[checks["check"].isin(["winner_beats", "aa_null"])].reset_index(drop=True)
    if rows.empty:
        return None
    fig = Figure(figsize=(7.5, 0.35 * len(rows) + 1.0), layout="constrained")
    ax = fig.subplots()
    for i, r in rows.iterrows():
        color = "tab:blue" if bool(r["passed"]) else "tab:red"
        ax.errorbar(r["estimate"], i, xerr=[[r["estimate"] - r["ci_low"]], [r["ci_high"] - r["estimate"]]],
                    fmt="o" if r["check"] == "winner_beats" else "s", color=color, capsize=3)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r.control}: {r.arm} - {r.b}" for r in rows.itertuples()], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference of pooled balanced accuracy [95 %] (circles: winner - at-chance arm; "
                  "squares: A/A)", fontsize=8)
    return fig


def fold_figure(folds: pd.DataFrame | None, metric: str = "balanced_accuracy"):
    """Grouped bars: the test ``metric`` per fold (and pooled) for every arm, references hatched grey,
    legend outside the data. ``folds`` from :func:`fold_results`; ``None`` when there is nothing."""
    if folds is None or folds.empty:
        return None
    names = list(folds.columns)
    fig = Figure(figsize=(1.2 + 1.1 * len(folds.index) * max(1, len(names)) / 4, 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    colors = iter(matplotlib_colors(sum(1 for n in names if not n.endswith("(reference)"))))
    for j, name in enumerate(names):
        reference = name.endswith("(reference)")
        ax.bar([i + (j - (len(names) - 1) / 2) * width for i in range(len(folds.index))], folds[name].to_numpy(),
               width=width, label=name, color="0.75" if reference else next(colors),
               hatch="//" if reference else None, edgecolor="0.35" if reference else None)
    ax.set_xticks(range(len(folds.index)), list(folds.index))
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def matplotlib_colors(n: int) -> list:
    """``n`` distinct colours (tab10, then tab20) so that arms never share one."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def seed_strip_figure(seeds: pd.DataFrame, summary: pd.DataFrame, metric: str = "balanced_accuracy"):
    """Strip plot of every confirmation run's test ``metric`` per arm (one dot per fold x seed, colour =
    fold) with the seed mean and its 95 % interval from ``summary`` (:func:`arm_summary`).

    Returns:
        ``matplotlib.figure.Figure``.
    """
    arms = list(summary["arm"])
    fig = Figure(figsize=(1.6 * max(len(arms), 2) + 2, 3.4), layout="constrained")
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    folds = sorted(seeds["fold"].dropna().unique()) if len(seeds) else []
    for i, arm in enumerate(arms):
        s = seeds[seeds["arm"] == arm]
        for j, fold in enumerate(folds):
            f = s[s["fold"] == fold]
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(f)), f["test"], s=18, color=f"C{j % 10}",
                       label=f"fold {int(fold)}", alpha=0.8)
        row = summary[summary["arm"] == arm].iloc[0]
        if not math.isnan(row["mean"]):
            low, high = row["seed_ci_low"], row["seed_ci_high"]
            yerr = None if math.isnan(low) else [[row["mean"] - low], [high - row["mean"]]]
            ax.errorbar(i + 0.3, row["mean"], yerr=yerr, fmt="D", color="black", capsize=4,
                        label="mean, 95% CI" if i == 0 else None)
    ax.set_xticks(range(len(arms)), arms, rotation=20)
    ax.set_ylabel(f"test {metric}")
    ax.set_title("confirmation runs (one dot per fold and seed)")
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    return fig


def optimization_history_figure(frames: Mapping[str, pd.DataFrame | str], direction: str = "maximize"):
    """Optimization history per arm: every COMPLETE trial's value (dots), pruned/failed trials marked
    at the bottom, and the best value so far (line). ``frames`` from :func:`trial_frames`.

    Returns:
        ``matplotlib.figure.Figure``, or ``None`` when no arm has a readable study.
    """
    usable = {a: f for a, f in frames.items() if isinstance(f, pd.DataFrame) and len(f)}
    if not usable:
        return None
    fig = Figure(figsize=(3.2 * len(usable) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, len(usable), squeeze=False)[0]
    for ax, (arm, frame) in zip(axes, usable.items()):
        states = frame["state"].astype(str)
        done = frame[states == "COMPLETE"].sort_values("number")
        ax.scatter(done["number"], done["value"], s=16, label="complete")
        if len(done):
            best = done["value"].cummax() if direction == "maximize" else done["value"].cummin()
            ax.step(done["number"], best, where="post", color="black", lw=1, label="best so far")
            floor = float(done["value"].min())
        else:
            floor = 0.0
        for state, marker in (("PRUNED", "v"), ("FAIL", "x")):
            sub = frame[states == state]
            if len(sub):
                ax.scatter(sub["number"], [floor] * len(sub), marker=marker, color="grey",
                           label=f"{state.lower()} ({len(sub)})")
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("validation objective")
    return fig


def importances_figure(values: Mapping[str, Mapping[str, float] | str]):
    """Horizontal bars of fANOVA importances, one panel per arm with a result; ``None`` if none has."""
    usable = {a: v for a, v in values.items() if isinstance(v, Mapping) and v}
    if not usable:
        return None
    names = sorted({k for v in usable.values() for k in v})
    fig = Figure(figsize=(3.0 * len(usable) + 1.5, 0.3 * len(names) + 1.2), layout="constrained")
    axes = fig.subplots(1, len(usable), squeeze=False, sharey=True)[0]
    for ax, (arm, imp) in zip(axes, usable.items()):
        ax.barh(range(len(names)), [imp.get(n, 0.0) for n in names])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("importance (fANOVA)")
        ax.grid(alpha=0.3, axis="x")
    return fig


def histories_figure(histories: Mapping[str, Mapping[str, list[tuple[int, float]]]], title: str | None = None):
    """Training curves of several runs: one panel per metric, one line per run; ``None`` if empty."""
    keys = list(dict.fromkeys(k for h in histories.values() for k in h))
    if not keys:
        return None
    fig = Figure(figsize=(3.3 * len(keys) + 2.2, 2.8), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colors = dict(zip(histories, matplotlib_colors(len(histories))))  # one colour per run, never reused
    for ax, key in zip(axes, keys):
        for label, series in histories.items():
            if key in series:
                steps, values = zip(*series[key])
                ax.plot(steps, values, marker=".", lw=1, label=label, color=colors[label])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=6, frameon=False)  # never over the curves
    if title:
        fig.suptitle(title)
    return fig


def show(fig) -> Any:
    """Display a Figure (or an image file path) as a PNG in a notebook, whatever matplotlib backend
    the kernel uses; the PNG is embedded in the notebook and so in its HTML."""
    from IPython.display import Image, display  # only inside a notebook kernel (IPython comes with ipykernel)

    if isinstance(fig, (str, os.PathLike)):
        return display(Image(filename=str(fig)))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plots.close(fig)
    return display(Image(data=buffer.getvalue()))
