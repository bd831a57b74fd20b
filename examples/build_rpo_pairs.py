"""Build RPO preference pairs (base retriever top-n -> perturbed lists -> judge -> chosen/rejected windows).

    python examples/build_rpo_pairs.py --dataset ../shared/data/squad-dev --split train --output_dir runs/rpo-pairs
    accelerate launch --multi_gpu --num_processes 2 examples/build_rpo_pairs.py --dataset ../shared/data/squad-dev --split train \
        --judge generator_f1 --max_queries 300 --output_dir runs/rpo-pairs-f1

(on a CPU-only machine ``--multi_gpu`` makes accelerate start N processes; they form a gloo group.)

Writes a ``datasets`` folder (``load_from_disk``) with ``stats.json``; an interrupted run resumes when restarted with
the same arguments. ``--push_to_hub REPO`` also pushes the pairs as a Hub dataset (parquet + card + stats.json).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from trl import TrlParser

from trl_bporag import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, DenseIndex, Retriever, load_generator, load_rag_dataset
from trl_bporag.preferences import GENERATOR_JUDGES, RetrievalPreferenceBuilder
from trl_bporag.utils import check_positive_ints, distributed_state, quiet_known_warnings


@dataclass
class BuildArguments:
    dataset: str = field(metadata={"help": "BEIR-layout folder or HF QA dataset"})
    output_dir: str = field(metadata={"help": "where the pairs (datasets folder) and stats.json go"})
    split: str = field(default="train")
    retriever: str = field(default=DEFAULT_RETRIEVER)
    generator: str = field(default=DEFAULT_GENERATOR, metadata={"help": "base generator for the generator_f1 judge"})
    judge: str = field(default="generator_f1", metadata={"help": "generator_f1 (paper), answer_likelihood (graded, no decoding) or answer_hit"})
    k: int = field(default=5)
    top_n: int = field(default=50)
    perturbations: str = field(default="minimal", metadata={"help": "paper | minimal | mixed | comma-separated names"})
    num_perturbations: int = field(default=4)
    pairing: str = field(default="vs_original", metadata={"help": "vs_original | best_worst | listwise (one row per query, all judged windows)"})
    max_pairs_per_query: int | None = field(default=None)
    drop_rate: float = field(default=0.3)
    noise_rate: float = field(default=0.3)
    order_matters: bool = field(default=False, metadata={"help": "for a position-aware set score"})
    max_queries: int | None = field(default=None)
    seed: int = field(default=0)
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    max_new_tokens: int = field(default=24)
    generator_dtype: str = field(default="bfloat16")
    index_dir: str | None = field(default=None)
    no_resume: bool = field(default=False, metadata={"help": "start over instead of resuming"})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id"})

    def __post_init__(self):
        check_positive_ints(self, ('k', 'top_n'))
        check_positive_ints(self, ('max_queries',), optional=True)


def main(args: BuildArguments):
    state = distributed_state()
    data = load_rag_dataset(args.dataset, args.split)
    retriever = Retriever(args.retriever)
    with state.main_process_first():  # the main process builds (or reuses) the index, the others load it
        index = DenseIndex.cached(retriever, data.corpus, index_dir=args.index_dir)
    gen = tok = None
    if args.judge in GENERATOR_JUDGES:
        gen, tok = load_generator(args.generator, torch_dtype=args.generator_dtype,
                                  device=str(state.device))
    perturbations = args.perturbations.split(",") if "," in args.perturbations else args.perturbations
    builder = RetrievalPreferenceBuilder(
        retriever, index, data.corpus, gen, tok, judge=args.judge, k=args.k, top_n=args.top_n,
        perturbations=perturbations, num_perturbations=args.num_perturbations, pairing=args.pairing,
        max_pairs_per_query=args.max_pairs_per_query, drop_rate=args.drop_rate, noise_rate=args.noise_rate,
        order_matters=args.order_matters, seed=args.seed, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    pairs = builder.build(data.split, output_dir=args.output_dir, resume=not args.no_resume,
                          max_queries=args.max_queries, push_to_hub=args.push_to_hub)
    if state.is_main_process:
        print(json.dumps(builder.describe(), indent=2))
        print(f"{len(pairs)} pairs written to {args.output_dir}")


if __name__ == "__main__":
    quiet_known_warnings()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    (build_args,) = TrlParser((BuildArguments,)).parse_args_and_config()
    main(build_args)
