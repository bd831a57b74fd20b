"""Retrieval and answer metrics: Recall@k, answer-hit@k, EM and token F1 (SQuAD v1.1 definitions).

The answer metrics follow the official SQuAD v1.1 evaluation script: lower-case, strip punctuation, drop the
articles a/an/the, fold white space; EM and F1 take the max over the gold answers. ``load_metric("rag_qa")`` and
``load_metric("rag_retrieval")`` return the same metrics as :mod:`evaluate` modules loaded from this package.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "normalize_answer",
    "f1_score",
    "exact_match_score",
    "max_over_ground_truths",
    "qa_f1",
    "qa_exact_match",
    "has_answer",
    "answer_hit_at_k",
    "recall_at_k",
    "retrieval_metrics",
    "answer_metrics",
    "per_query_metrics",
    "paired_bootstrap_ci",
    "load_metric",
]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token F1 between one prediction and one gold answer (SQuAD v1.1)."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _check_golds(ground_truths, name: str = "answers") -> Sequence[str]:
    if isinstance(ground_truths, str) or not isinstance(ground_truths, Sequence) or not ground_truths:
        raise ValueError(f"{name}: expected a non-empty list of gold answer strings, got {ground_truths!r}")
    return ground_truths


def max_over_ground_truths(metric_fn, prediction: str, ground_truths: Sequence[str]) -> float:
    return max(metric_fn(prediction, gt) for gt in _check_golds(ground_truths))


def qa_f1(prediction: str, answers: Sequence[str]) -> float:
    """Max token F1 of ``prediction`` over the gold ``answers`` (the judge of RPO / GPO)."""
    return max_over_ground_truths(f1_score, prediction, answers)


def qa_exact_match(prediction: str, answers: Sequence[str]) -> float:
    return max_over_ground_truths(exact_match_score, prediction, answers)


def has_answer(passage: str, answers: Sequence[str]) -> bool:
    """True when a gold answer occurs in the passage as a whole-token span, after SQuAD normalisation (DPR-style)."""
    text = f" {normalize_answer(passage)} "
    for ans in _check_golds(answers):
        norm = normalize_answer(ans)
        if norm and f" {norm} " in text:
            return True
    return False


def answer_hit_at_k(passages: Sequence[Sequence[str]], answers: Sequence[Sequence[str]], k: int) -> float:
    """Fraction of queries whose first ``k`` passages contain a gold answer string (DPR's top-k accuracy)."""
    _check_k(k)
    if len(passages) != len(answers):
        raise ValueError(f"passages has {len(passages)} queries but answers has {len(answers)}")
    if not passages:
        raise ValueError("answer_hit_at_k: no queries")
    hits = [any(has_answer(p, ans) for p in ps[:k]) for ps, ans in zip(passages, answers)]
    return sum(hits) / len(hits)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")


def recall_at_k(retrieved_ids: Sequence[Sequence[str]], gold_ids: Sequence[Sequence[str]], k: int) -> float:
    """Mean over queries of |gold ∩ first k retrieved| / |gold|. Queries without gold passages are an error."""
    _check_k(k)
    if len(retrieved_ids) != len(gold_ids):
        raise ValueError(f"retrieved_ids has {len(retrieved_ids)} queries but gold_ids has {len(gold_ids)}")
    if not retrieved_ids:
        raise ValueError("recall_at_k: no queries")
    total = 0.0
    for i, (ret, gold) in enumerate(zip(retrieved_ids, gold_ids)):
        if not gold:
            raise ValueError(f"gold_ids[{i}]: query has no gold passage; recall is undefined")
        gold_set = set(gold)
        total += len(gold_set.intersection(ret[:k])) / len(gold_set)
    return total / len(retrieved_ids)


def retrieval_metrics(
    retrieved_ids: Sequence[Sequence[str]],
    gold_ids: Sequence[Sequence[str]] | None = None,
    passages: Sequence[Sequence[str]] | None = None,
    answers: Sequence[Sequence[str]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """``recall@k`` for each k (when gold passages are known) and ``answer_hit@k`` (when passages + answers given)."""
    out: dict[str, float] = {}
    for k in ks:
        if gold_ids is not None:
            out[f"recall@{k}"] = recall_at_k(retrieved_ids, gold_ids, k)
        if passages is not None and answers is not None:
            out[f"answer_hit@{k}"] = answer_hit_at_k(passages, answers, k)
    return out


def answer_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` (0..1) over questions."""
    if len(predictions) != len(answers):
        raise ValueError(f"predictions has {len(predictions)} rows but answers has {len(answers)}")
    if not predictions:
        raise ValueError("answer_metrics: no predictions")
    em = sum(qa_exact_match(p, a) for p, a in zip(predictions, answers)) / len(predictions)
    f1 = sum(qa_f1(p, a) for p, a in zip(predictions, answers)) / len(predictions)
    return {"exact_match": em, "f1": f1}


def per_query_metrics(
    retrieved_ids: Sequence[Sequence[str]] | None = None,
    gold_ids: Sequence[Sequence[str]] | None = None,
    passages: Sequence[Sequence[str]] | None = None,
    answers: Sequence[Sequence[str]] | None = None,
    predictions: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, list[float]]:
    """One value per query for each metric that the inputs allow: ``recall@k`` (retrieved + gold ids),
    ``answer_hit@k`` (passages + answers), ``exact_match`` and ``f1`` (predictions + answers). Their means are the
    corpus-level metrics of :func:`retrieval_metrics` / :func:`answer_metrics`; the lists are what
    :func:`paired_bootstrap_ci` resamples."""
    out: dict[str, list[float]] = {}
    for k in ks:
        _check_k(k)
        if retrieved_ids is not None and gold_ids is not None:
            out[f"recall@{k}"] = [recall_at_k([r], [g], k) for r, g in zip(retrieved_ids, gold_ids)]
        if passages is not None and answers is not None:
            out[f"answer_hit@{k}"] = [answer_hit_at_k([p], [a], k) for p, a in zip(passages, answers)]
    if predictions is not None and answers is not None:
        if len(predictions) != len(answers):
            raise ValueError(f"predictions has {len(predictions)} rows but answers has {len(answers)}")
        out["exact_match"] = [qa_exact_match(p, a) for p, a in zip(predictions, answers)]
        out["f1"] = [qa_f1(p, a) for p, a in zip(predictions, answers)]
    return out


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap confidence interval of ``mean(a) - mean(b)``, where ``a[i]`` and ``b[i]`` are the values of
    two systems on the same query ``i`` (e.g. per-query F1 from :func:`per_query_metrics`).

    Queries are resampled with replacement ``n_resamples`` times (the same resample for both systems, which keeps the
    pairing); the interval is the percentile interval of the resampled differences.

    Returns ``{"diff", "low", "high", "n", "significant"}``: ``significant`` is False when the interval contains 0,
    which is to be reported as "no measurable change".

    Example::

        >>> ci = paired_bootstrap_ci([1, 1, 0, 1], [0, 1, 0, 0])
        >>> round(ci["diff"], 2)
        0.5
    """
    import numpy as np

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b: expected two equally long lists of per-query values (the same queries in the "
                         f"same order), got lengths {len(a)} and {len(b)}")
    if len(x) == 0:
        raise ValueError("a and b: no queries")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a and b: per-query values must be finite numbers")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence!r}")
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_resamples, len(d)))
    means = d[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "n": int(len(d)),
            "significant": bool(low > 0 or high < 0)}


METRIC_MODULES = Path(__file__).parent / "metrics_modules"


def load_metric(name: str, **kwargs):
    """Load ``rag_qa`` (EM/F1) or ``rag_retrieval`` (Recall@k) as an :mod:`evaluate` module.

    The modules live in this package, so they load offline (``evaluate.load`` of a local path).
    """
    import evaluate

    path = METRIC_MODULES / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRIC_MODULES.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"metric {name!r}: unknown; available: {available}")
    return evaluate.load(str(path), **kwargs)
