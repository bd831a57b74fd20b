"""Set scores of collated RPO batches under a SentenceTransformer, as :class:`~trl_bporag.SetDPOTrainer` computes them.

s(q, P) = Σ_{i≤k} w_i f(q, P_i), with f the cosine (or dot) similarity of the model's query and passage embeddings.
Queries and passages are encoded the way the model serves them (its ``query`` / ``document`` prompts and Router
routes, as ``encode_query`` / ``encode_document`` do), each unique text of a batch once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .set_dpo_data import LIST_SCORES_COLUMN, LISTS_COLUMN


def prompt_for(st_model, kind: str) -> str | None:
    """The model's own prompt for ``kind`` ("query", or "document" / "passage" / "corpus"); None when it has none."""
    prompts = getattr(st_model, "prompts", None) or {}
    for name in ["query"] if kind == "query" else ["document", "passage", "corpus"]:
        if name in prompts:
            return prompts[name] or None
    default = getattr(st_model, "default_prompt_name", None)
    return (prompts.get(default) or None) if default else None


def batch_lists(inputs: dict[str, Any], k: int) -> list[list[list[str]]]:
    """The windows of a collated batch, ``[B][L][k]``: listwise rows as they are, a pair as [chosen, rejected]."""
    if LISTS_COLUMN in inputs:
        return inputs[LISTS_COLUMN]
    return [[list(c[:k]), list(r[:k])] for c, r in zip(inputs["chosen"], inputs["rejected"])]


def preferred_pair(inputs: dict[str, Any]) -> torch.Tensor:
    """[B, 2] window indices of each row's preferred and dispreferred window: (chosen, rejected) = (0, 1) for a pair;
    for a listwise row the best- and the worst-judged list (the first of equals)."""
    if LISTS_COLUMN not in inputs:
        return torch.tensor([[0, 1]] * len(inputs["prompt"]))
    judged, mask = inputs[LIST_SCORES_COLUMN], inputs["list_mask"]
    best = judged.masked_fill(~mask, -float("inf")).argmax(1, keepdim=True)
    worst = judged.masked_fill(~mask, float("inf")).argmin(1, keepdim=True)
    return torch.cat([best, worst], dim=1)


@dataclass
class BatchPlan:
    """What a batch of L lists per query needs encoded, and where each window's passages sit among them.

    ``queries``: the unique query texts, ``query_rows`` [B] the position of each row's query among them;
    ``passages``: the unique passage texts to encode (with ``skip_shared``, none that is in every list of its row);
    ``index`` [B, L, k]: each window entry's position in ``passages``, ``len(passages)`` for a skipped one."""

    queries: list[str]
    query_rows: torch.Tensor
    passages: list[str]
    index: torch.Tensor


class SetScorer:
    """Set scores of L lists per query in one forward per text kind.

    Args:
        k: passages per list that count.
        score: ``"cos"`` or ``"dot"``.
        position_weights: w_1..w_k (None: all 1, the paper's sum score).
        skip_shared: with the sum score, do not encode a passage that is in every list of its row (it adds the same
            f(q, p) to all of them, so every difference between the row's scores, hence every loss, is exact).
        max_query_length: query truncation in tokens (capped by the model's ``max_seq_length``; None: that length,
            the one the model serves with).
        max_passage_length: passage truncation in tokens (the same cap).
        unwrap: gives the SentenceTransformer inside a wrapped (DDP) model; the forward runs through the wrapper.
        mini_batch_size: texts per forward pass when no gradient is taken (reference scores, evaluation), so that
            memory does not grow with the batch; None: one forward per text kind.
    """

    def __init__(self, k: int, score: str = "cos", position_weights=None, skip_shared: bool = True,
                 max_query_length: int | None = None, max_passage_length: int | None = None,
                 unwrap: Callable = lambda m: m, mini_batch_size: int | None = None):
        self.k, self.score, self.unwrap = k, score, unwrap
        self.weights = torch.tensor(list(position_weights[:k]) if position_weights is not None else [1.0] * k,
                                    dtype=torch.float32)
        self.skip_shared = skip_shared and position_weights is None
        self.max_length = {"query": max_query_length, "document": max_passage_length}
        self.mini_batch_size = mini_batch_size

    def features(self, model, texts: list[str], kind: str) -> dict[str, Any]:
        """``texts`` tokenised as the model serves ``kind`` ("query" / "document"): its prompt for that kind, its
        Router route (``features["task"]``), truncated to the kind's length; tensors on the model's device."""
        st_model = self.unwrap(model)
        served = getattr(st_model, "max_seq_length", None)  # what encode_query / encode_document truncate to
        limits = [x for x in (self.max_length[kind], served) if x]
        limit = min(limits) if limits else None
        features = st_model.preprocess(texts, prompt=prompt_for(st_model, kind), task=kind, max_length=limit)
        features = {key: v.to(st_model.device) if isinstance(v, torch.Tensor) else v for key, v in features.items()}
        features["task"] = kind
        return features

    def encode(self, model, texts: list[str], kind: str) -> torch.Tensor:
        """Embed ``texts`` (``kind`` "query" or "document") with ``model``; float32 [n, d]. One forward pass, or
        ``mini_batch_size`` texts at a time when no gradient is taken."""
        step = self.mini_batch_size if self.mini_batch_size and not torch.is_grad_enabled() else len(texts)
        parts = [model(self.features(model, texts[i:i + step], kind))["sentence_embedding"].float()
                 for i in range(0, len(texts), max(step, 1))]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def plan(self, queries: list[str], lists: list[list[list[str]]]) -> BatchPlan:
        """The :class:`BatchPlan` of a batch (``lists[b][j]``: the first-k passages of list j of query b)."""
        unique_queries = list(dict.fromkeys(queries))
        q_index = {t: i for i, t in enumerate(unique_queries)}
        shared = [set.intersection(*(set(w) for w in row)) if self.skip_shared else set() for row in lists]
        unique = list(dict.fromkeys(t for row, sh in zip(lists, shared) for w in row for t in w if t not in sh))
        index = {t: i for i, t in enumerate(unique)}
        idx = torch.tensor([[[len(unique) if t in sh else index[t] for t in w] for w in row]
                            for row, sh in zip(lists, shared)])
        return BatchPlan(unique_queries, torch.tensor([q_index[t] for t in queries]), unique, idx)

    def similarities(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """f(q_b, p_bi) for q [B, d] and p [B, n, d] -> [B, n]."""
        if self.score == "cos":
            q, p = F.normalize(q, p=2, dim=-1), F.normalize(p, p=2, dim=-1)
        return torch.einsum("bd,bkd->bk", q, p)

    def scores_from_embeddings(self, query_emb: torch.Tensor, passage_emb: torch.Tensor, plan: BatchPlan):
        """Set scores ``[B, L]`` and f(q_b, each encoded passage) ``[B, N]`` from the embeddings of
        ``plan.queries`` ([Q, d]) and ``plan.passages`` ([N, d]): the one set-score computation of training,
        cached (GradCache) or not."""
        q_emb = query_emb[plan.query_rows.to(query_emb.device)]
        idx = plan.index.to(passage_emb.device)
        B, L = idx.shape[:2]
        # f(q_b, each encoded passage) [B, N], a 0 column for a skipped passage, then each window's entries picked:
        # the backward of this gather is a deterministic scatter-add on CPU, where that of indexing the embeddings
        # (p_emb[idx]) adds with atomics in parallel, so two runs with the same seed trained to different weights
        sims = self.similarities(q_emb, passage_emb.unsqueeze(0).expand(B, -1, -1))
        picked = F.pad(sims, (0, 1)).gather(1, idx.view(B, L * self.k)).view(B, L, self.k)
        return (picked * self.weights.to(sims.device)).sum(-1), sims

    def list_scores(self, model, queries: list[str], lists: list[list[list[str]]]):
        """Set scores s(q_b, P_bj) (``lists[b][j]``: the first-k passages of list j of query b) under ``model``:
        ``(scores [B, L], (passages [N], sims [B, N]))`` with the N unique encoded passages and f(q_b, each of them)
        (the ``sft`` term's logits)."""
        plan = self.plan(queries, lists)
        scores, sims = self.plan_scores(model, plan)
        return scores, (plan.passages, sims)

    def plan_scores(self, model, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Set scores ``[B, L]`` and f(q_b, each encoded passage) ``[B, N]`` of a planned batch under ``model``, its
        texts encoded in one pass per kind (``mini_batch_size`` at a time without a gradient)."""
        q_emb = self.encode(model, plan.queries, "query")
        p_emb = (self.encode(model, plan.passages, "document") if plan.passages
                 else q_emb.new_zeros((0, q_emb.shape[-1])))
        return self.scores_from_embeddings(q_emb, p_emb, plan)

    def contrastive_targets(self, inputs: dict[str, Any], passages: list[str]):
        """Positives and masked (row, passage) cells of the ``sft`` term: for each row, the passages of the preferred
        window that are not in the dispreferred one, against all of the batch's encoded ``passages``; the row's other
        preferred passages are masked out."""
        index = {t: i for i, t in enumerate(passages)}
        positives, masked = [], []
        for b, (lists, (good, bad)) in enumerate(zip(batch_lists(inputs, self.k), preferred_pair(inputs).tolist())):
            good, bad = lists[good][: self.k], set(lists[bad][: self.k])
            masked.extend((b, index[t]) for t in good if t in index)
            positives.extend((b, index[t]) for t in good if t in index and t not in bad)
        return positives, masked
