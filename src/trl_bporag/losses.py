"""The RPO objectives on set scores, as small loss classes (sentence-transformers style).

A retriever scores an evidence window P (the first k passages of a list) for a query q with the set score
s(q, P) = Σ_{i≤k} w_i f(q, P_i). The losses below take these scores (tensors) and return a scalar; they know nothing
of the encoder, so :class:`~trl_bporag.SetDPOTrainer` and any other trainer (e.g. a sentence-transformers loss wrapper
that computes the scores itself) can call them.

* :class:`SetDPOLoss`: pairwise DPO on set scores (TRL's loss types as functions of the margin), with the frozen
  reference, without it (``reference="free"``), and optionally weighting each pair by how wrong the reference orders it.
* :class:`ListwiseSetDPOLoss`: Plackett–Luce over all judged lists of a query at once.
* :class:`ContrastiveSetLoss`: the ``sft`` term, a contrastive NLL of the passages the chosen list prefers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DPO_CITATION = """
@inproceedings{rafailov2023direct,
    title={Direct Preference Optimization: Your Language Model is Secretly a Reward Model},
    author={Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and
            Chelsea Finn},
    booktitle={Advances in Neural Information Processing Systems},
    year={2023},
    eprint={2305.18290},
    archivePrefix={arXiv},
}
"""
LIPO_CITATION = """
@misc{liu2024lipo,
    title={LiPO: Listwise Preference Optimization through Learning-to-Rank},
    author={Tianqi Liu and Zhen Qin and Junru Wu and Jiaming Shen and Misha Khalman and Rishabh Joshi and Yao Zhao
            and Mohammad Saleh and Simon Baumgartner and Jialu Liu and Peter J. Liu and Xuanhui Wang},
    year={2024},
    eprint={2402.01878},
    archivePrefix={arXiv},
}
"""
MNRL_CITATION = """
@misc{henderson2017efficient,
    title={Efficient Natural Language Response Suggestion for Smart Reply},
    author={Matthew Henderson and Rami Al-Rfou and Brian Strope and Yun-hsuan Sung and Laszlo Lukacs and Ruiqi Guo
            and Sanjiv Kumar and Balint Miklos and Ray Kurzweil},
    year={2017},
    eprint={1705.00652},
    archivePrefix={arXiv},
}
"""

PAIRWISE_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop")
REFERENCES = ("model", "free")


def pairwise_loss(delta: torch.Tensor, loss_type: str, beta: float, label_smoothing: float = 0.0,
                  discopop_tau: float = 0.05) -> torch.Tensor:
    """Per-pair loss of one TRL loss type as a function of the margin Δ (a tensor of any shape).

    The formulas are those of ``trl.DPOTrainer`` (TRL 1.16) with the summed log-ratio difference replaced by Δ. The one
    change is ``ipo``: TRL divides each sequence log-ratio by its number of completion tokens; a set score has no
    tokens, so Δ is used as it is (Eq. 17 of the IPO paper with h = Δ).
    """
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        epsilon = torch.tensor(label_smoothing, device=delta.device, dtype=delta.dtype)
        return (torch.sigmoid(beta * delta) * (F.logsigmoid(beta * delta) - torch.log1p(-epsilon))
                + torch.sigmoid(-beta * delta) * (F.logsigmoid(-beta * delta) - torch.log(epsilon)))
    if loss_type == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    if loss_type == "discopop":
        logits = beta * delta
        modulation = torch.sigmoid(logits / discopop_tau)
        return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    raise ValueError(f"loss_type={loss_type!r} is not supported. Supported: {list(PAIRWISE_LOSS_TYPES)}.")


def _check_reference(reference: str, reference_margin_scale: float | None) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"reference: expected one of {REFERENCES}, got {reference!r}")
    if reference_margin_scale is not None and not reference_margin_scale > 0:
        raise ValueError(f"reference_margin_scale: expected a number > 0 or None, got {reference_margin_scale!r}")


def reference_weights(ref_margin: torch.Tensor, scale: float | None) -> torch.Tensor | None:
    """Per-pair weights 2σ(−scale · m_ref) of the reference margin m_ref = s_ref(P+) − s_ref(P−) (no gradient): 1 for
    a pair the reference cannot tell apart, → 2 for one it orders wrongly, → 0 for one it already orders right by a
    wide margin. ``None`` when ``scale`` is None (all pairs weigh 1)."""
    if scale is None:
        return None
    return 2 * torch.sigmoid(-scale * ref_margin.detach())


class SetDPOLoss(nn.Module):
    """Set-level DPO: TRL's pairwise DPO losses with sequence log-ratios replaced by set scores.

    With the reference (``reference="model"``, the paper): logits = β[(s_θ(P+) − s_θ(P−)) − (s_ref(P+) − s_ref(P−))].
    Reference-free (``reference="free"``, TRL's former ``reference_free``): logits = β(s_θ(P+) − s_θ(P−)). With minimal
    pairs the margin is f(q, p⁺) − f(q, p⁻); subtracting the reference margin makes every pair pull equally hard at
    step 0, including those the base already orders right, while the reference-free loss pulls hardest on the pairs
    the retriever still gets wrong. ``reference_margin_scale`` γ additionally weights each pair by 2σ(−γ m_ref) (see
    :func:`reference_weights`), which needs the reference scores also when ``reference="free"``.

    Args:
        beta: β. Cosine set scores move by tenths, so β must be of the order of a contrastive scale (10-20); at TRL's
            0.1 the loss stays at log 2.
        loss_type: one of ``PAIRWISE_LOSS_TYPES`` or a list of them (combined as Σ_t w_t mean ℓ_t, as TRL does).
        loss_weights: one weight per loss type (default 1 each).
        reference: ``"model"`` or ``"free"``.
        reference_margin_scale: γ of the per-pair weights, or None.
        label_smoothing: as in TRL (``robust`` / ``exo_pair``).
        discopop_tau: as in TRL (``discopop``).

    Requirements:
        1. pairs of evidence windows of one query, chosen (P+) and rejected (P−), judged by any judge
        2. the reference's set scores of both windows (unless ``reference="free"`` without weighting)

    Inputs:
        +--------------------------------------------------------+----------------+
        | Inputs                                                 | Labels         |
        +========================================================+================+
        | set scores (chosen [B], rejected [B]) and the same of  | none (the pair |
        | the reference                                          | order is one)  |
        +--------------------------------------------------------+----------------+

    Example::

        >>> import torch
        >>> loss = SetDPOLoss(beta=10.0, reference="free")
        >>> round(loss(torch.tensor([1.2]), torch.tensor([1.1])).item(), 4)  # -log sigmoid(10 * 0.1)
        0.3133

    Citation: Rafailov et al., "Direct Preference Optimization", NeurIPS 2023 (arXiv:2305.18290); BPO-RAG's retrieval
    preference optimisation applies it to set scores.
    """

    def __init__(self, beta: float = 10.0, loss_type: str | Sequence[str] = "sigmoid",
                 loss_weights: Sequence[float] | None = None, reference: str = "model",
                 reference_margin_scale: float | None = None, label_smoothing: float = 0.0,
                 discopop_tau: float = 0.05):
        super().__init__()
        self.loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
        self.loss_weights = list(loss_weights) if loss_weights is not None else [1.0] * len(self.loss_types)
        if len(self.loss_weights) != len(self.loss_types):
            raise ValueError(f"{len(self.loss_weights)} loss_weights for {len(self.loss_types)} loss types.")
        for lt in self.loss_types:
            if lt not in PAIRWISE_LOSS_TYPES:
                raise ValueError(f"loss_type={lt!r} is not supported. Supported: {list(PAIRWISE_LOSS_TYPES)}.")
        _check_reference(reference, reference_margin_scale)
        self.beta, self.reference, self.reference_margin_scale = beta, reference, reference_margin_scale
        self.label_smoothing, self.discopop_tau = label_smoothing, discopop_tau

    def get_config_dict(self) -> dict:
        """The loss's settings, as sentence-transformers losses report them (written into model cards)."""
        return {"beta": self.beta, "loss_type": self.loss_types, "loss_weights": self.loss_weights,
                "reference": self.reference, "reference_margin_scale": self.reference_margin_scale,
                "label_smoothing": self.label_smoothing, "discopop_tau": self.discopop_tau}

    @property
    def citation(self) -> str:
        return DPO_CITATION

    @property
    def needs_reference(self) -> bool:
        return self.reference == "model" or self.reference_margin_scale is not None

    def margins(self, chosen_scores, rejected_scores, ref_chosen_scores=None, ref_rejected_scores=None):
        """The per-pair margin Δ the loss types are functions of."""
        delta = chosen_scores - rejected_scores
        if self.reference == "model":
            if ref_chosen_scores is None or ref_rejected_scores is None:
                raise ValueError("SetDPOLoss(reference='model') needs ref_chosen_scores and ref_rejected_scores")
            delta = delta - (ref_chosen_scores - ref_rejected_scores)
        return delta

    def forward(self, chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                ref_chosen_scores: torch.Tensor | None = None,
                ref_rejected_scores: torch.Tensor | None = None) -> torch.Tensor:
        delta = self.margins(chosen_scores, rejected_scores, ref_chosen_scores, ref_rejected_scores)
        weights = None
        if self.reference_margin_scale is not None:
            if ref_chosen_scores is None or ref_rejected_scores is None:
                raise ValueError("SetDPOLoss(reference_margin_scale=...) needs the reference scores")
            weights = reference_weights(ref_chosen_scores - ref_rejected_scores, self.reference_margin_scale)
        loss = delta.new_zeros(())
        for lt, w in zip(self.loss_types, self.loss_weights):
            per_pair = pairwise_loss(delta, lt, self.beta, self.label_smoothing, self.discopop_tau)
            if weights is not None:
                per_pair = per_pair * weights
            loss = loss + per_pair.mean() * w
        return loss


class ListwiseSetDPOLoss(nn.Module):
    """Plackett–Luce set DPO over all judged lists of a query at once.

    For each query b with lists j = 1..L (set scores s_bj, judge scores y_bj), the implicit reward is
    z_bj = β(s_θ(q, P_j) − s_ref(q, P_j)) (``reference="free"``: z_bj = β s_θ(q, P_j)). Every list i that the judge
    prefers to at least one other list contributes −log [exp z_i / (exp z_i + Σ_{j: y_j < y_i} exp z_j)]: the
    Plackett–Luce likelihood of the judge's order with tied lists kept out of each other's denominators. The loss is
    the mean over those terms. For two lists with y_1 > y_2 it is the pairwise sigmoid DPO loss −log σ(z_1 − z_2).

    Args:
        beta: β (as in :class:`SetDPOLoss`).
        reference: ``"model"`` or ``"free"``.

    Requirements:
        1. several evidence windows per query with judge scores (``RetrievalPreferenceBuilder(pairing="listwise")``)
        2. the reference's set scores of every window (unless ``reference="free"``)

    Inputs:
        +---------------------------------------------------+-----------------------------------------------+
        | Inputs                                            | Labels                                        |
        +===================================================+===============================================+
        | set scores [B, L] (padding: ``mask`` False), the  | judge scores [B, L] (higher is better; ties   |
        | reference's [B, L]                                | are not preferences)                          |
        +---------------------------------------------------+-----------------------------------------------+

    Example::

        >>> import torch
        >>> loss = ListwiseSetDPOLoss(beta=10.0, reference="free")
        >>> scores, judge = torch.tensor([[1.2, 1.1]]), torch.tensor([[1.0, 0.0]])
        >>> round(loss(scores, judge).item(), 4)  # the pairwise sigmoid loss for two lists
        0.3133

    Citation: Plackett (1975), Luce (1959); listwise preference optimisation as in Liu et al., "LiPO" (arXiv:2402.01878)
    and Rafailov et al., DPO, Appendix A.3 (the Plackett–Luce form).
    """

    def __init__(self, beta: float = 10.0, reference: str = "model"):
        super().__init__()
        _check_reference(reference, None)
        self.beta, self.reference = beta, reference

    def get_config_dict(self) -> dict:
        """The loss's settings, as sentence-transformers losses report them (written into model cards)."""
        return {"beta": self.beta, "reference": self.reference}

    @property
    def citation(self) -> str:
        return LIPO_CITATION + DPO_CITATION

    @property
    def needs_reference(self) -> bool:
        return self.reference == "model"

    def forward(self, scores: torch.Tensor, judge_scores: torch.Tensor, ref_scores: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if scores.shape != judge_scores.shape or scores.dim() != 2:
            raise ValueError(f"scores and judge_scores: expected the same [B, L] shape, got {tuple(scores.shape)} "
                             f"and {tuple(judge_scores.shape)}")
        z = scores
        if self.reference == "model":
            if ref_scores is None:
                raise ValueError("ListwiseSetDPOLoss(reference='model') needs ref_scores")
            z = z - ref_scores
        z = self.beta * z
        mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
        y = judge_scores.to(z.dtype)
        # worse[b, i, j]: list j is strictly worse than list i (both real lists)
        worse = (y.unsqueeze(2) > y.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
        others = z.unsqueeze(1).expand(-1, z.shape[1], -1).masked_fill(~worse, float("-inf"))
        denominator = torch.logaddexp(z, torch.logsumexp(others, dim=2))
        terms = (denominator - z)[worse.any(dim=2)]
        if terms.numel() == 0:
            return z.sum() * 0.0
        return terms.mean()


class ContrastiveSetLoss(nn.Module):
    """The ``sft`` term: a contrastive NLL of the passages the chosen window prefers, against the batch's passages.

    For each query b and each passage p that is in the chosen window but not in the rejected one,
    −log softmax_j(scale · f(q_b, p_j)) at p, over all passages encoded for the batch, with the query's other chosen
    passages masked out. The set analogue of TRL's NLL on the chosen completion (the former ``rpo_alpha``), and close
    to sentence-transformers' MultipleNegativesRankingLoss with the batch's hard negatives.

    Args:
        scale: the inverse temperature (MNRL's default 20).

    Requirements:
        1. for each query: the indices of its positive passages and of the passages to mask, among the batch's passages

    Inputs:
        +------------------------------------------------------------+------------------------------------------+
        | Inputs                                                     | Labels                                   |
        +============================================================+==========================================+
        | similarities f(q_b, p_j) [B, N] of the batch's queries and | positives: [(b, j)]; masked: [(b, j)]    |
        | encoded passages                                           |                                          |
        +------------------------------------------------------------+------------------------------------------+

    Example::

        >>> import torch
        >>> loss = ContrastiveSetLoss(scale=1.0)
        >>> sims = torch.tensor([[0.0, 0.0]])
        >>> round(loss(sims, positives=[(0, 0)]).item(), 4)  # log 2
        0.6931

    Citation: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (InfoNCE);
    Henderson et al., "Efficient Natural Language Response Suggestion" (arXiv:1705.00652), as in MNRL.
    """

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def get_config_dict(self) -> dict:
        """The loss's settings, as sentence-transformers losses report them (written into model cards)."""
        return {"scale": self.scale}

    @property
    def citation(self) -> str:
        return MNRL_CITATION

    def forward(self, similarities: torch.Tensor, positives: Sequence[tuple[int, int]],
                masked: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
        logits = self.scale * similarities
        if not positives:
            return logits.sum() * 0.0
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for b, j in masked:
            mask[b, j] = True
        rows = torch.tensor([b for b, _ in positives], device=logits.device)
        cols = torch.tensor([j for _, j in positives], device=logits.device)
        row_mask = mask[rows].clone()
        row_mask[torch.arange(len(rows), device=logits.device), cols] = False  # never mask the positive itself
        denominators = torch.logsumexp(logits[rows].masked_fill(row_mask, float("-inf")), dim=1)
        return (denominators - logits[rows, cols]).mean()
