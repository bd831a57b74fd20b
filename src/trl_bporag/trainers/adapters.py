"""One LoRA adapter from two trained one on top of the other: GPO trained from an SFT adapter.

GPO after SFT trains a new adapter on the SFT model (the SFT adapter merged into its base; the reference is that
merged model). Saved as it is, the new adapter would name the merged model, which exists only in that process, as
its base. :func:`stack_lora_adapters` writes instead one adapter on the *original* base whose update is exactly the
sum of the two (PEFT's ``add_weighted_adapter(combination_type="cat")``: the ranks add up, nothing is approximated),
so the folder loads, pushes and pairs with its retriever like any GPO adapter.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path


def is_lora_adapter(path) -> bool:
    """Whether ``path`` is a local PEFT LoRA adapter folder."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("peft_type", "LORA") == "LORA"


def stack_lora_adapters(bottom: str | Path, top: str | Path, output_dir: str | Path) -> None:
    """Write to ``output_dir`` one LoRA adapter equal to ``bottom`` and ``top`` applied together, on ``bottom``'s base.

    ``top`` was trained on ``bottom`` merged into its base (for a linear layer ``W + ΔW_bottom``), so the stacked
    adapter computes ``W + ΔW_bottom + ΔW_top``, the trained model, up to floating-point rounding. Its rank is the
    sum of the two ranks and its modules the union of theirs. ``output_dir`` may be ``top`` (the adapter files there
    are replaced; the other files, e.g. the model card and ``bporag_config.json``, stay).
    """
    from peft import PeftModel

    from ..models import load_generator

    for name, path in (("bottom", bottom), ("top", top)):
        if not is_lora_adapter(path):
            raise ValueError(f"{name}: {path} is not a LoRA adapter folder (no adapter_config.json of a LoRA)")
    layers = [json.loads((Path(p) / "adapter_config.json").read_text()).get("layers_to_transform")
              for p in (bottom, top)]
    if layers[0] != layers[1]:  # PEFT keeps the first adapter's layer selection for the stacked one
        raise ValueError(f"top: adapts layers {layers[1]}, bottom {layers[0]}; stacking needs the same layers")
    model, _ = load_generator(str(bottom), torch_dtype="float32")
    if not isinstance(model, PeftModel):
        raise ValueError(f"bottom: {bottom} did not load as a PEFT adapter")
    model.load_adapter(str(top), adapter_name="top")
    model.add_weighted_adapter(["default", "top"], [1.0, 1.0], "stacked", combination_type="cat")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=["stacked"])
        saved = Path(tmp) / "stacked"
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("adapter_model.*"):
            stale.unlink()
        for f in saved.iterdir():
            shutil.copy2(f, out / f.name)
