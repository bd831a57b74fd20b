"""Configuration of :class:`~trl_bporag.trainers.SetDPOTrainer` (set-level DPO for a dense retriever)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

from trl import DPOConfig

from ..losses import REFERENCES

logger = logging.getLogger(__name__)

# TRL pairwise loss types that are functions of the per-pair margin Δ = (s_θ(P+) − s_ref(P+)) − (s_θ(P−) − s_ref(P−))
# only. A set score is an unnormalised log-potential, s(q,P) = log π(P|q) + log Z(q): only chosen-minus-rejected
# differences are identified, so losses that use the chosen and rejected rewards separately (nca_pair, bco_pair,
# sppo_hard, apo_*, aot_unpaired) would depend on the unknown log Z_θ(q) − log Z_ref(q). aot couples the pairs of a
# batch by sorting, sigmoid_norm/ipo-with-length normalise by completion tokens. "sft" is not a margin loss: it is the
# contrastive NLL of the chosen-only passages against the batch (see SetDPOConfig.contrastive_scale).
SUPPORTED_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
SUPPORTED_SCORES = ("cos", "dot")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _training_device(use_cpu: bool) -> str:
    """Where transformers' Trainer will train: "cpu" with use_cpu, else CUDA, MPS or the CPU, whichever is there."""
    import torch

    if use_cpu:
        return "cpu"
    if _has_cuda():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def _default_bf16(fp16: bool, use_cpu: bool) -> bool:
    """bf16 only where the training device computes it natively (:func:`trl_bporag.hardware.bf16_native`): a CUDA
    device with bf16, or a CPU with AVX512-BF16 / AMX (DPOConfig defaults to True, which fails on a CPU machine and
    is 5-7x slower than float32 on an AVX2-only CPU)."""
    from ..hardware import bf16_native

    if fp16:
        return False
    return bf16_native(_training_device(use_cpu))


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass
class SetDPOConfig(DPOConfig):
    r"""
    Configuration for [`SetDPOTrainer`]: DPO where the policy "log-probability" of a completion is replaced by the set
    score of a retrieved list, s(q, P) = Σ_{i≤k} w_i f(q, P_i), with f the cosine (or dot) similarity of the
    retriever's query and passage embeddings.

    The loss is TRL's DPO loss on the logits β[(s_θ(P+) − s_θ(P−)) − (s_ref(P+) − s_ref(P−))]. All [`trl.DPOConfig`]
    fields are accepted (so `trl/scripts/dpo.py` parses unchanged); those that only make sense for a causal LM
    (`max_length`, `truncation_mode`, `padding_free`, `pad_to_multiple_of`, ...) are ignored. `model_init_kwargs` is
    used when the trainer loads the retriever from an id or path: `revision`, `trust_remote_code` and `cache_folder`
    go to `SentenceTransformer`, `dtype` and the rest to the transformers model.

    Parameters added to [`trl.DPOConfig`]:
        k (`int` or `None`, *optional*, defaults to `None`):
            Number of leading passages of each list that the generator reads; the set score sums over them. Every
            `chosen`/`rejected` list must have at least `k` passages (extra ones are ignored). `None`: the length of
            the shortest list of the training data (the pair builders write lists of exactly their `k`). The trained
            retriever's folder records it, and [`~trl_bporag.RAGPipeline`] reads it from there.
        score (`str`, *optional*, defaults to `"cos"`):
            Similarity f(q, p): `"cos"` (dot product of L2-normalised embeddings) or `"dot"` (raw dot product).
        position_weights (`list[float]`, *optional*):
            Position-aware score s = Σ_{i≤k} w_i f(q, P_i) (only the first `k` weights are used). `None` means
            w_i = 1: the order inside the first k does not matter, and two lists with the same first-k set have
            the same score.
        max_query_length (`int` or `None`, *optional*, defaults to `None`):
            Truncation length of queries, in tokens (capped by the encoder's `max_seq_length`). `None`: the encoder's
            `max_seq_length`, the length `Retriever` / `encode_query` serve with, so that training and serving
            tokenise alike.
        max_passage_length (`int` or `None`, *optional*, defaults to `None`):
            The same for passages (`encode_document`).
        mini_batch_size (`int` or `None`, *optional*, defaults to `None`):
            GradCache (Gao et al. 2021, as sentence-transformers' `CachedMultipleNegativesRankingLoss`) for the set
            losses: the batch's queries and passages are embedded `mini_batch_size` texts at a time without a graph,
            the loss is computed on the embeddings and back-propagated to them, then each mini-batch is re-encoded
            with a graph and its embedding gradients pushed through
            ([`~trl_bporag.trainers.cached_set_scores.CachedSetScores`]). Memory no longer grows with the batch; a
            step costs one extra forward pass. Reference scores are then also encoded in mini-batches. `None` (or
            0): every text of a batch in one forward pass (the activations of all of them kept for the backward).
        precompute_ref_scores (`bool`, *optional*, defaults to `False`):
            Precompute the reference set scores once over the train/eval datasets before training (columns
            `ref_chosen_score`, `ref_rejected_score`), so that no reference forward runs during training and no
            reference copy is kept in memory. Datasets that already have both columns are used as they are.
            `precompute_ref_log_probs=True` (TRL's name) is an alias.
        contrastive_scale (`float`, *optional*, defaults to `20.0`):
            Scale of the `"sft"` loss type. `loss_type=["sigmoid", "sft"]` with `loss_weights=[1.0, alpha]` adds, as TRL
            does for a causal LM (the former `rpo_alpha`), an NLL term on what the chosen list prefers: for each
            passage in the chosen window and not in the rejected one, −log softmax of `contrastive_scale · f(q, ·)`
            over all passages encoded for the batch (the other passages of the chosen window masked out).
        reference (`str`, *optional*, defaults to `"model"`):
            `"model"`: the DPO logits subtract the frozen reference's margin (the paper). `"free"`: reference-free,
            logits = β(s_θ(P+) − s_θ(P−)) (TRL's former `reference_free`); no reference model is kept or run. With
            minimal pairs the reference term makes every pair pull equally hard at step 0, also those the base
            retriever already orders right; reference-free pulls hardest on those it orders wrongly.
        reference_margin_scale (`float`, *optional*):
            Weight each pair by 2σ(−γ m_ref), with m_ref = s_ref(P+) − s_ref(P−) the reference margin and γ this value:
            pairs the reference orders wrongly weigh up to 2, those it orders right by a wide margin close to 0 (needs
            the reference scores, also with `reference="free"`). `None`: all pairs weigh 1.
        skip_shared_passages (`bool`, *optional*, defaults to `True`):
            With the sum score (no `position_weights`), a passage in both the chosen and the rejected window of a
            pair contributes the same f(q, p) to both set scores and cancels in the margin, for the policy and the
            reference alike. It is then not encoded at all: the loss, `rewards/margins` and `rewards/accuracies` are
            exactly those of the full computation, at a fraction of the cost for pairs that differ in few passages.
            `scores/*` and `rewards/chosen|rejected` are then sums over the passages where the two windows differ.
            The `"sft"` term's negatives are the passages encoded for the batch, so with this option they exclude
            the passages each pair's windows share (not an approximation of a loss with them: a different negative
            set, measured in docs/benchmarks.md).
        beta (`float`, *optional*, defaults to `10.0`):
            Changed from TRL's 0.1: cosine set-score margins move by tenths, so at β=0.1 the loss stays at log 2
            (docs/benchmarks.md); β of the order of a contrastive scale (10-20) trains.

    Listwise rows (`lists`, `list_scores`: all judged windows of a query, from
    `RetrievalPreferenceBuilder(pairing="listwise")`) train with the Plackett–Luce form of `"sigmoid"`
    ([`~trl_bporag.losses.ListwiseSetDPOLoss`]), alone or with `"sft"`.

    Defaults that differ from [`trl.DPOConfig`]: `beta=10.0`, `learning_rate=2e-5`, `bf16=None` (resolved to `True`
    only where the training device computes bf16 natively: a CUDA device with bf16, or a CPU with AVX512-BF16 / AMX,
    [`trl_bporag.hardware.bf16_native`]; on such a CPU-only machine `use_cpu` is set too, for bf16 autocast there; an
    explicit `bf16=True` on a CPU without native bf16 is honoured with a warning), `gradient_checkpointing` off,
    `remove_unused_columns=False`, `max_length=None`, and
    `use_cpu=True` when launched with several processes (`accelerate launch`, `torchrun`) on a machine without CUDA:
    otherwise transformers sets up no process group and each process trains alone on all the data.

    Supported `loss_type` values: `"sigmoid"`, `"hinge"`, `"ipo"`, `"exo_pair"`, `"robust"`, `"discopop"` (the TRL
    losses that depend only on the chosen-minus-rejected margin), alone or combined with `loss_weights`.
    """

    # Overridden DPOConfig / TrainingArguments defaults
    learning_rate: float = field(
        default=2e-5,
        metadata={"help": "The initial learning rate for AdamW (retriever default 2e-5)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Whether to use bf16 mixed precision. If not set, it is enabled only where the device computes "
            "bf16 natively (CUDA with bf16; a CPU with AVX512-BF16/AMX). A bare `--bf16` means true.",
            "nargs": "?",
            "const": True,
        },
    )
    # None (= off) rather than False: transformers >= 5.2x treats a set `gradient_checkpointing` as the deprecated
    # alias of `activation_checkpointing` and warns.
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Whether to enable gradient checkpointing in the encoder (default: off)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Whether to drop dataset columns other than prompt/chosen/rejected/ref scores."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Unused by SetDPOTrainer: see `max_query_length` and `max_passage_length`."},
    )

    beta: float = field(
        default=10.0,
        metadata={"help": "β of the DPO logits (default 10: cosine set scores move by tenths; TRL's 0.1 stays at "
                  "log 2)."},
    )

    # Set-DPO parameters
    reference: str = field(
        default="model",
        metadata={"help": "'model' (subtract the frozen reference's margin, the paper) or 'free' (reference-free).",
                  "choices": list(REFERENCES)},
    )
    reference_margin_scale: float | None = field(
        default=None,
        metadata={"help": "Weight each pair by 2*sigmoid(-scale * reference margin); None: all pairs weigh 1."},
    )
    k: int | None = field(
        default=None,
        metadata={"help": "Number of leading passages of each list in the set score (the generator reads k). Default: "
                  "the length of the shortest list of the training data (the builders write lists of k)."},
    )
    score: str = field(
        default="cos",
        metadata={
            "help": "Similarity f(q,p): 'cos' (dot of L2-normalised embeddings) or 'dot' (raw dot product).",
            "choices": list(SUPPORTED_SCORES),
        },
    )
    position_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Optional position weights w_1..w_k of the set score s = Σ_i w_i f(q, P_i)."},
    )
    max_query_length: int | None = field(
        default=None,
        metadata={"help": "Maximum query length in tokens (default: the encoder's max_seq_length, as it serves)."},
    )
    max_passage_length: int | None = field(
        default=None,
        metadata={"help": "Maximum passage length in tokens (default: the encoder's max_seq_length, as it serves)."},
    )
    contrastive_scale: float = field(
        default=20.0,
        metadata={"help": "Scale (inverse temperature) of the 'sft' loss type: the contrastive NLL of the chosen-only "
                  "passages against the batch's passages (sentence-transformers' MNRL default is 20)."},
    )
    skip_shared_passages: bool = field(
        default=True,
        metadata={"help": "Do not encode passages shared by the chosen and rejected windows (they cancel in the "
                  "margin under the sum score)."},
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={"help": "GradCache: embed this many texts per forward pass, compute the loss on the embeddings, then "
                  "re-encode each mini-batch with its embedding gradients (memory flat in the batch size, one extra "
                  "forward pass). None: one forward pass per batch."},
    )
    precompute_ref_scores: bool = field(
        default=False,
        metadata={
            "help": "Precompute reference set scores once over the datasets before training (alias: "
            "precompute_ref_log_probs)."
        },
    )

    def __post_init__(self):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not _has_cuda():
            # transformers sets up no process group without CUDA unless use_cpu: every process would train alone on
            # all the data (measured: `accelerate launch --num_processes 2` on a CPU machine, identical batches)
            logger.info("A multi-process launch without CUDA: use_cpu=True (gloo), so the processes share the data.")
            self.use_cpu = True
        if self.gradient_checkpointing is None and not hasattr(self, "activation_checkpointing"):
            self.gradient_checkpointing = False  # transformers without the activation_checkpointing rename
        if self.bf16 is None:
            self.bf16 = _default_bf16(bool(self.fp16), bool(getattr(self, "use_cpu", False)))
        elif self.bf16 and _training_device(bool(self.use_cpu)) == "cpu":
            from ..hardware import resolve_dtype

            resolve_dtype("bfloat16", "cpu", where="SetDPOConfig(bf16=True)")  # warns once without native bf16
        if self.bf16 and not self.use_cpu and _training_device(False) == "cpu":
            # bf16 autocast on a CPU-only machine: transformers refuses bf16 there unless use_cpu is set
            self.use_cpu = True

        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        unsupported = [lt for lt in self.loss_type if lt not in SUPPORTED_LOSS_TYPES]
        if unsupported:
            raise ValueError(
                f"loss_type={unsupported[0]!r} is not supported by SetDPOTrainer. Supported loss types (the TRL "
                f"pairwise losses that depend only on the chosen-minus-rejected set-score margin): "
                f"{list(SUPPORTED_LOSS_TYPES)}."
            )
        if not self.loss_type:
            raise ValueError(f"loss_type must name at least one of {list(SUPPORTED_LOSS_TYPES)}.")

        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be an integer >= 1 or None (from the data), got {self.k!r}.")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0 (a negative beta trains the preference backwards), "
                             f"got {self.beta!r}.")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}.")
        if self.reference_margin_scale is not None and not _positive(self.reference_margin_scale):
            raise ValueError(f"reference_margin_scale must be a finite number > 0 or None, got "
                             f"{self.reference_margin_scale!r}.")
        if not _positive(self.contrastive_scale):
            raise ValueError(f"contrastive_scale must be a finite number > 0 (a negative scale trains the 'sft' term "
                             f"backwards), got {self.contrastive_scale!r}.")
        if self.loss_weights is not None:
            weights = list(self.loss_weights)
            if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                       for w in weights):
                raise ValueError(f"loss_weights must be finite numbers >= 0 (a negative weight trains its term "
                                 f"backwards), got {weights}.")
        if not (isinstance(self.label_smoothing, (int, float)) and math.isfinite(self.label_smoothing)):
            raise ValueError(f"label_smoothing must be a finite number, got {self.label_smoothing!r}.")
        if self.score not in SUPPORTED_SCORES:
            raise ValueError(f"score must be one of {list(SUPPORTED_SCORES)}, got {self.score!r}.")
        if self.position_weights is not None:
            self.position_weights = [float(w) for w in self.position_weights]
            if self.k is not None and len(self.position_weights) < self.k:
                raise ValueError(
                    f"position_weights has {len(self.position_weights)} entries but k={self.k}: give at least k "
                    "weights (only the first k are used)."
                )
            if not all(math.isfinite(w) for w in self.position_weights):
                raise ValueError(f"position_weights must be finite numbers, got {self.position_weights}.")
        if self.mini_batch_size is not None and (isinstance(self.mini_batch_size, bool)
                                                 or not isinstance(self.mini_batch_size, int)
                                                 or self.mini_batch_size < 0):
            raise ValueError(f"mini_batch_size must be an integer >= 1, or 0 / None (uncached), got "
                             f"{self.mini_batch_size!r}.")
        self.mini_batch_size = self.mini_batch_size or None  # 0: a flag's way to say uncached
        for name in ("max_query_length", "max_passage_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None (the encoder's max_seq_length), got "
                                 f"{value!r}.")

        # TRL's name is an alias: either flag turns precomputation on, and both are kept in sync.
        self.precompute_ref_scores = bool(self.precompute_ref_scores or self.precompute_ref_log_probs)
        self.precompute_ref_log_probs = self.precompute_ref_scores

        # DPOConfig options that need token log-probabilities or a normalised policy have no set-score analogue.
        if self.f_divergence_type != "reverse_kl":
            raise ValueError(
                f"f_divergence_type={self.f_divergence_type!r} is not supported by SetDPOTrainer: set scores are "
                "unnormalised, so only the default 'reverse_kl' (standard DPO) is defined."
            )
        if self.use_weighting:
            raise ValueError("use_weighting=True (WPO) needs token probabilities and is not supported for set scores.")
        if self.ld_alpha is not None:
            raise ValueError("ld_alpha (LD-DPO) weights completion tokens and is not supported for set scores.")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0.0:
            raise ValueError(
                "Label smoothing must be greater than 0.0 when using 'exo_pair' loss. The EXO paper recommends a "
                "value of 1e-3."
            )
        if "robust" in self.loss_type and not (0.0 <= self.label_smoothing < 0.5):
            logger.warning(
                "The `label_smoothing` parameter should lie in [0.0, 0.5) for the 'robust' loss. You provided %s.",
                self.label_smoothing,
            )
        if self.label_smoothing and not {"robust", "exo_pair"} & set(self.loss_type):
            logger.warning(
                "label_smoothing=%s has no effect on loss_type=%s: as in TRL 1.16 it is only used by 'robust' and "
                "'exo_pair'.",
                self.label_smoothing,
                self.loss_type,
            )
        if self.sync_ref_model and self.precompute_ref_scores:
            raise ValueError(
                "You cannot use `sync_ref_model=True` together with precomputed reference scores: the reference is "
                "updated during training, which would make the precomputed scores stale."
            )

        super().__post_init__()

    def retriever_kwargs(self) -> dict:
        """Keyword arguments of :func:`trl_bporag.models.load_retriever` from `model_init_kwargs`: `revision`,
        `trust_remote_code` (or this config's `trust_remote_code`) and `cache_folder` go to `SentenceTransformer`,
        `dtype` (or `torch_dtype`) and anything else to the transformers model (`model_kwargs`)."""
        init = dict(self.model_init_kwargs) if isinstance(self.model_init_kwargs, dict) else {}
        kwargs = {key: init.pop(key) for key in ("revision", "cache_folder", "trust_remote_code") if key in init}
        if self.trust_remote_code:
            kwargs.setdefault("trust_remote_code", True)
        if "torch_dtype" in init:
            init["dtype"] = init.pop("torch_dtype")
        if init:
            kwargs["model_kwargs"] = init
        return kwargs
