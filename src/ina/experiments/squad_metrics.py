"""SQuAD v2 exact match and F1, by the rules of the official evaluation script (``evaluate-v2.0.py``).

- Answers are normalised: lowercase, punctuation removed, articles (a, an, the) removed, whitespace collapsed.
- A question scores the maximum over its gold answers; gold answers that normalise to nothing are
  dropped, and a question left with none is unanswerable: its only gold answer is ``""``.
- F1 is over normalised whitespace tokens; when either side is empty, F1 = 1 if both are, else 0.
- With no-answer probabilities, a prediction counts as ``""`` when its probability exceeds the threshold
  (1.0 by default, i.e. never), and ``best_exact`` / ``best_f1`` report the best threshold.
- Scores are percentages; ``HasAns_*`` and ``NoAns_*`` cover the answerable and unanswerable questions.

On SQuAD v1.1 data (every question answerable) this gives the v1.1 script's numbers.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse whitespace (the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> int:
    """1 when both normalise to the same string, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    """Token-overlap F1 of the normalised answers (both empty: 1; one empty: 0)."""
    gold_tokens, prediction_tokens = _tokens(gold), _tokens(prediction)
    if not gold_tokens or not prediction_tokens:
        return float(gold_tokens == prediction_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(prediction_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The gold answers that count: those not normalising to nothing, else ``[""]`` (unanswerable)."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def squad_v2_scores(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    no_answer_probabilities: Mapping[str, float] | None = None,
    no_answer_threshold: float = 1.0,
) -> dict[str, float]:
    """Official SQuAD v2 scores.

    Args:
        references: question id -> its gold answer texts (empty for an unanswerable question).
        predictions: question id -> predicted text (``""`` predicts "no answer"). Every reference id must
            have a prediction (the official script would skip it silently; here that is an error).
        no_answer_probabilities: optional question id -> probability of "no answer".
        no_answer_threshold: predictions whose no-answer probability exceeds this count as ``""``.

    Returns ``exact``, ``f1``, ``total`` and, when such questions exist, ``HasAns_*`` / ``NoAns_*``;
    with probabilities also ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``.
    """
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(
            f"predictions lack {len(missing)} of {len(references)} question ids (first: {missing[:3]}); "
            'predict "" for questions the model finds unanswerable'
        )
    if not references:
        raise ValueError("cannot score zero questions")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for qid, answers in references.items():
        golds = gold_answers(answers)
        has_answer[qid] = golds != [""]
        exact[qid] = max(exact_match(g, predictions[qid]) for g in golds)
        f1[qid] = max(f1_score(g, predictions[qid]) for g in golds)
    raw_exact, raw_f1 = dict(exact), dict(f1)
    if no_answer_probabilities is not None:
        for qid in references:
            if no_answer_probabilities.get(qid, 0.0) > no_answer_threshold:
                exact[qid] = f1[qid] = float(not has_answer[qid])
    result = _averages(exact, f1, list(references))
    answerable = [q for q in references if has_answer[q]]
    unanswerable = [q for q in references if not has_answer[q]]
    for name, subset in (("HasAns", answerable), ("NoAns", unanswerable)):
        if subset:
            for key, value in _averages(exact, f1, subset).items():
                result[f"{name}_{key}"] = value
    if no_answer_probabilities is not None:
        # The official script searches the threshold on the raw (un-thresholded) scores.
        for key, scores in (("exact", raw_exact), ("f1", raw_f1)):
            best, threshold = _best_threshold(
                predictions, scores, no_answer_probabilities, has_answer, references
            )
            result[f"best_{key}"], result[f"best_{key}_thresh"] = best, threshold
    return result


def _averages(exact: Mapping[str, float], f1: Mapping[str, float], ids: Sequence[str]) -> dict[str, float]:
    return {
        "exact": 100.0 * sum(exact[q] for q in ids) / len(ids),
        "f1": 100.0 * sum(f1[q] for q in ids) / len(ids),
        "total": float(len(ids)),
    }


def _best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    probabilities: Mapping[str, float],
    has_answer: Mapping[str, bool],
    ids: Sequence[str],
) -> tuple[float, float]:
    # Start from "everything is no-answer", then admit predictions in order of rising no-answer probability.
    score = current = float(sum(1 for q in ids if not has_answer[q]))
    best_threshold = 0.0
    for qid in sorted(ids, key=lambda q: probabilities.get(q, 0.0)):
        if has_answer[qid]:
            delta = scores[qid]
        elif predictions[qid]:
            delta = -1.0
        else:
            delta = 0.0
        current += delta
        if current > score:
            score, best_threshold = current, probabilities.get(qid, 0.0)
    return 100.0 * score / len(ids), best_threshold
