"""Prompt formatting (chat templates) and batched generation for the generator."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using the given passages. Reply with the answer only: a few words, no full sentence."
)


def truncate_passage(text: str, tokenizer, max_tokens: int | None) -> str:
    """Cut a passage to at most ``max_tokens`` tokens of ``tokenizer`` (None: keep it whole)."""
    if max_tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def format_context(passages: Sequence[str]) -> str:
    return "\n\n".join(f"Passage {i}: {p}" for i, p in enumerate(passages, 1))


def build_messages(question: str, passages: Sequence[str], system_prompt: str | None = DEFAULT_SYSTEM_PROMPT):
    """Conversational prompt (TRL's format): optional system message + a user message with passages and question."""
    user = f"{format_context(passages)}\n\nQuestion: {question}" if passages else f"Question: {question}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user}]


def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def build_prompt(
    tokenizer,
    question: str,
    passages: Sequence[str],
    max_passage_tokens: int | None = 192,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> str:
    """The prompt string the generator reads: its chat template when it has one, else a plain text prompt.

    Passages (never the question) are truncated to ``max_passage_tokens`` tokens each.
    """
    passages = [truncate_passage(p, tokenizer, max_passage_tokens) for p in passages]
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            build_messages(question, passages, system_prompt), tokenize=False, add_generation_prompt=True
        )
    head = f"{system_prompt}\n\n" if system_prompt else ""
    ctx = f"{format_context(passages)}\n\n" if passages else ""
    return f"{head}{ctx}Question: {question}\nAnswer:"


def clean_answer(text: str) -> str:
    """First non-empty line of a completion, stripped."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@contextlib.contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    batch_size: int = 8,
    max_new_tokens: int = 32,
    num_return_sequences: int = 1,
    seed: int | None = None,
    clean: bool = True,
    **generate_kwargs,
) -> list[str] | list[list[str]]:
    """Batched generation with left padding; prompts are grouped by length and answers come back in input order.

    ``generate_kwargs`` go to ``model.generate`` (``do_sample``, ``num_beams``, ``temperature``, ``top_p``...;
    default greedy). With ``num_return_sequences > 1`` each entry is a list of that many answers.
    ``seed`` makes sampling reproducible (the generator is re-seeded per batch from ``seed`` and the batch's first
    prompt position, so results do not depend on ``batch_size`` ordering across runs with the same inputs).
    """
    if isinstance(prompts, str):
        raise ValueError("prompts: expected a list of strings, got a single string")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    generate_kwargs.setdefault("do_sample", False)
    if not generate_kwargs["do_sample"]:
        generate_kwargs.setdefault("temperature", None)
        generate_kwargs.setdefault("top_p", None)
        generate_kwargs.setdefault("top_k", None)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list = [None] * len(prompts)
    device = next(model.parameters()).device
    with _left_padding(tokenizer):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            if seed is not None:
                torch.manual_seed(seed + start)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                **generate_kwargs,
            )
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            if clean:
                texts = [clean_answer(t) for t in texts]
            for j, i in enumerate(idx):
                chunk = texts[j * num_return_sequences : (j + 1) * num_return_sequences]
                out[i] = chunk if num_return_sequences > 1 else chunk[0]
    return out
