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

from ..losses import ContrastiveSetLoss, ListwiseSetDPOLoss, SetDPOLoss
from .set_dpo_config import SetDPOConfig

logger = get_logger(__name__)

REF_CHOSEN_COLUMN = "ref_chosen_score"
REF_REJECTED_COLUMN = "ref_rejected_score"
REF_LIST_COLUMN = "ref_list_scores"
LISTS_COLUMN = "lists"
LIST_SCORES_COLUMN = "list_scores"
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
LISTWISE_COLUMNS = ("prompt", LISTS_COLUMN, LIST_SCORES_COLUMN)
TRAINING_ARGS_NAME = "training_args.bin"
ADAPTER_SUBDIR = "adapter"


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
def _check_window(passages, k: int, name: str, prompt) -> list[str]:
    """The first k passages of one list, checked: enough of them, all strings, none repeated."""
    if isinstance(passages, str) or len(passages) < k:
        n = 1 if isinstance(passages, str) else len(passages)
        raise ValueError(f"Field {name!r} of an example has {n} passage(s), fewer than k={k} (query: {prompt!r}).")
    window = list(passages[:k])
    if not all(isinstance(p, str) for p in window):
        bad = next(p for p in window if not isinstance(p, str))
        raise ValueError(f"Field {name!r} of an example holds a {type(bad).__name__}, not a passage text (query: "
                         f"{prompt!r}).")
    if len(set(window)) < len(window):
        dup = next(p for i, p in enumerate(window) if p in window[:i])
        raise ValueError(f"Field {name!r} of an example repeats the passage {dup[:60]!r} in its first k={k} "
                         f"(query: {prompt!r}); a list holds distinct passages.")
    return window


def _check_listwise_row(example, k: int, where: str) -> tuple[list[list[str]], list[float]]:
    """The windows and judge scores of one listwise row, checked: every window as :func:`_check_window`, one finite
    score per window, at least two windows. ``where`` names the row in the error."""
    windows = [_check_window(w, k, LISTS_COLUMN, example["prompt"]) for w in example[LISTS_COLUMN]]
    scores = [float(v) for v in example[LIST_SCORES_COLUMN]]
    if len(scores) != len(windows) or len(windows) < 2:
        raise ValueError(f"{where}: {len(scores)} {LIST_SCORES_COLUMN} for {len(windows)} lists; a listwise row needs "
                         "one score per list and >= 2 lists.")
    if not all(math.isfinite(v) for v in scores):
        raise ValueError(f"{where}: {LIST_SCORES_COLUMN} {scores} are not all finite.")
    return windows, scores


@dataclass
class DataCollatorForSetPreference:
    """Batch RPO rows as raw texts: tokenisation happens in ``compute_loss`` so that each unique passage of a batch is
    encoded once.

    Pairwise rows give ``{"prompt": [str], "chosen": [[str] * k], "rejected": [[str] * k]}`` and, when every row has
    them, the float tensors ``ref_chosen_score`` / ``ref_rejected_score``. Listwise rows (``lists``, ``list_scores``)
    give ``{"prompt", "lists": [[[str] * k] * L_b], "list_scores": [B, L], "list_mask": [B, L]}`` (L the longest
    row; padding lists repeat the row's first list and are masked) and ``ref_list_scores`` [B, L] when present.
    """

    k: int
    with_ref_scores: bool = True

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = []
        for example in examples:
            if not isinstance(example["prompt"], str):
                raise ValueError(f"The 'prompt' field must be a query string, got {type(example['prompt']).__name__}.")
            prompts.append(example["prompt"])
        if LISTS_COLUMN in examples[0]:
            return self._listwise(examples, prompts)
        batch: dict[str, Any] = {"prompt": prompts, "chosen": [], "rejected": []}
        for example, prompt in zip(examples, prompts):
            for name in ("chosen", "rejected"):
                batch[name].append(_check_window(example[name], self.k, name, prompt))
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

    def _listwise(self, examples, prompts) -> dict[str, Any]:
        width = max(len(ex[LISTS_COLUMN]) for ex in examples)
        lists, scores, mask, refs = [], [], [], []
        for example, prompt in zip(examples, prompts):
            windows, judged = _check_listwise_row(example, self.k, f"An example (query: {prompt!r})")
            pad = width - len(windows)
            lists.append(windows + [windows[0]] * pad)
            scores.append(judged + [0.0] * pad)
            mask.append([True] * len(windows) + [False] * pad)
            ref = example.get(REF_LIST_COLUMN)
            refs.append(None if ref is None else [float(v) for v in ref] + [0.0] * pad)
        batch = {"prompt": prompts, LISTS_COLUMN: lists, LIST_SCORES_COLUMN: torch.tensor(scores),
                 "list_mask": torch.tensor(mask)}
        if self.with_ref_scores and all(r is not None for r in refs):
            batch[REF_LIST_COLUMN] = torch.tensor(refs)
        return batch


def _has_ref_columns(dataset) -> bool:
    names = getattr(dataset, "column_names", None) or []
    return (REF_CHOSEN_COLUMN in names and REF_REJECTED_COLUMN in names) or REF_LIST_COLUMN in names


def _is_listwise(dataset) -> bool:
    return LISTS_COLUMN in (getattr(dataset, "column_names", None) or [])


def _transformer_modules(st_model) -> list:
    from sentence_transformers.models import Transformer

    return [m for m in st_model.modules() if isinstance(m, Transformer)]


def _load_retriever(id_or_path: str, args: SetDPOConfig):
    """Load the retriever with ``trl_bporag.models.load_retriever`` (offline resolution of default ids), passing
    ``args.model_init_kwargs`` on: ``revision``, ``trust_remote_code`` (or ``args.trust_remote_code``) and
    ``cache_folder`` go to ``SentenceTransformer``; ``dtype``/``torch_dtype`` and anything else go to the underlying
    transformers model (``model_kwargs``)."""
    from trl_bporag.models import load_retriever

    init = dict(args.model_init_kwargs or {}) if isinstance(args.model_init_kwargs, dict) else {}
    kwargs = {key: init.pop(key) for key in ("revision", "cache_folder", "trust_remote_code") if key in init}
    if args.trust_remote_code and "trust_remote_code" not in kwargs:
        kwargs["trust_remote_code"] = True
    if "torch_dtype" in init:
        init["dtype"] = init.pop("torch_dtype")
    if init:
        kwargs["model_kwargs"] = init
    return load_retriever(id_or_path, **kwargs)


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
        # The objectives (trl_bporag.losses)
        listwise = _is_listwise(train_dataset)
        margin_types = [(lt, w) for lt, w in zip(self.loss_types, self.loss_weights) if lt != "sft"]
        if listwise and [lt for lt, _ in margin_types] not in ([], ["sigmoid"]):
            raise ValueError(
                f"loss_type={self.loss_types}: listwise rows ({LISTS_COLUMN!r}, {LIST_SCORES_COLUMN!r}) take 'sigmoid' "
                "(its Plackett-Luce form, ListwiseSetDPOLoss) and/or 'sft'."
            )
        if listwise and args.reference_margin_scale is not None:
            raise ValueError("reference_margin_scale weights pairs; it is not defined for listwise rows.")
        self.preference_loss = None
        if margin_types and listwise:
            self.preference_loss = ListwiseSetDPOLoss(self.beta, args.reference)  # weighted in compute_loss
        elif margin_types:
            self.preference_loss = SetDPOLoss(
                self.beta, [lt for lt, _ in margin_types], [w for _, w in margin_types], args.reference,
                args.reference_margin_scale, self.label_smoothing, args.discopop_tau,
            )
        self.contrastive_loss = ContrastiveSetLoss(args.contrastive_scale) if "sft" in self.loss_types else None
        self._needs_reference = self.preference_loss is not None and self.preference_loss.needs_reference

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
        if not self._needs_reference:
            self.precompute_ref_scores = False  # nothing reads reference scores (reference-free, or sft only)
            ref_model = None
        if ref_model is None and not self._peft_adapter and not self.precompute_ref_scores and self._needs_reference:
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
        if LISTS_COLUMN in columns:
            return self._prepare_listwise(dataset, columns, first, args, dataset_name)
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
    def _prepare_listwise(dataset, columns, first, args, dataset_name):
        """Validate listwise rows: ``lists`` (>= 2 windows of >= k passages) and one ``list_scores`` value per list."""
        for column in LISTWISE_COLUMNS:
            if column not in columns:
                raise ValueError(
                    f"The {dataset_name} dataset has no {column!r} column (columns: {columns}). Listwise RPO rows need "
                    "'prompt', 'lists' (lists of passage texts) and 'list_scores' (one judge score per list)."
                )
        if not first:
            raise ValueError(f"The {dataset_name} dataset is empty.")
        rows = dataset if isinstance(dataset, Dataset) else [first]
        for row, example in enumerate(rows):
            _check_listwise_row(example, args.k, f"Row {row} of the {dataset_name} dataset")
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
            self._signature_columns = ["prompt", "chosen", "rejected", REF_CHOSEN_COLUMN, REF_REJECTED_COLUMN,
                                       LISTS_COLUMN, LIST_SCORES_COLUMN, REF_LIST_COLUMN]

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
        """f(q_b, p_bi) for q [B, d] and p [B, n, d] -> [B, n]."""
        if self.score == "cos":
            q = F.normalize(q, p=2, dim=-1)
            p = F.normalize(p, p=2, dim=-1)
        return torch.einsum("bd,bkd->bk", q, p)

    def compute_list_scores(self, queries: list[str], lists: list[list[list[str]]], model=None):
        """Set scores s(q_b, P_bj) of L lists per query (``lists[b][j]``: the first-k passages) under ``model``
        (default: the policy): ``(scores [B, L], (q_emb [B, d], passages [N], p_emb [N, d]))``.

        Each unique query and passage of the batch is encoded once. With the sum score and
        ``skip_shared_passages``, a passage that is in every list of its row adds the same f(q, p) to all of the row's
        scores, so it is not encoded (it counts as 0): every difference between the lists of a row, hence every loss,
        is exact, and the scores are sums over the passages where the lists differ."""
        model = self.model if model is None else model
        unique_queries = list(dict.fromkeys(queries))
        q_index = {t: i for i, t in enumerate(unique_queries)}
        q_emb = self._encode(model, unique_queries, "query")
        q_emb = q_emb[torch.tensor([q_index[t] for t in queries], device=q_emb.device)]
        if self._encode_unique_passages:
            shared = [set.intersection(*(set(w) for w in row)) if self._skip_shared else set() for row in lists]
            unique = list(dict.fromkeys(t for row, sh in zip(lists, shared) for w in row for t in w if t not in sh))
            p_emb = self._encode(model, unique, "document") if unique else q_emb.new_zeros((0, q_emb.shape[-1]))
            index = {t: i for i, t in enumerate(unique)}
            zero = len(unique)
            table = torch.cat([p_emb, p_emb.new_zeros((1, p_emb.shape[-1]))])
            idx = torch.tensor([[[zero if t in sh else index[t] for t in w] for w in row]
                                for row, sh in zip(lists, shared)], device=p_emb.device)
            emb = table[idx]  # [B, L, k, d]
        else:  # the naive path of bench/rpo_step.py: every list entry encoded, nothing shared
            flat = [t for row in lists for w in row for t in w]
            emb = self._encode(model, flat, "document").view(len(lists), len(lists[0]), self.k, -1)
            unique, p_emb = flat, emb.reshape(-1, emb.shape[-1])
        B, L = emb.shape[:2]
        sims = self._similarities(q_emb, emb.reshape(B, L * self.k, -1)).view(B, L, self.k)
        scores = (sims * self._position_weights.to(device=sims.device)).sum(-1)
        return scores, (q_emb, unique, p_emb)

    def compute_set_scores(self, inputs: dict[str, Any], model=None, return_embeddings: bool = False):
        """Set scores s(q, P+) and s(q, P−) of a collated pairwise batch under ``model`` (default: the policy); [B]
        each (see :meth:`compute_list_scores`). With ``return_embeddings`` a third item holds the encoded queries and
        unique passages, for the ``sft`` term."""
        scores, embeddings = self._batch_scores(inputs, model)
        if return_embeddings:
            return scores[:, 0], scores[:, 1], embeddings
        return scores[:, 0], scores[:, 1]

    def _batch_lists(self, inputs: dict[str, Any]) -> list[list[list[str]]]:
        """The windows of a collated batch, ``[B][L][k]``: listwise rows as they are, a pair as [chosen, rejected]."""
        if LISTS_COLUMN in inputs:
            return inputs[LISTS_COLUMN]
        return [[list(c[: self.k]), list(r[: self.k])] for c, r in zip(inputs["chosen"], inputs["rejected"])]

    def _batch_scores(self, inputs: dict[str, Any], model=None):
        """Scores of a collated batch, pairwise ([B, 2]: chosen, rejected) or listwise ([B, L])."""
        return self.compute_list_scores(list(inputs["prompt"]), self._batch_lists(inputs), model)

    @staticmethod
    def _preferred_pair(inputs: dict[str, Any]) -> torch.Tensor:
        """[B, 2] window indices of each row's preferred and dispreferred window: (chosen, rejected) = (0, 1) for a
        pair; for a listwise row the best- and the worst-judged list (the first of equals)."""
        if LISTS_COLUMN not in inputs:
            return torch.tensor([[0, 1]] * len(inputs["prompt"]))
        judged, mask = inputs[LIST_SCORES_COLUMN], inputs["list_mask"]
        best = judged.masked_fill(~mask, -float("inf")).argmax(1, keepdim=True)
        worst = judged.masked_fill(~mask, float("inf")).argmin(1, keepdim=True)
        return torch.cat([best, worst], dim=1)

    def compute_ref_scores(self, inputs: dict[str, Any], model=None) -> torch.Tensor:
        """Reference scores of a collated batch (no grad), [B, 2] (chosen, rejected) or [B, L] (listwise): ``model``
        if given, else the reference model, else the adapter-disabled policy."""
        if model is not None:
            ctx = contextlib.nullcontext()
        elif self.ref_model is not None:
            model, ctx = self.ref_model, contextlib.nullcontext()
        elif self._peft_adapter:
            model, ctx = self.accelerator.unwrap_model(self.model), self._adapter_disabled()
        else:
            raise ValueError(
                "No reference scores: the batch has no precomputed reference columns and no reference model is kept "
                "(precompute_ref_scores=True without ref_model). Precompute the scores for this dataset (pass it as "
                "eval_dataset at initialisation or to evaluate() before training) or pass a ref_model."
            )
        with torch.no_grad(), ctx, self.accelerator.autocast():
            scores, _ = self._batch_scores(inputs, model)
        return scores.detach().float()

    def _precomputed_ref(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        if REF_LIST_COLUMN in inputs:
            return inputs[REF_LIST_COLUMN].float()
        if REF_CHOSEN_COLUMN in inputs and REF_REJECTED_COLUMN in inputs:
            return torch.stack([inputs[REF_CHOSEN_COLUMN], inputs[REF_REJECTED_COLUMN]], dim=1).float()
        return None

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
        listwise = _is_listwise(dataset)
        loader = DataLoader(
            dataset.select_columns(list(LISTWISE_COLUMNS if listwise else REQUIRED_COLUMNS)),
            batch_size=batch_size,
            collate_fn=DataCollatorForSetPreference(k=self.k, with_ref_scores=False),
            num_workers=self.args.dataloader_num_workers,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        scorer = model if model is not None else self.model
        was_training = scorer.training
        scorer.eval()
        rows = []
        try:
            for batch in tqdm(
                iterable=loader,
                desc=f"Computing reference set scores for {name} dataset",
                disable=bool(os.environ.get("TQDM_DISABLE", "")),
            ):
                scores = self.compute_ref_scores(batch, model)
                mask = batch.get("list_mask", torch.ones_like(scores, dtype=torch.bool))
                scores, mask = self.accelerator.gather_for_metrics((scores.contiguous(), mask.contiguous()))
                rows.extend([s[m].tolist() for s, m in zip(scores.cpu(), mask.cpu())])
        finally:
            scorer.train(was_training)
        if listwise:
            return dataset.add_column(REF_LIST_COLUMN, rows)
        dataset = dataset.add_column(REF_CHOSEN_COLUMN, [r[0] for r in rows])
        return dataset.add_column(REF_REJECTED_COLUMN, [r[1] for r in rows])

    # ----------------------------------------------------------------------------------------------------------------
    # Loss, metrics, evaluation
    # ----------------------------------------------------------------------------------------------------------------
    def _contrastive_targets(self, inputs: dict[str, Any], passages: list[str]):
        """Positives and masked passages of the ``sft`` term: for each row, the passages of the preferred window
        (pairwise: chosen; listwise: the best-judged list) that are not in the dispreferred one (rejected; the
        worst-judged list), against all of the batch's encoded passages; the row's other preferred passages are
        masked out."""
        k = self.k
        pairs = [(lists[good], lists[bad])
                 for lists, (good, bad) in zip(self._batch_lists(inputs), self._preferred_pair(inputs).tolist())]
        index = {t: i for i, t in enumerate(passages)}
        positives, masked = [], []
        for b, (good, bad) in enumerate(pairs):
            rows = [index[t] for t in good[:k] if t in index]
            masked.extend((b, j) for j in rows)
            positives.extend((b, index[t]) for t in good[:k] if t in index and t not in set(bad[:k]))
        return positives, masked

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        scores, (q_emb, passages, p_emb) = self._batch_scores(inputs, model)
        ref = None
        if self._needs_reference:
            ref = self._precomputed_ref(inputs) if self.precompute_ref_scores else None
            ref = ref.to(scores.device) if ref is not None else self.compute_ref_scores(inputs)
        listwise = LISTS_COLUMN in inputs

        loss = scores.new_zeros(())
        if self.preference_loss is not None:
            if listwise:
                loss = self.loss_weights[self.loss_types.index("sigmoid")] * self.preference_loss(
                    scores, inputs[LIST_SCORES_COLUMN].to(scores.device), ref, inputs["list_mask"].to(scores.device))
            else:
                ref_c, ref_r = (ref[:, 0], ref[:, 1]) if ref is not None else (None, None)
                loss = self.preference_loss(scores[:, 0], scores[:, 1], ref_c, ref_r)
        if self.contrastive_loss is not None:
            positives, masked = self._contrastive_targets(inputs, passages)
            sims = self._similarities(q_emb, p_emb.unsqueeze(0).expand(q_emb.shape[0], -1, -1))
            nll = self.contrastive_loss(sims, positives, masked)
            loss = loss + self.loss_weights[self.loss_types.index("sft")] * nll
            self._metrics[mode]["nll_loss"].append(self.accelerator.gather_for_metrics(nll.detach()).mean().item())

        # Metrics, with TRL's names: pairwise, chosen vs rejected; listwise, the best- vs the worst-judged list
        pick = self._preferred_pair(inputs).to(scores.device)
        scores2 = scores.detach().gather(1, pick)
        # rewards are β(s − s_ref) as the loss sees them: reference-free, s_ref = 0 (the weights may still read ref)
        ref2 = ref.gather(1, pick) if ref is not None and self.args.reference == "model" else torch.zeros_like(scores2)
        chosen_rewards = self.beta * (scores2[:, 0] - ref2[:, 0])
        rejected_rewards = self.beta * (scores2[:, 1] - ref2[:, 1])
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["scores/chosen"].append(gather(scores2[:, 0]).mean().item())
        metrics["scores/rejected"].append(gather(scores2[:, 1]).mean().item())

        if return_outputs:
            return loss, {"chosen_scores": scores2[:, 0], "rejected_scores": scores2[:, 1],
                          "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
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

    def _objective_sentence(self) -> str:
        ref = " − s_ref(P)" if self._needs_reference else ""
        if isinstance(self.preference_loss, ListwiseSetDPOLoss):
            return (f"all judged windows of each query at once: Plackett–Luce over the judge's order of the rewards "
                    f"β(s_θ(P){ref})")
        if self.preference_loss is not None:
            margin = "(s_θ(P+) − s_θ(P−))" + (" − (s_ref(P+) − s_ref(P−))" if ref else "")
            return f"preference pairs (P+, P−) with logits β[{margin}]"
        return "the contrastive NLL of the passages each preferred window adds (the sft term)"

    def _reference_description(self) -> str:
        if not self._needs_reference:
            return "none (reference-free)" if self.preference_loss is not None else "none (sft only)"
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
            "objective": ("listwise (Plackett-Luce)" if isinstance(self.preference_loss, ListwiseSetDPOLoss)
                          else "pairwise" if self.preference_loss is not None else "sft only"),
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
{self._objective_sentence()}.

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


__all__ = ["DataCollatorForSetPreference", "SetDPOTrainer"]
