"""GLUE's official metrics, in numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman.

Written out rather than imported so that a reader can check each against its textbook definition;
``tests/experiments`` checks them against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Share of predictions equal to their label."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1_binary(predictions: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
    """F1 of the ``positive`` class: 2·TP / (2·TP + FP + FN); 0 when there is no positive anywhere."""
    p, y = _pair(predictions, labels)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (multi-class form, as scikit-learn): 0 when either side is constant."""
    p, y = _pair(predictions, labels)
    classes = np.union1d(p, y)
    # confusion[i, j]: true class i predicted as j
    confusion = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], dtype=np.float64)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # true and predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt(s * s - q @ q) * np.sqrt(s * s - t @ t)
    return 0.0 if denominator == 0 else float((c * s - t @ q) / denominator)


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's correlation coefficient; NaN when either side is constant."""
    a, b = _pair(x, y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float("nan") if denominator == 0 else float((a @ b) / denominator)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation: Pearson on ranks, ties sharing their average rank."""
    a, b = _pair(x, y, dtype=np.float64)
    return pearson(_average_ranks(a), _average_ranks(b))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1  # 1-based average rank of the tie
        start = stop + 1
    return ranks


def _pair(a: ArrayLike, b: ArrayLike, dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=dtype).reshape(-1), np.asarray(b, dtype=dtype).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"predictions and labels must have the same length; got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return x, y
