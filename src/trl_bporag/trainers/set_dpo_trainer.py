"""Set-level DPO for a dense retriever (the RPO step of BPO-RAG), as a drop-in subclass of TRL's ``DPOTrainer``.

The policy is a :class:`sentence_transformers.SentenceTransformer`. For a query q and an ordered candidate list P the
set score is s(q, P) = Σ_{i≤k} w_i f(q, P_i) with f the cosine (or dot) similarity of the encoder's embeddings; the
objectives are the loss classes of :mod:`trl_bporag.losses`, on set scores instead of sequence log-probabilities.

What comes from where: TRL's ``DPOTrainer`` is the base class (``isinstance``, metric names, ``training_step``,
checkpoint rotation); its ``__init__`` is causal-LM setup (fused LM head, generation config) and cannot take a
SentenceTransformer, so the trainer initialises through ``transformers.Trainer.__init__``. Rows are checked and
collated by :mod:`.set_dpo_data`; folders are written by sentence-transformers' ``save_pretrained`` with its own model
card (:mod:`.retriever_card`); evaluation during training can run any sentence-transformers evaluator (e.g.
``InformationRetrievalEvaluator``), whose metrics ``load_best_model_at_end`` can select on.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import defaultdict
from collections.abc import Callable

import torch
import transformers
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from datasets import Dataset, IterableDataset
from packaging.version import Version
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from trl import DPOTrainer
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import disable_dropout_in_model

from ..losses import ContrastiveSetLoss, ListwiseSetDPOLoss, SetDPOLoss
from .cached_set_scores import CachedSetScores
from .callbacks import ReturnFreedMemory, StopOnNonFiniteGradients, check_finite_loss
from .retriever_card import RetrieverCard, base_model_id
from .set_dpo_config import SetDPOConfig
from .set_dpo_data import (
    COLLATED_COLUMNS,
    LIST_SCORES_COLUMN,
    LISTS_COLUMN,
    REF_CHOSEN_COLUMN,
    REF_REJECTED_COLUMN,
    DataCollatorForSetPreference,
    has_ref_columns,
    infer_k,
    is_listwise,
    validate_rpo_dataset,
)
from .set_dpo_reference import ReferenceScores
from .set_scores import SetScorer, batch_lists, preferred_pair
from .st_checkpoints import SentenceTransformerCheckpoints

logger = get_logger(__name__)


class SetDPOTrainer(ReferenceScores, RetrieverCard, SentenceTransformerCheckpoints, DPOTrainer):
    """
    Set-level DPO trainer for a dense retriever (a ``sentence_transformers.SentenceTransformer``).

    Rows are RPO pairs ``{"prompt": query, "chosen": [passages of P+], "rejected": [passages of P−]}`` or listwise
    rows ``{"prompt", "lists", "list_scores"}`` (:mod:`trl_bporag.trainers.set_dpo_data`); extra columns are kept and
    ignored. Each batch encodes its unique queries and passages once; the loss is ``args.loss_type`` on set scores
    (:mod:`trl_bporag.losses`).

    Reference scorer, in order of precedence: an explicit ``ref_model``; with ``peft_config``, the policy with its
    adapter disabled; with ``precompute_ref_scores=True``, scores precomputed once before training; otherwise a frozen
    deep copy of the policy. Reference-free losses keep none.

    Args:
        model: a ``SentenceTransformer``, or a model id / local path (loaded with ``trl_bporag.models.load_retriever``
            and ``args.model_init_kwargs``).
        ref_model: optional reference ``SentenceTransformer`` (or id / path); frozen.
        args: a [`SetDPOConfig`]. With ``args.k=None``, k is read from the training data (its shortest list).
        data_collator: defaults to [`DataCollatorForSetPreference`].
        train_dataset: RPO rows (``Dataset`` or ``IterableDataset``).
        eval_dataset: RPO rows, or a dict of them (metrics ``eval_<name>_...``).
        processing_class: defaults to the retriever's tokenizer (the encoder always tokenises with its own).
        compute_metrics: not supported (there are no labels to compare with); pass ``evaluator`` instead.
        callbacks: as in ``transformers.Trainer``.
        optimizers: as in ``transformers.Trainer``.
        quantization_config: not supported (must be ``None``); accepted for signature compatibility with DPOTrainer.
        peft_config: a ``peft.PeftConfig`` (e.g. ``LoraConfig``) applied to the encoder's transformer. Saved folders
            hold the merged encoder (``SentenceTransformer(path)`` loads it) and the adapter alone under ``adapter/``.
        evaluator: a sentence-transformers evaluator (or a list of them), e.g.
            :func:`trl_bporag.evaluation.retrieval_evaluator`'s ``InformationRetrievalEvaluator``, run at every
            evaluation
            (``eval_strategy``, with or without ``eval_dataset``); its metrics are logged as ``eval_<name>`` and can be
            ``metric_for_best_model`` for ``load_best_model_at_end``.
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
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        quantization_config=None,
        peft_config=None,
        evaluator=None,
    ):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.evaluation import SequentialEvaluator

        from ..models import load_retriever

        if args is None:
            name = model if isinstance(model, str) else getattr(model, "bporag_model_id", None) or "retriever"
            args = SetDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-SetDPO")
        elif not isinstance(args, SetDPOConfig):
            raise TypeError(f"`args` must be a SetDPOConfig, got {type(args).__name__}. Swap DPOConfig for "
                            "SetDPOConfig.")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if not isinstance(train_dataset, (Dataset, IterableDataset)):
            raise TypeError(f"`train_dataset` must be a `Dataset` or `IterableDataset`, got "
                            f"`{type(train_dataset).__name__}`.")
        if isinstance(train_dataset, IterableDataset):
            args.accelerator_config.dispatch_batches = False
        if quantization_config is not None:
            raise ValueError("`quantization_config` is not supported by SetDPOTrainer (dense retrievers are small).")
        if compute_metrics is not None:
            raise ValueError("`compute_metrics` is not supported: RPO rows have no labels. Pass `evaluator=` (e.g. a "
                             "sentence-transformers InformationRetrievalEvaluator) to measure retrieval in training.")
        self.evaluator = SequentialEvaluator(list(evaluator)) if isinstance(evaluator, (list, tuple)) else evaluator
        if args.k is None:  # the shortest list of the training data: the builders write lists of k
            args.k = infer_k(train_dataset)  # (SetDPOConfig checks position_weights against a k it was given)
            if args.position_weights is not None and len(args.position_weights) < args.k:
                raise ValueError(f"position_weights has {len(args.position_weights)} entries but k={args.k} (read "
                                 "from the data).")

        # Models
        transformers.set_seed(args.seed)  # PEFT initialises the adapter randomly
        self._base_model_id = model if isinstance(model, str) else None
        if isinstance(model, str):
            model = load_retriever(model, **args.retriever_kwargs())
        if not isinstance(model, SentenceTransformer):
            raise TypeError(f"SetDPOTrainer trains a sentence_transformers.SentenceTransformer retriever, got "
                            f"{type(model).__name__}.")
        self._base_model_id = self._base_model_id or base_model_id(model)
        if ref_model is not None and ref_model is model:
            raise ValueError("`model` and `ref_model` cannot be the same object. In most cases you should omit "
                             "`ref_model` and we'll initialize it to a frozen copy of `model` for you.")
        if isinstance(ref_model, str):
            ref_model = load_retriever(ref_model, **args.retriever_kwargs())
        if ref_model is not None and not isinstance(ref_model, SentenceTransformer):
            raise TypeError(f"`ref_model` must be a SentenceTransformer, got {type(ref_model).__name__}.")
        model.similarity_fn_name = "cosine" if args.score == "cos" else "dot"  # saved with it; Retriever reads it
        self._peft_adapter = peft_config is not None
        if self._peft_adapter:  # the reference is then the same network with the adapter disabled
            model = self._apply_peft(model, peft_config)

        # The objectives (trl_bporag.losses)
        self.beta, self.k, self.score = args.beta, args.k, args.score
        self.loss_types = list(args.loss_type)
        self.loss_weights = list(args.loss_weights or [1.0] * len(self.loss_types))
        self.precompute_ref_scores = args.precompute_ref_scores
        self.scorer = SetScorer(args.k, args.score, args.position_weights, args.skip_shared_passages,
                                args.max_query_length, args.max_passage_length,
                                unwrap=lambda m: self.accelerator.unwrap_model(m), mini_batch_size=args.mini_batch_size)
        # GradCache (SetDPOConfig.mini_batch_size): activations of one mini-batch at a time, memory flat in the batch
        self.cached_scores = CachedSetScores(self.scorer, args.mini_batch_size) if args.mini_batch_size else None
        listwise = is_listwise(train_dataset)
        margin_types = [(lt, w) for lt, w in zip(self.loss_types, self.loss_weights) if lt != "sft"]
        if listwise and [lt for lt, _ in margin_types] not in ([], ["sigmoid"]):
            raise ValueError(f"loss_type={self.loss_types}: listwise rows ({LISTS_COLUMN!r}, {LIST_SCORES_COLUMN!r}) "
                             "take 'sigmoid' (its Plackett-Luce form, ListwiseSetDPOLoss) and/or 'sft'.")
        if listwise and args.reference_margin_scale is not None:
            raise ValueError("reference_margin_scale weights pairs; it is not defined for listwise rows.")
        self.preference_loss = None
        if margin_types and listwise:
            self.preference_loss = ListwiseSetDPOLoss(self.beta, args.reference)  # weighted in compute_loss
        elif margin_types:
            self.preference_loss = SetDPOLoss(self.beta, [lt for lt, _ in margin_types], [w for _, w in margin_types],
                                              args.reference, args.reference_margin_scale, args.label_smoothing,
                                              args.discopop_tau)
        self.contrastive_loss = ContrastiveSetLoss(args.contrastive_scale) if "sft" in self.loss_types else None
        self._needs_reference = self.preference_loss is not None and self.preference_loss.needs_reference

        # Data
        train_dataset = validate_rpo_dataset(train_dataset, args.k, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: validate_rpo_dataset(ds, args.k, key) for key, ds in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = validate_rpo_dataset(eval_dataset, args.k, "eval")

        # Reference scorer (dropout off before anything is copied from the policy)
        for m in (model, ref_model) if args.disable_dropout else ():
            if m is not None:
                disable_dropout_in_model(m)
        if not self._needs_reference:
            self.precompute_ref_scores, ref_model = False, None  # nothing reads reference scores
        self._ref_is_policy_copy = (ref_model is None and not self._peft_adapter and not self.precompute_ref_scores
                                    and self._needs_reference)
        if self._ref_is_policy_copy:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
        datasets_ = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        if self.precompute_ref_scores and any(isinstance(ds, IterableDataset) and not has_ref_columns(ds)
                                              for ds in datasets_):
            raise ValueError("`precompute_ref_scores=True` is not supported with an IterableDataset that lacks the "
                             f"{REF_CHOSEN_COLUMN!r}/{REF_REJECTED_COLUMN!r} columns. Use a map-style Dataset.")

        # transformers.Trainer, not DPOTrainer.__init__ (causal-LM specific); an evaluator alone may evaluate
        Trainer.__init__(self, model=model, args=args,
                         data_collator=data_collator or DataCollatorForSetPreference(k=args.k),
                         train_dataset=train_dataset,
                         eval_dataset=eval_dataset if eval_dataset is not None or evaluator is None else "evaluator",
                         processing_class=processing_class or model.tokenizer, callbacks=callbacks,
                         optimizers=optimizers)
        self.eval_dataset = None if eval_dataset is None else self.eval_dataset  # not the "evaluator" placeholder
        if Version(transformers.__version__) < Version("5.19.0"):  # what TRL's _BaseTrainer.__init__ does there
            self.model_accepts_loss_kwargs = False
        if args.n_gpu > 1:
            raise ValueError(f"{type(self).__name__} does not support `nn.DataParallel`. Launch with `accelerate "
                             "launch` or `torchrun`, or make a single GPU visible with `CUDA_VISIBLE_DEVICES`.")
        self._check_peft_unsharded()
        self.add_callback(StopOnNonFiniteGradients(lambda: getattr(self, "_batch_rows", "the last batch")))
        if self.cached_scores is not None:  # GradCache bounds the live memory; this keeps the heap from creeping
            self.add_callback(ReturnFreedMemory())
        self.maybe_activation_offload_context = contextlib.nullcontext()
        if self.args.activation_offloading:
            from trl.models import get_act_offloading_ctx_manager

            self.maybe_activation_offload_context = get_act_offloading_ctx_manager(model=self.model)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._card_metrics, self._card_dataset_name = None, None

        self.ref_model = ref_model
        if ref_model is not None:
            from trl.models import prepare_deepspeed, prepare_fsdp

            self.ref_model = (prepare_deepspeed(ref_model, self.accelerator) if self.is_deepspeed_enabled else
                              prepare_fsdp(ref_model, self.accelerator) if self.is_fsdp_enabled else
                              self.accelerator.prepare_model(ref_model, evaluation_mode=True))
        if args.sync_ref_model:
            if self.ref_model is None or self._peft_adapter:
                raise ValueError("`sync_ref_model=True` needs a separate reference model: it is not supported with "
                                 "`peft_config` or precomputed reference scores.")
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        if self.precompute_ref_scores:
            self.train_dataset = self._precompute_ref_scores(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {n: self._precompute_ref_scores(ds, n) for n, ds in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self._precompute_ref_scores(self.eval_dataset, "eval")

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:  # with `remove_unused_columns=True`: keep what the collator reads
            self._signature_columns = list(COLLATED_COLUMNS)

    # ----------------------------------------------------------------------------------------------------------------
    # Set scores (trl_bporag.trainers.set_scores) and reference scores
    # ----------------------------------------------------------------------------------------------------------------
    def compute_list_scores(self, queries: list[str], lists: list[list[list[str]]], model=None):
        """Set scores s(q_b, P_bj) of L lists per query under ``model`` (default: the policy): ``(scores [B, L],
        (unique passages [N], f(q_b, each) [B, N]))``
        (:meth:`SetScorer.list_scores <trl_bporag.trainers.set_scores.SetScorer>`)."""
        return self.scorer.list_scores(self.model if model is None else model, queries, lists)

    def compute_set_scores(self, inputs: dict, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Set scores s(q, P+) and s(q, P−) of a collated pairwise batch under ``model`` (default: the policy); [B]
        each."""
        scores, _ = self._batch_scores(inputs, model)
        return scores[:, 0], scores[:, 1]

    def _batch_scores(self, inputs: dict, model=None):
        """Scores of a collated batch, pairwise ([B, 2]: chosen, rejected) or listwise ([B, L])."""
        return self.compute_list_scores(list(inputs["prompt"]), batch_lists(inputs, self.k), model)

    # ----------------------------------------------------------------------------------------------------------------
    # Loss, metrics, evaluation
    # ----------------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        ref = None
        if self._needs_reference:
            ref = self._precomputed_ref(inputs) if self.precompute_ref_scores else None
            ref = ref.to(self.args.device) if ref is not None else self.compute_ref_scores(inputs)

        queries, lists = list(inputs["prompt"]), batch_lists(inputs, self.k)
        self._batch_rows = f"{len(queries)} queries, the first {queries[0][:60]!r}"
        if self.cached_scores is not None:  # GradCache: the loss runs on embeddings of mini-batches
            plan = self.scorer.plan(queries, lists)
            loss, scores, _ = self.cached_scores(
                model, plan, lambda scores, sims: self._objective(inputs, scores, sims, ref, mode, plan.passages))
        else:
            scores, (passages, sims) = self.compute_list_scores(queries, lists, model)
            loss = self._objective(inputs, scores, sims, ref, mode, passages)

        if mode == "train":
            check_finite_loss(loss, self.state.global_step + 1, self._batch_rows)
        # Metrics, with TRL's names: pairwise, chosen vs rejected; listwise, the best- vs the worst-judged list
        pick = preferred_pair(inputs).to(scores.device)
        scores2 = scores.detach().gather(1, pick)
        # rewards are β(s − s_ref) as the loss sees them: reference-free, s_ref = 0 (the weights may still read ref)
        ref2 = ref.gather(1, pick) if ref is not None and self.args.reference == "model" else torch.zeros_like(scores2)
        chosen_rewards = self.beta * (scores2[:, 0] - ref2[:, 0])
        rejected_rewards = self.beta * (scores2[:, 1] - ref2[:, 1])
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        for name, value in {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                            "rewards/margins": chosen_rewards - rejected_rewards, "scores/chosen": scores2[:, 0],
                            "scores/rejected": scores2[:, 1]}.items():
            metrics[name].append(gather(value).mean().item())

        if return_outputs:
            return loss, {"chosen_scores": scores2[:, 0], "rejected_scores": scores2[:, 1],
                          "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
        return loss

    def _objective(self, inputs, scores, sims, ref, mode: str, passages: list[str]) -> torch.Tensor:
        """The configured loss of a batch: the preference term on its set scores (pairwise or listwise) plus the
        ``sft`` term on f(q_b, each encoded passage)."""
        loss = scores.new_zeros(())
        ref = ref.to(scores.device) if ref is not None else None
        if self.preference_loss is not None:
            if LISTS_COLUMN in inputs:
                loss = self.loss_weights[self.loss_types.index("sigmoid")] * self.preference_loss(
                    scores, inputs[LIST_SCORES_COLUMN].to(scores.device), ref, inputs["list_mask"].to(scores.device))
            else:
                ref_c, ref_r = (ref[:, 0], ref[:, 1]) if ref is not None else (None, None)
                loss = self.preference_loss(scores[:, 0], scores[:, 1], ref_c, ref_r)
        if self.contrastive_loss is not None:
            positives, masked = self.scorer.contrastive_targets(inputs, passages)
            nll = self.contrastive_loss(sims, positives, masked)
            loss = loss + self.loss_weights[self.loss_types.index("sft")] * nll
            self._metrics[mode]["nll_loss"].append(self.accelerator.gather_for_metrics(nll.detach()).mean().item())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Average the metrics ``compute_loss`` accumulated since the last log into ``logs`` (TRL's ``DPOTrainer.log``),
        under the evaluation prefix found in ``logs`` (``eval_``, ``eval_<name>_``, a custom ``metric_key_prefix``)."""
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items() if val}
        if mode == "eval":
            prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss") and key != "train_loss"),
                          "eval_")
            metrics = {f"{prefix}{key}": val for key, val in metrics.items()}
        logs.update(metrics)  # in place: evaluate() returns this dict
        Trainer.log(self, logs, start_time)
        self._metrics[mode].clear()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        """The evaluation loss of a batch (its metrics go to :meth:`log`); RPO rows have no labels or logits."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """``Trainer.evaluate``; a data set passed here is checked and gets reference scores first (a dict: one
        ``<metric_key_prefix>_<name>`` evaluation each)."""
        if eval_dataset is None or isinstance(eval_dataset, str):
            return Trainer.evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)
        if isinstance(eval_dataset, dict):
            return {key: value for name, ds in eval_dataset.items()
                    for key, value in self.evaluate(ds, ignore_keys, f"{metric_key_prefix}_{name}").items()}
        eval_dataset = validate_rpo_dataset(eval_dataset, self.k, metric_key_prefix)
        if self.precompute_ref_scores and not has_ref_columns(eval_dataset):
            if self.ref_model is None and not self._peft_adapter and self.state.global_step > 0:
                raise ValueError(
                    "Cannot compute reference scores for a dataset passed to `evaluate()` after training has started: "
                    "`precompute_ref_scores=True` and no `ref_model`, so the reference is not kept in memory. Pass the "
                    "dataset as `eval_dataset` at initialisation, give a `ref_model`, or add the "
                    f"{REF_CHOSEN_COLUMN!r}/{REF_REJECTED_COLUMN!r} columns.")
            eval_dataset = self._precompute_ref_scores(eval_dataset, metric_key_prefix)
        return Trainer.evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        if eval_dataset is None and self.eval_dataset is None and self.evaluator is not None:
            return DataLoader([])  # the evaluator alone
        return super().get_eval_dataloader(eval_dataset)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """``Trainer.evaluation_loop``, then the evaluator (on the main process; with a dict of eval datasets, once,
        with the first) adds its metrics as ``<metric_key_prefix>_<name>``, as ``SentenceTransformerTrainer`` does."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.evaluator is None:
            return output
        if isinstance(self.eval_dataset, dict) and metric_key_prefix.startswith("eval_"):
            if metric_key_prefix[5:] != next(iter(self.eval_dataset)):
                return output
            metric_key_prefix = "eval"
        metrics = {}
        if self.is_world_process_zero():
            model = self.accelerator.unwrap_model(self.model)
            path = os.path.join(self.args.output_dir, "eval")
            os.makedirs(path, exist_ok=True)
            metrics = self.evaluator(model, output_path=path, epoch=self.state.epoch or -1,
                                     steps=self.state.global_step)
            metrics = metrics if isinstance(metrics, dict) else {"evaluator": metrics}
        metrics = broadcast_object_list([metrics])[0] if self.accelerator.num_processes > 1 else metrics
        output.metrics.update({k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v
                               for k, v in metrics.items()})
        return output


__all__ = ["DataCollatorForSetPreference", "SetDPOTrainer"]
