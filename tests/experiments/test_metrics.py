"""GLUE metrics and the SQuAD v2 scorer against values worked out by hand (in the comments)."""

import math

import numpy as np
import pytest

from ina.experiments import metrics
from ina.experiments.glue import compute_metrics
from ina.experiments.glue_data import get_task
from ina.experiments.squad_metrics import exact_match, f1_score, normalize_answer, squad_v2_scores


def test_accuracy_and_f1():
    predictions, labels = [1, 0, 1, 1], [1, 1, 1, 0]
    assert metrics.accuracy(predictions, labels) == 0.5  # 2 of 4
    # TP = 2, FP = 1, FN = 1: 2·2 / (2·2 + 1 + 1) = 2/3
    assert metrics.f1_binary(predictions, labels) == pytest.approx(2 / 3)
    assert metrics.f1_binary([0, 0], [0, 0]) == 0.0  # no positive anywhere


def test_matthews_binary_and_multiclass():
    # TP = 2, TN = 2, FP = 1, FN = 1: (2·2 − 1·1) / sqrt(3·3·3·3) = 1/3
    assert metrics.matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1]) == pytest.approx(1 / 3)
    # TP = 2, TN = 0, FP = 1, FN = 1: (0 − 1) / sqrt(3·3·1·1) = −1/3
    assert metrics.matthews_corrcoef([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(-1 / 3)
    # confusion [[2,0,0],[0,1,1],[0,1,1]]: c = 4, s = 6, t = q = [2,2,2]: (24 − 12) / (sqrt(36 − 12)²) = 0.5
    assert metrics.matthews_corrcoef([0, 2, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2]) == pytest.approx(0.5)
    assert metrics.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictions


def test_pearson_and_spearman_with_ties():
    # dx = [−1, 0, 1], dy = [−5/3, −2/3, 7/3]: Σdxdy = 4, Σdx² = 2, Σdy² = 78/9 -> 4 / sqrt(2·78/9)
    assert metrics.pearson([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / math.sqrt(2 * 78 / 9))
    # ranks x = [1, 2.5, 2.5, 4] (tie shares 2.5), y = [1, 3, 2, 4]: 4.5 / sqrt(4.5 · 5)
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        metrics.accuracy([1, 0], [1])


# Independent numpy versions of the GLUE metrics, written from the textbook definitions: the oracle the
# library's scikit-learn / scipy metrics are held to.


def oracle_f1(p, y, positive=1):
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def oracle_matthews(p, y):
    classes = np.union1d(p, y)
    # confusion[i, j]: true class i predicted as j
    confusion = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], dtype=np.float64)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # true and predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt(s * s - q @ q) * np.sqrt(s * s - t @ t)
    return 0.0 if denominator == 0 else float((c * s - t @ q) / denominator)


def oracle_pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float("nan") if denominator == 0 else float((a @ b) / denominator)


def oracle_ranks(values):
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_library_metrics_match_the_numpy_oracle(seed):
    rng = np.random.default_rng(seed)
    classes = 2 + seed % 3  # binary and multi-class
    y, p = rng.integers(0, classes, 40), rng.integers(0, classes, 40)
    assert metrics.accuracy(p, y) == pytest.approx(float(np.mean(p == y)))
    assert metrics.f1_binary(p, y) == pytest.approx(oracle_f1(p, y))
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(oracle_matthews(p, y))
    x, z = rng.normal(size=30), rng.integers(0, 6, 30).astype(np.float64)  # z has ties
    assert metrics.pearson(x, z) == pytest.approx(oracle_pearson(x, z))
    assert metrics.spearman(x, z) == pytest.approx(oracle_pearson(oracle_ranks(x), oracle_ranks(z)))


def test_compute_metrics_per_task():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])  # argmax: 0, 1, 0, 0
    assert compute_metrics(get_task("mrpc"), logits, np.array([0, 1, 1, 0])) == {
        "accuracy": 0.75,
        "f1": pytest.approx(2 / 3),
    }
    assert set(compute_metrics(get_task("cola"), logits, np.array([0, 1, 1, 0]))) == {"matthews_correlation"}
    scores = np.array([[1.0], [2.0], [3.0]])
    result = compute_metrics(get_task("stsb"), scores, np.array([1.0, 2.0, 5.0]))
    assert result["pearson"] == pytest.approx(4 / math.sqrt(2 * 78 / 9))
    assert result["spearman"] == pytest.approx(1.0)


def test_normalize_exact_f1():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert exact_match("Paris", "paris.") == 1
    assert exact_match("Paris", "in Paris") == 0
    # gold [cat, sat], prediction [cat, sat, down]: precision 2/3, recall 1 -> F1 0.8
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert f1_score("", "") == 1.0 and f1_score("", "x") == 0.0 and f1_score("x", "") == 0.0


def test_squad_v2_scores_with_unanswerable_questions():
    references = {
        "q1": ["Paris", "the city of Paris"],  # answerable
        "q2": [],  # unanswerable
        "q3": ["1905"],  # answerable
        "q4": ["  ", "."],  # gold answers normalising to nothing: unanswerable
    }
    predictions = {"q1": "city of Paris", "q2": "", "q3": "1905 in", "q4": "something"}
    scores = squad_v2_scores(references, predictions)
    # exact: q1 1 (matches the second gold), q2 1, q3 0, q4 0; F1: 1, 1, 2/3 (p 1/2, r 1), 0
    assert scores["exact"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 4)
    assert (scores["HasAns_exact"], scores["HasAns_f1"]) == (
        pytest.approx(50.0),
        pytest.approx(100 * (1 + 2 / 3) / 2),
    )
    assert (scores["NoAns_exact"], scores["NoAns_f1"]) == (50.0, 50.0)
    assert (scores["total"], scores["HasAns_total"], scores["NoAns_total"]) == (4, 2, 2)
    # A no-answer probability above the threshold turns q4's prediction into "no answer": right.
    thresholded = squad_v2_scores(references, predictions, {"q1": 0.1, "q2": 0.2, "q3": 0.3, "q4": 0.9}, 0.5)
    assert thresholded["exact"] == pytest.approx(75.0)
    # Best threshold (official rule, raw scores): start from "all no-answer" = 2 right (q2, q4); admitting
    # q1 (0.1) -> 3, q2 (0.2) -> 3, q3 (0.3) -> 3, q4 (0.9) -> 2; the first strict maximum is at 0.1.
    assert (thresholded["best_exact"], thresholded["best_exact_thresh"]) == (pytest.approx(75.0), 0.1)


def test_squad_v1_style_and_missing_predictions():
    scores = squad_v2_scores(
        {"a": ["Denver Broncos"], "b": ["Santa Clara"]}, {"a": "the Denver Broncos", "b": ""}
    )
    assert scores["exact"] == 50.0 and "NoAns_exact" not in scores
    with pytest.raises(ValueError, match="predictions lack 1 of 2"):
        squad_v2_scores({"a": ["x"], "b": ["y"]}, {"a": "x"})
