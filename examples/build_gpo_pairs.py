"""Build GPO preference pairs: the frozen (RPO-tuned) retriever's top-k -> one prompt -> a beam-search answer and
sampled answers of the generator -> F1 against the gold answers -> chosen/rejected (stage 2 of BPO-RAG).

    python examples/build_gpo_pairs.py --dataset ../shared/data/squad-dev --split train --retriever runs/retriever-rpo \
        --max_queries 300 --output_dir runs/gpo-pairs
    accelerate launch --multi_gpu --num_processes 2 examples/build_gpo_pairs.py ...   # queries split across processes

Writes a ``datasets`` folder of TRL preference rows (conversational when the generator has a chat template; stock
``trl.DPOTrainer`` reads them unchanged) plus ``stats.json`` (the configuration, incl. retriever and k, and the counts
of pairs / ties). An interrupted run resumes when restarted with the same arguments. ``--push_to_hub REPO`` pushes
the pairs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from trl import TrlParser

from trl_bporag import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, DenseIndex, Retriever, load_generator, load_rag_dataset
from trl_bporag.preferences import GenerationPreferenceBuilder
from trl_bporag.trainers import GPO_MAX_LENGTH
from trl_bporag.utils import check_positive_ints, distributed_state, quiet_known_warnings


@dataclass
class GPOBuildArguments:
    dataset: str = field(metadata={"help": "BEIR-layout folder or HF QA dataset"})
    output_dir: str = field(metadata={"help": "where the pairs (datasets folder) and stats.json go"})
    split: str = field(default="train")
    retriever: str = field(default=DEFAULT_RETRIEVER, metadata={"help": "the frozen (RPO-tuned) retriever"})
    generator: str = field(default=DEFAULT_GENERATOR, metadata={"help": "the generator to align"})
    k: int = field(default=5)
    num_beams: int = field(default=4)
    num_samples: int = field(default=1, metadata={"help": "sampled answers per query"})
    temperature: float = field(default=1.0)
    top_p: float = field(default=0.95)
    pairing: str = field(default="best_worst", metadata={"help": "best_worst | beam_vs_sample"})
    max_queries: int | None = field(default=None)
    seed: int = field(default=0)
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    max_new_tokens: int = field(default=24)
    max_passage_tokens: int = field(default=96, metadata={
        "help": "each passage is cut to this many tokens (as examples/bporag.py; recorded in stats.json)"})
    max_length: int = field(default=GPO_MAX_LENGTH, metadata={
        "help": "the DPOConfig.max_length you will train with (gpo_defaults: 640)"})
    answer_prefix: str | None = field(default=None, metadata={
        "help": "text the answers start with, e.g. 'The answer is \"' (trl_bporag.generation.QUOTED_ANSWER_PREFIX); "
                "use the same at evaluation (a GPO adapter records it in bporag_config.json)"})
    generator_dtype: str = field(default="bfloat16")
    index_dir: str | None = field(default=None)
    no_resume: bool = field(default=False, metadata={"help": "start over instead of resuming"})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id"})

    def __post_init__(self):
        check_positive_ints(self, ('k', 'num_beams', 'num_samples'))
        check_positive_ints(self, ('max_queries',), optional=True)


def main(args: GPOBuildArguments):
    state = distributed_state()
    data = load_rag_dataset(args.dataset, args.split)
    retriever = Retriever(args.retriever)
    with state.main_process_first():  # the main process builds (or reuses) the index, the others load it
        index = DenseIndex.cached(retriever, data.corpus, index_dir=args.index_dir)
    gen, tok = load_generator(args.generator, torch_dtype=args.generator_dtype, device=str(state.device))
    builder = GenerationPreferenceBuilder(
        retriever, index, data.corpus, gen, tok, k=args.k, num_beams=args.num_beams, num_samples=args.num_samples,
        temperature=args.temperature, top_p=args.top_p, pairing=args.pairing, seed=args.seed,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, max_passage_tokens=args.max_passage_tokens,
        max_length=args.max_length, answer_prefix=args.answer_prefix or None,
    )
    pairs = builder.build(data.split, output_dir=args.output_dir, resume=not args.no_resume,
                          max_queries=args.max_queries, push_to_hub=args.push_to_hub)
    if state.is_main_process:
        print(json.dumps(builder.describe(), indent=2))
        print(f"{len(pairs)} pairs written to {args.output_dir}")
    return pairs


if __name__ == "__main__":
    quiet_known_warnings()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    (build_args,) = TrlParser((GPOBuildArguments,)).parse_args_and_config()
    main(build_args)
