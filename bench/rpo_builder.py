"""RPO pair-builder throughput with the paper's judge (generator F1): batched generation + window cache vs one
``generate`` call per (query, list) with no cache.

    python bench/rpo_builder.py --queries 12 --num_perturbations 4

Real models: all-MiniLM-L6-v2 (base retriever, cached squad-dev index) and SmolLM2-135M-Instruct (bf16 by default).
Ours is :class:`RetrievalPreferenceBuilder` as shipped (``judge="generator_f1"``: identical (query, window) pairs are
judged once; the prompts, ordered by their tokens, are read once each and a prompt reuses the KV cache of the one
before it for their common beginning (the lists of one question share the system prompt and the passages before the
edit); the answers are then decoded ``--batch_size`` at a time). The baseline is the same
builder with ``use_window_cache = False``: every list of every query is judged by its own ``generate`` call (batch 1),
duplicates included. The queries are processed in chunks of ``--chunk`` and the two builders alternate chunk by chunk,
so that load on a shared machine hits both alike. The pairs of the two runs must be identical (same chosen/rejected
ids, same judge scores). The last line is the throughput ratio (pairs/s ours over pairs/s baseline).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import DATA, PeakRSS, mb, print_machine  # noqa: E402


def chunk_split(split, start, stop):
    from trl_bporag.data import QASplit

    return QASplit(split.ids[start:stop], split.questions[start:stop], split.answers[start:stop],
                   split.gold_ids[start:stop], split.name)


def pair_key(row):
    return (row["query_id"], tuple(row["chosen_ids"]), tuple(row["rejected_ids"]), row["chosen_score"],
            row["rejected_score"], row["perturbation"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=12)
    p.add_argument("--offset", type=int, default=0, help="first squad-dev train question used")
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--num_perturbations", type=int, default=4)
    p.add_argument("--recipe", default="minimal")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--dtype", default="auto", help="auto (bf16 where native) | bfloat16 | float32")
    p.add_argument("--generator", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="cProfile ours; print the top functions")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    from baselines import UncachedRetrievalPreferenceBuilder

    from trl_bporag import DenseIndex, Retriever, load_beir, load_generator, load_retriever
    from trl_bporag.generation import generate
    from trl_bporag.preferences import RetrievalPreferenceBuilder

    data = load_beir(DATA / "squad-dev", "train")
    retriever = Retriever(load_retriever("sentence-transformers/all-MiniLM-L6-v2"))
    index = DenseIndex.cached(retriever, data.corpus)
    model, tokenizer = load_generator(args.generator, torch_dtype=args.dtype)
    model.eval()
    generate(model, tokenizer, ["Warm-up: say hi."], batch_size=1, max_new_tokens=4)

    def builder(cached: bool):
        cls = RetrievalPreferenceBuilder if cached else UncachedRetrievalPreferenceBuilder
        return cls(retriever, index, data.corpus, generator=model, tokenizer=tokenizer, judge="generator_f1",
                   k=args.k, perturbations=args.recipe, num_perturbations=args.num_perturbations,
                   batch_size=args.batch_size)

    split = chunk_split(data.split, args.offset, args.offset + args.queries)
    names = ("ours", "baseline")
    seconds = dict.fromkeys(names, 0.0)
    peak = dict.fromkeys(names, 0)
    rows = {name: [] for name in names}
    stats = {name: {} for name in names}
    profiler = cProfile.Profile() if args.profile else None
    for start in range(0, len(split), args.chunk):
        part = chunk_split(split, start, start + args.chunk)
        for name in names:
            b = builder(name == "ours")
            with PeakRSS() as mem:
                t = time.perf_counter()
                if profiler is not None and name == "ours":
                    profiler.enable()
                ds = b.build(part)
                if profiler is not None and name == "ours":
                    profiler.disable()
                seconds[name] += time.perf_counter() - t
            peak[name] = max(peak[name], mem.peak)
            rows[name].extend(ds.to_list() if len(ds) else [])
            for key, value in b.describe()["stats"].items():
                stats[name][key] = stats[name].get(key, 0) + value
        print(json.dumps({"queries_done": min(start + args.chunk, len(split)),
                          **{f"{n}_s": round(seconds[n], 1) for n in names}}), flush=True)

    same = sorted(map(pair_key, rows["ours"])) == sorted(map(pair_key, rows["baseline"]))
    out = {}
    for name in names:
        n_pairs = len(rows[name])
        out[name] = {"seconds": round(seconds[name], 1), "pairs": n_pairs,
                     "pairs_per_s": round(n_pairs / seconds[name], 4),
                     "s_per_generation": round(seconds[name] / max(1, stats[name]["generations"]), 3),
                     "peak_rss_mb": mb(peak[name]), **stats[name]}
        print(json.dumps({"builder": name, **out[name]}), flush=True)
    if not same:
        a, b = set(map(pair_key, rows["ours"])), set(map(pair_key, rows["baseline"]))
        print(json.dumps({"pairs_only_ours": len(a - b), "pairs_only_baseline": len(b - a)}), flush=True)
    if profiler is not None:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(25)
        print(buf.getvalue(), flush=True)
    ratio = seconds["baseline"] / seconds["ours"]  # same pairs: pairs/s ratio = time ratio
    if out["ours"]["pairs"] and out["baseline"]["pairs"]:
        ratio = out["ours"]["pairs_per_s"] / out["baseline"]["pairs_per_s"]
    print_machine()
    print(f"RPO builder (generator_f1, {args.queries} queries, {args.generator.split('/')[-1]} {args.dtype}): "
          f"ours/baseline pairs/s = {ratio:.2f}x, same pairs: {same}")


if __name__ == "__main__":
    main()
