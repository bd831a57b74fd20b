"""Build RPO preference rows (base retriever top-n -> perturbed lists -> judge -> judged windows).

    trl-bporag build-rpo-pairs --dataset ../shared/data/squad-dev --split train --max_queries 1500 \
        --output_dir runs/rpo-pairs
    accelerate launch --multi_gpu --num_processes 2 -m trl_bporag.scripts.build_rpo_pairs \
        --dataset ../shared/data/squad-dev --split train --judge generator_f1 --max_queries 300 \
        --output_dir runs/rpo-pairs-f1

(on a CPU-only machine ``--multi_gpu`` makes accelerate start N processes; they form a gloo group.)

The defaults are the measured best recipe (``trl_bporag.settings.RPOPairSettings``): answer-containment judge, 8
minimal edits per query, listwise rows. The prompt flags (``--answer_prefix``, ``--max_passage_tokens``,
``--system_prompt``, ``--max_new_tokens``, ``--k``: ``trl_bporag.settings.RAGSettings``) are those of every other
stage; the generator judges answer with that prompt. Writes a ``datasets`` folder (``load_from_disk``) with
``stats.json``; an interrupted run resumes when restarted with the same arguments, and a finished one is reused (a
run with other settings in the same folder is refused, naming what differs). ``--push_to_hub REPO`` also pushes the
pairs as a Hub dataset (parquet + card + stats.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trl import TrlParser

from trl_bporag import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, DenseIndex, Retriever, load_generator, load_rag_dataset
from trl_bporag.hardware import DTYPE_CHOICES
from trl_bporag.preferences import GENERATOR_JUDGES, RetrievalPreferenceBuilder
from trl_bporag.scripts import start_script
from trl_bporag.settings import (
    DOCUMENT_PROMPT_HELP,
    INDEX_TYPE_HELP,
    PASSAGE_JUDGES,
    QUERY_PROMPT_HELP,
    RESCORE_HELP,
    RAGSettings,
    RPOPairSettings,
)
from trl_bporag.utils import check_positive_ints, distributed_state


@dataclass
class BuildArguments:
    dataset: str = field(metadata={"help": "BEIR-layout folder or HF QA dataset"})
    output_dir: str = field(metadata={"help": "where the pairs (datasets folder) and stats.json go"})
    split: str = field(default="train")
    retriever: str = field(default=DEFAULT_RETRIEVER)
    query_prompt: str | None = field(default=None, metadata={"help": QUERY_PROMPT_HELP})
    document_prompt: str | None = field(default=None, metadata={"help": DOCUMENT_PROMPT_HELP})
    generator: str = field(default=DEFAULT_GENERATOR, metadata={"help": "base generator of the generator judges"})
    max_pairs_per_query: int | None = field(default=None, metadata={"help": "pairwise rows only"})
    drop_rate: float = field(default=0.3)
    noise_rate: float = field(default=0.3)
    order_matters: bool = field(default=False, metadata={"help": "for a position-aware set score"})
    max_queries: int | None = field(default=None)
    query_offset: int = field(default=0, metadata={"help": "first query of the split used"})
    seed: int = field(default=0)
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
        check_positive_ints(self, ("max_queries", "max_pairs_per_query"), optional=True)
        if self.query_offset < 0:
            raise ValueError(f"--query_offset: expected >= 0, got {self.query_offset!r}")


def main(args: BuildArguments, recipe: RPOPairSettings | None = None, settings: RAGSettings | None = None):
    recipe, settings = recipe or RPOPairSettings(), settings or RAGSettings()
    state = distributed_state()
    # the qrels judge reads the gold passages only: a standard BEIR set without answers is fine
    data = load_rag_dataset(args.dataset, args.split, require_answers=recipe.judge not in PASSAGE_JUDGES)
    retriever = Retriever(args.retriever, query_prompt=args.query_prompt, passage_prompt=args.document_prompt)
    with state.main_process_first():  # the main process builds (or reuses) the index, the others load it
        index = DenseIndex.cached(retriever, data.corpus, index_dir=args.index_dir, index_type=args.index_type,
                                  rescore=args.rescore, with_title=settings.with_title)
    gen = tok = None
    if recipe.judge in GENERATOR_JUDGES:
        gen, tok = load_generator(args.generator, torch_dtype=args.generator_dtype, device=str(state.device))
    builder = RetrievalPreferenceBuilder(
        retriever, index, data.corpus, gen, tok, judge=recipe.judge, top_n=recipe.top_n,
        perturbations=recipe.perturbations, num_perturbations=recipe.num_perturbations, pairing=recipe.pairing,
        max_pairs_per_query=args.max_pairs_per_query, drop_rate=args.drop_rate, noise_rate=args.noise_rate,
        order_matters=args.order_matters, seed=args.seed, batch_size=args.batch_size, settings=settings,
    )
    pairs = builder.build(data.split.slice(args.query_offset), output_dir=args.output_dir, resume=not args.no_resume,
                          max_queries=args.max_queries, push_to_hub=args.push_to_hub)
    described = builder.describe()
    if state.is_main_process:
        print(json.dumps(described, indent=2))
        print(f"{len(pairs)} pair rows written to {args.output_dir}")
    return described


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses."""
    return TrlParser((BuildArguments, RPOPairSettings, RAGSettings)).parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag build-rpo-pairs [flags]` (or `python examples/build_rpo_pairs.py`); ``argv``: the
    flags (default: ``sys.argv[1:]``)."""
    start_script()
    main(*parse(argv))


if __name__ == "__main__":
    cli()
