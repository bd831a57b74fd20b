"""The plain ways our speed-ups are measured against (benchmarks) and checked against (tests): each gives the same
results as the library, without its sharing. They live here, not in the library.

* :class:`NaiveSetScorer`: every entry of every list encoded (no unique-passage sharing, nothing skipped).
* :class:`UncachedRetrievalPreferenceBuilder`: every (query, window) judged by its own ``generate`` call.
* :class:`PerAnswerGenerationPreferenceBuilder`: one ``generate`` call per candidate answer, or (``per_answer=False``)
  two batched calls in which each prompt is read once for its beam and once for its samples.
* :func:`padded_answer_log_likelihood`: the ``answer_likelihood`` judge as it was before it shared prompts: batches of
  prompt + answer sequences padded to their longest, one forward pass each (every prompt read in full).
"""

from __future__ import annotations

import torch

from trl_bporag.generation import DEFAULT_SYSTEM_PROMPT, build_prompt, generate, generate_candidates
from trl_bporag.likelihood import _distinct_answers
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

    def judge_windows(self, questions, answers, windows, keys=None, golds=None):
        golds = golds if golds is not None else [None] * len(windows)
        parent = super()
        return [parent.judge_windows([q], [a], [w], golds=None if g is None else [g])[0]
                for q, a, w, g in zip(questions, answers, windows, golds)]

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


@torch.no_grad()
def padded_answer_log_likelihood(model, tokenizer, questions, windows, answers, max_passage_tokens=192,
                                 system_prompt=DEFAULT_SYSTEM_PROMPT, batch_size=8, answer_prefix=None):
    """max over the distinct gold answers of the mean answer-token log-probability, one value per window: right-padded
    batches of prompt + answer (longest first), the decoder over every token, the LM head on the answer positions."""
    items, prompts = [], {}
    for i, (q, window, golds) in enumerate(zip(questions, windows, answers)):
        key = (q, tuple(window))
        if key not in prompts:
            text = build_prompt(tokenizer, q, list(window), max_passage_tokens, system_prompt, answer_prefix)
            prompts[key] = tokenizer(text, add_special_tokens=False)["input_ids"]
        for a in _distinct_answers(golds):
            items.append((i, prompts[key], tokenizer(a, add_special_tokens=False)["input_ids"]))
    order = sorted(range(len(items)), key=lambda j: -(len(items[j][1]) + len(items[j][2])))
    best = [-float("inf")] * len(questions)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        seqs = [items[j][1] + items[j][2] for j in batch]
        width = max(len(seq) for seq in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), 1
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        rows, positions, targets = [], [], []
        for r, j in enumerate(batch):
            n_prompt, answer = len(items[j][1]), items[j][2]
            rows += [r] * len(answer)
            positions += list(range(n_prompt - 1, n_prompt - 1 + len(answer)))
            targets += answer
        logits = head(hidden[torch.tensor(rows), torch.tensor(positions)]).float()
        token_lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(targets)[:, None])[:, 0]
        cursor = 0
        for j in batch:
            n = len(items[j][2])
            best[items[j][0]] = max(best[items[j][0]], float(token_lp[cursor:cursor + n].mean()))
            cursor += n
    return best
