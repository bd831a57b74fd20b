"""Supervised fine-tuning of the generator on the gold answers under the frozen retriever's top-k: TRL's
``SFTTrainer`` with the GPO LoRA, the first half of the recommended generator recipe (SFT, then GPO from the SFT
model; ``bench/gpo_table.py``, docs/benchmarks.md).

* :class:`GoldSFTConfig`: an ``SFTConfig`` whose defaults are the measured SFT recipe (one epoch, lr 2e-4, batch 1,
  the loss on the answer only, bf16 only where the hardware computes it natively);
* the rows come from :meth:`trl_bporag.preferences.GenerationPreferenceBuilder.sft_rows`: the same prompts the GPO
  pairs use, each completed by the first gold answer closed as the answer prefix expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from ..settings import GPO_DEFAULTS
from .gpo import _has_cuda


@dataclass
class GoldSFTConfig(SFTConfig):
    r"""
    Configuration for SFT on the gold answers: [`trl.SFTConfig`] with the defaults measured for LoRA SFT of a small
    generator under retrieved passages (SmolLM2-135M, `bench/gpo_table.py --row sft-gold`: squad-dev F1 0.149 →
    0.192 pooled over 3 seeds, docs/benchmarks.md). Every [`trl.SFTConfig`] field is accepted; stock
    [`trl.SFTTrainer`] trains with it.

    Defaults that differ from [`trl.SFTConfig`]:
        learning_rate (`float`, defaults to `2e-4`):
            TRL's LoRA-SFT value (its 2e-5 default is for full fine-tuning).
        num_train_epochs (`float`, defaults to `1`):
            One pass over the training questions, the budget GPO gets.
        per_device_train_batch_size (`int`, defaults to `1`):
            One ~600-token prompt per step keeps a CPU run well under 4 GiB.
        max_length (`int`, defaults to `640`):
            Prompts with five passages cut to 96 tokens plus the answer, as GPO's.
        completion_only_loss (`bool`, defaults to `True`):
            The loss on the answer tokens only (RAFT-style); the passages are never a target.
        logging_steps (`float`, defaults to `5`), save_strategy (defaults to `"no"`), report_to (defaults to `"none"`).
        gradient_checkpointing (`bool` or `None`, defaults to `None`: off):
            TRL's SFT default is on; for a small model it only costs time.
        bf16 (`bool` or `None`, defaults to `None`):
            Resolved to `True` only where the training device computes bf16 natively
            ([`trl_bporag.hardware.bf16_native`]), else `False`; an explicit `bf16=True` on a CPU without native bf16
            is honoured with a warning. Without CUDA, `use_cpu` is set.
    """

    learning_rate: float = field(default=2e-4, metadata={"help": "The initial learning rate (SFT default 2e-4)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (SFT default 1)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Rows per device and step (SFT: 1)."})
    max_length: int | None = field(default=GPO_DEFAULTS.max_length, metadata={
        "help": "Maximum tokens of prompt + answer (default 640: five passages cut to 96 tokens)."})
    completion_only_loss: bool | None = field(default=True, metadata={
        "help": "The loss on the answer only (default true)."})
    logging_steps: float = field(default=5, metadata={"help": "Log every X update steps (default 5)."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy (default: no)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Trackers (default: none)."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Whether to enable gradient checkpointing (default: off)."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; default: only where the device computes bf16 natively.", "nargs": "?",
        "const": True})

    def __post_init__(self):
        from ..hardware import bf16_native, resolve_dtype

        cuda = _has_cuda() and not self.use_cpu
        if self.bf16 is None:
            self.bf16 = False if self.fp16 else bf16_native("cuda" if cuda else "cpu")
        elif self.bf16 and not cuda:
            resolve_dtype("bfloat16", "cpu", where="GoldSFTConfig(bf16=True)")  # warns once without native bf16
        if not _has_cuda():
            self.use_cpu = True
        if self.gradient_checkpointing is None:
            if getattr(self, "activation_checkpointing", None) is None and hasattr(self, "activation_checkpointing"):
                self.activation_checkpointing = False
            else:
                self.gradient_checkpointing = False
        super().__post_init__()
