"""GPO (stage 2 of BPO-RAG) trains the generator with stock :class:`trl.DPOTrainer`; this module only adds what a
BPO-RAG generator needs around it:

* :func:`gpo_defaults`: ``DPOConfig`` values that work for LoRA DPO on a small generator (and on a CPU-only machine);
* :func:`add_bporag_card`: every model card the trainer writes (``save_model`` + ``create_model_card``, checkpoints,
  ``push_to_hub``) gets a section naming the retriever and k the generator was aligned under, and
  ``bporag_config.json`` is written beside the adapter, so that
  :meth:`~trl_bporag.RAGPipeline.from_pretrained` can pair the adapter with its retriever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import write_bporag_config

CARD_MARKER = "## BPO-RAG (retrieval-augmented generation)"


GPO_MAX_LENGTH = 640


def gpo_defaults(cuda: bool | None = None) -> dict[str, Any]:
    """``DPOConfig`` defaults for GPO with LoRA on a small generator, measured on SmolLM2-135M (docs/benchmarks.md):

    * ``learning_rate=5e-4`` and ``beta=0.5``: TRL's 1e-6 barely moves a LoRA adapter, and at 1e-4 / β=0.1 a few dozen
      steps leave the DPO loss at log 2;
    * ``precompute_ref_log_probs=True``: the reference (the adapter-disabled policy) is run once per pair before
      training instead of in every step;
    * ``per_device_train_batch_size=1``: resident memory grows with the tokens of a micro-batch (chosen + rejected
      sequences); one pair of ~600-token prompts stays well under 4 GiB on a CPU;
    * ``max_length=640``: prompts with five passages cut to 96 tokens each plus the answer
      (:class:`~trl_bporag.preferences.GenerationPreferenceBuilder` fits prompts to it);
    * no activation checkpointing (a small model; it would cost ~30% more time);
    * without CUDA, ``use_cpu`` with bf16 autocast (TRL's ``bf16=True`` default otherwise refuses to start on CPU).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    defaults: dict[str, Any] = {"learning_rate": 5e-4, "beta": 0.5, "precompute_ref_log_probs": True,
                                "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                "max_length": GPO_MAX_LENGTH, "logging_steps": 5, "save_strategy": "no",
                                "report_to": "none", **_no_checkpointing()}
    if not cuda:
        defaults.update(use_cpu=True, bf16=True)
    return defaults


def _no_checkpointing() -> dict[str, Any]:
    """Activation checkpointing off, under the name this transformers version does not warn about."""
    from trl import DPOConfig

    if "activation_checkpointing" in getattr(DPOConfig, "__dataclass_fields__", {}):
        return {"activation_checkpointing": False, "gradient_checkpointing": None}
    return {"gradient_checkpointing": False}


def gpo_lora_config(r: int = 16, alpha: int = 32, top_layers: int | None = None, model=None, **kwargs):
    """The :class:`peft.LoraConfig` GPO uses: rank ``r`` on all linear layers, no dropout, a causal-LM task.

    ``top_layers`` (needs ``model``): adapt only the linear layers of the last ``top_layers`` decoder layers of
    ``model`` (all of them when the model has fewer). Nothing below them needs a gradient, so autograd keeps no activations there and the backward pass stops
    at the first adapted layer: less memory and less time per step (measured in ``bench/gpo_step.py``)."""
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
            write_bporag_card(trainer.args.output_dir, config)

    trainer.create_model_card = create_model_card
    trainer.bporag_config = dict(config)
    return trainer
