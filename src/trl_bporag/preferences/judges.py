"""Judges score an evidence window (the first k passages of a list) for a query with gold answers.

A judge is ``judge(questions, answers, windows) -> list[float]`` over a batch; higher is better. Built-ins:

* ``"generator_f1"`` (the paper): the base generator answers from the window, scored by token F1 against the golds.
  Needs a generator; built by :class:`~trl_bporag.preferences.RetrievalPreferenceBuilder`.
* ``"answer_likelihood"``: the base generator's teacher-forced mean log-probability of the best gold answer given
  the window (:func:`~trl_bporag.likelihood.answer_log_likelihood`): graded (no ties), no decoding, each prompt read
  once into a KV cache shared with the windows it begins like. Needs a generator; built by the builder.
* ``"answer_hit"``: fraction of the window's passages that contain a gold answer (no generator; cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..metrics import has_answer
from ..settings import GENERATOR_JUDGES, JUDGES  # noqa: F401 (re-exported)

Judge = Callable[[Sequence[str], Sequence[Sequence[str]], Sequence[Sequence[str]]], list[float]]


def answer_hit_judge(questions, answers, windows) -> list[float]:
    """Fraction of each window's passages that contain a gold answer (whole tokens, SQuAD-normalised)."""
    return [sum(has_answer(p, ans) for p in win) / len(win) for ans, win in zip(answers, windows)]




def get_judge(judge: str | Judge) -> str | Judge:
    """Validate a judge name or callable (``generator_f1`` and ``answer_likelihood`` are resolved by the builder, which
    owns the generator)."""
    if callable(judge):
        return judge
    if judge == "answer_hit":
        return answer_hit_judge
    if judge in GENERATOR_JUDGES:
        return judge
    raise ValueError(f"judge: expected one of {JUDGES} or a callable(questions, answers, windows), got {judge!r}")
