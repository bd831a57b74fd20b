"""GPO: train the generator with stock ``trl.DPOTrainer`` (+ LoRA) on pairs from build_gpo_pairs.py.

TRL's ``trl/scripts/dpo.py`` flow, unchanged trainer: (ScriptArguments, DPOConfig, ModelConfig), ``--config yaml``.

    python examples/gpo.py --dataset_name runs/gpo-pairs --output_dir runs/generator-gpo --use_peft
    accelerate launch examples/gpo.py --dataset_name runs/gpo-pairs --output_dir runs/generator-gpo --use_peft

What it adds around the stock trainer:

* the generator is loaded with ``load_generator`` (``--model_name_or_path``, default SmolLM2-135M-Instruct, resolved
  offline to the packaged copy);
* rows that do not fit ``--max_length`` are counted and dropped with a warning (TRL would drop some silently and cut
  the answers of others);
* the saved adapter gets ``bporag_config.json`` and a model-card section naming the retriever and k of the pairs
  (read from the pairs' ``stats.json``), so ``RAGPipeline.from_pretrained(generator=output_dir, corpus=...)`` pairs
  it with its retriever;
* ``--lora_top_layers N``: LoRA (``--lora_r``, ``--lora_alpha``) on the last N decoder layers only
  (``gpo_lora_config``), cheaper steps and less memory; ``--eval_fraction``: the pairs held out when
  ``--eval_strategy`` is set and the data set has no test split;
* defaults that work for LoRA DPO on a CPU-only machine (``gpo_defaults``: learning rate 5e-5, ``use_cpu`` + bf16
  autocast when there is no CUDA, no gradient checkpointing); any flag or ``--config`` value overrides them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from trl import DPOConfig, DPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_bporag import DEFAULT_GENERATOR, load_generator
from trl_bporag.artifacts import PROMPT_SETTINGS, read_stage_config
from trl_bporag.preferences import check_dpo_lengths, load_pairs
from trl_bporag.trainers import add_bporag_card, gpo_defaults, gpo_lora_config
from trl_bporag.utils import quiet_known_warnings

logger = logging.getLogger("gpo")


@dataclass
class GPOScriptArguments(ScriptArguments):
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out pairs when the data set has no test split"})
    lora_top_layers: int | None = field(default=None, metadata={
        "help": "LoRA (--lora_r, --lora_alpha) on the last N decoder layers only; None: --use_peft's own settings"})


def main(script_args, training_args, model_args, bporag_config: dict | None = None):
    if not training_args.beta > 0:
        raise ValueError(f"--beta: expected a number > 0 (a negative beta trains the preference backwards), got "
                         f"{training_args.beta!r}")
    need_eval = training_args.eval_strategy != "no"
    dataset = load_pairs(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split,
                         script_args.dataset_test_split, need_eval, script_args.eval_fraction)
    if bporag_config is None:  # the retriever, k and prompt settings of the pairs (a folder or a Hub data set)
        bporag_config = read_stage_config(script_args.dataset_name) or {}
    model, tokenizer = load_generator(model_args.model_name_or_path or DEFAULT_GENERATOR, torch_dtype=model_args.dtype)
    for split in list(dataset):
        dataset[split], _ = check_dpo_lengths(dataset[split], tokenizer, training_args.max_length)
    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if need_eval else None,
        processing_class=tokenizer,
        peft_config=(gpo_lora_config(model_args.lora_r, model_args.lora_alpha, script_args.lora_top_layers, model=model)
                     if script_args.lora_top_layers else get_peft_config(model_args)),
    )
    card = {key: bporag_config.get(key) for key in ("retriever", "k", *PROMPT_SETTINGS, "num_beams", "num_samples",
                                                    "pairing")}
    card.update(generator=model_args.model_name_or_path or DEFAULT_GENERATOR, pairs=script_args.dataset_name,
                beta=training_args.beta, loss_type=training_args.loss_type, learning_rate=training_args.learning_rate)
    if card.get("retriever") is not None and card.get("k") is not None:
        add_bporag_card(trainer, card)
    else:
        logger.warning("%s has no stats.json naming the retriever and k: the card will not record them",
                       script_args.dataset_name)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    trainer.accelerator.print(f"Generator adapter saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def make_parser() -> TrlParser:
    parser = TrlParser((GPOScriptArguments, DPOConfig, ModelConfig))
    parser.set_defaults_with_config(**gpo_defaults())
    return parser


if __name__ == "__main__":
    quiet_known_warnings()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    trainer = main(script_args, training_args, model_args)
    trainer.accelerator.wait_for_everyone()  # every rank is done before the process group goes (as in rpo.py)
    trainer.accelerator.end_training()
