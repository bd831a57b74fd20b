"""Index a corpus with a retriever: a FAISS folder (``index.faiss`` + ``metadata.json``) that the other scripts reuse.

    trl-bporag index --dataset ../shared/data/squad-dev --output_dir runs/index
    trl-bporag index --dataset ../shared/data/squad-dev --retriever runs/retriever-rpo --index_type hnsw \
        --output_dir runs/index-rpo --push_to_hub user/squad-dev-index

Rerunning with the same retriever and corpus encodes no passage (the saved index is checked and reused). Without
``--output_dir`` the index goes to the cache folder the other scripts look in (``default_index_dir``).

A corpus too large for memory: ``--corpus`` reads a ``corpus.jsonl`` (or a ``datasets`` Arrow folder) lazily, encodes it
in resumable shards of ``--shard_size`` passages (``--encode_devices cpu cpu`` / ``cuda:0 cuda:1``: a
sentence-transformers multi-process pool) into ``--output_dir/shards``, and fills a compressed FAISS index from them:

    trl-bporag index --corpus wiki/corpus.jsonl --index_type IVF65536,PQ48 --train_sample 2000000 --rescore 100 \
        --shard_size 1000000 --encode_devices cuda:0 cuda:1 --output_dir runs/index-wiki
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

from trl import TrlParser

from trl_bporag import DEFAULT_RETRIEVER, DenseIndex, Retriever, load_rag_dataset
from trl_bporag.retrieval.index import default_index_dir
from trl_bporag.settings import DOCUMENT_PROMPT_HELP, INDEX_TYPE_HELP, QUERY_PROMPT_HELP, RESCORE_HELP


@dataclass
class IndexArguments:
    dataset: str | None = field(default=None, metadata={"help": "BEIR-layout folder or HF QA dataset"})
    corpus: str | None = field(default=None, metadata={
        "help": "instead of --dataset: a corpus.jsonl or datasets Arrow folder, read lazily and encoded in shards"})
    output_dir: str | None = field(default=None, metadata={"help": "index folder (default: the shared cache)"})
    split: str = field(default="test", metadata={"help": "any split of the data set (the corpus is shared)"})
    retriever: str = field(default=DEFAULT_RETRIEVER)
    score: str = field(default="cos", metadata={"help": "cos (normalised embeddings) or dot"})
    index_type: str = field(default="flat", metadata={"help": INDEX_TYPE_HELP})
    train_sample: int | None = field(default=None, metadata={
        "help": "passages a trained index (IVF, PQ) learns from (default: max(100k, 64 per IVF list), at most all)"})
    rescore: int | None = field(default=None, metadata={"help": RESCORE_HELP})
    nprobe: int | None = field(default=None, metadata={"help": "IVF lists searched per query (default 16)"})
    shard_size: int | None = field(default=None, metadata={
        "help": "encode in resumable shards of this many passages (default with --corpus: 100000)"})
    encode_devices: list[str] | None = field(default=None, metadata={
        "help": "encode with a sentence-transformers multi-process pool on these devices (cpu cpu / cuda:0 cuda:1)"})
    with_title: bool = field(default=True, metadata={"help": "passage text = title + ' ' + text"})
    query_prompt: str | None = field(default=None, metadata={"help": QUERY_PROMPT_HELP})
    document_prompt: str | None = field(default=None, metadata={"help": DOCUMENT_PROMPT_HELP})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the index folder to"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an index of another model/corpus/type in --output_dir (refused otherwise)"})


def main(args: IndexArguments) -> DenseIndex:
    if (args.dataset is None) == (args.corpus is None):
        raise ValueError("--dataset / --corpus: pass exactly one (a QA data set, or a corpus file read lazily)")
    corpus = load_rag_dataset(args.dataset, args.split).corpus if args.dataset else args.corpus
    retriever = Retriever(args.retriever, score=args.score, query_prompt=args.query_prompt,
                          passage_prompt=args.document_prompt)
    out = args.output_dir or str(default_index_dir(retriever, corpus, args.index_type, args.with_title))
    start, before = time.perf_counter(), retriever.num_encoded
    options = {key: getattr(args, key) for key in ("train_sample", "rescore", "nprobe", "shard_size", "encode_devices")
               if getattr(args, key) is not None}
    index = DenseIndex.cached(retriever, corpus, index_dir=out, index_type=args.index_type, with_title=args.with_title,
                              overwrite=args.overwrite or args.output_dir is None, **options)
    print(json.dumps({"index_dir": out, "passages": len(index), "passages_encoded": retriever.num_encoded - before,
                      "index_type": args.index_type, "seconds": round(time.perf_counter() - start, 1)}))
    if args.push_to_hub:
        index.push_to_hub(args.push_to_hub)
    return index


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses."""
    return TrlParser((IndexArguments,)).parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag index [flags]` (or `python examples/index.py`); ``argv``: the
    flags (default: ``sys.argv[1:]``)."""
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    main(*parse(argv))


if __name__ == "__main__":
    cli()
