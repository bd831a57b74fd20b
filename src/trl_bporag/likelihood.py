"""Teacher-forced answer likelihood under the generator: the ``answer_likelihood`` judge and the REPLUG-LSR teacher.

For a question, an evidence window and the gold answers, the score is the generator's mean log-probability per token of
the best gold answer as its reply to the prompt that :func:`~trl_bporag.generation.build_prompt` builds (the one it
reads at inference). No decoding: each prompt is read once into a KV cache that the next prompt reuses for the tokens
they share, and each distinct gold answer is teacher-forced on top of it (the LM head runs on the answer positions
only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .generation import build_prompt
from .metrics import normalize_answer
from .settings import DEFAULTS


def _distinct_answers(answers: Sequence[str]) -> list[str]:
    """Gold answers that differ after SQuAD normalisation (the first spelling of each), empty ones left out."""
    seen, out = set(), []
    for answer in answers:
        key = normalize_answer(answer)
        if key and key not in seen:
            seen.add(key)
            out.append(answer.strip())
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _cut(cache, keep: int) -> None:
    """Keep the first ``keep`` tokens of ``cache`` (``crop`` with a negative count: what every transformers version
    reads as "remove that many from the end")."""
    remove = cache.get_seq_length() - keep
    if remove > 0:
        cache.crop(-remove)


def _answer_logprob(model, cache, last_prompt_token: int, answer: list[int], device) -> float:
    """Mean log-probability of ``answer`` continuing the prompt held in ``cache`` (all of it but its last token)."""
    ids = torch.tensor([[last_prompt_token, *answer[:-1]]], device=device)
    logits = model(input_ids=ids, cache=cache, use_cache=cache is not None).logits[0].float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer, device=device)[:, None])[:, 0]
    return float(token_lp.mean())


@torch.no_grad()
def answer_log_likelihood(
    model,
    tokenizer,
    questions: Sequence[str],
    windows: Sequence[Sequence[str]],
    answers: Sequence[Sequence[str]],
    max_passage_tokens: int | None = DEFAULTS.max_passage_tokens,
    system_prompt: str | None = DEFAULTS.system_prompt,
    progress: bool = False,
    answer_prefix: str | None = DEFAULTS.answer_prefix,
) -> list[float]:
    """max over the distinct gold answers a of (1/|a|) Σ_t log p(a_t | prompt(q, window), a_<t), one per window.

    Read at prefill speed: the prompts are sorted by their tokens and read one at a time into one KV cache, each
    starting from what it shares with the prompt before it (the windows of one question share the system prompt and
    their first passages; the lists a perturbation changes from the third passage on share the first two). Each gold
    answer is then teacher-forced on top of the cached prompt and cut off again. No padding, no attention mask (the
    fast causal kernel), the same values as one forward pass over prompt + answer up to floating-point rounding.
    Models whose cache cannot be cut (sliding-window or linear-attention layers) read each prompt + answer whole.

    Args:
        model: a causal LM (``AutoModelForCausalLM``).
        tokenizer: its tokenizer.
        questions: the question of each window.
        windows: each window's passage texts.
        answers: each window's gold answers.
        max_passage_tokens: as in :func:`~trl_bporag.generation.build_prompt`.
        system_prompt: as in :func:`~trl_bporag.generation.build_prompt`.
        progress: show a tqdm bar.
        answer_prefix: as in :func:`~trl_bporag.generation.build_prompt`: the answer is scored as the continuation
            of the prompt that ends with it.
    """
    from .generation import _plain_kv_cache

    if not (len(questions) == len(windows) == len(answers)):
        raise ValueError(f"questions, windows and answers: expected equal lengths, got {len(questions)}, "
                         f"{len(windows)} and {len(answers)}")
    prompts: dict = {}  # (question, window) -> prompt token ids
    golds: list[list[list[int]]] = []
    keys = []
    for i, (q, window, gold) in enumerate(zip(questions, windows, answers)):
        distinct = _distinct_answers(gold)
        if not distinct:
            raise ValueError(f"answers[{i}]: no non-empty gold answer for question {q!r}")
        key = (q, tuple(window))
        if key not in prompts:
            prompt = build_prompt(tokenizer, q, list(window), max_passage_tokens, system_prompt, answer_prefix)
            prompts[key] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(prompts[key]) < 1:
                raise ValueError(f"windows[{i}]: the prompt of question {q!r} has no tokens")
        keys.append(key)
        golds.append([tokenizer(a, add_special_tokens=False)["input_ids"] for a in distinct])
    order = sorted(range(len(keys)), key=lambda i: prompts[keys[i]])  # neighbours share prefixes
    device = next(model.parameters()).device
    shared_cache = _plain_kv_cache(model)
    was_training = model.training
    model.eval()
    best = [-float("inf")] * len(keys)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="answer likelihood", unit="window")
    try:
        from transformers import DynamicCache

        cache, cached = DynamicCache(config=model.config), []  # the tokens the cache holds
        for i in order:
            prompt = prompts[keys[i]]
            context = prompt[:-1]
            if shared_cache:
                keep = _common_prefix(cached, context)
                if keep < len(cached):
                    _cut(cache, keep)
                if keep < len(context):
                    model(input_ids=torch.tensor([context[keep:]], device=device), cache=cache, use_cache=True,
                          logits_to_keep=1)
                cached = list(context)
            for answer in golds[i]:
                if not answer:
                    continue
                if shared_cache:
                    value = _answer_logprob(model, cache, prompt[-1], answer, device)
                    _cut(cache, len(context))
                else:  # the whole prompt + answer, no cache
                    ids = torch.tensor([prompt + answer[:-1]], device=device)
                    logits = model(input_ids=ids).logits[0, len(prompt) - 1:].float()
                    value = float(torch.log_softmax(logits, -1).gather(
                        1, torch.tensor(answer, device=device)[:, None]).mean())
                best[i] = max(best[i], value)
            if bar is not None:
                bar.update(1)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return best
