"""GPO: train the generator with TRL's DPOTrainer (+ LoRA) on pairs from build_gpo_pairs.py.

TRL's ``trl/scripts/dpo.py`` flow: (ScriptArguments, DPOConfig, ModelConfig) parsed by ``TrlParser``, ``--config
yaml``, ``accelerate launch``; ``GPOConfig`` is a ``DPOConfig`` and ``GPOTrainer`` a ``DPOTrainer``.

    trl-bporag gpo --dataset_name runs/gpo-pairs --output_dir runs/generator-gpo
    accelerate launch -m trl_bporag.scripts.gpo --dataset_name runs/gpo-pairs --output_dir runs/generator-gpo

What it adds around the stock trainer:

* the defaults are the GPO recipe: ``GPOConfig`` (DPO + NLL, β 0.5, lr 5e-4, batch 1, precomputed reference,
  ``max_length`` 640, bf16 only where the hardware computes it natively, ``use_cpu`` without CUDA) and LoRA r 16,
  α 32, no dropout, on the last 6 decoder layers (``--lora_top_layers``, ``gpo_lora_config``: cheaper steps, less
  memory); any flag or ``--config`` value overrides them;
* TRL's model flags reach the model as in ``trl/scripts/dpo.py``: ``--dtype`` (``auto`` here: the dtype this
  machine computes fastest, not the checkpoint's), ``--model_revision``, ``--attn_implementation``,
  ``--trust_remote_code``, ``--load_in_4bit`` / ``--load_in_8bit`` (QLoRA, through TRL's quantisation config; a clear
  error without CUDA);
* the generator is loaded with ``load_generator`` (default SmolLM2-135M-Instruct, resolved offline to the packaged
  copy); a LoRA adapter folder (``trl-bporag sft``'s) is merged into its base and GPO trains a new adapter on that
  model, its reference; the saved folder is one adapter on the original base holding both updates
  (:func:`~trl_bporag.trainers.adapters.stack_lora_adapters`), so it loads and pushes like any GPO adapter;
* rows that do not fit ``--max_length`` are counted and dropped with a warning (TRL would drop some silently and cut
  the answers of others);
* the saved adapter gets ``bporag_config.json`` and a model-card section naming the retriever and the settings of
  the pairs (read from the pairs' ``stats.json``, local or on the Hub), so ``RAGPipeline.from_pretrained(
  generator=output_dir, corpus=...)`` pairs it with its retriever; ``--eval_fraction``: the pairs held out when
  ``--eval_strategy`` is set and the data set has no test split.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from trl import DPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_bporag import DEFAULT_GENERATOR, load_generator
from trl_bporag.artifacts import PROMPT_SETTINGS, read_stage_config
from trl_bporag.hub import push_folder_to_hub
from trl_bporag.models import model_load_kwargs
from trl_bporag.preferences import check_dpo_lengths, load_pairs
from trl_bporag.scripts import finish_training, start_script
from trl_bporag.trainers import GPOConfig, GPOTrainer, gpo_lora_config
from trl_bporag.trainers.adapters import is_lora_adapter, stack_lora_adapters

logger = logging.getLogger("gpo")

#: ModelConfig defaults of the GPO recipe: LoRA r 16, alpha 32, no dropout, on all linear layers of the last 6 decoder
#: layers (GPOScriptArguments.lora_top_layers), the weights in the dtype this machine computes fastest.
MODEL_DEFAULTS = {"use_peft": True, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                  "lora_target_modules": "all-linear", "dtype": "auto"}


@dataclass
class GPOScriptArguments(ScriptArguments):
    eval_fraction: float = field(default=0.1, metadata={
        "help": "pairs held out when --eval_strategy is set and the data set has no test split"})
    lora_top_layers: int | None = field(default=6, metadata={
        "help": "LoRA (--lora_r, --lora_alpha) on the last N decoder layers only (0: --use_peft's own placement)"})


def main(script_args, training_args, model_args, bporag_config: dict | None = None):
    if not training_args.beta > 0:
        raise ValueError(f"--beta: expected a number > 0 (a negative beta trains the preference backwards), got "
                         f"{training_args.beta!r}")
    need_eval = training_args.eval_strategy != "no"
    dataset = load_pairs(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split,
                         script_args.dataset_test_split, need_eval, script_args.eval_fraction)
    if bporag_config is None:  # the retriever, k and prompt settings of the pairs (a folder or a Hub data set)
        bporag_config = read_stage_config(script_args.dataset_name) or {}
    generator = model_args.model_name_or_path or DEFAULT_GENERATOR
    model, tokenizer = load_generator(generator, **model_load_kwargs(model_args, "generator"))
    start_adapter = generator if is_lora_adapter(generator) and model_args.use_peft else None
    if start_adapter:  # GPO after SFT: a new adapter on the SFT model, which is also the reference
        model = model.merge_and_unload()
    for split in list(dataset):
        dataset[split], _ = check_dpo_lengths(dataset[split], tokenizer, training_args.max_length)
    top = script_args.lora_top_layers
    peft_config = (gpo_lora_config(model_args.lora_r, model_args.lora_alpha, top, model=model) if top and
                   model_args.use_peft else get_peft_config(model_args))
    card = {key: bporag_config.get(key) for key in ("retriever", "retriever_hub_id", *PROMPT_SETTINGS, "num_beams",
                                                    "num_samples", "pairing")}
    card.update(generator=generator, start_adapter=start_adapter, pairs=script_args.dataset_name,
                beta=training_args.beta,
                loss_type=training_args.loss_type, learning_rate=training_args.learning_rate,
                pairs_hub_id=None if os.path.isdir(script_args.dataset_name) else script_args.dataset_name,
                adapter_hub_id=training_args.hub_model_id)
    kwargs = dict(model=model, args=training_args, train_dataset=dataset[script_args.dataset_train_split],
                  eval_dataset=dataset[script_args.dataset_test_split] if need_eval else None,
                  processing_class=tokenizer, peft_config=peft_config)
    if card.get("retriever") is not None and card.get("k") is not None:
        trainer = GPOTrainer(bporag_config={k: v for k, v in card.items() if v is not None}, **kwargs)
    else:
        logger.warning("%s has no stats.json naming the retriever and k: the card will not record them",
                       script_args.dataset_name)
        trainer = DPOTrainer(**kwargs)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    if start_adapter:
        if trainer.is_world_process_zero():  # one adapter on the original base: the SFT update plus GPO's
            stack_lora_adapters(start_adapter, training_args.output_dir, training_args.output_dir)
        trainer.accelerator.wait_for_everyone()
    trainer.accelerator.print(f"Generator adapter saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        if start_adapter:  # Trainer.push_to_hub would save (and push) the GPO adapter alone over the stacked one
            if trainer.is_world_process_zero():
                push_folder_to_hub(training_args.output_dir,
                                   training_args.hub_model_id or os.path.basename(training_args.output_dir))
        else:
            trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def make_parser() -> TrlParser:
    parser = TrlParser((GPOScriptArguments, GPOConfig, ModelConfig))
    parser.set_defaults_with_config(**MODEL_DEFAULTS)  # ModelConfig's own: float32, no PEFT
    return parser


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses."""
    return make_parser().parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag gpo [flags]` (or `python examples/gpo.py`); ``argv``: the
    flags (default: ``sys.argv[1:]``)."""
    start_script()
    script_args, training_args, model_args = parse(argv)
    finish_training(main(script_args, training_args, model_args))


if __name__ == "__main__":
    cli()
