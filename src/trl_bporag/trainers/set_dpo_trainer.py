"""Set-level DPO for a dense retriever (the RPO step of BPO-RAG), as a drop-in subclass of TRL's ``DPOTrainer``.

The policy is a :class:`sentence_transformers.SentenceTransformer`. For a query q and an ordered candidate list P the
set score is s(q, P) = Σ_{i≤k} w_i f(q, P_i) with f the cosine (or dot) similarity of the encoder's embeddings. The
loss is TRL's DPO loss with the sequence log-ratios replaced by set-score differences:

    logits = β [(s_θ(P+) − s_θ(P−)) − (s_ref(P+) − s_ref(P−))]

TRL 1.16's ``DPOTrainer.__init__`` is causal-LM setup (fused LM head, generation config, reference reload from the
config path) and cannot take a SentenceTransformer, so this class keeps ``DPOTrainer`` as its base class (for
``isinstance``, metric names and the shared ``log``/``training_step``/``_save_checkpoint``) but initialises through
``transformers.Trainer.__init__``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import textwrap
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from accelerate.logging import get_logger
from accelerate.utils import tqdm
from datasets import Dataset, IterableDataset
from packaging.version import Version
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import EvalPrediction
from trl import DPOTrainer
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import disable_dropout_in_model

from .set_dpo_config import SUPPORTED_LOSS_TYPES, SetDPOConfig

logger = get_logger(__name__)

REF_CHOSEN_COLUMN = "ref_chosen_score"
REF_REJECTED_COLUMN = "ref_rejected_score"
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
TRAINING_ARGS_NAME = "training_args.bin"
ADAPTER_SUBDIR = "adapter"


# --------------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------------
def set_dpo_per_pair_loss(
    delta: torch.Tensor,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> torch.Tensor:
    """Per-pair loss of one TRL loss type as a function of the margin Δ = (s_θ⁺ − s_ref⁺) − (s_θ⁻ − s_ref⁻).

    The formulas are those of ``trl.DPOTrainer._compute_loss`` (TRL 1.16) with ``delta_score`` = Δ. The one change is
    ``ipo``: TRL divides each sequence log-ratio by its number of completion tokens; a set score has no tokens, so Δ
    is used as it is (Eq. 17 of the IPO paper with h = Δ).
    """
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        epsilon = torch.tensor(label_smoothing, device=delta.device, dtype=delta.dtype)
        qw = torch.sigmoid(beta * delta)
        log_qw = F.logsigmoid(beta * delta)
        log_pw = torch.log1p(-epsilon)
        ql = torch.sigmoid(-beta * delta)
        log_ql = F.logsigmoid(-beta * delta)
        log_pl = torch.log(epsilon)
        return qw * (log_qw - log_pw) + ql * (log_ql - log_pl)
    if loss_type == "robust":
        clean_loss_term = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped_loss_term = -label_smoothing * F.logsigmoid(-beta * delta)
        return (clean_loss_term - flipped_loss_term) / (1 - 2 * label_smoothing)
    if loss_type == "discopop":
        logits = delta * beta
        log_ratio_modulation = torch.sigmoid(logits / discopop_tau)
        logistic_component = -F.logsigmoid(logits)
        exp_component = torch.exp(-logits)
        return logistic_component * (1 - log_ratio_modulation) + exp_component * log_ratio_modulation
    raise ValueError(f"loss_type={loss_type!r} is not supported. Supported: {list(SUPPORTED_LOSS_TYPES)}.")


def set_dpo_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    ref_chosen_scores: torch.Tensor,
    ref_rejected_scores: torch.Tensor,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> torch.Tensor:
    """Batch loss Σ_t w_t mean_b ℓ_t(Δ_b), as TRL combines several loss types (``loss_type`` + ``loss_weights``)."""
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ValueError(f"{len(weights)} loss_weights for {len(loss_types)} loss types.")
    delta = (chosen_scores - ref_chosen_scores) - (rejected_scores - ref_rejected_scores)
    loss = delta.new_zeros(())
    for lt, w in zip(loss_types, weights):
        loss = loss + set_dpo_per_pair_loss(delta, lt, beta, label_smoothing, discopop_tau).mean() * w
    return loss


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class DataCollatorForSetPreference:
    """Batch RPO rows as raw texts: tokenisation happens in ``compute_loss`` so that each unique passage of a batch is
    encoded once.

    Returns ``{"prompt": [str], "chosen": [[str] * k], "rejected": [[str] * k]}`` and, when every row has them, the
    float tensors ``ref_chosen_score`` / ``ref_rejected_score``.
    """

    k: int
    with_ref_scores: bool = True

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"prompt": [], "chosen": [], "rejected": []}
        for example in examples:
            prompt = example["prompt"]
            if not isinstance(prompt, str):
                raise ValueError(f"The 'prompt' field must be a query string, got {type(prompt).__name__}.")
            batch["prompt"].append(prompt)
            for name in ("chosen", "rejected"):
                passages = example[name]
                if isinstance(passages, str) or len(passages) < self.k:
                    n = 1 if isinstance(passages, str) else len(passages)
                    raise ValueError(
                        f"Field {name!r} of an example has {n} passage(s), fewer than k={self.k} (query: {prompt!r})."
                    )
                window = list(passages[: self.k])
                if not all(isinstance(p, str) for p in window):
                    bad = next(p for p in window if not isinstance(p, str))
                    raise ValueError(
                        f"Field {name!r} of an example holds a {type(bad).__name__}, not a passage text (query: "
                        f"{prompt!r})."
                    )
                if len(set(window)) < len(window):
                    dup = next(p for i, p in enumerate(window) if p in window[:i])
                    raise ValueError(
                        f"Field {name!r} of an example repeats the passage {dup[:60]!r} in its first k={self.k} "
                        f"(query: {prompt!r}); a list holds distinct passages."
                    )
                batch[name].append(window)
        if self.with_ref_scores and all(
            REF_CHOSEN_COLUMN in ex and REF_REJECTED_COLUMN in ex and ex[REF_CHOSEN_COLUMN] is not None
            for ex in examples
        ):
            batch[REF_CHOSEN_COLUMN] = torch.tensor([float(ex[REF_CHOSEN_COLUMN]) for ex in examples])
            batch[REF_REJECTED_COLUMN] = torch.tensor([float(ex[REF_REJECTED_COLUMN]) for ex in examples])
            for column in (REF_CHOSEN_COLUMN, REF_REJECTED_COLUMN):
                if not torch.isfinite(batch[column]).all():
                    raise ValueError(f"Field {column!r} holds NaN or inf in a batch (query: {batch['prompt'][0]!r}).")
        return batch


def _has_ref_columns(dataset) -> bool:
    names = getattr(dataset, "column_names", None) or []
    return REF_CHOSEN_COLUMN in names and REF_REJECTED_COLUMN in names


def _transformer_modules(st_model) -> list:
    from sentence_transformers.models import Transformer

    return [m for m in st_model.modules() if isinstance(m, Transformer)]


def _load_retriever(id_or_path: str, args: SetDPOConfig):
    """Load the retriever with ``trl_bporag.models.load_retriever`` (offline resolution of default ids)."""
    try:
        from trl_bporag.models import load_retriever
    except ImportError:  # the package-level loader is optional: fall back to plain sentence-transformers
        from sentence_transformers import SentenceTransformer

        kwargs = dict(args.model_init_kwargs or {}) if isinstance(args.model_init_kwargs, dict) else {}
        return SentenceTransformer(
            id_or_path, revision=kwargs.get("revision"), trust_remote_code=args.trust_remote_code
        )
    return load_retriever(id_or_path)


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------
class SetDPOTrainer(DPOTrainer):
    """
    Set-level DPO trainer for a dense retriever (a ``sentence_transformers.SentenceTransformer``).

    Rows are RPO pairs: ``{"prompt": query, "chosen": [passages of P+], "rejected": [passages of P−]}`` (at least
    ``k`` passages each; extra columns such as ``chosen_ids`` are kept and ignored). For each batch the queries and the
    *unique* passages of all first-k lists are tokenised and encoded once, the set scores are
    s(q, P) = Σ_{i≤k} w_i f(q, P_i), and the loss is TRL's DPO loss (``loss_type``) on
    β[(s_θ(P+) − s_θ(P−)) − (s_ref(P+) − s_ref(P−))].

    Reference scorer, in order of precedence: an explicit ``ref_model``; with ``peft_config``, the policy with its
    adapter disabled; with ``precompute_ref_scores=True``, scores precomputed once before training (from the policy
    as it is at construction, or read from existing ``ref_chosen_score``/``ref_rejected_score`` columns); otherwise a
    frozen deep copy of the policy.

    Args:
        model: a ``SentenceTransformer``, or a model id / local path (loaded with ``trl_bporag.models.load_retriever``).
        ref_model: optional reference ``SentenceTransformer`` (or id / path); frozen.
        args: a [`SetDPOConfig`].
        data_collator: defaults to [`DataCollatorForSetPreference`].
        train_dataset: RPO pair dataset (``Dataset`` or ``IterableDataset``).
        eval_dataset: RPO pair dataset, or a dict of them (metrics ``eval_<name>_...``).
        processing_class: defaults to the retriever's tokenizer (the encoder always tokenises with its own).
        compute_metrics: as in ``transformers.Trainer``.
        callbacks: as in ``transformers.Trainer``.
        optimizers: as in ``transformers.Trainer``.
        quantization_config: not supported (must be ``None``); accepted for signature compatibility with DPOTrainer.
        peft_config: a ``peft.PeftConfig`` (e.g. ``LoraConfig``) applied to the encoder's transformer. The reference is
            then the policy with the adapter disabled. Saved folders contain the merged encoder (loadable with
            ``SentenceTransformer(path)``) and the adapter alone under ``adapter/``.
    """

    _tag_names = ["trl", "bporag", "sentence-transformers", "set-dpo"]
    _name = "Set-DPO"
    _paper = DPOTrainer._paper
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        ref_model=None,
        args: SetDPOConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
        processing_class=None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        quantization_config=None,
        peft_config=None,
    ):
        from sentence_transformers import SentenceTransformer

        # Args
        if args is None:
            name = model if isinstance(model, str) else getattr(model, "bporag_model_id", None) or "retriever"
            args = SetDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-SetDPO")
        elif not isinstance(args, SetDPOConfig):
            raise TypeError(
                f"`args` must be a SetDPOConfig, got {type(args).__name__}. Swap DPOConfig for SetDPOConfig."
            )
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if not isinstance(train_dataset, (Dataset, IterableDataset)):
            raise TypeError(
                f"`train_dataset` must be a `Dataset` or `IterableDataset`, got `{type(train_dataset).__name__}`."
            )
        if isinstance(train_dataset, IterableDataset):
            args.accelerator_config.dispatch_batches = False
        if quantization_config is not None:
            raise ValueError("`quantization_config` is not supported by SetDPOTrainer (dense retrievers are small).")

        # Models
        transformers.set_seed(args.seed)  # PEFT initialises the adapter randomly
        if isinstance(model, str):
            self._base_model_id = model
            model = _load_retriever(model, args)
        else:
            self._base_model_id = None
        if not isinstance(model, SentenceTransformer):
            raise TypeError(
                f"SetDPOTrainer trains a sentence_transformers.SentenceTransformer retriever, got {type(model).__name__}."
            )
        if self._base_model_id is None:
            self._base_model_id = self._infer_base_model_id(model)
        if ref_model is not None and ref_model is model:
            raise ValueError(
                "`model` and `ref_model` cannot be the same object. In most cases you should omit `ref_model` and "
                "we'll initialize it to a frozen copy of `model` for you."
            )
        if isinstance(ref_model, str):
            ref_model = _load_retriever(ref_model, args)
        if ref_model is not None and not isinstance(ref_model, SentenceTransformer):
            raise TypeError(f"`ref_model` must be a SentenceTransformer, got {type(ref_model).__name__}.")

        # PEFT: wrap the encoder's transformer; the reference is the same network with the adapter disabled
        self._peft_adapter = False
        if peft_config is not None:
            model = self._apply_peft(model, peft_config)
            self._peft_adapter = True

        if processing_class is None:
            processing_class = model.tokenizer
        self._tokenizer = processing_class

        # Training arguments (attribute names of DPOTrainer, read by its shared methods)
        self.beta = args.beta
        self.k = args.k
        self.score = args.score
        self.loss_types = list(args.loss_type)
        self.loss_weights = list(args.loss_weights or [1.0] * len(self.loss_types))
        self.label_smoothing = args.label_smoothing
        self.precompute_ref_scores = args.precompute_ref_scores
        self.precompute_ref_logps = args.precompute_ref_scores
        self.f_divergence_type = args.f_divergence_type
        self.use_weighting = False
        self.ld_alpha = None
        self.padding_free = False
        self.aux_loss_enabled = False
        self._is_vlm = False
        self._is_vision_dataset = False
        weights = args.position_weights[: args.k] if args.position_weights is not None else [1.0] * args.k
        self._position_weights = torch.tensor(weights, dtype=torch.float32)
        # Encode each unique passage of a batch once (False: encode every list entry, the naive reference path)
        self._encode_unique_passages = True
        # Shared passages cancel in the margin under the sum score: skip them (exact loss, less encoding)
        self._skip_shared = bool(getattr(args, "skip_shared_passages", False)) and args.position_weights is None

        # Data
        if data_collator is None:
            data_collator = DataCollatorForSetPreference(k=args.k)
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    key: self._prepare_dataset(ds, processing_class, args, key) for key, ds in eval_dataset.items()
                }
            else:
                eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")

        # Disable dropout before anything is copied from the policy
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)

        # Reference scorer
        all_datasets = [train_dataset] + (
            list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset] if eval_dataset else []
        )
        if ref_model is None and not self._peft_adapter and not self.precompute_ref_scores:
            ref_model = copy.deepcopy(model)
            self._ref_is_policy_copy = True
        else:
            self._ref_is_policy_copy = False
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
        if self.precompute_ref_scores:
            for ds in all_datasets:
                if isinstance(ds, IterableDataset) and not _has_ref_columns(ds):
                    raise ValueError(
                        "`precompute_ref_scores=True` is not supported with an IterableDataset that lacks the "
                        f"{REF_CHOSEN_COLUMN!r}/{REF_REJECTED_COLUMN!r} columns. Use a map-style Dataset."
                    )

        # transformers.Trainer, not DPOTrainer.__init__ (causal-LM specific)
        Trainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        # What trl's _BaseTrainer.__init__ does for older transformers (no telemetry: not a TRL-shipped trainer)
        if Version(transformers.__version__) < Version("5.19.0"):
            self.model_accepts_loss_kwargs = False
        if args.n_gpu > 1:
            raise ValueError(
                f"{type(self).__name__} does not support `nn.DataParallel`. Launch with `accelerate launch` or "
                "`torchrun`, or make a single GPU visible with `CUDA_VISIBLE_DEVICES`."
            )

        if self.args.activation_offloading:
            from trl.models import get_act_offloading_ctx_manager

            self.maybe_activation_offload_context = get_act_offloading_ctx_manager(model=self.model)
        else:
            self.maybe_activation_offload_context = contextlib.nullcontext()

        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0

        self.ref_model = ref_model
        if self.ref_model is not None:
            if self.is_deepspeed_enabled:
                from trl.models import prepare_deepspeed

                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)
            elif self.is_fsdp_enabled:
                from trl.models import prepare_fsdp

                self.ref_model = prepare_fsdp(self.ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)

        if args.sync_ref_model:
            if self._peft_adapter or self.ref_model is None:
                raise ValueError(
                    "`sync_ref_model=True` needs a separate reference model: it is not supported with `peft_config` "
                    "or precomputed reference scores."
                )
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

        if self.precompute_ref_scores:
            self.train_dataset = self._precompute_ref_scores(
                self.train_dataset, "train", args.precompute_ref_batch_size or args.per_device_train_batch_size
            )
            if self.eval_dataset is not None:
                bs = args.precompute_ref_batch_size or args.per_device_eval_batch_size
                if isinstance(self.eval_dataset, dict):
                    self.eval_dataset = {
                        name: self._precompute_ref_scores(ds, name, bs) for name, ds in self.eval_dataset.items()
                    }
                else:
                    self.eval_dataset = self._precompute_ref_scores(self.eval_dataset, "eval", bs)

    # ----------------------------------------------------------------------------------------------------------------
    # Setup helpers
    # ----------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _infer_base_model_id(model) -> str | None:
        for candidate in (
            getattr(model, "bporag_model_id", None),
            getattr(getattr(model, "model_card_data", None), "base_model", None),
            getattr(getattr(model, "model_card_data", None), "model_id", None),
        ):
            if candidate:
                return str(candidate)
        config = getattr(model, "config", None)
        return getattr(config, "_name_or_path", None) or None

    @staticmethod
    def _apply_peft(model, peft_config):
        from peft import PeftConfig, PeftModel, get_peft_model

        if not isinstance(peft_config, PeftConfig):
            raise TypeError(f"`peft_config` must be a `peft.PeftConfig`, got {type(peft_config).__name__}.")
        if peft_config.is_prompt_learning:
            raise ValueError("Prompt-learning PEFT methods are not supported for retrievers; use e.g. LoRA.")
        modules = _transformer_modules(model)
        if len(modules) != 1:
            raise ValueError(
                f"peft_config needs exactly one Transformer module in the retriever, found {len(modules)}."
            )
        module = modules[0]
        if isinstance(module.model, PeftModel):
            raise ValueError("The retriever already has a PEFT adapter; merge it first, then pass a new peft_config.")
        # An encoder has no LM head: wrap it as a feature extractor whatever task type the CLI set (CAUSAL_LM default)
        peft_config = copy.deepcopy(peft_config)
        peft_config.task_type = "FEATURE_EXTRACTION"
        module.model = get_peft_model(module.model, peft_config)
        return model

    def _peft_model(self, model=None):
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        return _transformer_modules(model)[0].model

    @contextlib.contextmanager
    def _adapter_disabled(self, model=None):
        with self._peft_model(model).disable_adapter():
            yield

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Validate RPO rows (no tokenisation: passages are tokenised per batch, each unique text once)."""
        if isinstance(dataset, IterableDataset):
            first = next(iter(dataset))
            columns = list(first.keys())
        else:
            columns = list(dataset.column_names)
            first = dataset[0] if len(dataset) else {}
        for column in REQUIRED_COLUMNS:
            if column not in columns:
                raise ValueError(
                    f"The {dataset_name} dataset has no {column!r} column (columns: {columns}). RPO rows need "
                    "'prompt' (query string), 'chosen' and 'rejected' (lists of passage texts)."
                )
        if not first:
            raise ValueError(f"The {dataset_name} dataset is empty.")
        if not isinstance(first["prompt"], str):
            raise ValueError(
                f"The 'prompt' column of the {dataset_name} dataset must hold query strings, got "
                f"{type(first['prompt']).__name__}."
            )
        for name in ("chosen", "rejected"):
            if isinstance(first[name], str) or not isinstance(first[name], Sequence):
                raise ValueError(
                    f"The {name!r} column of the {dataset_name} dataset must hold lists of passage texts, got "
                    f"{type(first[name]).__name__}."
                )
        if isinstance(dataset, Dataset):
            k = args.k
            for name in ("chosen", "rejected"):
                lengths = self._list_lengths(dataset, name)
                for row, n in enumerate(lengths):
                    if n < k:
                        raise ValueError(
                            f"Row {row} of the {dataset_name} dataset: field {name!r} has {n} passage(s), fewer "
                            f"than k={k}. Every chosen/rejected list needs at least k passages."
                        )
                for row, passages in enumerate(dataset[name]):
                    window = passages[:k]
                    if len(set(window)) < len(window):
                        dup = next(p for i, p in enumerate(window) if p in window[:i])
                        raise ValueError(
                            f"Row {row} of the {dataset_name} dataset: field {name!r} repeats the passage "
                            f"{str(dup)[:60]!r} in its first k={k}. A list holds distinct passages (a repeated one "
                            "would count twice in the set score)."
                        )
            for column in (REF_CHOSEN_COLUMN, REF_REJECTED_COLUMN, "chosen_score", "rejected_score"):
                if column in columns:
                    for row, value in enumerate(dataset[column]):
                        if value is not None and not math.isfinite(float(value)):
                            raise ValueError(
                                f"Row {row} of the {dataset_name} dataset: field {column!r} is {value!r}; scores "
                                "must be finite numbers."
                            )
        return dataset

    @staticmethod
    def _list_lengths(dataset: Dataset, column: str) -> list[int]:
        try:  # fast path: arrow list lengths, no Python materialisation of the texts
            import pyarrow.compute as pc

            lengths = pc.list_value_length(dataset.with_format("arrow")[:][column])
            return [0 if n is None else int(n) for n in lengths.to_pylist()]
        except Exception:
            return [len(v) for v in dataset[column]]

    def _set_signature_columns_if_needed(self):
        # Used when `remove_unused_columns=True`: keep what the collator reads
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "chosen", "rejected", REF_CHOSEN_COLUMN, REF_REJECTED_COLUMN]

    # ----------------------------------------------------------------------------------------------------------------
    # Encoding and set scores
    # ----------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _prompt_for(st_model, kind: str) -> str | None:
        prompts = getattr(st_model, "prompts", None) or {}
        names = ["query"] if kind == "query" else ["document", "passage", "corpus"]
        for name in names:
            if name in prompts:
                return prompts[name] or None
        default = getattr(st_model, "default_prompt_name", None)
        return (prompts.get(default) or None) if default else None

    def _encode(self, model, texts: list[str], kind: str) -> torch.Tensor:
        """Embed ``texts`` (``kind`` "query" or "document") with one forward of ``model``; returns float32 [n, d]."""
        st_model = self.accelerator.unwrap_model(model)
        limit = self.args.max_query_length if kind == "query" else self.args.max_passage_length
        max_seq_length = getattr(st_model, "max_seq_length", None)
        if max_seq_length:
            limit = min(limit, max_seq_length)
        features = st_model.preprocess(texts, prompt=self._prompt_for(st_model, kind), task=kind, max_length=limit)
        device = getattr(st_model, "device", None) or self.accelerator.device
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        out = model(features, task=kind)
        return out["sentence_embedding"].float()

    def _similarities(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """f(q_b, p_bi) for q [B, d] and p [B, k, d] -> [B, k]."""
        if self.score == "cos":
            q = F.normalize(q, p=2, dim=-1)
            p = F.normalize(p, p=2, dim=-1)
        return torch.einsum("bd,bkd->bk", q, p)

    def compute_set_scores(self, inputs: dict[str, Any], model=None, return_embeddings: bool = False):
        """Set scores s(q, P+) and s(q, P−) of a collated batch under ``model`` (default: the policy); [B] each.

        With ``return_embeddings`` a third item ``(q_emb [B, d], passages [N], p_emb [N, d])`` holds the embeddings
        of the batch's (encoded) unique passages, for the ``sft`` term."""
        model = self.model if model is None else model
        k = self.k
        queries = list(inputs["prompt"])
        chosen = [list(c[:k]) for c in inputs["chosen"]]
        rejected = [list(r[:k]) for r in inputs["rejected"]]
        batch_size = len(queries)

        unique_queries = list(dict.fromkeys(queries))
        q_index = {t: i for i, t in enumerate(unique_queries)}
        q_emb = self._encode(model, unique_queries, "query")
        q_emb = q_emb[torch.tensor([q_index[t] for t in queries], device=q_emb.device)]

        if self._skip_shared:
            # a passage in both windows of a pair adds the same f(q, p) to both scores: slot it to a zero vector
            shared = [set(c) & set(r) for c, r in zip(chosen, rejected)]
            unique = list(dict.fromkeys(t for lst, sh in zip(chosen + rejected, shared + shared) for t in lst
                                        if t not in sh))
            index = {t: i for i, t in enumerate(unique)}
            zero = len(unique)
            p_emb = self._encode(model, unique, "document") if unique else None
            if p_emb is None:
                p_emb = q_emb.new_zeros((0, q_emb.shape[-1]))
            p_emb = torch.cat([p_emb, p_emb.new_zeros((1, p_emb.shape[-1]))])
            idx_c = torch.tensor([[zero if t in sh else index[t] for t in lst] for lst, sh in zip(chosen, shared)],
                                 device=p_emb.device)
            idx_r = torch.tensor([[zero if t in sh else index[t] for t in lst] for lst, sh in zip(rejected, shared)],
                                 device=p_emb.device)
            e_c, e_r = p_emb[idx_c], p_emb[idx_r]
        elif self._encode_unique_passages:
            unique = list(dict.fromkeys(t for lst in chosen + rejected for t in lst))
            index = {t: i for i, t in enumerate(unique)}
            p_emb = self._encode(model, unique, "document")
            idx_c = torch.tensor([[index[t] for t in lst] for lst in chosen], device=p_emb.device)
            idx_r = torch.tensor([[index[t] for t in lst] for lst in rejected], device=p_emb.device)
            e_c, e_r = p_emb[idx_c], p_emb[idx_r]
        else:
            e_c = self._encode(model, [t for lst in chosen for t in lst], "document").view(batch_size, k, -1)
            e_r = self._encode(model, [t for lst in rejected for t in lst], "document").view(batch_size, k, -1)
            unique = [t for lst in chosen for t in lst]
            p_emb = e_c.reshape(-1, e_c.shape[-1])

        weights = self._position_weights.to(device=q_emb.device)
        chosen_scores = (self._similarities(q_emb, e_c) * weights).sum(-1)
        rejected_scores = (self._similarities(q_emb, e_r) * weights).sum(-1)
        if return_embeddings:
            return chosen_scores, rejected_scores, (q_emb, unique, p_emb[: len(unique)])
        return chosen_scores, rejected_scores

    def contrastive_nll(self, inputs: dict[str, Any], q_emb: torch.Tensor, passages: list[str],
                        p_emb: torch.Tensor) -> torch.Tensor:
        """The ``sft`` term: for each passage in the chosen window but not the rejected one (what the pair prefers),
        −log softmax over all of the batch's encoded passages of ``contrastive_scale · f(q, p)``; the query's other
        chosen passages are masked out. The set analogue of TRL's NLL on the chosen completion (the old
        ``rpo_alpha``), with the batch's passages as negatives."""
        k = self.k
        index = {t: i for i, t in enumerate(passages)}
        sims = self._similarities(q_emb, p_emb.unsqueeze(0).expand(q_emb.shape[0], -1, -1))
        logits = self.args.contrastive_scale * sims
        terms = []
        for b, (c, r) in enumerate(zip(inputs["chosen"], inputs["rejected"])):
            chosen_rows = [index[t] for t in c[:k] if t in index]
            for t in c[:k]:
                if t in set(r[:k]) or t not in index:
                    continue
                mask = torch.zeros_like(logits[b], dtype=torch.bool)
                mask[[j for j in chosen_rows if j != index[t]]] = True
                terms.append(torch.logsumexp(logits[b].masked_fill(mask, float("-inf")), 0) - logits[b, index[t]])
        if not terms:
            return logits.new_zeros(())
        return torch.stack(terms).mean()

    def compute_ref_scores(self, inputs: dict[str, Any], model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference set scores (no grad): ``model`` if given, else the reference model, else the adapter-disabled
        policy."""
        if model is not None:
            ctx = contextlib.nullcontext()
        elif self.ref_model is not None:
            model, ctx = self.ref_model, contextlib.nullcontext()
        elif self._peft_adapter:
            model, ctx = self.accelerator.unwrap_model(self.model), self._adapter_disabled()
        else:
            raise ValueError(
                "No reference scores: the batch has no 'ref_chosen_score'/'ref_rejected_score' and no reference model "
                "is kept (precompute_ref_scores=True without ref_model). Precompute the scores for this dataset "
                "(pass it as eval_dataset at initialisation or to evaluate() before training) or pass a ref_model."
            )
        with torch.no_grad(), ctx, self.accelerator.autocast():
            chosen, rejected = self.compute_set_scores(inputs, model)
        return chosen.detach(), rejected.detach()

    def compute_ref_log_probs(self, model, inputs):
        """TRL's name for the reference pass: here the reference set scores (chosen, rejected)."""
        return self.compute_ref_scores(inputs, model)

    # ----------------------------------------------------------------------------------------------------------------
    # Reference precomputation
    # ----------------------------------------------------------------------------------------------------------------
    def _precompute_ref_scores(self, dataset, name: str, batch_size: int):
        if _has_ref_columns(dataset):
            return dataset
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                "`precompute_ref_scores=True` is not supported with IterableDataset. Use a map-style Dataset or set "
                "`precompute_ref_scores=False`."
            )
        if self.ref_model is not None:
            model = self.ref_model
        elif self._peft_adapter:
            model = None  # adapter-disabled policy
        else:
            model = self.model  # the policy before training is the reference (as in TRL)
        loader = DataLoader(
            dataset.select_columns(list(REQUIRED_COLUMNS)),
            batch_size=batch_size,
            collate_fn=DataCollatorForSetPreference(k=self.k, with_ref_scores=False),
            num_workers=self.args.dataloader_num_workers,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        scorer = model if model is not None else self.model
        was_training = scorer.training
        scorer.eval()
        chosen_all, rejected_all = [], []
        try:
            for batch in tqdm(
                iterable=loader,
                desc=f"Computing reference set scores for {name} dataset",
                disable=bool(os.environ.get("TQDM_DISABLE", "")),
            ):
                chosen, rejected = self.compute_ref_scores(batch, model)
                chosen, rejected = self.accelerator.gather_for_metrics((chosen, rejected))
                chosen_all.append(chosen.float().cpu())
                rejected_all.append(rejected.float().cpu())
        finally:
            scorer.train(was_training)
        chosen_col = torch.cat(chosen_all).tolist()
        rejected_col = torch.cat(rejected_all).tolist()
        dataset = dataset.add_column(REF_CHOSEN_COLUMN, chosen_col)
        return dataset.add_column(REF_REJECTED_COLUMN, rejected_col)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """TRL's name for the precomputation: here the reference set scores."""
        return self._precompute_ref_scores(dataset, name, batch_size)

    # ----------------------------------------------------------------------------------------------------------------
    # Loss, metrics, evaluation
    # ----------------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        chosen_scores, rejected_scores, (q_emb, passages, p_emb) = self.compute_set_scores(
            inputs, model, return_embeddings=True
        )
        if self.precompute_ref_scores and REF_CHOSEN_COLUMN in inputs and REF_REJECTED_COLUMN in inputs:
            ref_chosen = inputs[REF_CHOSEN_COLUMN].to(chosen_scores.device, torch.float32)
            ref_rejected = inputs[REF_REJECTED_COLUMN].to(chosen_scores.device, torch.float32)
        else:
            ref_chosen, ref_rejected = self.compute_ref_scores(inputs)

        pairwise = [(lt, w) for lt, w in zip(self.loss_types, self.loss_weights) if lt != "sft"]
        loss = set_dpo_loss(
            chosen_scores,
            rejected_scores,
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            loss_type=[lt for lt, _ in pairwise],
            loss_weights=[w for _, w in pairwise],
            label_smoothing=self.label_smoothing,
            discopop_tau=self.args.discopop_tau,
        )
        if "sft" in self.loss_types:
            nll = self.contrastive_nll(inputs, q_emb, passages, p_emb)
            loss = loss + self.loss_weights[self.loss_types.index("sft")] * nll
            self._metrics[mode]["nll_loss"].append(self.accelerator.gather_for_metrics(nll.detach()).mean().item())

        # Metrics, with TRL's names
        chosen_rewards = self.beta * (chosen_scores.detach() - ref_chosen)
        rejected_rewards = self.beta * (rejected_scores.detach() - ref_rejected)
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["scores/chosen"].append(gather(chosen_scores.detach()).mean().item())
        metrics["scores/rejected"].append(gather(rejected_scores.detach()).mean().item())

        if return_outputs:
            outputs = {
                "chosen_scores": chosen_scores.detach(),
                "rejected_scores": rejected_scores.detach(),
                "chosen_rewards": chosen_rewards,
                "rejected_rewards": rejected_rewards,
            }
            return loss, outputs
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's ``DPOTrainer.log`` (average the accumulated metrics and add them to ``logs``), with the evaluation
        prefix taken from ``logs`` so that ``evaluate(metric_key_prefix=...)`` and eval-dataset dicts
        (``eval_<name>_``) get matching metric names."""
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items() if val}
        if mode == "eval":
            prefix = "eval_"
            for key in logs:
                if key.endswith("_loss") and key != "train_loss":
                    prefix = key[: -len("loss")]
                    break
            metrics = {f"{prefix}{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        Trainer.log(self, logs, start_time)
        self._metrics[mode].clear()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        # "logits": per-pair rewards [B, 2] (chosen, rejected); there are no labels
        logits = torch.stack([outputs["chosen_rewards"], outputs["rejected_rewards"]], dim=1)
        return loss.detach(), logits, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            datasets_ = eval_dataset if isinstance(eval_dataset, dict) else {None: eval_dataset}
            if (
                self.precompute_ref_scores
                and self.ref_model is None
                and not self._peft_adapter
                and self.state.global_step > 0
                and not all(_has_ref_columns(ds) for ds in datasets_.values())
            ):
                raise ValueError(
                    "Cannot compute reference scores for a dataset passed to `evaluate()` after training has started: "
                    "`precompute_ref_scores=True` and no `ref_model`, so the reference is not kept in memory. Pass the "
                    "dataset as `eval_dataset` at initialisation, give a `ref_model`, or add the "
                    f"{REF_CHOSEN_COLUMN!r}/{REF_REJECTED_COLUMN!r} columns."
                )
            prepared = {}
            for key, ds in datasets_.items():
                ds = self._prepare_dataset(ds, self.processing_class, self.args, key or "eval")
                if self.precompute_ref_scores:
                    bs = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
                    ds = self._precompute_ref_scores(ds, key or "eval", bs)
                prepared[key] = ds
            if isinstance(eval_dataset, dict):
                metrics = {}
                for key, ds in prepared.items():
                    metrics.update(
                        Trainer.evaluate(
                            self,
                            eval_dataset=ds,
                            ignore_keys=ignore_keys,
                            metric_key_prefix=f"{metric_key_prefix}_{key}",
                        )
                    )
                return metrics
            eval_dataset = prepared[None]
        return Trainer.evaluate(
            self, eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Saving, loading, model card, Hub
    # ----------------------------------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write a sentence-transformers folder (``SentenceTransformer(output_dir)`` loads it) plus a model card."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        logger.info(f"Saving retriever to {output_dir}")
        st_model = self.accelerator.unwrap_model(self.model)
        if self._peft_adapter:
            # The folder holds the merged encoder (loads anywhere); the adapter alone goes to adapter/
            peft_model = self._peft_model()
            peft_model.save_pretrained(os.path.join(output_dir, ADAPTER_SUBDIR))
            merged = copy.deepcopy(st_model)
            module = _transformer_modules(merged)[0]
            module.model = module.model.merge_and_unload()
            merged.save_pretrained(output_dir, create_model_card=False)
            del merged
        else:
            st_model.save_pretrained(output_dir, create_model_card=False)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        self._write_model_card(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load retriever weights from one of our checkpoint folders (the Trainer's loader expects a transformers
        layout and would silently load nothing into a SentenceTransformer)."""
        from sentence_transformers import SentenceTransformer

        st_model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self._peft_adapter:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            adapter_dir = os.path.join(resume_from_checkpoint, ADAPTER_SUBDIR)
            weights = os.path.join(adapter_dir, "adapter_model.safetensors")
            if not os.path.isfile(weights):
                raise ValueError(f"Can't find an adapter checkpoint at {adapter_dir}")
            result = set_peft_model_state_dict(self._peft_model(st_model), load_file(weights, device="cpu"))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"Unexpected adapter keys in {weights}: {result.unexpected_keys[:5]}")
            return
        if not os.path.isfile(os.path.join(resume_from_checkpoint, "modules.json")):
            raise ValueError(f"Can't find a sentence-transformers checkpoint at {resume_from_checkpoint}")
        loaded = SentenceTransformer(
            resume_from_checkpoint,
            device="cpu",
            trust_remote_code=bool(getattr(self.args, "trust_remote_code", False)),
        )
        st_model.load_state_dict(loaded.state_dict(), strict=True)
        del loaded

    def _load_best_model(self) -> None:
        logger.info(f"Loading best model from {self.state.best_model_checkpoint} (score: {self.state.best_metric}).")
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer copies only transformers files (config, weights) to output_dir before uploading it; copy the
        # whole sentence-transformers layout (modules.json, 1_Pooling/, README.md, adapter/, ...) as well.
        if self.is_world_process_zero():
            skip = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", TRAINING_ARGS_NAME}
            os.makedirs(self.args.output_dir, exist_ok=True)
            for name in os.listdir(checkpoint_folder):
                if name in skip or name.startswith("rng_state"):
                    continue
                src, dst = os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name)
                if os.path.isdir(src):
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                else:
                    shutil.copy(src, dst)
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        retrieval_metrics: dict[str, Any] | None = None,
        **kwargs,
    ) -> None:
        """Write ``README.md`` to ``args.output_dir`` (used by ``push_to_hub`` and at each checkpoint, as in TRL).

        ``trainer.push_to_hub(dataset_name=..., retrieval_metrics=...)`` passes its keyword arguments here.

        Args:
            model_name: the card's title (default: the output folder's name).
            dataset_name: the preference data set (Hub id or folder); recorded in the card's ``datasets``.
            tags: extra tags.
            retrieval_metrics: retrieval quality before and after training, recorded in the card's YAML
                (``retrieval_metrics``) and as a table, e.g. ``{"dataset": "squad-dev", "split": "test",
                "before": {"recall@5": 0.61}, "after": {"recall@5": 0.64}}``. ``before``/``after`` map metric names
                to numbers; the other keys are free-form. Kept for later cards (checkpoints, ``save_model``).
        """
        if retrieval_metrics is not None:
            self.set_retrieval_metrics(retrieval_metrics)
        if not self.is_world_process_zero():
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        self._write_model_card(self.args.output_dir, model_name=model_name, dataset_name=dataset_name, tags=tags)

    def set_retrieval_metrics(self, retrieval_metrics: dict[str, Any]) -> None:
        """Record retrieval metrics before/after training for the model card (see :meth:`create_model_card`)."""
        if not isinstance(retrieval_metrics, dict) or not ({"before", "after"} & set(retrieval_metrics)):
            raise ValueError(
                "retrieval_metrics: expected a dict with 'before' and/or 'after' (metric name -> number), got "
                f"{retrieval_metrics!r}"
            )
        clean: dict[str, Any] = {}
        for key, value in retrieval_metrics.items():
            if key in ("before", "after"):
                if not isinstance(value, dict):
                    raise ValueError(f"retrieval_metrics[{key!r}]: expected a dict of metric -> number, got {value!r}")
                for name, number in value.items():
                    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number:
                        raise ValueError(f"retrieval_metrics[{key!r}][{name!r}]: expected a number, got {number!r}")
                clean[key] = {str(name): float(number) for name, number in value.items()}
            else:
                clean[str(key)] = value
        self._card_metrics = clean

    def _write_model_card(self, output_dir, model_name=None, dataset_name=None, tags=None) -> None:
        if dataset_name:
            self._card_dataset_name = dataset_name
        dataset_name = getattr(self, "_card_dataset_name", None)
        path = Path(output_dir) / "README.md"
        path.write_text(self._model_card_text(model_name or Path(self.args.output_dir).name, dataset_name, tags))

    def _reference_description(self) -> str:
        if self._peft_adapter:
            return "base encoder (PEFT adapter disabled)"
        if self.precompute_ref_scores:
            return "precomputed reference set scores"
        if self._ref_is_policy_copy:
            return "frozen copy of the base retriever"
        return "explicit reference retriever"

    def _model_card_text(self, model_name: str, dataset_name: str | None, tags) -> str:
        import trl
        from huggingface_hub import ModelCardData

        all_tags = list(self._tag_names)
        for tag in [tags] if isinstance(tags, str) else tags or []:
            if tag not in all_tags:
                all_tags.append(tag)
        base = self._base_model_id
        hub_like = bool(base) and not os.path.exists(base) and base.count("/") == 1 and not base.startswith(".")
        config = {
            "k": self.k,
            "score": self.score,
            "position_weights": self.args.position_weights[: self.k] if self.args.position_weights else None,
            "beta": self.beta,
            "loss_type": self.loss_types,
            "loss_weights": self.loss_weights,
            "label_smoothing": self.label_smoothing,
            "reference": self._reference_description(),
            "max_query_length": self.args.max_query_length,
            "max_passage_length": self.args.max_passage_length,
            "learning_rate": self.args.learning_rate,
            "global_step": self.state.global_step if getattr(self, "state", None) else 0,
            "base_model": base,
        }
        card_data = ModelCardData(
            library_name="sentence-transformers",
            pipeline_tag="sentence-similarity",
            base_model=base if hub_like else None,
            datasets=[dataset_name] if dataset_name else None,
            tags=all_tags,
            set_dpo={k: v for k, v in config.items() if v is not None},
        )
        metrics = getattr(self, "_card_metrics", None)
        metrics_section = ""
        if metrics:
            card_data.retrieval_metrics = metrics
            before, after = metrics.get("before", {}), metrics.get("after", {})
            names = list(dict.fromkeys([*before, *after]))

            def cell(table, name):
                return f"{table[name]:.4f}" if name in table else "-"

            where = ", ".join(f"{key}: `{value}`" for key, value in metrics.items() if key not in ("before", "after"))
            metric_rows = "\n".join(f"| {name} | {cell(before, name)} | {cell(after, name)} |" for name in names)
            metrics_section = (
                "\n## Retrieval metrics\n\n"
                + (f"Measured on {where}.\n\n" if where else "")
                + f"| metric | before | after |\n|---|---|---|\n{metric_rows}\n"
            )
        rows = "\n".join(f"| {key} | {value} |" for key, value in config.items() if value is not None)
        repo = self.hub_model_id or model_name
        citation = self._paper.get("citation", "")
        body = f"""
# {model_name}

A dense retriever fine-tuned with **set-level DPO** (`SetDPOTrainer` from trl-bporag, built on TRL's `DPOTrainer`)
from `{base or "an unnamed base retriever"}`{f" on `{dataset_name}`" if dataset_name else ""}.

The retriever scores an ordered candidate list P for a query q by s(q, P) = Σ_{{i≤k}} w_i f(q, P_i) over the first k
passages (f = {"cosine similarity" if self.score == "cos" else "dot product"} of the embeddings), and is trained on
preference pairs (P+, P−) with logits β[(s_θ(P+) − s_θ(P−)) − (s_ref(P+) − s_ref(P−))].

## Retrieval training configuration

| parameter | value |
|---|---|
{rows}
{metrics_section}
## Usage

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo}")
query_embeddings = model.encode_query(["..."])
passage_embeddings = model.encode_document(["..."])
scores = model.similarity(query_embeddings, passage_embeddings)
```

## Framework versions

- TRL: {trl.__version__}
- Transformers: {transformers.__version__}
- PyTorch: {torch.__version__}

## Citation (DPO)

```bibtex
{citation}
```
"""
        return f"---\n{card_data.to_yaml()}\n---\n{textwrap.dedent(body).lstrip()}"


__all__ = ["DataCollatorForSetPreference", "SetDPOTrainer", "set_dpo_loss", "set_dpo_per_pair_loss"]
