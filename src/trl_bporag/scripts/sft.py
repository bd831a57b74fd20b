"""SFT: fine-tune the generator on the gold answers under the frozen retriever's top-k (TRL's SFTTrainer + LoRA).

The first half of the recommended generator recipe, SFT then GPO (docs/benchmarks.md: on 500 squad-dev test
questions, pooled over seeds, SFT then GPO above SFT alone above the base generator)::

    trl-bporag sft --dataset ../shared/data/squad-dev --split train --query_offset 1500 --max_queries 800 \\
        --retriever runs/retriever-rpo --output_dir runs/generator-sft
    trl-bporag build-gpo-pairs --dataset ../shared/data/squad-dev --split train --query_offset 1500 \\
        --max_queries 800 --retriever runs/retriever-rpo --generator runs/generator-sft --output_dir runs/gpo-pairs
    trl-bporag gpo --dataset_name runs/gpo-pairs --model_name_or_path runs/generator-sft \\
        --output_dir runs/generator-gpo

The prompts are the ones GPO pairs get (:meth:`~trl_bporag.preferences.GenerationPreferenceBuilder.sft_rows`: the
retriever's top-k, the :class:`~trl_bporag.settings.RAGSettings` prompt), each completed by the question's first gold
answer; the loss is on the answer only. Defaults: :class:`~trl_bporag.trainers.sft.GoldSFTConfig` (one epoch, lr
2e-4, batch 1, bf16 only where native) and the GPO LoRA (r 16, α 32, the last 6 decoder layers). The adapter is
saved with ``bporag_config.json`` naming the retriever and the prompt settings, so it evaluates with its retriever
like a GPO adapter, and ``gpo --model_name_or_path`` starts from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trl import ModelConfig, SFTTrainer, TrlParser, get_peft_config

from trl_bporag import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, DenseIndex, Retriever, load_generator, load_rag_dataset
from trl_bporag.artifacts import write_bporag_config
from trl_bporag.models import model_load_kwargs
from trl_bporag.preferences import GenerationPreferenceBuilder
from trl_bporag.scripts import finish_training, start_script
from trl_bporag.settings import DOCUMENT_PROMPT_HELP, INDEX_TYPE_HELP, QUERY_PROMPT_HELP, RESCORE_HELP, RAGSettings
from trl_bporag.trainers import gpo_lora_config
from trl_bporag.trainers.lm_head import project_labelled_positions_only
from trl_bporag.trainers.sft import GoldSFTConfig
from trl_bporag.utils import check_positive_ints, distributed_state

from .gpo import MODEL_DEFAULTS


@dataclass
class SFTScriptArguments:
    dataset: str = field(metadata={"help": "BEIR-layout folder or HF QA dataset (questions with gold answers)"})
    split: str = field(default="train")
    retriever: str = field(default=DEFAULT_RETRIEVER, metadata={"help": "the frozen (RPO-tuned) retriever"})
    query_prompt: str | None = field(default=None, metadata={"help": QUERY_PROMPT_HELP})
    document_prompt: str | None = field(default=None, metadata={"help": DOCUMENT_PROMPT_HELP})
    max_queries: int | None = field(default=None)
    query_offset: int = field(default=0, metadata={"help": "first query of the split used (e.g. after the RPO ones)"})
    index_dir: str | None = field(default=None)
    index_type: str = field(default="flat", metadata={"help": INDEX_TYPE_HELP})
    rescore: int | None = field(default=None, metadata={"help": RESCORE_HELP})
    lora_top_layers: int | None = field(default=6, metadata={
        "help": "LoRA (--lora_r, --lora_alpha) on the last N decoder layers only (0: --use_peft's own placement)"})

    def __post_init__(self):
        check_positive_ints(self, ("max_queries",), optional=True)
        if self.query_offset < 0:
            raise ValueError(f"--query_offset: expected >= 0, got {self.query_offset!r}")


def main(script_args: SFTScriptArguments, training_args: GoldSFTConfig, model_args: ModelConfig,
         settings: RAGSettings | None = None):
    settings = settings or RAGSettings()
    data = load_rag_dataset(script_args.dataset, script_args.split)
    retriever = Retriever(script_args.retriever, query_prompt=script_args.query_prompt,
                          passage_prompt=script_args.document_prompt)
    with distributed_state().main_process_first():  # the main process builds (or reuses) the index, the others load it
        index = DenseIndex.cached(retriever, data.corpus, index_dir=script_args.index_dir,
                                  index_type=script_args.index_type, rescore=script_args.rescore,
                                  with_title=settings.with_title)
    generator = model_args.model_name_or_path or DEFAULT_GENERATOR
    model, tokenizer = load_generator(generator, **model_load_kwargs(model_args, "generator"))
    builder = GenerationPreferenceBuilder(retriever, index, data.corpus, model, tokenizer,
                                          max_length=training_args.max_length, settings=settings)
    rows = builder.sft_rows(data.split.slice(script_args.query_offset), max_queries=script_args.max_queries)
    top = script_args.lora_top_layers
    peft_config = (gpo_lora_config(model_args.lora_r, model_args.lora_alpha, top, model=model) if top and
                   model_args.use_peft else get_peft_config(model_args))
    project_labelled_positions_only()  # the loss is on the answer: the LM head projects only its positions on a CPU too
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=rows.remove_columns(["query_id",
                                                                                            "passage_ids"]),
                         processing_class=tokenizer, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset)
    config = builder.describe()["config"]
    if trainer.is_world_process_zero():  # what RAGPipeline.from_pretrained and build-gpo-pairs read
        write_bporag_config(training_args.output_dir, {
            "stage": "sft", "retriever": config["retriever"], "retriever_hub_id": config["retriever_hub_id"],
            **settings.to_dict(), "generator": generator, "dataset": script_args.dataset, "split": script_args.split,
            "query_offset": script_args.query_offset, "queries": len(rows),
            "learning_rate": training_args.learning_rate})
        print(json.dumps({"rows": len(rows), "output_dir": training_args.output_dir}))
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset)
    return trainer


def make_parser() -> TrlParser:
    parser = TrlParser((SFTScriptArguments, GoldSFTConfig, ModelConfig, RAGSettings))
    parser.set_defaults_with_config(**MODEL_DEFAULTS)  # ModelConfig's own: float32, no PEFT
    return parser


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses."""
    return make_parser().parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag sft [flags]` (or `python examples/sft.py`); ``argv``: the flags (default:
    ``sys.argv[1:]``)."""
    start_script()
    script_args, training_args, model_args, settings = parse(argv)
    finish_training(main(script_args, training_args, model_args, settings))


if __name__ == "__main__":
    cli()
