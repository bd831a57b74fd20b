"""Does a generator's judgement carry a Stage-1 signal that answer containment does not? (issue 35, item 4)

    python bench/judge_agreement.py                       # 50 squad-dev train questions, three judges
    python bench/judge_agreement.py --queries 20 --judges answer_hit,reader

The RPO builder's own candidate lists (the default recipe: base top-50 of all-MiniLM-L6-v2, 8 seeded minimal edits)
of the first ``--queries`` squad-dev *train* questions are judged on their first k = 5 passages by each judge, the
same windows for every judge (same seed):

* ``answer_hit``: answer containment (the recommended recipe's judge, no generator);
* ``reader``: ``generator_f1`` from Qwen2.5-Coder-0.5B-Instruct (the paper's judge, a generator that reads), passages
  cut to 256 tokens;
* ``smollm2``: ``generator_f1`` from SmolLM2-135M-Instruct with the same prompt (the generator that barely reads).

Per judge: seconds per question, the share of questions whose distinct windows all tie (no listwise row: no
training signal), and the mean number of distinct scores per question. Per pair of judges, over the window pairs of a
question that the first judge orders strictly: the share the second orders the same way, ties, or reverses. Per
question scores go to ``bench/results/reader/judges-<queries>.json``. Print order: machine, per-judge lines, agreement
lines, last the reader's seconds per question over answer_hit's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, hardware_summary, print_machine  # noqa: E402

from trl_bporag import DEFAULT_GENERATOR  # noqa: E402
from trl_bporag.packaged import READER  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "reader"
#: judge tag -> (RetrievalPreferenceBuilder judge, generator id or None)
JUDGES = {
    "answer_hit": ("answer_hit", None),
    "reader": ("generator_f1", READER),
    "smollm2": ("generator_f1", DEFAULT_GENERATOR),
}


def judge_all(tag: str, split, retriever, index, corpus, args) -> tuple[list[list[float]], list[list[str]], float]:
    """Per question: the scores of its distinct windows, their names, and the judging wall time."""
    from trl_bporag import load_generator
    from trl_bporag.preferences import RetrievalPreferenceBuilder

    judge, generator = JUDGES[tag]
    gen, tok = load_generator(generator) if generator else (None, None)
    builder = RetrievalPreferenceBuilder(retriever, index, corpus, gen, tok, judge=judge, seed=0,
                                         max_passage_tokens=args.passage_tokens)
    _, rows = index.search(retriever.encode_queries(split.questions), builder.top_n)
    scores, names = [], []
    t0 = time.perf_counter()
    for qid, question, answers, ranked in zip(split.ids, split.questions, split.answers, rows):
        lists, seen = [], set()
        for name, lst in builder.candidate_lists(qid, [int(r) for r in ranked if r >= 0], []):
            window = builder._window_key(lst[: builder.k])  # the builder's own notion of a distinct window
            if window not in seen:
                seen.add(window)
                lists.append((name, lst[: builder.k]))
        s = builder.judge_windows([question] * len(lists), [answers] * len(lists), [w for _, w in lists])
        scores.append([float(x) for x in s])
        names.append([n for n, _ in lists])
    return scores, names, time.perf_counter() - t0


def agreement(a: list[list[float]], b: list[list[float]]) -> dict:
    """Over the window pairs that ``a`` orders strictly: the share ``b`` orders the same way / ties / reverses."""
    same = tie = reverse = 0
    for sa, sb in zip(a, b):
        for i, j in itertools.combinations(range(len(sa)), 2):
            if sa[i] == sa[j]:
                continue
            d = (sa[i] - sa[j]) * (sb[i] - sb[j])
            same, tie, reverse = same + (d > 0), tie + (d == 0), reverse + (d < 0)
    n = same + tie + reverse
    return {"pairs": n, "same": round(same / max(n, 1), 3), "tie": round(tie / max(n, 1), 3),
            "reversed": round(reverse / max(n, 1), 3)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--judges", default=",".join(JUDGES))
    p.add_argument("--passage_tokens", type=int, default=256, help="passage budget of the generator judges")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import numpy as np
    import torch

    from trl_bporag import DenseIndex, Retriever, load_rag_dataset

    torch.set_num_threads(args.threads)
    print_machine()
    tags = [t.strip() for t in args.judges.split(",")]
    unknown = [t for t in tags if t not in JUDGES]
    if unknown:
        raise ValueError(f"--judges: unknown {unknown}; expected names from {sorted(JUDGES)}")
    data = load_rag_dataset(DATA / "squad-dev", "train")
    split = data.split.head(args.queries)
    retriever = Retriever("sentence-transformers/all-MiniLM-L6-v2")
    index = DenseIndex.cached(retriever, data.corpus)
    found, seconds = {}, {}
    for tag in tags:
        scores, names, seconds[tag] = judge_all(tag, split, retriever, index, data.corpus, args)
        found[tag] = scores
        ties = float(np.mean([len(set(s)) < 2 for s in scores]))
        print(json.dumps({"judge": tag, "questions": len(scores), "s_per_question": round(seconds[tag] / len(scores), 2),
                          "all_windows_tie": round(ties, 3),
                          "distinct_scores_per_question": round(float(np.mean([len(set(s)) for s in scores])), 2),
                          "windows_per_question": round(float(np.mean([len(s) for s in scores])), 2)}), flush=True)
    for a, b in itertools.permutations(tags, 2):
        print(json.dumps({"ordered_by": a, "then": b, **agreement(found[a], found[b])}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"judges-{args.queries}.json").write_text(json.dumps({
        "dataset": "squad-dev:train", "ids": list(split.ids), "windows": names, "scores": found,
        "seconds": {t: round(s, 1) for t, s in seconds.items()}, "passage_tokens": args.passage_tokens,
        "generators": {t: JUDGES[t][1] for t in tags}, "hardware": hardware_summary()}))
    if "reader" in seconds and "answer_hit" in seconds:
        print(f"reader / answer_hit seconds per question: {seconds['reader'] / max(seconds['answer_hit'], 1e-9):.0f}x")


if __name__ == "__main__":
    main()
