"""GLUE's official metrics, from scikit-learn and scipy: accuracy, binary F1, Matthews correlation,
Pearson and Spearman (as Hugging Face's ``evaluate`` computes them).

``tests/experiments`` holds independent numpy versions of each and checks these against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Share of predictions equal to their label."""
    from sklearn.metrics import accuracy_score

    p, y = _pair(predictions, labels)
    return float(accuracy_score(y, p))


def f1_binary(predictions: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
    """F1 of the ``positive`` class: 2·TP / (2·TP + FP + FN); 0 when there is no positive anywhere."""
    from sklearn.metrics import f1_score

    p, y = _pair(predictions, labels)
    # One class against the rest, so that any label set works; no positive anywhere scores 0, silently.
    return float(f1_score(y == positive, p == positive, zero_division=0.0))


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (multi-class form): 0 when either side is constant."""
    from sklearn.metrics import matthews_corrcoef as mcc

    p, y = _pair(predictions, labels)
    return float(mcc(y, p))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's correlation coefficient; NaN when either side is constant."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, x, y)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation (ties share their average rank); NaN when either side is constant."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, x, y)


def _correlation(function: Callable[..., Any], x: ArrayLike, y: ArrayLike) -> float:
    a, b = _pair(x, y, dtype=np.float64)
    # A correlation with a constant side is undefined: NaN, without scipy's warning about it.
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(function(a, b)[0])


def _pair(a: ArrayLike, b: ArrayLike, dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=dtype).reshape(-1), np.asarray(b, dtype=dtype).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"predictions and labels must have the same length; got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return x, y
