"""GPO (stage 2 of BPO-RAG) trains the generator with TRL's ``DPOTrainer``; this module only adds what a BPO-RAG
generator needs around it:

* :class:`GPOConfig`: a ``DPOConfig`` whose defaults are the GPO recipe for LoRA DPO on a small generator (and work
  on a CPU-only machine, with bf16 only where the hardware computes it natively);
* :class:`GPOTrainer`: ``DPOTrainer`` (its fused LM head projecting only the answer positions on a CPU too:
  :mod:`trl_bporag.trainers.lm_head`) whose every model card (``save_model`` + ``create_model_card``, checkpoints,
  ``push_to_hub``) gets a section naming the retriever and settings the generator was aligned under, with
  ``bporag_config.json`` beside the adapter, so that :meth:`~trl_bporag.RAGPipeline.from_pretrained` pairs the
  adapter with its retriever (the trainer is otherwise stock: no method but ``create_model_card`` is touched);
* :func:`gpo_lora_config`: LoRA on the last decoder layers only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import DPOConfig, DPOTrainer

from ..artifacts import write_bporag_config
from ..settings import GPO_DEFAULTS
from .callbacks import StopOnNonFiniteGradients
from .lm_head import project_labelled_positions_only

logger = logging.getLogger(__name__)

CARD_MARKER = "## BPO-RAG (retrieval-augmented generation)"

#: DPOConfig.max_length of GPO: prompts with five passages cut to 96 tokens plus the answer.
GPO_MAX_LENGTH = GPO_DEFAULTS.max_length


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class GPOConfig(DPOConfig):
    r"""
    Configuration for GPO: [`trl.DPOConfig`] with the defaults measured for LoRA DPO on a small generator
    (SmolLM2-135M, docs/benchmarks.md). Every [`trl.DPOConfig`] field is accepted, and [`GPOTrainer`] (or stock
    [`trl.DPOTrainer`]) trains with it.

    Defaults that differ from [`trl.DPOConfig`]:
        learning_rate (`float`, defaults to `5e-4`):
            TRL's 1e-6 barely moves a LoRA adapter; at 1e-4 / β 0.1 a few dozen steps leave the DPO loss at log 2.
        beta (`float`, defaults to `0.5`):
            β of the DPO loss.
        loss_type (`list[str]`, defaults to `["sigmoid", "sft"]`):
            DPO plus the NLL of the chosen answer (TRL's MPO-style combination, equal weights): the issue-12 recipe
            that raised squad-dev F1 by +25 % (one run; docs/benchmarks.md).
        precompute_ref_log_probs (`bool`, defaults to `True`):
            The reference (the adapter-disabled policy) runs once per pair before training instead of in every step.
        per_device_train_batch_size (`int`, defaults to `1`):
            Resident memory grows with the tokens of a micro-batch; one pair of ~600-token prompts stays well under
            4 GiB on a CPU.
        max_length (`int`, defaults to `640`):
            Prompts with five passages cut to 96 tokens plus the answer
            ([`~trl_bporag.preferences.GenerationPreferenceBuilder`] fits its prompts to it).
        logging_steps (`float`, defaults to `5`), save_strategy (defaults to `"no"`), report_to (defaults to `"none"`).
        gradient_checkpointing (`bool` or `None`, defaults to `None`: off):
            A small model; checkpointing would cost ~30% more time.
        bf16 (`bool` or `None`, defaults to `None`):
            Resolved to `True` only where the training device computes bf16 natively (a CUDA device with bf16, or a
            CPU with AVX512-BF16 / AMX, where bf16 autocast is about 2x faster; [`trl_bporag.hardware.bf16_native`]),
            else `False` (on an AVX2-only CPU bf16 is emulated and 5-7x slower). An explicit `bf16=True` on a CPU
            without native bf16 is honoured with a warning. Without CUDA, `use_cpu` is set (TRL's `bf16=True` default
            otherwise refuses to start on a CPU machine).
    """

    learning_rate: float = field(default=5e-4, metadata={"help": "The initial learning rate (GPO default 5e-4)."})
    beta: float = field(default=0.5, metadata={"help": "β of the DPO loss (GPO default 0.5)."})
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid", "sft"], metadata={
        "help": "TRL loss types (GPO default: sigmoid,sft = DPO + NLL of the chosen answer)."})
    precompute_ref_log_probs: bool = field(default=True, metadata={
        "help": "Precompute the reference log-probabilities once before training (GPO default true)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Pairs per device and step (GPO: 1)."})
    max_length: int | None = field(default=GPO_DEFAULTS.max_length, metadata={
        "help": "Maximum tokens of prompt + answer (GPO default 640: five passages cut to 96 tokens)."})
    logging_steps: float = field(default=5, metadata={"help": "Log every X update steps (GPO default 5)."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy (GPO default: no)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Trackers (GPO default: none)."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Whether to enable gradient checkpointing (GPO default: off)."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; default: only where the device computes bf16 natively.", "nargs": "?",
        "const": True})

    def __post_init__(self):
        from ..hardware import bf16_native, resolve_dtype

        cuda = _has_cuda() and not self.use_cpu
        if self.bf16 is None:
            self.bf16 = False if self.fp16 else bf16_native("cuda" if cuda else "cpu")
        elif self.bf16 and not cuda:
            resolve_dtype("bfloat16", "cpu", where="GPOConfig(bf16=True)")  # warns once without native bf16
        if not _has_cuda():
            self.use_cpu = True
        if self.gradient_checkpointing is None and not hasattr(self, "activation_checkpointing"):
            self.gradient_checkpointing = False  # transformers without the activation_checkpointing rename
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta: expected a finite number > 0 (a negative beta trains the preference backwards), "
                             f"got {self.beta!r}")
        weights = [] if self.loss_weights is None else list(self.loss_weights)
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"loss_weights: expected finite numbers >= 0, got {weights}")
        if not (isinstance(self.label_smoothing, (int, float)) and math.isfinite(self.label_smoothing)):
            raise ValueError(f"label_smoothing: expected a finite number, got {self.label_smoothing!r}")
        super().__post_init__()


def gpo_lora_config(r: int = 16, alpha: int = 32, top_layers: int | None = None, model=None, **kwargs):
    """The :class:`peft.LoraConfig` GPO uses: rank ``r`` on all linear layers, no dropout, a causal-LM task.

    ``top_layers`` (needs ``model``): adapt only the linear layers of the last ``top_layers`` decoder layers of
    ``model`` (all of them when the model has fewer). Nothing below them needs a gradient, so autograd keeps no
    activations there and the backward pass stops at the first adapted layer: less memory and less time per step
    (measured in ``bench/gpo_step.py``)."""
    from peft import LoraConfig

    if top_layers is not None:
        if model is None:
            raise ValueError("top_layers: pass the model, whose decoder layers and linear modules are to be adapted")
        num_layers = model.config.get_text_config().num_hidden_layers
        if isinstance(top_layers, bool) or not isinstance(top_layers, int) or top_layers < 1:
            raise ValueError(f"top_layers: expected an integer >= 1 (at least the last layer), got {top_layers!r}")
        top_layers = min(top_layers, num_layers)  # "the last N layers" of a shallower model: all of them
        import torch

        output = model.get_output_embeddings()
        names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                        if isinstance(module, torch.nn.Linear) and module is not output})
        kwargs.setdefault("target_modules", names)
        kwargs["layers_to_transform"] = list(range(num_layers - top_layers, num_layers))
    kwargs.setdefault("target_modules", "all-linear")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM", **kwargs)


def bporag_card_section(config: dict[str, Any]) -> str:
    rows = "\n".join(f"| {key} | `{value}` |" for key, value in config.items() if value is not None)
    return (
        f"\n{CARD_MARKER}\n\n"
        "This generator adapter was aligned with GPO (stage 2 of BPO-RAG) on prompts built from the retriever below; "
        "use it with the same retriever and k:\n\n"
        "```python\nfrom trl_bporag import RAGPipeline\n"
        "pipe = RAGPipeline.from_pretrained(generator=\"<this folder or repo>\", corpus=corpus)  "
        "# retriever and k from bporag_config.json\n```\n\n"
        f"| setting | value |\n|---|---|\n{rows}\n"
    )


def write_bporag_card(output_dir: str | Path, config: dict[str, Any]) -> None:
    """Write ``bporag_config.json`` (:func:`trl_bporag.artifacts.write_bporag_config`) and the card section into
    ``output_dir``."""
    out = Path(output_dir)
    write_bporag_config(out, config)
    readme = out / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    results = text[text.index(RESULTS_MARKER):] if RESULTS_MARKER in text else ""
    if CARD_MARKER in text:
        text = text[: text.index(CARD_MARKER)].rstrip("\n") + "\n"
    readme.write_text(text + bporag_card_section(config) + ("\n" + results if results else ""))


RESULTS_MARKER = "## BPO-RAG evaluation"


def add_results_to_card(output_dir: str | Path, table_markdown: str, note: str = "") -> None:
    """Put the evaluation table (``trl_bporag.report.results_markdown``: EM / F1 / Recall@k of the rows, each with
    its difference from vanilla and paired bootstrap 95% CI) into the adapter's ``README.md``, replacing an earlier
    one. :func:`write_bporag_card` keeps it."""
    readme = Path(output_dir) / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if RESULTS_MARKER in text:
        text = text[: text.index(RESULTS_MARKER)].rstrip("\n") + "\n"
    readme.write_text(f"{text}\n{RESULTS_MARKER}\n\n{note}{table_markdown.strip()}\n")


class GPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` that records the BPO-RAG settings in every model card it writes. On a CPU its fused LM head
    projects only the completion positions, as TRL does on CUDA
    (:func:`~trl_bporag.trainers.project_labelled_positions_only`, turned on before the reference pass; the same
    log-probabilities, about 2x faster steps).

    Args:
        bporag_config: at least ``retriever`` and ``k``; usually the pairs' builder configuration (the retriever, the
            :class:`~trl_bporag.settings.RAGSettings`, the candidates) plus the training settings. Written as
            ``bporag_config.json`` beside the card, which :meth:`~trl_bporag.RAGPipeline.from_pretrained` reads.

    Every other argument is passed to ``DPOTrainer`` unchanged.
    """

    def __init__(self, *args, bporag_config: dict[str, Any], **kwargs):
        missing = [key for key in ("retriever", "k") if bporag_config.get(key) is None]
        if missing:
            raise ValueError(f"bporag_config: missing {missing}; the card must name the retriever and k the generator "
                             "was aligned under")
        self.bporag_config = dict(bporag_config)
        project_labelled_positions_only()  # the answer positions only on a CPU too (the reference pass included)
        super().__init__(*args, **kwargs)
        self.add_callback(StopOnNonFiniteGradients())  # a NaN gradient stops training before it reaches the adapter

    def create_model_card(self, *args, **kwargs):
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            write_bporag_card(self.args.output_dir, self.bporag_config)
