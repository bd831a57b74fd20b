"""Which zero-shot prompt should the vanilla row use? The base retriever + base generator on squad-dev *dev* questions
(never test), one row per prompt (a system prompt, optionally an answer prefix the reply starts with), EM/F1 with the
paired bootstrap 95% CI of the difference from the default prompt.

    python bench/prompt_choice.py --queries 100

Same questions, passages (top 5, cut to ``--max_passage_tokens``) and greedy decoding for every prompt; only the
prompt differs. Prints a markdown table and, last, the prompt with the best F1.
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import DATA, print_machine

from trl_bporag import DenseIndex, RAGPipeline, Retriever, load_beir, load_generator
from trl_bporag.generation import DEFAULT_SYSTEM_PROMPT, QUOTED_ANSWER_PREFIX
from trl_bporag.metrics import paired_bootstrap_ci

ONE_SHOT = "\n\nExample:\nQuestion: In what year did the Eiffel Tower open?\nAnswer: 1889"
EXTRACT = "Extract the answer span from the passages. Output only the span (1 to 5 words)."
# name: (system prompt, answer prefix)
PROMPTS = {
    "default": (DEFAULT_SYSTEM_PROMPT, None),
    "copy-phrase": ("Answer the question with a short phrase copied from the passages. Do not write a sentence.", None),
    "extract-span": (EXTRACT, None),
    "default+1shot": (DEFAULT_SYSTEM_PROMPT + ONE_SHOT, None),
    "extract-span+1shot": (EXTRACT + ONE_SHOT, None),
    "default+quoted": (DEFAULT_SYSTEM_PROMPT, QUOTED_ANSWER_PREFIX),
    "extract-span+quoted": (EXTRACT, QUOTED_ANSWER_PREFIX),
    "default+answer-colon": (DEFAULT_SYSTEM_PROMPT, "Answer:"),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--max_passage_tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_beir(DATA / "squad-dev", "dev")
    split = data.split.head(args.queries)
    r = Retriever()
    index = DenseIndex.cached(r, data.corpus)
    gen, tok = load_generator()
    per, rows = {}, []
    for name, (system, prefix) in PROMPTS.items():
        pipe = RAGPipeline(r, index, data.corpus, gen, tok, k=5, max_new_tokens=24,
                           max_passage_tokens=args.max_passage_tokens, system_prompt=system, answer_prefix=prefix)
        res = pipe.evaluate(split, ks=(5,), progress=name, return_predictions=True)
        per[name] = res["per_query"]
        row = {"prompt": name, "exact_match": round(res["metrics"]["exact_match"], 4),
               "f1": round(res["metrics"]["f1"], 4),
               "mean_words": round(sum(len(x["prediction"].split()) for x in res["predictions"]) / len(split), 1)}
        if name != "default":
            for m in ("exact_match", "f1"):
                ci = paired_bootstrap_ci(per[name][m], per["default"][m])
                row[f"{m}_diff"] = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| prompt | EM | F1 | words/answer | EM vs default [95% CI] | F1 vs default [95% CI] |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['prompt']} | {row['exact_match']:.3f} | {row['f1']:.3f} | {row['mean_words']} | "
              f"{row.get('exact_match_diff', '-')} | {row.get('f1_diff', '-')} |")
    best = max(rows, key=lambda x: x["f1"])
    print_machine()
    print(f"\nbest F1 on {len(split)} dev questions: {best['prompt']} ({best['f1']:.3f})")


if __name__ == "__main__":
    main()
