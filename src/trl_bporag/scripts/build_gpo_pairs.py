"""Build GPO preference pairs: the frozen (RPO-tuned) retriever's top-k -> one prompt -> the greedy answer and
sampled answers of the generator -> F1 against the gold answers -> chosen/rejected (stage 2 of BPO-RAG).

    trl-bporag build-gpo-pairs --dataset ../shared/data/squad-dev --split train --retriever runs/retriever-rpo \
        --query_offset 1500 --max_queries 800 --output_dir runs/gpo-pairs
    accelerate launch --multi_gpu --num_processes 2 -m trl_bporag.scripts.build_gpo_pairs ...  # queries split

The defaults are the measured recipe (``trl_bporag.settings.GPOPairSettings``: greedy + 7 seeded samples, the best
against the worst by F1, prompts fitted to ``max_length`` 640) and the prompt every stage uses
(``trl_bporag.settings.RAGSettings``: k 5, passages cut to 96 tokens, the reply started with ``The answer is "``).
Writes a ``datasets`` folder of TRL preference rows (stock ``trl.DPOTrainer`` reads them unchanged) plus
``stats.json`` (the configuration: retriever, settings, candidates; and the counts of pairs / ties). An interrupted
run resumes when restarted with the same arguments; a finished one is reused, a run with other settings in the same
folder refused. ``--push_to_hub REPO`` pushes the pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trl import TrlParser

from trl_bporag import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, DenseIndex, Retriever, load_generator, load_rag_dataset
from trl_bporag.hardware import DTYPE_CHOICES
from trl_bporag.preferences import GenerationPreferenceBuilder
from trl_bporag.scripts import start_script
from trl_bporag.settings import (
    DOCUMENT_PROMPT_HELP,
    INDEX_TYPE_HELP,
    QUERY_PROMPT_HELP,
    RESCORE_HELP,
    GPOPairSettings,
    RAGSettings,
)
from trl_bporag.utils import check_positive_ints, distributed_state


@dataclass
class GPOBuildArguments:
    dataset: str = field(metadata={"help": "BEIR-layout folder or HF QA dataset"})
    output_dir: str = field(metadata={"help": "where the pairs (datasets folder) and stats.json go"})
    split: str = field(default="train")
    retriever: str = field(default=DEFAULT_RETRIEVER, metadata={"help": "the frozen (RPO-tuned) retriever"})
    query_prompt: str | None = field(default=None, metadata={"help": QUERY_PROMPT_HELP})
    document_prompt: str | None = field(default=None, metadata={"help": DOCUMENT_PROMPT_HELP})
    generator: str = field(default=DEFAULT_GENERATOR, metadata={
        "help": "the generator to align: a model, or an adapter (trl-bporag sft's) for on-policy pairs after SFT"})
    max_queries: int | None = field(default=None)
    query_offset: int = field(default=0, metadata={"help": "first query of the split used (e.g. after the RPO ones)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (per query: independent of batches, processes)"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    generator_dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 where the hardware computes it natively, else float32) | bfloat16 | float32",
        "choices": list(DTYPE_CHOICES)})
    index_dir: str | None = field(default=None)
    index_type: str = field(default="flat", metadata={"help": INDEX_TYPE_HELP})
    rescore: int | None = field(default=None, metadata={"help": RESCORE_HELP})
    no_resume: bool = field(default=False, metadata={"help": "start over instead of resuming"})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id"})

    def __post_init__(self):
        check_positive_ints(self, ("batch_size",))
        check_positive_ints(self, ("max_queries",), optional=True)
        if self.query_offset < 0:
            raise ValueError(f"--query_offset: expected >= 0, got {self.query_offset!r}")


def main(args: GPOBuildArguments, recipe: GPOPairSettings | None = None, settings: RAGSettings | None = None):
    recipe, settings = recipe or GPOPairSettings(), settings or RAGSettings()
    state = distributed_state()
    data = load_rag_dataset(args.dataset, args.split)
    retriever = Retriever(args.retriever, query_prompt=args.query_prompt, passage_prompt=args.document_prompt)
    with state.main_process_first():  # the main process builds (or reuses) the index, the others load it
        index = DenseIndex.cached(retriever, data.corpus, index_dir=args.index_dir, index_type=args.index_type,
                                  rescore=args.rescore, with_title=settings.with_title)
    gen, tok = load_generator(args.generator, torch_dtype=args.generator_dtype, device=str(state.device))
    if hasattr(gen, "merge_and_unload"):  # a frozen adapter (an SFT start): merged, answers cost the base model's time
        gen = gen.merge_and_unload()
        gen.name_or_path = args.generator  # what stats.json records as the generator of the pairs
    builder = GenerationPreferenceBuilder(
        retriever, index, data.corpus, gen, tok, num_beams=recipe.num_beams, num_samples=recipe.num_samples,
        temperature=recipe.temperature, top_p=recipe.top_p, pairing=recipe.pairing, seed=args.seed,
        batch_size=args.batch_size, max_length=recipe.max_length, settings=settings,
    )
    pairs = builder.build(data.split.slice(args.query_offset), output_dir=args.output_dir, resume=not args.no_resume,
                          max_queries=args.max_queries, push_to_hub=args.push_to_hub)
    described = builder.describe()
    if state.is_main_process:
        print(json.dumps(described, indent=2))
        print(f"{len(pairs)} pairs written to {args.output_dir}")
    return described


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses."""
    return TrlParser((GPOBuildArguments, GPOPairSettings, RAGSettings)).parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag build-gpo-pairs [flags]` (or `python examples/build_gpo_pairs.py`); ``argv``: the
    flags (default: ``sys.argv[1:]``)."""
    start_script()
    main(*parse(argv))


if __name__ == "__main__":
    cli()
