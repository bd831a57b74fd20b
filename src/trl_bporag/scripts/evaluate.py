"""Evaluate a retriever (Recall@k, answer-hit@k) and optionally a generator reading its top-k (EM, F1).

    trl-bporag evaluate --dataset ../shared/data/squad-dev --split test --max_queries 200
    trl-bporag evaluate --dataset ../shared/data/squad-dev --split test --retrieval_only
    trl-bporag evaluate --config eval.yaml

The RAG settings (k, passage budget, system prompt, answer prefix, max new tokens) are those a GPO adapter recorded
(its ``bporag_config.json``, local or on the Hub), else the retriever's k and the defaults; any of them given as a flag
wins. Writes ``results.json``, ``results.md`` and ``predictions.jsonl`` to ``--output_dir``. The corpus index is cached
(see ``--index_dir``): a second run with the same retriever and corpus encodes no passage.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import TrlParser

from trl_bporag import DEFAULT_GENERATOR, RAGPipeline, load_rag_dataset
from trl_bporag.hardware import DTYPE_CHOICES
from trl_bporag.retrieval.index import default_index_dir
from trl_bporag.scripts import start_script
from trl_bporag.settings import (
    DOCUMENT_PROMPT_HELP,
    INDEX_TYPE_HELP,
    QUERY_PROMPT_HELP,
    RESCORE_HELP,
    RAGSettingsOverrides,
)
from trl_bporag.utils import check_positive_ints


@dataclass
class EvalArguments:
    dataset: str = field(metadata={
        "help": "BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/) or a HF QA dataset"})
    split: str = field(default="test", metadata={"help": "split (qrels/<split>.tsv)"})
    retriever: str | None = field(default=None, metadata={
        "help": "retriever id or sentence-transformers folder (default: the one a GPO adapter was aligned under, else "
                "all-MiniLM-L6-v2)"})
    generator: str = field(default=DEFAULT_GENERATOR, metadata={
        "help": "generator id, folder, PEFT adapter folder or adapter Hub id"})
    retrieval_only: bool = field(default=False, metadata={"help": "skip generation (Recall@k / answer-hit@k only)"})
    ks: str = field(default="1,5,10", metadata={"help": "cut-offs for Recall@k and answer-hit@k"})
    score: str | None = field(default=None, metadata={
        "help": "cos | dot (default: the retriever's own similarity function, as it was trained)"})
    query_prompt: str | None = field(default=None, metadata={"help": QUERY_PROMPT_HELP})
    document_prompt: str | None = field(default=None, metadata={"help": DOCUMENT_PROMPT_HELP})
    index_type: str = field(default="flat", metadata={"help": INDEX_TYPE_HELP})
    rescore: int | None = field(default=None, metadata={"help": RESCORE_HELP})
    index_dir: str | None = field(default=None, metadata={"help": "index cache folder (default: under the cache dir)"})
    overwrite_index: bool = field(default=False, metadata={
        "help": "replace an index of another model/corpus/type in --index_dir (refused otherwise)"})
    max_queries: int | None = field(default=None, metadata={"help": "evaluate only the first N queries"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    generator_dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 where the hardware computes it natively, else float32) | bfloat16 | float32",
        "choices": list(DTYPE_CHOICES)})
    output_dir: str = field(default="runs/eval")
    save_predictions: bool = field(default=True, metadata={"help": "write predictions.jsonl"})

    def __post_init__(self):
        check_positive_ints(self, ("batch_size",))
        check_positive_ints(self, ("max_queries",), optional=True)
        ks = self.ks.split(",") if isinstance(self.ks, str) else list(self.ks)
        if not all(str(x).strip().isdigit() and int(x) >= 1 for x in ks):
            raise ValueError(f"--ks: expected comma-separated integers >= 1, got {self.ks!r}")


def markdown_table(args: EvalArguments, result: dict) -> str:
    metrics = result["metrics"]
    cols = [c for c in metrics if not c.endswith("_seconds")]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = "| dataset | split | queries | retriever | generator | " + " | ".join(cols) + " |"
    sep = "|" + "---|" * (5 + len(cols))
    gen = "-" if args.retrieval_only else args.generator
    row = (f"| {Path(args.dataset).name} | {args.split} | {result['num_queries']} | {result['retriever']} | {gen} | "
           + " | ".join(fmt(metrics[c]) for c in cols) + " |")
    return "\n".join([head, sep, row]) + "\n"


def main(args: EvalArguments, settings: RAGSettingsOverrides | None = None, answer_cache: dict | None = None,
         data=None) -> dict:
    """Evaluate one retriever / generator pair. The RAG settings are what the adapter (or the retriever) recorded,
    with the flags given in ``settings`` on top (``RAGPipeline.from_pretrained``). ``answer_cache`` (a dict shared
    between calls with the same generator) and ``data`` (the loaded data set) let a caller evaluate several rows
    without answering or loading twice."""
    start = time.perf_counter()
    data = data or load_rag_dataset(args.dataset, args.split, require_answers=not args.retrieval_only)
    split = data.split.head(args.max_queries)
    ks = tuple(int(x) for x in args.ks.split(","))
    overrides = settings.overrides() if settings is not None else {}
    too_deep = [x for x in (overrides.get("k", 1), *ks) if x > len(data.corpus)]
    if too_deep:  # before the corpus is encoded
        raise ValueError(f"--k / --ks: {too_deep} exceed the corpus size of {args.dataset} ({len(data.corpus)} "
                         f"passages)")
    pipe = RAGPipeline.from_pretrained(
        retriever=args.retriever, generator=None if args.retrieval_only else args.generator, corpus=data.corpus,
        index_dir=args.index_dir, index_type=args.index_type, score=args.score, query_prompt=args.query_prompt,
        document_prompt=args.document_prompt, generator_dtype=args.generator_dtype,
        batch_size=args.batch_size, overwrite_index=args.overwrite_index or args.index_dir is None,
        index_options={"rescore": args.rescore}, **overrides)
    encoded = pipe.retriever.num_encoded
    index_dir = args.index_dir or str(default_index_dir(pipe.retriever, data.corpus, args.index_type,
                                                        pipe.settings.with_title))
    result = pipe.evaluate(split, ks=ks, generate_answers=not args.retrieval_only, answer_cache=answer_cache,
                           return_predictions=True, progress=f"{Path(args.dataset).name}")
    predictions = result["predictions"] if args.save_predictions else None
    if not args.save_predictions:
        result.pop("predictions")
    result.update(
        dataset=args.dataset, split=args.split, retriever=pipe.retriever.model_id,
        generator=None if args.retrieval_only else args.generator, index_dir=index_dir,
        settings=pipe.settings.to_dict(),
        passages_encoded=encoded, total_seconds=round(time.perf_counter() - start, 2), args=asdict(args),
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2))
    table = markdown_table(args, result)
    (out / "results.md").write_text(table)
    if predictions is not None:
        with (out / "predictions.jsonl").open("w") as fh:
            for p in predictions:
                fh.write(json.dumps(p) + "\n")
    print(f"passages encoded: {encoded} (index: {index_dir})", file=sys.stderr)
    print(table)
    return result


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses."""
    return TrlParser((EvalArguments, RAGSettingsOverrides)).parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag evaluate [flags]` (or `python examples/evaluate.py`); ``argv``: the
    flags (default: ``sys.argv[1:]``)."""
    start_script()
    main(*parse(argv))


if __name__ == "__main__":
    cli()
