"""Evaluate a retriever (Recall@k, answer-hit@k) and optionally a generator reading its top-k (EM, F1).

    python examples/evaluate.py --dataset ../shared/data/squad-dev --split test --max_queries 200
    python examples/evaluate.py --dataset ../shared/data/squad-dev --split test --retrieval_only
    python examples/evaluate.py --config eval.yaml

Writes ``results.json``, ``results.md`` and ``predictions.jsonl`` to ``--output_dir``. The corpus index is cached (see ``--index_dir``): a
second run with the same retriever and corpus encodes no passage.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import TrlParser

from trl_bporag import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, RAGPipeline, load_generator, load_rag_dataset
from trl_bporag.artifacts import read_bporag_config
from trl_bporag.retrieval import DenseIndex, Retriever
from trl_bporag.retrieval.index import default_index_dir
from trl_bporag.utils import check_positive_ints, quiet_known_warnings


@dataclass
class EvalArguments:
    dataset: str = field(metadata={"help": "BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/) or a HF QA dataset"})
    split: str = field(default="test", metadata={"help": "split (qrels/<split>.tsv)"})
    retriever: str = field(default=DEFAULT_RETRIEVER, metadata={"help": "retriever id or sentence-transformers folder"})
    generator: str = field(default=DEFAULT_GENERATOR, metadata={"help": "generator id, folder or PEFT adapter folder"})
    retrieval_only: bool = field(default=False, metadata={"help": "skip generation (Recall@k / answer-hit@k only)"})
    k: int = field(default=5, metadata={"help": "passages the generator reads"})
    ks: str = field(default="1,5,10", metadata={"help": "cut-offs for Recall@k and answer-hit@k"})
    score: str = field(default="cos", metadata={"help": "cos (normalised embeddings) or dot"})
    index_type: str = field(default="flat", metadata={"help": "flat (exact), hnsw or ivf"})
    index_dir: str | None = field(default=None, metadata={"help": "index cache folder (default: under the cache dir)"})
    overwrite_index: bool = field(default=False, metadata={
        "help": "replace an index of another model/corpus/type in --index_dir (refused otherwise)"})
    with_title: bool = field(default=True, metadata={"help": "passage text = title + ' ' + text"})
    max_queries: int | None = field(default=None, metadata={"help": "evaluate only the first N queries"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    max_new_tokens: int = field(default=24)
    generator_dtype: str = field(default="bfloat16", metadata={"help": "bfloat16 (about 2x faster on CPU) or float32"})
    max_passage_tokens: int | None = field(default=None, metadata={
        "help": "each passage is cut to this many tokens (default: what a GPO adapter's bporag_config.json records, "
                "else 192)"})
    answer_prefix: str | None = field(default=None, metadata={
        "help": "text the generator's reply starts with (default: the one a GPO adapter was trained with, from its "
                "bporag_config.json, else none; \"\" for none)"})
    output_dir: str = field(default="runs/eval")
    save_predictions: bool = field(default=True, metadata={"help": "write predictions.jsonl"})

    def __post_init__(self):
        check_positive_ints(self, ('k', 'batch_size', 'max_new_tokens'))
        check_positive_ints(self, ('max_queries', 'max_passage_tokens'), optional=True)


def markdown_table(args: EvalArguments, result: dict) -> str:
    metrics = result["metrics"]
    cols = [c for c in metrics if not c.endswith("_seconds")]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = "| dataset | split | queries | retriever | generator | " + " | ".join(cols) + " |"
    sep = "|" + "---|" * (5 + len(cols))
    gen = "-" if args.retrieval_only else args.generator
    row = (f"| {Path(args.dataset).name} | {args.split} | {result['num_queries']} | {args.retriever} | {gen} | "
           + " | ".join(fmt(metrics[c]) for c in cols) + " |")
    return "\n".join([head, sep, row]) + "\n"


def prompt_settings(args: EvalArguments) -> dict:
    """The prompt's passage cut and answer prefix: the flags where given, else what a GPO adapter was trained with (its
    bporag_config.json), else 192 tokens and no prefix."""
    aligned = read_bporag_config(args.generator) if os.path.isdir(args.generator) and not args.retrieval_only else None
    aligned = aligned or {}
    tokens = args.max_passage_tokens if args.max_passage_tokens is not None else aligned.get("max_passage_tokens")
    prefix = args.answer_prefix if args.answer_prefix is not None else aligned.get("answer_prefix")
    return {"max_passage_tokens": int(tokens or 192), "answer_prefix": prefix or None}


def main(args: EvalArguments) -> dict:
    start = time.perf_counter()
    data = load_rag_dataset(args.dataset, args.split)
    split = data.split.head(args.max_queries)
    ks = tuple(int(x) for x in args.ks.split(","))
    too_deep = [x for x in (args.k, *ks) if x > len(data.corpus)]
    if too_deep:  # before the corpus is encoded
        raise ValueError(f"--k / --ks: {too_deep} exceed the corpus size of {args.dataset} ({len(data.corpus)} "
                         f"passages)")
    retriever = Retriever(args.retriever, score=args.score)
    index_dir = args.index_dir or str(default_index_dir(retriever, data.corpus, args.index_type, args.with_title))
    before = retriever.num_encoded
    index = DenseIndex.cached(retriever, data.corpus, index_dir=args.index_dir, index_type=args.index_type,
                              with_title=args.with_title, overwrite=args.overwrite_index or args.index_dir is None)
    encoded = retriever.num_encoded - before
    gen, tok = (None, None) if args.retrieval_only else load_generator(
        args.generator, torch_dtype=args.generator_dtype
    )
    pipe = RAGPipeline(retriever, index, data.corpus, gen, tok, k=args.k, with_title=args.with_title,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                       **prompt_settings(args))
    result = pipe.evaluate(split, ks=ks, generate_answers=not args.retrieval_only,
                           return_predictions=args.save_predictions)
    predictions = result.pop("predictions", None)
    result.update(
        dataset=args.dataset, split=args.split, retriever=args.retriever,
        generator=None if args.retrieval_only else args.generator, index_dir=index_dir,
        passages_encoded=encoded, total_seconds=round(time.perf_counter() - start, 2), args=asdict(args),
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = markdown_table(args, result)
    (out / "results.md").write_text(table)
    if predictions is not None:
        with (out / "predictions.jsonl").open("w") as fh:
            for p in predictions:
                fh.write(json.dumps(p) + "\n")
    print(f"passages encoded: {encoded} (index: {index_dir})", file=sys.stderr)
    print(table)
    return result


if __name__ == "__main__":
    quiet_known_warnings()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    (eval_args,) = TrlParser((EvalArguments,)).parse_args_and_config()
    main(eval_args)
