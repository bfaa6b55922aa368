"""Tables of the data report (``notebooks/data_report.ipynb``): label distribution, leakage audit,
transition matrix."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from regimetry.data import audit, load_source


def label_distribution(splits) -> pd.DataFrame:
    """Windows per regime and split: rows = class names, columns = ``train/val/test`` counts and shares.

    Args:
        splits: ``regimetry.data.types.Splits``.
    """
    k = splits.num_classes
    data = {}
    for name in ("train", "val", "test"):
        y = getattr(splits, name).y
        counts = np.bincount(y, minlength=k)[:k] if len(y) else np.zeros(k, dtype=int)
        data[f"{name} windows"] = counts
        data[f"{name} share"] = counts / counts.sum() if counts.sum() else np.full(k, np.nan)
    return pd.DataFrame(data, index=pd.Index(list(splits.class_names), name="regime"))


def leakage_audit_table(splits) -> pd.DataFrame | None:
    """The leakage audit of every user input column of a CSV source, as one table.

    Uses the audit ``regimetry.data.prepare`` stored in ``splits.extras["leakage_audit"]``; with
    ``DataConfig.leakage_check="off"`` (nothing stored) it reloads the CSV and runs the same audit
    (:func:`regimetry.data.audit.audit_source`) on the same rows. Either way only bars up to the last
    training sample's bar are used (the audit never sees a validation or test bar).

    Args:
        splits: ``regimetry.data.types.Splits`` from ``prepare``.

    Returns:
        ``None`` for a non-CSV source (the audit applies to user columns only); otherwise one row per
        input column of the CSV (numeric and boolean in file order, then categorical) with columns
        ``column``, ``kind``, ``partial R2 (future | past)`` (0..1, NaN when not audited),
        ``R2 of the past`` (0..1), ``noise level`` (``3 L / rows``, what a causal column scores
        by chance), ``rows`` (complete training rows used), ``leads/lags L`` (bars), ``flagged``
        (``"yes"`` / ``"no"``) and ``note`` (why a column was not audited, empty otherwise).
    """
    config = splits.config
    if config.source != "csv":
        return None
    kinds = dict(splits.extras.get("input_kinds") or {})  # built-in features (numeric) and user columns
    stored = splits.extras.get("leakage_audit")
    if stored is None:
        source = load_source(config)
        kinds.update(source.kinds)
        stored = [dataclasses.asdict(a) for a in
                  audit.audit_source(source, int(splits.train.positions[-1]) + 1, config.horizon)]
    by_column = {a["column"]: a for a in stored}
    # user columns: the audited (numeric, boolean) ones, then the categorical ones (never a built-in feature)
    columns = list(by_column) + [c for c, kind in kinds.items() if kind == "categorical" and c not in by_column]
    rows = []
    for column in columns:
        kind = kinds.get(column, "constant (dropped)")
        a = by_column.get(column)
        if a is None:
            rows.append({"column": column, "kind": kind, "partial R2 (future | past)": np.nan,
                         "R2 of the past": np.nan, "noise level": np.nan, "rows": np.nan, "leads/lags L": np.nan,
                         "flagged": "no", "note": ("not audited: categorical (its one-hot codes are not one "
                                                   "series)" if kind == "categorical" else "not audited")})
            continue
        lags, used = int(a["lags"]), int(a["rows"])
        rows.append({"column": column, "kind": kind, "partial R2 (future | past)": a["partial_r2"],
                     "R2 of the past": a["r2_past"],
                     "noise level": 3 * lags / used if lags and used else np.nan,
                     "rows": used, "leads/lags L": lags, "flagged": "yes" if a["flagged"] else "no",
                     "note": f"not audited: {a['note']}" if a.get("note") else ""})
    return pd.DataFrame(rows, columns=["column", "kind", "partial R2 (future | past)", "R2 of the past",
                                       "noise level", "rows", "leads/lags L", "flagged", "note"])


def transition_matrix(y: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Empirical transition matrix of a label sequence: row = regime at t, column = regime at t + 1
    (the next window), each row normalised to 1 (NaN for a regime never left from), plus the expected
    duration ``1 / (1 - p_ii)`` in windows (Hamilton, 1994, ch. 22: the mean sojourn of a Markov chain).

    Args:
        y: int ``(n,)`` labels in time order (one split, so no jump across an embargo).
        class_names: ``k`` names.

    Raises:
        ValueError: a label outside ``0..k-1``.
    """
    y = np.asarray(y, dtype=np.int64)
    k = len(class_names)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"transition_matrix: labels must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
    counts = np.zeros((k, k), dtype=np.int64)
    if y.size > 1:
        np.add.at(counts, (y[:-1], y[1:]), 1)
    totals = counts.sum(axis=1, keepdims=True)
    probs = np.divide(counts, totals, out=np.full((k, k), np.nan), where=totals > 0)
    frame = pd.DataFrame(probs, index=pd.Index(list(class_names), name="from \\ to"), columns=list(class_names))
    stay = np.diag(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        duration = np.where(stay < 1, 1.0 / (1.0 - stay), np.inf)
    frame["expected duration (windows)"] = np.where(np.isnan(stay), np.nan, duration)
    frame["transitions"] = totals[:, 0]
    return frame
