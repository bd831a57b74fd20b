"""The model card of a set-DPO retriever: sentence-transformers' own card (its template, usage snippet, architecture
and framework versions, from the model's ``model_card_data``) plus the set-DPO settings and, when measured, the
retrieval metrics before and after training, in the YAML header (``set_dpo``, ``retrieval_metrics``) and as tables.
"""

from __future__ import annotations

import os
from typing import Any

CARD_MARKER = "## Set-DPO training (trl-bporag)"
CARD_TAGS = ["trl", "bporag", "sentence-transformers", "set-dpo"]


def check_retrieval_metrics(retrieval_metrics: dict[str, Any]) -> dict[str, Any]:
    """Validate retrieval metrics for the card: ``{"before": {name: number}, "after": {...}, **free-form keys}``
    (``before`` and/or ``after``). Returns a clean copy; raises a ``ValueError`` naming the bad entry."""
    if not isinstance(retrieval_metrics, dict) or not ({"before", "after"} & set(retrieval_metrics)):
        raise ValueError("retrieval_metrics: expected a dict with 'before' and/or 'after' (metric name -> number), got "
                         f"{retrieval_metrics!r}")
    clean: dict[str, Any] = {}
    for key, value in retrieval_metrics.items():
        if key not in ("before", "after"):
            clean[str(key)] = value
            continue
        if not isinstance(value, dict):
            raise ValueError(f"retrieval_metrics[{key!r}]: expected a dict of metric -> number, got {value!r}")
        for name, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number:
                raise ValueError(f"retrieval_metrics[{key!r}][{name!r}]: expected a number, got {number!r}")
        clean[key] = {str(name): float(number) for name, number in value.items()}
    return clean


def base_model_id(model) -> str | None:
    """The id a SentenceTransformer was loaded from (as ``load_retriever`` records it, or its card's base model)."""
    card = getattr(model, "model_card_data", None)
    for candidate in (getattr(model, "bporag_model_id", None), getattr(card, "base_model", None),
                      getattr(card, "model_id", None)):
        if candidate:
            return str(candidate)
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def describe_training(preference_loss, reference: str | None) -> tuple[str, str, str]:
    """(objective, one sentence on what the retriever was trained on, reference) for a card, from the trainer's
    preference loss (None: the sft term alone) and its reference (None: none is read)."""
    from ..losses import ListwiseSetDPOLoss

    if isinstance(preference_loss, ListwiseSetDPOLoss):
        objective = "listwise (Plackett-Luce)"
        sentence = "all judged windows of each query at once: Plackett–Luce over the judge's order of β·s(q, P)"
    elif preference_loss is not None:
        objective = "pairwise"
        sentence = "preference pairs (P+, P−) of retrieved lists, with logits β[(s(P+) − s(P−)) − reference margin]"
    else:
        objective, sentence = "sft only", "the contrastive NLL of the passages each preferred list adds (sft)"
    if reference is None:
        reference = "none (reference-free)" if preference_loss is not None else "none (sft only)"
    return objective, sentence, reference


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith(".")


def retriever_card(
    model,
    settings: dict[str, Any],
    objective: str,
    model_id: str,
    base_model: str | None = None,
    dataset_name: str | None = None,
    tags: list[str] | None = None,
    retrieval_metrics: dict[str, Any] | None = None,
    citation: str | None = None,
) -> str:
    """The README.md text of a trained retriever.

    Args:
        model: the trained ``SentenceTransformer`` (its ``model_card_data`` is filled in and rendered by
            ``sentence_transformers``' card generator).
        settings: the set-DPO settings (k, score, β, losses, ...), recorded as ``set_dpo`` and as a table.
        objective: one sentence saying what the retriever was trained on.
        model_id: the name in the usage snippet (the Hub id once pushed, else the folder's name).
        base_model: the retriever it was trained from; recorded as ``base_model`` when it is a Hub id.
        dataset_name: the preference data set, recorded as ``datasets``.
        tags: extra tags beside :data:`CARD_TAGS`.
        retrieval_metrics: see :func:`check_retrieval_metrics`.
        citation: BibTeX of the method, added to the card's citations.
    """
    from huggingface_hub import ModelCard
    from sentence_transformers.base.model_card import generate_model_card

    data = model.model_card_data
    data.model_id = model_id
    # "generated_from_trainer": sentence-transformers writes a new card instead of reusing the base model's
    data.add_tags(["generated_from_trainer", *CARD_TAGS, *(tags or [])])
    if _is_hub_id(base_model):
        data.base_model = base_model
    data.all_hyperparameters = {key: value for key, value in settings.items() if value is not None}
    if citation:
        data.citations = {**(data.citations or {}), "Set-DPO (DPO)": citation}
    card = ModelCard(generate_model_card(model))
    card.data.set_dpo = data.all_hyperparameters
    if dataset_name:
        card.data.datasets = [dataset_name]
    section = f"\n{CARD_MARKER}\n\nTrained with `SetDPOTrainer` (TRL's `DPOTrainer` for dense retrievers) on {objective}.\n"
    if retrieval_metrics:
        card.data.retrieval_metrics = retrieval_metrics
        before, after = retrieval_metrics.get("before", {}), retrieval_metrics.get("after", {})
        where = ", ".join(f"{k}: `{v}`" for k, v in retrieval_metrics.items() if k not in ("before", "after"))
        rows = "\n".join(f"| {name} | {_cell(before, name)} | {_cell(after, name)} |"
                         for name in dict.fromkeys([*before, *after]))
        section += ("\n### Retrieval metrics\n\n" + (f"Measured on {where}.\n\n" if where else "")
                    + f"| metric | before | after |\n|---|---|---|\n{rows}\n")
    text = str(card)
    marker = text.find("## Training Details")
    return text[:marker] + section.lstrip("\n") + "\n" + text[marker:] if marker >= 0 else text + section


def _cell(table: dict[str, float], name: str) -> str:
    return f"{table[name]:.4f}" if name in table else "-"
