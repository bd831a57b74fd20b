"""A SentenceTransformer under ``transformers.Trainer``: PEFT on its encoder, and its checkpoints.

``Trainer`` saves, reloads and pushes transformers layouts; a retriever is a sentence-transformers folder
(``modules.json``, pooling, prompts). :class:`SentenceTransformerCheckpoints` overrides the same four methods that
``SentenceTransformerTrainer`` overrides (``_save``, ``_load_from_checkpoint``, ``_load_best_model``,
``_push_from_checkpoint``), so ``save_model``, checkpoints, ``resume_from_checkpoint``, ``load_best_model_at_end`` and
``push_to_hub`` all write and read ``SentenceTransformer(path)`` folders. With a PEFT adapter a folder holds the merged
encoder (it loads anywhere) and the adapter alone under ``adapter/`` (what a resumed run reloads).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil

import torch
from accelerate.logging import get_logger

from ..artifacts import write_bporag_config

logger = get_logger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"
ADAPTER_SUBDIR = "adapter"


def transformer_modules(st_model) -> list:
    from sentence_transformers.models import Transformer

    return [m for m in st_model.modules() if isinstance(m, Transformer)]


@contextlib.contextmanager
def writes_state_dict(model: torch.nn.Module, state_dict: dict):
    """Within the block, ``state_dict()`` of ``model`` and of each of its submodules returns its part of the given
    ``state_dict`` (keys as an unwrapped ``model.state_dict()`` names them): every module's own ``save``
    (sentence-transformers' modules, transformers' ``save_pretrained``) then writes those weights, whatever the
    parameters hold. FSDP1's wrapper names are left out of the submodules' names, as its state dicts leave them out.
    Nothing here calls the model's own ``state_dict()``: under FSDP that is a collective, and only rank 0 saves."""
    modules = list(model.named_modules())
    for name, module in modules:
        name = re.sub(r"(^|\.)_(fsdp|checkpoint)_wrapped_module", "", name).lstrip(".")
        prefix = f"{name}." if name else ""
        part = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        module.state_dict = lambda *args, _part=part, **kwargs: dict(_part)
    try:
        yield model
    finally:
        for _, module in modules:
            del module.state_dict


class SentenceTransformerCheckpoints:
    """Mixin for a ``Trainer`` whose ``model`` is a SentenceTransformer. The trainer sets ``_peft_adapter`` and
    provides ``folder_config()`` (written as ``bporag_config.json``) and ``_write_card(output_dir)``."""

    _peft_adapter = False

    @staticmethod
    def _apply_peft(model, peft_config):
        from peft import PeftConfig, PeftModel, get_peft_model

        if not isinstance(peft_config, PeftConfig):
            raise TypeError(f"`peft_config` must be a `peft.PeftConfig`, got {type(peft_config).__name__}.")
        if peft_config.is_prompt_learning:
            raise ValueError("Prompt-learning PEFT methods are not supported for retrievers; use e.g. LoRA.")
        modules = transformer_modules(model)
        if len(modules) != 1:
            raise ValueError(f"peft_config needs exactly one Transformer module in the retriever, found "
                             f"{len(modules)}.")
        if isinstance(modules[0].model, PeftModel):
            raise ValueError("The retriever already has a PEFT adapter; merge it first, then pass a new peft_config.")
        # An encoder has no LM head: wrap it as a feature extractor whatever task type the CLI set (CAUSAL_LM default)
        peft_config = copy.deepcopy(peft_config)
        peft_config.task_type = "FEATURE_EXTRACTION"
        modules[0].model = get_peft_model(modules[0].model, peft_config)
        return model

    def _check_peft_unsharded(self) -> None:
        """Called once the Trainer is set up: a PEFT retriever is saved as its merged encoder, built from the module
        itself, which ZeRO-3 and FSDP shard across processes; refuse that before training rather than at the save."""
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        if self._peft_adapter and (zero3 or self.is_fsdp_enabled):
            raise ValueError("A PEFT retriever cannot be trained under DeepSpeed ZeRO-3 or FSDP (saving merges the "
                             "adapter into the unsharded encoder); use DDP or ZeRO-1/2, or train without peft_config.")

    def _peft_model(self, model=None):
        return transformer_modules(self.accelerator.unwrap_model(model if model is not None else self.model))[0].model

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write a sentence-transformers folder (``SentenceTransformer(output_dir)`` loads it) with its model card and
        ``bporag_config.json`` (k and score, for :class:`~trl_bporag.RAGPipeline`). With PEFT, the merged encoder,
        and the adapter alone under ``adapter/``.

        ``state_dict``: the full weights, when ``Trainer.save_model`` gathered them (``accelerator.get_state_dict``
        under DeepSpeed or FSDP with a full state dict; under ZeRO-3 / FSDP each process holds only a shard): the
        folder is written with them instead of the module's own parameters (sentence-transformers' trainer ignores
        it). A PEFT retriever is saved from its module (:meth:`_check_peft_unsharded`)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        st_model = self.accelerator.unwrap_model(self.model)
        if state_dict and not self._peft_adapter:
            with writes_state_dict(st_model, state_dict):
                st_model.save_pretrained(output_dir, create_model_card=False)
        elif self._peft_adapter:
            self._peft_model().save_pretrained(os.path.join(output_dir, ADAPTER_SUBDIR))
            st_model = copy.deepcopy(st_model)
            module = transformer_modules(st_model)[0]
            module.model = module.model.merge_and_unload()
            st_model.save_pretrained(output_dir, create_model_card=False)
        else:
            st_model.save_pretrained(output_dir, create_model_card=False)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        write_bporag_config(output_dir, self.folder_config())
        self._write_card(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load the weights of one of our checkpoint folders (the Trainer's loader expects a transformers layout and
        would load nothing into a SentenceTransformer), as ``SentenceTransformerTrainer`` does."""
        from sentence_transformers import SentenceTransformer

        st_model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self._peft_adapter:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            weights = os.path.join(resume_from_checkpoint, ADAPTER_SUBDIR, "adapter_model.safetensors")
            if not os.path.isfile(weights):
                raise ValueError(f"Can't find an adapter checkpoint at {os.path.dirname(weights)}")
            result = set_peft_model_state_dict(self._peft_model(st_model), load_file(weights, device="cpu"))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"Unexpected adapter keys in {weights}: {result.unexpected_keys[:5]}")
            return
        if not os.path.isfile(os.path.join(resume_from_checkpoint, "modules.json")):
            raise ValueError(f"Can't find a sentence-transformers checkpoint at {resume_from_checkpoint}")
        loaded = SentenceTransformer(resume_from_checkpoint, device="cpu",
                                     trust_remote_code=self.args.trust_remote_code)
        st_model.load_state_dict(loaded.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        logger.info(f"Loading best model from {self.state.best_model_checkpoint} (score: {self.state.best_metric}).")
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer copies only transformers files to output_dir before uploading: copy the whole folder
        if self.is_world_process_zero():
            skip = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", TRAINING_ARGS_NAME}
            for name in os.listdir(checkpoint_folder):
                if name not in skip and not name.startswith("rng_state"):
                    src, dst = os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name)
                    if os.path.isdir(src):
                        shutil.copytree(src, dst, dirs_exist_ok=True)
                    else:
                        shutil.copy(src, dst)
        super()._push_from_checkpoint(checkpoint_folder)
