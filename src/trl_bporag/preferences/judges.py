"""Judges score an evidence window (the first k passages of a list) for a query with gold answers.

A judge is ``judge(questions, answers, windows) -> list[float]`` over a batch; higher is better. Built-ins:

* ``"generator_f1"`` (the paper): the base generator answers from the window, scored by token F1 against the golds.
  Needs a generator; built by :class:`~trl_bporag.preferences.RetrievalPreferenceBuilder`.
* ``"answer_likelihood"``: the base generator's teacher-forced mean log-probability of the best gold answer given
  the window (:func:`~trl_bporag.likelihood.answer_log_likelihood`): graded (no ties), no decoding, each prompt read
  once into a KV cache shared with the windows it begins like. Needs a generator; built by the builder.
* ``"answer_hit"``: fraction of the window's passages that contain a gold answer (no generator; cheap).
* ``"qrels"``: nDCG@k of the window against the query's gold passages (:func:`qrels_judge`): no answers and no
  generator, so RPO runs on a standard BEIR set with qrels only. Resolved by the builder, which knows the gold ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..metrics import has_answer
from ..settings import GENERATOR_JUDGES, JUDGES, PASSAGE_JUDGES  # noqa: F401 (re-exported)

Judge = Callable[[Sequence[str], Sequence[Sequence[str]], Sequence[Sequence[str]]], list[float]]


def answer_hit_judge(questions, answers, windows) -> list[float]:
    """Fraction of each window's passages that contain a gold answer (whole tokens, SQuAD-normalised)."""
    return [sum(has_answer(p, ans) for p in win) / len(win) for ans, win in zip(answers, windows)]



def qrels_judge(gold_ids: Sequence[Sequence[str]], window_ids: Sequence[Sequence[str]]) -> list[float]:
    """nDCG@k of each window (passage ids, in order) against its query's gold passage ids: a gold passage at
    position i (1-based) gains 1 / log2(i + 1), divided by the gain of the best window of that length (the golds
    first). 1.0 for a window that starts with all its golds (or k of them), 0.0 for one without any."""
    import math

    scores = []
    for golds, window in zip(gold_ids, window_ids):
        gold = set(golds)
        if not gold:
            raise ValueError("qrels judge: a query without gold passages; every query needs qrels")
        gain = sum(1.0 / math.log2(i + 2) for i, pid in enumerate(window) if pid in gold)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(gold), len(window))))
        scores.append(gain / ideal)
    return scores


def get_judge(judge: str | Judge) -> str | Judge:
    """Validate a judge name or callable (``generator_f1`` and ``answer_likelihood`` are resolved by the builder, which
    owns the generator)."""
    if callable(judge):
        return judge
    if judge == "answer_hit":
        return answer_hit_judge
    if judge in GENERATOR_JUDGES or judge in PASSAGE_JUDGES:
        return judge
    raise ValueError(f"judge: expected one of {JUDGES} or a callable(questions, answers, windows), got {judge!r}")
