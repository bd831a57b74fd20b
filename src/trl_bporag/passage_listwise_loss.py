"""A passage-level listwise loss for ``SentenceTransformerTrainer``: Plackett–Luce over graded passages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import LIPO_CITATION, ListwiseSetDPOLoss


class PlackettLucePassageLoss(nn.Module):
    """Plackett–Luce over the graded passages of each query: a listwise bi-encoder loss for
    ``SentenceTransformerTrainer``.

    For a query q with passages p_1..p_n and grades y_1..y_n (higher is more relevant), z_j = scale · cos(q, p_j).
    Every passage i that is graded above at least one other contributes
    −log [exp z_i / (exp z_i + Σ_{j: y_j < y_i} exp z_j)]: the likelihood of the grades' order, with equally graded
    passages kept out of each other's denominators; the loss is the mean of those terms. With one relevant passage
    and n − 1 graded 0 it is MultipleNegativesRankingLoss restricted to the row's own negatives. It is
    :class:`~trl_bporag.ListwiseSetDPOLoss` (reference-free, β = ``scale``) applied to single passages instead of
    windows. A grade of NaN marks a padding passage of a row with fewer candidates (masked out).

    Args:
        model: the SentenceTransformer to train.
        scale: the inverse temperature of the cosine similarities (MNRL's default 20).

    Requirements:
        1. one query and a fixed number n ≥ 2 of passages per row, with a grade for each passage

    Inputs:
        +-----------------------------------------+-----------------------------------------------------+
        | Texts                                   | Labels                                              |
        +=========================================+=====================================================+
        | (query, passage_1, ..., passage_n)      | grades [n] per row (a list column named ``label``), |
        |                                         | higher is better, NaN = padding                     |
        +-----------------------------------------+-----------------------------------------------------+

    Example::

        from datasets import Dataset
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        from trl_bporag.passage_listwise_loss import PlackettLucePassageLoss

        model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
        train = Dataset.from_dict({
            "query": ["what is the capital of france"],
            "p1": ["paris is the capital of france"], "p2": ["the seine flows through paris"],
            "p3": ["berlin is in germany"],
            "label": [[2.0, 1.0, 0.0]],
        })
        trainer = SentenceTransformerTrainer(model=model, train_dataset=train,
                                             loss=PlackettLucePassageLoss(model))
        trainer.train()

    Citation: Plackett (1975), Luce (1959); Liu et al., "LiPO" (arXiv:2402.01878).
    """

    def __init__(self, model, scale: float = 20.0) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or scale == float("inf"):
            raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
        self.model, self.scale = model, float(scale)
        self.ranking = ListwiseSetDPOLoss(beta=self.scale, reference="free")

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        query, passages = embeddings[0], torch.stack(embeddings[1:], dim=1)  # [B, d], [B, n, d]
        if labels is None or labels.dim() != 2 or labels.shape != passages.shape[:2]:
            raise ValueError(f"label: expected one grade per passage, shape [batch, {passages.shape[1]}], got "
                             f"{None if labels is None else tuple(labels.shape)}; each row needs a list column "
                             "'label' as long as its passage columns")
        mask = ~torch.isnan(labels)
        cos = (F.normalize(query, dim=-1).unsqueeze(1) * F.normalize(passages, dim=-1)).sum(-1)  # [B, n]
        return self.ranking(cos, labels.nan_to_num(0.0).to(cos.device), mask=mask.to(cos.device))

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    @property
    def citation(self) -> str:
        return LIPO_CITATION
