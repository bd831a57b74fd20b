"""The ``real`` part of bench/large_index.py: compressed indexes on real all-MiniLM-L6-v2 embeddings.

1. Encoding throughput of the streaming encoder: one process against sentence-transformers' multi-process pool
   (``--devices``: two CPU processes by default, ``cuda:0 cuda:1 ...`` on a GPU machine), both float32, on every passage of the shared corpora; the ratio is printed last.
2. Recall@10 of the exact top-10 for each factory string, without and with exact re-scoring, over every shared corpus
   together (ids prefixed by the set's name) with every query of every split.
3. squad-dev test Recall@1/5/10 (gold passages) of each compressed index against flat, paired bootstrap 95% CIs;
   per-question values in bench/results/large_index/squad-test-recall.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import mb, peak_rss_bytes, print_machine


def _all_data(data: Path):
    from trl_bporag.data import Corpus, load_rag_dataset

    ids, titles, texts, queries = [], [], [], []
    for name in ("squad-dev", "nq-open", "hotpotqa-distractor"):
        splits = sorted(p.stem for p in (data / name / "qrels").glob("*.tsv"))
        corpus = None
        for split in splits:
            ds = load_rag_dataset(data / name, split)
            corpus = ds.corpus
            queries += ds.split.questions
        ids += [f"{name}/{pid}" for pid in corpus.ids]
        titles += corpus.titles
        texts += corpus.texts
    return Corpus(ids=ids, texts=texts, titles=titles), queries


def real(args, data: Path, out: Path) -> None:
    import torch
    from large_index import recall_at  # the synthetic part's measure (bench/ is on sys.path)

    from trl_bporag import DEFAULT_RETRIEVER, DenseIndex, Retriever, load_rag_dataset
    from trl_bporag.metrics import paired_bootstrap_ci, per_query_metrics
    from trl_bporag.retrieval.shards import encode_shards

    print_machine()
    torch.set_num_threads(2)
    corpus, questions = _all_data(data)
    retriever = Retriever(DEFAULT_RETRIEVER, dtype="float32")
    result = {"passages": len(corpus), "queries": len(questions), "specs": {}}

    # 1. throughput: one process against the pool (the same shards code path, float32 both)
    with tempfile.TemporaryDirectory(dir=args.work if os.path.isdir(args.work) else None) as tmp:
        start = time.perf_counter()
        one = encode_shards(retriever, corpus, Path(tmp) / "one", shard_size=1000)
        one_s = time.perf_counter() - start
        start = time.perf_counter()
        pool = encode_shards(retriever, corpus, Path(tmp) / "pool", shard_size=1000, devices=args.devices)
        pool_s = time.perf_counter() - start
        emb = one.vectors(np.arange(len(one)))
        diff = float(np.abs(pool.vectors(np.arange(len(pool))) - emb).max())
    result["encode"] = {"devices": args.devices, "one_process_s": round(one_s, 1), "pool_s": round(pool_s, 1),
                        "one_process_passages_per_s": round(len(corpus) / one_s, 1),
                        "pool_passages_per_s": round(len(corpus) / pool_s, 1), "max_abs_diff": diff}
    print(f"encoding {len(corpus)} passages: one process {one_s:.1f} s ({len(corpus) / one_s:.0f}/s), pool on "
          f"{args.devices} {pool_s:.1f} s ({len(corpus) / pool_s:.0f}/s); largest difference {diff:.2e}", flush=True)

    # 2. recall of each compressed index against exact search, every shared query
    q = retriever.encode_queries(questions)
    flat = DenseIndex(emb, corpus.ids)
    _, truth = flat.search(q, 10)
    for spec in args.specs:
        index = DenseIndex(emb, corpus.ids, index_type=spec, rescore=args.rescore)
        result["specs"][spec] = rows_of_spec = []
        for nprobe in args.nprobes if index.params["nlist"] else [None]:
            for depth in (0, args.rescore):
                index.configure(nprobe=nprobe, rescore=depth)
                start = time.perf_counter()
                _, rows = index.search(q, 10)
                rows_of_spec.append({"nprobe": nprobe, "rescore": depth, "recall10": round(recall_at(rows, truth), 4),
                                     "s_per_1000q": round((time.perf_counter() - start) * 1000 / len(q), 3)})
                print(f"{spec:>20} nprobe {nprobe} rescore {depth}: R@10 of the exact top-10 "
                      f"{rows_of_spec[-1]['recall10']}", flush=True)

    # 3. squad-dev test, end to end against gold passages
    squad = load_rag_dataset(data / "squad-dev", "test")
    n_squad = len(squad.corpus)
    assert corpus.ids[:n_squad] == [f"squad-dev/{pid}" for pid in squad.corpus.ids]
    sq_emb = emb[:n_squad]  # squad-dev's passages come first in the shared corpus, encoded above
    sq_q = retriever.encode_queries(squad.split.questions)
    per = {}
    for spec in ["flat", *args.specs]:
        index = DenseIndex(sq_emb, squad.corpus.ids, index_type=spec, rescore=args.rescore)
        for nprobe in args.nprobes if index.params["nlist"] else [None]:
            for depth in ((0,) if spec == "flat" else (0, args.rescore)):
                index.configure(nprobe=nprobe, rescore=depth)
                _, ids = index.search_ids(sq_q, 10)
                name = spec + (f" nprobe {nprobe}" if nprobe else "") + (f" rescore {depth}" if depth else "")
                per[name] = per_query_metrics(ids, squad.split.gold_ids, ks=(1, 5, 10))
    table = {}
    for name, metrics in per.items():
        table[name] = {}
        for key, values in metrics.items():
            entry = {"mean": round(float(np.mean(values)), 4)}
            if name != "flat":
                ci = paired_bootstrap_ci(values, per["flat"][key])
                entry.update(diff=round(ci["diff"], 4), low=round(ci["low"], 4), high=round(ci["high"], 4))
            table[name][key] = entry
        print(f"{name:>28} " + "  ".join(
            f"{k} {v['mean']:.3f}" + (f" ({v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}])" if "diff" in v else "")
            for k, v in table[name].items()), flush=True)
    result["squad_test"] = table
    from trl_bporag.hardware import describe_hardware

    result["machine"] = describe_hardware()
    out.mkdir(parents=True, exist_ok=True)
    (out / "real.json").write_text(json.dumps(result, indent=1))
    (out / "squad-test-recall.json").write_text(json.dumps({"ids": squad.split.ids, "rows": per}))
    print(f"peak memory so far: {mb(peak_rss_bytes())} MiB")
    print(f"ratio pool / one process (throughput): {one_s / pool_s:.2f}")
