"""Reference set scores of :class:`~trl_bporag.SetDPOTrainer`: live (a reference model, or the policy with its PEFT
adapter disabled) or precomputed once over a data set as columns (TRL's ``precompute_ref_log_probs``)."""

from __future__ import annotations

import contextlib
import os

import torch
from accelerate.utils import tqdm
from datasets import IterableDataset
from torch.utils.data import DataLoader

from .set_dpo_data import (
    LISTWISE_COLUMNS,
    REF_CHOSEN_COLUMN,
    REF_LIST_COLUMN,
    REF_REJECTED_COLUMN,
    REQUIRED_COLUMNS,
    DataCollatorForSetPreference,
    has_ref_columns,
    is_listwise,
)


class ReferenceScores:
    """Mixin of :class:`~trl_bporag.SetDPOTrainer` (which provides ``ref_model``, ``_peft_adapter``,
    ``_peft_model()``, ``_batch_scores``, ``k``, ``accelerator``, ``args`` and ``model``)."""

    def compute_ref_scores(self, inputs: dict, model=None) -> torch.Tensor:
        """Reference scores of a collated batch (no grad), [B, 2] (chosen, rejected) or [B, L] (listwise): ``model``
        if given, else the reference model, else the adapter-disabled policy."""
        ctx = contextlib.nullcontext()
        if model is None and self.ref_model is not None:
            model = self.ref_model
        elif model is None and self._peft_adapter:
            model, ctx = self.accelerator.unwrap_model(self.model), self._peft_model().disable_adapter()
        elif model is None:
            raise ValueError(
                "No reference scores: the batch has no precomputed reference columns and no reference model is kept "
                "(precompute_ref_scores=True without ref_model). Precompute the scores for this dataset (pass it as "
                "eval_dataset at initialisation or to evaluate() before training) or pass a ref_model.")
        with torch.no_grad(), ctx, self.accelerator.autocast():
            scores, _ = self._batch_scores(inputs, model)
        return scores.detach().float()

    @staticmethod
    def _precomputed_ref(inputs: dict) -> torch.Tensor | None:
        if REF_LIST_COLUMN in inputs:
            return inputs[REF_LIST_COLUMN].float()
        if REF_CHOSEN_COLUMN in inputs and REF_REJECTED_COLUMN in inputs:
            return torch.stack([inputs[REF_CHOSEN_COLUMN], inputs[REF_REJECTED_COLUMN]], dim=1).float()
        return None

    def _precompute_ref_scores(self, dataset, name: str):
        """``dataset`` with the reference scores as columns (the reference model; else the adapter-disabled policy;
        else the policy as it is now, before training, as in TRL)."""
        if has_ref_columns(dataset):
            return dataset
        if isinstance(dataset, IterableDataset):
            raise ValueError("`precompute_ref_scores=True` is not supported with IterableDataset. Use a map-style "
                             "Dataset or set `precompute_ref_scores=False`.")
        model = self.ref_model if self.ref_model is not None or self._peft_adapter else self.model
        listwise = is_listwise(dataset)
        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        loader = self.accelerator.prepare(DataLoader(
            dataset.select_columns(list(LISTWISE_COLUMNS if listwise else REQUIRED_COLUMNS)), batch_size=batch_size,
            collate_fn=DataCollatorForSetPreference(k=self.k, with_ref_scores=False),
            num_workers=self.args.dataloader_num_workers, shuffle=False))
        was_training = self.model.training
        self.model.eval()
        rows = []
        try:
            for batch in tqdm(iterable=loader, desc=f"Computing reference set scores for {name} dataset",
                              disable=bool(os.environ.get("TQDM_DISABLE", ""))):
                scores = self.compute_ref_scores(batch, model)
                mask = batch.get("list_mask", torch.ones_like(scores, dtype=torch.bool))
                scores, mask = self.accelerator.gather_for_metrics((scores.contiguous(), mask.contiguous()))
                rows.extend([s[m].tolist() for s, m in zip(scores.cpu(), mask.cpu())])
        finally:
            self.model.train(was_training)
        if listwise:
            return dataset.add_column(REF_LIST_COLUMN, rows)
        dataset = dataset.add_column(REF_CHOSEN_COLUMN, [r[0] for r in rows])
        return dataset.add_column(REF_REJECTED_COLUMN, [r[1] for r in rows])
