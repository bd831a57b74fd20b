"""GPO pair builder throughput: ours (each prompt read once, then a batched beam search and batched seeded samples
continue from its KV cache) vs one ``generate`` call per answer. Also timed: two batched ``generate`` calls (beam,
then samples), which read every prompt once per beam and per sample.

    python bench/gpo_builder.py --queries 16 --num_beams 2 --num_samples 1

Real models (all-MiniLM-L6-v2 + SmolLM2-135M-Instruct from the PyPI wheels) on squad-dev train queries. Both paths
use the same per-answer random streams (``sample_seeds``), so they must give the same pairs; the bench reports whether
they do (bf16 batched beam search may differ from unbatched in rare near-ties; ``--dtype float32`` removes that).
Prints the speed-up (pairs/s ours / pairs/s baseline) last.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import DATA, PeakRSS, print_machine
from baselines import PerAnswerGenerationPreferenceBuilder

from trl_bporag import DenseIndex, Retriever, load_beir, load_generator
from trl_bporag.preferences import GenerationPreferenceBuilder


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--num_beams", type=int, default=2)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--dtype", default="auto", help="auto (bf16 where native) | bfloat16 | float32")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_beir(DATA / "squad-dev", "train")
    split = data.split.head(args.queries)
    r = Retriever()
    index = DenseIndex.cached(r, data.corpus)
    gen, tok = load_generator(torch_dtype=args.dtype)

    def run(mode: str):
        cls, kw = ((GenerationPreferenceBuilder, {}) if mode == "shared" else
                   (PerAnswerGenerationPreferenceBuilder, {"per_answer": mode == "per_answer"}))
        b = cls(r, index, data.corpus, gen, tok, k=5, num_beams=args.num_beams, num_samples=args.num_samples,
                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, query_batch_size=args.queries, **kw)
        generate_once = b.answers
        answers = {}

        def spy(texts, query_ids):
            out = generate_once(texts, query_ids)
            answers.update(zip(query_ids, out))
            return out

        b.answers = spy
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            pairs = b.build(split)
            seconds = time.perf_counter() - t0
        return pairs, answers, seconds, mem, b.describe()["stats"]

    run("shared")  # warm-up: index, tokenizer caches, first-call overheads
    fast, fast_answers, t_fast, mem_fast, stats = run("shared")
    two, two_answers, t_two, mem_two, _ = run("two_calls")
    slow, slow_answers, t_slow, mem_slow, _ = run("per_answer")
    differ = sum(fast_answers[q] != slow_answers[q] for q in fast_answers)
    same = fast.to_list() == slow.to_list()
    n_answers = args.queries * (1 + args.num_samples)
    print(json.dumps({
        "queries": args.queries, "answers": n_answers, "pairs": len(fast), "stats": stats, "dtype": args.dtype,
        "num_beams": args.num_beams, "num_samples": args.num_samples, "batch_size": args.batch_size,
        "ours_seconds": round(t_fast, 2), "two_batched_calls_seconds": round(t_two, 2),
        "per_answer_seconds": round(t_slow, 2),
        "two_batched_calls_vs_per_answer": round(t_slow / t_two, 2),
        "ours_answers_per_s": round(n_answers / t_fast, 3), "per_answer_answers_per_s": round(n_answers / t_slow, 3),
        "same_pairs": same, "queries_with_different_answers": differ,
        "two_calls_same_pairs": two.to_list() == slow.to_list(),
        "queries_with_different_answers_two_calls": sum(two_answers[q] != slow_answers[q] for q in two_answers),
        "peak_rss_mb_ours": round(mem_fast.peak / 2**20), "peak_rss_mb_two_calls": round(mem_two.peak / 2**20), "peak_rss_mb_per_answer": round(mem_slow.peak / 2**20),
    }), flush=True)
    print_machine()
    print(f"GPO builder speed-up (ours vs one generate per answer): {t_slow / t_fast:.2f}x")


if __name__ == "__main__":
    main()
