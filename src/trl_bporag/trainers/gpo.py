"""GPO (stage 2 of BPO-RAG) trains the generator with stock :class:`trl.DPOTrainer`; this module only adds what a
BPO-RAG generator needs around it:

* :func:`gpo_defaults`: ``DPOConfig`` values that work for LoRA DPO on a small generator (and on a CPU-only machine);
* :func:`add_bporag_card`: every model card the trainer writes (``save_model`` + ``create_model_card``, checkpoints,
  ``push_to_hub``) gets a section naming the retriever and k the generator was aligned under, and
  ``bporag_config.json`` is written beside the adapter, so that
  :meth:`~trl_bporag.RAGPipeline.from_pretrained` can pair the adapter with its retriever.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..preferences.gpo import BPORAG_CONFIG_NAME

CARD_MARKER = "## BPO-RAG (retrieval-augmented generation)"


def gpo_defaults(cuda: bool | None = None) -> dict[str, Any]:
    """``DPOConfig`` defaults for GPO with LoRA: a learning rate that moves a LoRA adapter (TRL's 1e-6 barely does), no
    gradient checkpointing (small model), and on a machine without CUDA ``use_cpu`` with bf16 autocast (TRL's
    ``bf16=True`` default otherwise refuses to start on CPU)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    defaults: dict[str, Any] = {"learning_rate": 5e-5, "gradient_checkpointing": False, "logging_steps": 5,
                                "save_strategy": "no", "report_to": "none"}
    if not cuda:
        defaults.update(use_cpu=True, bf16=True)
    return defaults


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


def write_bporag_config(output_dir: str | Path, config: dict[str, Any]) -> None:
    """Write ``bporag_config.json`` (retriever, k, prompt settings) and the card section into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BPORAG_CONFIG_NAME).write_text(json.dumps(config, indent=2))
    readme = out / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if CARD_MARKER in text:
        text = text[: text.index(CARD_MARKER)].rstrip("\n") + "\n"
    readme.write_text(text + bporag_card_section(config))


def add_bporag_card(trainer, config: dict[str, Any]):
    """Make a stock ``DPOTrainer`` record the BPO-RAG settings (``config``: at least ``retriever`` and ``k``) in every
    model card it writes, and in ``bporag_config.json`` beside it. Returns the trainer."""
    missing = [key for key in ("retriever", "k") if config.get(key) is None]
    if missing:
        raise ValueError(f"config: missing {missing}; the card must name the retriever and k the generator was "
                         f"aligned under")
    original = trainer.create_model_card

    def create_model_card(*args, **kwargs):
        original(*args, **kwargs)
        if trainer.is_world_process_zero():
            write_bporag_config(trainer.args.output_dir, config)

    trainer.create_model_card = create_model_card
    trainer.bporag_config = dict(config)
    return trainer
