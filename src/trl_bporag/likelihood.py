"""Teacher-forced answer likelihood under the generator: the ``answer_likelihood`` judge and the REPLUG-LSR teacher.

For a question, an evidence window and the gold answers, the score is the generator's mean log-probability per token of
the best gold answer as its reply to the prompt that :func:`~trl_bporag.generation.build_prompt` builds (the one it
reads at inference). One forward pass per (window, distinct gold answer), no decoding; the LM head runs on the answer
positions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .generation import DEFAULT_SYSTEM_PROMPT, build_prompt
from .metrics import normalize_answer


def _distinct_answers(answers: Sequence[str]) -> list[str]:
    """Gold answers that differ after SQuAD normalisation (the first spelling of each), empty ones left out."""
    seen, out = set(), []
    for answer in answers:
        key = normalize_answer(answer)
        if key and key not in seen:
            seen.add(key)
            out.append(answer.strip())
    return out


@torch.no_grad()
def answer_log_likelihood(
    model,
    tokenizer,
    questions: Sequence[str],
    windows: Sequence[Sequence[str]],
    answers: Sequence[Sequence[str]],
    max_passage_tokens: int | None = 192,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    batch_size: int = 8,
    progress: bool = False,
    answer_prefix: str | None = None,
) -> list[float]:
    """max over the distinct gold answers a of (1/|a|) Σ_t log p(a_t | prompt(q, window), a_<t), one per window.

    Args:
        model: a causal LM (``AutoModelForCausalLM``).
        tokenizer: its tokenizer.
        questions, windows, answers: aligned lists: the question, the window's passage texts and the gold answers.
        max_passage_tokens, system_prompt, answer_prefix: as in :func:`~trl_bporag.generation.build_prompt` (with
            an answer prefix, the answer is scored as the continuation of the prompt that ends with it).
        batch_size: sequences per forward pass (sequences are grouped by length).
        progress: show a tqdm bar.
    """
    if not (len(questions) == len(windows) == len(answers)):
        raise ValueError(f"questions, windows and answers: expected equal lengths, got {len(questions)}, "
                         f"{len(windows)} and {len(answers)}")
    items = []  # (window position, prompt ids, answer ids)
    prompt_cache: dict = {}
    for i, (q, window, golds) in enumerate(zip(questions, windows, answers)):
        distinct = _distinct_answers(golds)
        if not distinct:
            raise ValueError(f"answers[{i}]: no non-empty gold answer for question {q!r}")
        key = (q, tuple(window))
        if key not in prompt_cache:
            prompt = build_prompt(tokenizer, q, list(window), max_passage_tokens, system_prompt, answer_prefix)
            prompt_cache[key] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for a in distinct:
            items.append((i, prompt_cache[key], tokenizer(a, add_special_tokens=False)["input_ids"]))
    order = sorted(range(len(items)), key=lambda j: -(len(items[j][1]) + len(items[j][2])))
    best = [-float("inf")] * len(questions)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="answer likelihood", unit="batch")
    try:
        for batch in batches:
            seqs = [items[j][1] + items[j][2] for j in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            rows, positions, targets = [], [], []
            for r, j in enumerate(batch):
                n_prompt, answer = len(items[j][1]), items[j][2]
                rows += [r] * len(answer)
                positions += list(range(n_prompt - 1, n_prompt - 1 + len(answer)))  # position t predicts token t+1
                targets += answer
            logits = head(hidden[torch.tensor(rows), torch.tensor(positions)]).float()
            token_lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
            cursor = 0
            for j in batch:
                n = len(items[j][2])
                value = float(token_lp[cursor:cursor + n].mean())
                cursor += n
                best[items[j][0]] = max(best[items[j][0]], value)
    finally:
        model.train(was_training)
    return best
