"""Judge throughput: ``answer_likelihood`` (one teacher-forced forward per window and distinct gold answer) against the
paper's ``generator_f1`` (the generator decodes an answer per window), on the same windows.

    python bench/judge_speed.py --queries 16 --num_perturbations 4

Real models: all-MiniLM-L6-v2 (base top-50 on squad-dev train) and SmolLM2-135M-Instruct (bf16). The windows are the
minimal-recipe lists of the first ``--queries`` train questions, as :class:`RetrievalPreferenceBuilder` makes them;
each judge scores every distinct window once (both builders' window cache on). The two judges alternate chunk by
chunk, so load on a shared machine hits both alike. Prints windows/s of each and, last, the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import DATA  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--num_perturbations", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_passage_tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from trl_bporag import DenseIndex, Retriever, load_beir, load_generator, load_retriever
    from trl_bporag.preferences import GENERATOR_JUDGES, RetrievalPreferenceBuilder

    data = load_beir(DATA / "squad-dev", "train")
    split = data.split.head(args.queries)
    r = Retriever(load_retriever(), dtype="bfloat16")
    index = DenseIndex.from_corpus(r, data.corpus)
    gen, tok = load_generator(torch_dtype="bfloat16")
    builders = {judge: RetrievalPreferenceBuilder(r, index, data.corpus, gen, tok, judge=judge, k=5,
                                                  num_perturbations=args.num_perturbations,
                                                  max_passage_tokens=args.max_passage_tokens,
                                                  batch_size=args.batch_size)
                for judge in GENERATOR_JUDGES}
    _, rows = index.search(r.encode_queries(split.questions), 50)
    seconds = dict.fromkeys(builders, 0.0)
    windows = 0
    for start in range(0, len(split.ids), args.chunk):
        q, a, w, keys = [], [], [], []
        for pos in range(start, min(start + args.chunk, len(split.ids))):
            ranked = [int(x) for x in rows[pos]]
            for _, lst in builders["generator_f1"].candidate_lists(split.ids[pos], ranked, []):
                key = (pos, frozenset(lst[:5]))
                if key not in keys:
                    q.append(split.questions[pos])
                    a.append(split.answers[pos])
                    w.append(lst[:5])
                    keys.append(key)
        windows += len(w)
        for judge, builder in builders.items():
            t = time.perf_counter()
            builder.judge_windows(q, a, w, keys)
            seconds[judge] += time.perf_counter() - t
    rates = {judge: windows / s for judge, s in seconds.items()}
    for judge in builders:
        print(f"{judge}: {windows} windows in {seconds[judge]:.1f} s = {rates[judge]:.2f} windows/s")
    print(f"answer_likelihood / generator_f1 windows per second: {rates['answer_likelihood'] / rates['generator_f1']:.2f}x")


if __name__ == "__main__":
    main()
