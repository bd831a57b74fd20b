"""Why does the tuned retriever lower hotpotqa F1? (issue 21) Three suspects, measured on all 100 questions.

    python bench/hotpot_analysis.py --rpo_retriever runs/readme/retriever-rpo

For the base and the tuned retriever (the base generator, the best prompt, k = 5) it prints, per question group:

* **order**: where the two gold passages sit in the top 5 (both / one / none retrieved; the first gold passage first or
  not), and the F1 of each retriever within each group;
* **truncation**: answer-hit@5 on the passages as retrieved and as the generator reads them (cut to 96 tokens of the
  generator's tokenizer): an answer beyond the cut is retrieved but never read;
* **F1 with the passages cut to 192 tokens** and **with the gold passages' order swapped**, for both retrievers,
  against each one's 96-token F1 with paired bootstrap CIs: a fix that measures;
* **order noise**: the same top 5 in ``--shuffles`` random orders (seeded per question), each question's F1 averaged
  over the orders, against the retriever's own order: how much any reordering of the same passages moves this
  generator's F1, the yardstick for the group "same top-5 set" below.

One JSON line per measurement; the per-question F1 of every variant is written to ``--output``; variants already
in that file (same question ids, same retriever paths) are read from it, not generated again (delete it to recompute
everything, e.g. after retraining the retriever in the same folder).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, print_machine  # noqa: E402

PREFIX = 'The answer is "'


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rpo_retriever", default="runs/readme/retriever-rpo")
    p.add_argument("--output", default="bench/results/hotpot_analysis.json")
    p.add_argument("--shuffles", type=int, default=3, help="random orders of each top 5 for the order-noise row")
    args = p.parse_args()

    from trl_bporag import DenseIndex, RAGPipeline, Retriever, load_generator, load_rag_dataset
    from trl_bporag.generation import truncate_passage
    from trl_bporag.metrics import has_answer, paired_bootstrap_ci, qa_f1

    data = load_rag_dataset(DATA / "hotpotqa-distractor", "test")
    split = data.split
    gen, tok = load_generator()
    retrievers = {"base": "sentence-transformers/all-MiniLM-L6-v2", "rpo": args.rpo_retriever}
    out: dict = {"ids": list(split.ids), "retrievers": retrievers}
    previous = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    if any(previous.get(key) != out[key] for key in ("ids", "retrievers")):
        previous = {}  # other questions or other retrievers: nothing to reuse
    ranked = {}
    for name, path in retrievers.items():
        r = Retriever(path)
        pipe = RAGPipeline(r, DenseIndex.cached(r, data.corpus), data.corpus, gen, tok, k=5, max_new_tokens=24,
                           max_passage_tokens=96, answer_prefix=PREFIX)
        ids, _ = pipe.retrieve(split.questions, k=5)
        ranked[name] = ids
        variants = {"96": (ids, 96), "192": (ids, 192)}
        swapped = []
        for golds, top in zip(split.gold_ids, ids):
            pos = [i for i, pid in enumerate(top) if pid in golds]
            top = list(top)
            if len(pos) == 2:
                top[pos[0]], top[pos[1]] = top[pos[1]], top[pos[0]]
            swapped.append(top)
        variants["96-gold-order-swapped"] = (swapped, 96)
        for s in range(args.shuffles):
            variants[f"96-shuffled-{s}"] = ([random.Random(f"{s}:{q}").sample(list(top), len(top))
                                            for q, top in zip(split.ids, ids)], 96)
        for variant, (lists, tokens) in variants.items():
            if f"{name}:{variant}" in previous:
                out[f"{name}:{variant}"] = previous[f"{name}:{variant}"]
                continue
            pipe.settings = pipe.settings.replace(max_passage_tokens=tokens)
            answers = pipe.answer(split.questions, lists)
            out[f"{name}:{variant}"] = [qa_f1(a, g) for a, g in zip(answers, split.answers)]
        read = [[truncate_passage(pipe.passages([pid])[0], tok, 96) for pid in top] for top in ids]
        full = [pipe.passages(top) for top in ids]
        out[f"{name}:answer_hit@5"] = [float(any(has_answer(t, g) for t in ps)) for ps, g in zip(full, split.answers)]
        out[f"{name}:answer_read@5"] = [float(any(has_answer(t, g) for t in ps)) for ps, g in zip(read, split.answers)]
        both = [sum(pid in golds for pid in top) for golds, top in zip(split.gold_ids, ids)]
        out[f"{name}:golds_in_top5"] = both
        out[f"{name}:top5"] = [list(top) for top in ids]
        # rank (1-5; 6: none in the top 5) of the first gold passage and of the first passage that reads the answer
        out[f"{name}:first_gold_rank"] = [next((i + 1 for i, pid in enumerate(top) if pid in golds), 6)
                                          for golds, top in zip(split.gold_ids, ids)]
        out[f"{name}:first_answer_rank"] = [next((i + 1 for i, t in enumerate(ps) if has_answer(t, g)), 6)
                                            for ps, g in zip(read, split.answers)]
        if args.shuffles:
            runs = [out[f"{name}:96-shuffled-{s}"] for s in range(args.shuffles)]
            out[f"{name}:96-shuffled"] = [sum(v) / len(v) for v in zip(*runs)]
        print(json.dumps({"retriever": name, "f1@96": round(sum(out[f"{name}:96"]) / 100, 4),
                          "f1@192": round(sum(out[f"{name}:192"]) / 100, 4),
                          "f1@96 gold order swapped": round(sum(out[f"{name}:96-gold-order-swapped"]) / 100, 4),
                          "answer_hit@5": sum(out[f"{name}:answer_hit@5"]) / 100,
                          "answer read@5 (96 tokens)": sum(out[f"{name}:answer_read@5"]) / 100,
                          "mean rank of the first gold": sum(out[f"{name}:first_gold_rank"]) / 100,
                          "mean rank of the first passage with the answer (6: none)":
                              sum(out[f"{name}:first_answer_rank"]) / 100,
                          "both golds in top 5": sum(b == 2 for b in both), "one": sum(b == 1 for b in both),
                          "none": sum(b == 0 for b in both)}), flush=True)

    def ci_of(a, b):
        c = paired_bootstrap_ci(a, b, n_resamples=1000, seed=0)
        return f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"

    def ci(a, b):
        return ci_of(out[a], out[b])

    for a, b in (("rpo:96", "base:96"), ("rpo:192", "base:192"), ("base:192", "base:96"), ("rpo:192", "rpo:96"),
                 ("rpo:96-gold-order-swapped", "rpo:96"), ("base:96-gold-order-swapped", "base:96"),
                 *((f"{r}:96-shuffled", f"{r}:96") for r in ("base", "rpo") if args.shuffles),
                 ("rpo:first_gold_rank", "base:first_gold_rank"),
                 ("rpo:first_answer_rank", "base:first_answer_rank"),
                 ("rpo:answer_read@5", "base:answer_read@5"), ("rpo:answer_hit@5", "base:answer_hit@5")):
        print(json.dumps({"comparison": f"{a} - {b}", "diff [95% CI]": ci(a, b)}), flush=True)
    # F1 by how the top 5 changed: the same gold passages, other gold passages, other order
    groups: dict = {}
    for i, (b, r) in enumerate(zip(ranked["base"], ranked["rpo"])):
        golds = split.gold_ids[i]
        same_set = set(b) == set(r)
        gb, gr = [p for p in b if p in golds], [p for p in r if p in golds]
        key = ("same top-5 set" if same_set else "other top-5 set") + (
            ", same gold order" if gb == gr else ", golds differ or reordered")
        groups.setdefault(key, []).append(i)
    for key, idx in sorted(groups.items()):
        print(json.dumps({"group": key, "questions": len(idx),
                          "base F1": round(sum(out["base:96"][i] for i in idx) / len(idx), 3),
                          "rpo F1": round(sum(out["rpo:96"][i] for i in idx) / len(idx), 3),
                          "rpo - base [95% CI]": ci_of([out["rpo:96"][i] for i in idx],
                                                      [out["base:96"][i] for i in idx])}), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out))
    print_machine()


if __name__ == "__main__":
    main()
