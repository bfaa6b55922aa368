"""Input preprocessing fitted on the training period only (scikit-learn ``ColumnTransformer``).

Per column kind:

* ``numeric`` (computed bar features, numeric indicators): median imputation
  (``SimpleImputer(strategy="median")``) then standardisation (``StandardScaler``).
* ``boolean`` (True/False/blank signals, held as 1.0/0.0/NaN): the value with blanks as 0
  (``SimpleImputer(strategy="constant", fill_value=0)``) plus a 0/1 missing indicator for every
  boolean column (``MissingIndicator(features="all")``), so the output layout does not depend on
  whether the training period happened to contain blanks. Not scaled.
* ``categorical`` (strings, blanks already replaced by ``"(blank)"``): one-hot
  (``OneHotEncoder(handle_unknown="ignore")``); a category absent from the training period maps to
  all zeros.

Output columns: numeric, then boolean values, then boolean missing indicators
(``<col>__missing``), then one-hot columns (``<col>=<category>``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

__all__ = ["Preprocessor", "KINDS", "BLANK_CATEGORY"]

KINDS = ("numeric", "boolean", "categorical")
BLANK_CATEGORY = "(blank)"


class Preprocessor:
    """Fit-on-train transformer from a raw per-bar input frame to a float32 matrix.

    Args:
        kinds: mapping column name -> ``"numeric"``, ``"boolean"`` or ``"categorical"``, in the
            order the columns should appear within their kind.

    Attributes (after ``fit``):
        transformer_: the fitted ``sklearn.compose.ColumnTransformer``.
        feature_names_: output column names, length ``n_features``.

    Raises:
        ValueError: an unknown kind, or no columns.
    """

    def __init__(self, kinds: Mapping[str, str]):
        bad = {c: k for c, k in kinds.items() if k not in KINDS}
        if bad:
            raise ValueError(f"Preprocessor: unknown column kind(s) {bad}; expected one of {list(KINDS)}")
        if not kinds:
            raise ValueError("Preprocessor: no input columns")
        self.kinds = dict(kinds)
        self.numeric = [c for c, k in self.kinds.items() if k == "numeric"]
        self.boolean = [c for c, k in self.kinds.items() if k == "boolean"]
        self.categorical = [c for c, k in self.kinds.items() if k == "categorical"]
        self.transformer_: ColumnTransformer | None = None
        self.feature_names_: list[str] = []

    def _frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.kinds if c not in frame.columns]
        if missing:
            raise ValueError(f"Preprocessor: input frame lacks column(s) {missing}")
        out = {}
        for c in self.numeric + self.boolean:
            out[c] = pd.to_numeric(frame[c], errors="raise").astype(np.float64).to_numpy()
        for c in self.categorical:
            values = frame[c].astype(object).to_numpy()
            out[c] = np.array(
                [BLANK_CATEGORY if (v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA) else str(v)
                 for v in values],
                dtype=object,
            )
        return pd.DataFrame(out, index=frame.index)

    def fit(self, frame: pd.DataFrame) -> "Preprocessor":
        """Fit on the training-period rows ``frame`` (columns as in ``kinds``)."""
        parts = []
        if self.numeric:
            parts.append(
                ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                 self.numeric)
            )
        if self.boolean:
            parts.append(("boolean", SimpleImputer(strategy="constant", fill_value=0.0, keep_empty_features=True),
                          self.boolean))
            parts.append(("boolean_missing", MissingIndicator(features="all", error_on_new=False), self.boolean))
        if self.categorical:
            parts.append(
                ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64),
                 self.categorical)
            )
        transformer = ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)
        transformer.fit(self._frame(frame))
        self.transformer_ = transformer
        names = list(self.numeric) + list(self.boolean) + [f"{c}__missing" for c in self.boolean]
        if self.categorical:
            encoder = transformer.named_transformers_["categorical"]
            for column, categories in zip(self.categorical, encoder.categories_):
                names.extend(f"{column}={cat}" for cat in categories)
        self.feature_names_ = names
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Transform rows ``frame`` into a float32 ``(len(frame), n_features)`` matrix.

        Raises:
            RuntimeError: called before ``fit``.
        """
        if self.transformer_ is None:
            raise RuntimeError("Preprocessor.transform called before fit")
        out = np.asarray(self.transformer_.transform(self._frame(frame)), dtype=np.float64)
        return out.astype(np.float32)

    def fitted_state(self) -> dict[str, np.ndarray | list]:
        """Everything learned in ``fit``: imputer medians, scaler mean/scale, one-hot categories.

        Returns:
            dict with ``numeric_median``, ``numeric_mean``, ``numeric_scale`` (float64 arrays, one per
            numeric column), ``categories`` (list of arrays, one per categorical column) and
            ``feature_names``.
        """
        if self.transformer_ is None:
            raise RuntimeError("Preprocessor.fitted_state called before fit")
        state: dict[str, np.ndarray | list] = {"feature_names": list(self.feature_names_)}
        if self.numeric:
            pipe = self.transformer_.named_transformers_["numeric"]
            state["numeric_median"] = pipe.named_steps["impute"].statistics_.copy()
            state["numeric_mean"] = pipe.named_steps["scale"].mean_.copy()
            state["numeric_scale"] = pipe.named_steps["scale"].scale_.copy()
        if self.categorical:
            state["categories"] = [c.copy() for c in self.transformer_.named_transformers_["categorical"].categories_]
        return state

    def __repr__(self) -> str:
        return (
            f"Preprocessor(numeric={len(self.numeric)}, boolean={len(self.boolean)}, "
            f"categorical={len(self.categorical)}, fitted={self.transformer_ is not None})"
        )
