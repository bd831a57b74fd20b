"""Judge throughput on the same windows: ``answer_likelihood`` (teacher-forced answers on prompts read once into a
shared KV cache), the same judge as it was before (``baselines.padded_answer_log_likelihood``: padded batches of
prompt + answer, every prompt read in full) and the paper's ``generator_f1`` (the generator decodes an answer per
window).

    python bench/judge_speed.py --queries 16 --num_perturbations 8

Real models: all-MiniLM-L6-v2 (base top-50 on squad-dev train) and SmolLM2-135M-Instruct (compute dtype by the
hardware). The windows are the minimal-recipe lists of the first ``--queries`` train questions, as
:class:`RetrievalPreferenceBuilder` makes them; each judge scores every distinct window once (the builders' window
cache on). The judges alternate chunk by chunk, so load on a shared machine hits all alike. Prints windows/s of each,
the largest score difference between the two likelihood paths and, last, the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import DATA, print_machine  # noqa: E402
from baselines import padded_answer_log_likelihood  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--num_perturbations", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_passage_tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from trl_bporag import DenseIndex, Retriever, load_beir, load_generator, load_retriever
    from trl_bporag.preferences import GENERATOR_JUDGES, RetrievalPreferenceBuilder

    data = load_beir(DATA / "squad-dev", "train")
    split = data.split.head(args.queries)
    r = Retriever(load_retriever())
    index = DenseIndex.from_corpus(r, data.corpus)
    gen, tok = load_generator()
    builders = {judge: RetrievalPreferenceBuilder(r, index, data.corpus, gen, tok, judge=judge, k=5,
                                                  num_perturbations=args.num_perturbations,
                                                  max_passage_tokens=args.max_passage_tokens,
                                                  batch_size=args.batch_size)
                for judge in GENERATOR_JUDGES}
    _, rows = index.search(r.encode_queries(split.questions), 50)
    seconds = {**dict.fromkeys(builders, 0.0), "before": 0.0}
    gap = 0.0
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
        scores = {}
        for judge, builder in builders.items():
            t = time.perf_counter()
            scores[judge] = builder.judge_windows(q, a, w, keys)
            seconds[judge] += time.perf_counter() - t
        texts = [[data.corpus.passage(j, True) for j in win] for win in w]
        t = time.perf_counter()
        judge = builders["answer_likelihood"]  # the same prompt as the judge reads (system prompt, answer prefix)
        before = padded_answer_log_likelihood(gen, tok, q, texts, a, args.max_passage_tokens, judge.system_prompt,
                                              batch_size=args.batch_size, answer_prefix=judge.answer_prefix)
        seconds["before"] += time.perf_counter() - t
        gap = max(gap, max(abs(x - y) for x, y in zip(before, scores["answer_likelihood"])))
    rates = {judge: windows / s for judge, s in seconds.items()}
    names = {"answer_likelihood": "answer_likelihood (shared KV cache)",
             "before": "answer_likelihood before (padded batches)", "generator_f1": "generator_f1"}
    for judge in seconds:
        print(f"{names[judge]}: {windows} windows in {seconds[judge]:.1f} s = {rates[judge]:.2f} windows/s")
    print(f"largest |score difference| between the two answer_likelihood paths: {gap:.2e}")
    print_machine()
    print(f"answer_likelihood windows/s: {rates['answer_likelihood'] / rates['before']:.2f}x before, "
          f"{rates['answer_likelihood'] / rates['generator_f1']:.2f}x generator_f1")


if __name__ == "__main__":
    main()
