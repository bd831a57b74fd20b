"""GradCache for set- and list-level losses: the memory of an RPO step flat in the batch size.

An RPO row encodes its query and the passages of up to nine evidence windows; the uncached step keeps the
activations of every one of them for the backward pass, so memory grows with the batch (7.5 GB at batch 16 for
all-MiniLM-L6-v2 at 256 tokens). sentence-transformers solves this for MNRL with ``CachedMultipleNegativesRankingLoss``
(GradCache, Gao et al. 2021); :class:`CachedSetScores` applies the same three steps, through sentence-transformers' own
:class:`~sentence_transformers.base.losses.CachedLossMixin`, to any loss on set scores:

1. embed the batch's unique queries and passages ``mini_batch_size`` texts at a time **without** a graph;
2. compute the set scores from the embeddings (:meth:`SetScorer.scores_from_embeddings
   <trl_bporag.trainers.set_scores.SetScorer.scores_from_embeddings>`, the same computation as the uncached path),
   the loss on them, and back-propagate it to the embeddings;
3. when the trainer calls ``backward`` on the returned loss, re-embed each mini-batch **with** a graph and push its
   cached embedding gradients through it (the mixin's backward hook; dropout replays its RNG state, gradient
   accumulation and DDP synchronisation are handled there).

Only one mini-batch of activations is alive at a time. The cost is one extra forward pass without a graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sentence_transformers.base.losses import CachedLossMixin
from torch import nn

from .set_scores import BatchPlan, SetScorer


class CachedSetScores(CachedLossMixin, nn.Module):
    """A loss on set scores computed with GradCache.

    Args:
        scorer: the :class:`~trl_bporag.trainers.set_scores.SetScorer` whose tokenisation and set scores are used.
        mini_batch_size: texts embedded per forward pass (queries and passages alike).
        show_progress_bar: a progress bar over the mini-batches.

    Call it with the (possibly wrapped) model, the batch's :class:`~trl_bporag.trainers.set_scores.BatchPlan` and
    ``objective(scores, sims)``: the loss of the batch as a function of its set scores ``[B, L]`` and of f(q_b, each
    encoded passage) ``[B, N]``. Returns ``(loss, scores, sims)``, the last two detached (for metrics). Under
    ``torch.no_grad`` (evaluation) the loss is computed from the embeddings directly.
    """

    def __init__(self, scorer: SetScorer, mini_batch_size: int, show_progress_bar: bool = False):
        super().__init__()
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size: expected an integer >= 1, got {mini_batch_size!r}")
        self.scorer, self.mini_batch_size, self.show_progress_bar = scorer, mini_batch_size, show_progress_bar
        self.model = None
        self._plan: BatchPlan | None = None
        self._objective: Callable | None = None
        self._outputs: tuple | None = None

    def calculate_loss(self, reps, labels=None, *, with_backward: bool = False) -> torch.Tensor:
        """The loss from the mini-batch embeddings ``reps`` = [query mini-batches, passage mini-batches]."""
        query_emb = torch.cat(reps[0]).float()
        passage_emb = torch.cat(reps[1]).float()
        scores, sims = self.scorer.scores_from_embeddings(query_emb, passage_emb, self._plan)
        loss = self._objective(scores, sims)
        self._outputs = (scores.detach(), sims.detach())
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def forward(self, model, plan: BatchPlan, objective: Callable):
        if not plan.passages:  # every passage shared by all windows of its row: nothing varies between the windows
            scores, sims = self.scorer.plan_scores(model, plan)
            return objective(scores, sims), scores.detach(), sims.detach()
        features = [self.scorer.features(model, plan.queries, "query"),
                    self.scorer.features(model, plan.passages, "document")]
        self.model, self._plan, self._objective = model, plan, objective
        try:
            loss = self.forward_cached(features)
        finally:
            self._plan = self._objective = None
        scores, sims = self._outputs
        self._outputs = None
        return loss, scores, sims
