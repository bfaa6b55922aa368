"""Sliding windows over a per-bar input matrix.

A window ending at bar t holds the rows ``t - window_size + 1 .. t`` and takes the label of bar t.
Window end positions start at the first bar with a full window of complete inputs and advance by
``stride`` bars. For ``n`` consecutive usable rows (complete inputs *and* a label at the last
row), the number of windows is

    n_windows = floor((n - window_size) / stride) + 1     if n >= window_size, else 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["count_windows", "window_end_positions", "make_windows"]


def _check_positive(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"DataConfig.{name}: must be a positive integer, got {value!r}")
    return int(value)


def count_windows(num_rows: int, window_size: int, stride: int) -> int:
    """Number of windows over ``num_rows`` consecutive rows (formula in the module docstring).

    Raises:
        ValueError: ``window_size`` or ``stride`` not a positive integer, ``num_rows < 0``.
    """
    window_size = _check_positive("window_size", window_size)
    stride = _check_positive("stride", stride)
    if num_rows < 0:
        raise ValueError(f"count_windows: num_rows must be >= 0, got {num_rows}")
    return 0 if num_rows < window_size else (num_rows - window_size) // stride + 1


def window_end_positions(first_row: int, last_row: int, window_size: int, stride: int) -> np.ndarray:
    """Last-bar positions of the windows over rows ``first_row .. last_row`` (inclusive).

    Returns:
        int64 array ``first_row + window_size - 1, ... + stride, ...`` up to ``last_row``; its length
        is ``count_windows(last_row - first_row + 1, window_size, stride)``.

    Raises:
        ValueError: ``window_size`` or ``stride`` not a positive integer.
    """
    window_size = _check_positive("window_size", window_size)
    stride = _check_positive("stride", stride)
    start = first_row + window_size - 1
    if last_row < start:
        return np.zeros(0, dtype=np.int64)
    return np.arange(start, last_row + 1, stride, dtype=np.int64)


def make_windows(matrix: np.ndarray, end_positions: np.ndarray, window_size: int, row_offset: int = 0) -> np.ndarray:
    """Gather windows from a per-bar matrix.

    Args:
        matrix: ``(n_rows, n_features)`` array; row ``i`` is bar ``row_offset + i``.
        end_positions: ``(n_windows,)`` bar positions of the windows' last bars.
        window_size: bars per window.
        row_offset: bar position of ``matrix[0]``.

    Returns:
        float32 array ``(n_windows, window_size, n_features)``; ``out[i, -1] = matrix[end_i - row_offset]``.

    Raises:
        ValueError: ``matrix`` not 2-D, or a window reaching outside ``matrix``.
    """
    window_size = _check_positive("window_size", window_size)
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"make_windows: matrix must be 2-D (rows, features), got shape {matrix.shape}")
    ends = np.asarray(end_positions, dtype=np.int64) - row_offset
    if ends.size and (ends.min() - window_size + 1 < 0 or ends.max() >= matrix.shape[0]):
        raise ValueError(
            f"make_windows: windows of {window_size} bars ending at rows {ends.min()}..{ends.max()} reach outside "
            f"the {matrix.shape[0]} available rows"
        )
    rows = ends[:, None] + np.arange(-window_size + 1, 1)[None, :]
    return matrix[rows].astype(np.float32, copy=False)
