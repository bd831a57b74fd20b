"""The model card of a set-DPO retriever: sentence-transformers' own card (its template, usage snippet, architecture
and framework versions, from the model's ``model_card_data``) plus the set-DPO settings and, when measured, the
retrieval metrics before and after training, in the YAML header (``set_dpo``, ``retrieval_metrics``) and as tables.
"""

from __future__ import annotations

import os
from pathlib import Path
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
    section = (f"\n{CARD_MARKER}\n\nTrained with `SetDPOTrainer` (TRL's `DPOTrainer` for dense retrievers) on "
               f"{objective}.\n")
    if retrieval_metrics:
        card.data.retrieval_metrics = retrieval_metrics
        _model_index(card, model_id, retrieval_metrics)
        before, after = retrieval_metrics.get("before", {}), retrieval_metrics.get("after", {})
        where = ", ".join(f"{k}: `{v}`" for k, v in retrieval_metrics.items() if k not in ("before", "after"))
        rows = "\n".join(f"| {name} | {_cell(before, name)} | {_cell(after, name)} |"
                         for name in dict.fromkeys([*before, *after]))
        section += ("\n### Retrieval metrics\n\n" + (f"Measured on {where}.\n\n" if where else "")
                    + f"| metric | before | after |\n|---|---|---|\n{rows}\n")
    text = str(card)
    marker = text.find("## Training Details")
    return text[:marker] + section.lstrip("\n") + "\n" + text[marker:] if marker >= 0 else text + section


def _model_index(card, model_id: str, retrieval_metrics: dict) -> None:
    """The metrics after training as the Hub's ``model-index`` (shown on the model page), beside the before/after
    table; the data set and split as ``retrieval_metrics`` names them."""
    from huggingface_hub import EvalResult

    dataset = str(retrieval_metrics.get("dataset") or "unknown")
    name = os.path.basename(dataset.rstrip("/")) or dataset
    results = [EvalResult(task_type="information-retrieval", task_name="Information Retrieval", dataset_type=name,
                          dataset_name=name, dataset_split=retrieval_metrics.get("split"), metric_type=metric,
                          metric_value=float(value), metric_name=metric)
               for metric, value in (retrieval_metrics.get("after") or {}).items()]
    if results:
        card.data.model_name = model_id
        card.data.eval_results = [*(card.data.eval_results or []), *results]


def _cell(table: dict[str, float], name: str) -> str:
    return f"{table[name]:.4f}" if name in table else "-"


class RetrieverCard:
    """Mixin of :class:`~trl_bporag.SetDPOTrainer`: its model card and the ``bporag_config.json`` of its folders (the
    trainer provides the losses, ``k``, ``score``, the reference choice and ``_base_model_id``)."""

    _card_metrics = None
    _card_dataset_name = None

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, retrieval_metrics: dict | None = None, **kwargs) -> None:
        """Write ``README.md`` to ``args.output_dir`` (called by ``push_to_hub`` and at each checkpoint, as in TRL):
        sentence-transformers' card of the retriever plus the set-DPO settings (:mod:`.retriever_card`).

        Args:
            model_name: the name in the card's usage snippet (default: ``hub_model_id``, else the folder's name).
            dataset_name: the preference data set (Hub id or folder); recorded in the card's ``datasets``.
            tags: extra tags.
            retrieval_metrics: retrieval quality before and after training, e.g. ``{"dataset": "squad-dev", "before":
                {"recall@5": 0.61}, "after": {"recall@5": 0.64}}`` (:meth:`set_retrieval_metrics`).
        """
        if retrieval_metrics is not None:
            self.set_retrieval_metrics(retrieval_metrics)
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            self._write_card(self.args.output_dir, model_name, dataset_name, [tags] if isinstance(tags, str) else tags)

    def set_retrieval_metrics(self, retrieval_metrics: dict) -> None:
        """Record retrieval metrics before/after training for every later model card (see :meth:`create_model_card`)."""
        self._card_metrics = check_retrieval_metrics(retrieval_metrics)

    def folder_config(self) -> dict:
        """What a saved retriever folder records in ``bporag_config.json`` for the pipeline: k and the score."""
        return {"stage": "rpo", "k": self.k, "score": self.score,
                "position_weights": self.args.position_weights[: self.k] if self.args.position_weights else None,
                # where this retriever is pushed: the stages that record it by folder also record this id
                "retriever_hub_id": self.args.hub_model_id}

    def _write_card(self, output_dir, model_name=None, dataset_name=None, tags=None) -> None:
        self._card_dataset_name = dataset_name or self._card_dataset_name
        reference = ("base encoder (PEFT adapter disabled)" if self._peft_adapter else
                     "precomputed reference set scores" if self.precompute_ref_scores else
                     "frozen copy of the base retriever" if self._ref_is_policy_copy else
                     "explicit reference retriever")
        objective, sentence, reference = describe_training(self.preference_loss, reference if self._needs_reference
                                                           else None)
        settings = {**self.folder_config(), "beta": self.beta, "loss_type": self.loss_types,
                    "loss_weights": self.loss_weights, "objective": objective,
                    "label_smoothing": self.args.label_smoothing, "reference": reference,
                    "max_query_length": self.args.max_query_length, "max_passage_length": self.args.max_passage_length,
                    "learning_rate": self.args.learning_rate, "global_step": self.state.global_step,
                    "base_model": self._base_model_id}
        settings.pop("stage")
        losses = [loss for loss in (self.preference_loss, self.contrastive_loss) if loss is not None]
        settings["losses"] = {type(loss).__name__: loss.get_config_dict() for loss in losses}
        citation = "".join(loss.citation for loss in losses) or self._paper.get("citation")
        text = retriever_card(self.accelerator.unwrap_model(self.model), settings, sentence,
                              self.hub_model_id or model_name or Path(self.args.output_dir).name, self._base_model_id,
                              self._card_dataset_name, tags, self._card_metrics, citation)
        Path(output_dir, "README.md").write_text(text)
