"""The plain ways our speed-ups are measured against (benchmarks) and checked against (tests): each gives the same
results as the library, without its sharing. They live here, not in the library.

* :class:`NaiveSetScorer`: every entry of every list encoded (no unique-passage sharing, nothing skipped).
* :class:`UncachedRetrievalPreferenceBuilder`: every (query, window) judged by its own ``generate`` call.
* :class:`PerAnswerGenerationPreferenceBuilder`: one ``generate`` call per candidate answer, or (``per_answer=False``)
  two batched calls in which each prompt is read once for its beam and once for its samples.
"""

from __future__ import annotations

from trl_bporag.generation import generate, generate_candidates
from trl_bporag.preferences import GenerationPreferenceBuilder, RetrievalPreferenceBuilder
from trl_bporag.trainers.set_scores import SetScorer


class NaiveSetScorer(SetScorer):
    """Set scores with every list entry encoded: the chosen and the rejected windows separately, repeats included."""

    def list_scores(self, model, queries, lists):
        q_emb = self.encode(model, list(dict.fromkeys(queries)), "query")
        index = {t: i for i, t in enumerate(dict.fromkeys(queries))}
        q_emb = q_emb[[index[t] for t in queries]]
        flat = [t for row in lists for w in row for t in w]
        emb = self.encode(model, flat, "document").view(len(lists), len(lists[0]), self.k, -1)
        B, L = emb.shape[:2]
        sims = self.similarities(q_emb, emb.reshape(B, L * self.k, -1)).view(B, L, self.k)
        every = self.similarities(q_emb, emb.reshape(1, -1, emb.shape[-1]).expand(B, -1, -1))  # f(q_b, each entry)
        return (sims * self.weights.to(sims.device)).sum(-1), (flat, every)


def naive_scorer(trainer) -> NaiveSetScorer:
    """A :class:`NaiveSetScorer` with the settings of ``trainer.scorer``."""
    scorer = NaiveSetScorer(1)
    scorer.__dict__.update(trainer.scorer.__dict__)
    scorer.skip_shared = False
    return scorer


class UncachedRetrievalPreferenceBuilder(RetrievalPreferenceBuilder):
    """Judges every (query, window) with its own batch-1 ``generate`` call: no window cache, no shared prompts."""

    def judge_windows(self, questions, answers, windows, keys=None):
        return [super(UncachedRetrievalPreferenceBuilder, self).judge_windows([q], [a], [w])[0]
                for q, a, w in zip(questions, answers, windows)]

    def generate_answers(self, prompts, stop):
        return [generate(self.generator, self.tokenizer, [p], batch_size=1, max_new_tokens=self.max_new_tokens,
                         stop=stop)[0] for p in prompts]


class PerAnswerGenerationPreferenceBuilder(GenerationPreferenceBuilder):
    """Candidate answers without the shared prompt read: ``read_once=False`` gives two batched ``generate`` calls
    (beams, samples); ``per_answer=True`` one batch-1 call per answer, with the same seeds."""

    def __init__(self, *args, per_answer: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_answer = per_answer

    def candidate_answers(self, texts, seeds, **kwargs):
        if not self.per_answer:
            return generate_candidates(self.generator, self.tokenizer, list(texts), seeds, batch_size=self.batch_size,
                                       read_once=False, **kwargs)
        per_text = [generate_candidates(self.generator, self.tokenizer, [t], [s], batch_size=1, read_once=False,
                                        **kwargs) for t, s in zip(texts, seeds)]
        return [b[0] for b, _ in per_text], [ss[0] for _, ss in per_text]
