"""Answers that end at the answer prefix's closing quote: generation with and without the early stop.

    python bench/early_stop.py --queries 24 --generator HuggingFaceTB/SmolLM2-135M-Instruct

With the answer prefix (``The answer is "``) every answer is cut at its closing ``"`` (``clean_answer``). Handing the
same stop to ``model.generate`` (``stop_strings``) ends a row there, and a batch when its last row has answered,
instead of always running ``max_new_tokens`` steps. Both ways must give the same answers: the seeded samples draw
from per-row, per-step random streams, so what comes before the stop does not depend on when the other rows end.

Timed on real models (all-MiniLM-L6-v2 top-5 of squad-dev train questions, SmolLM2-135M-Instruct or ``--generator``):
the GPO pair builder's candidates (``generate_candidates``: greedy + ``--num_samples`` seeded samples) and the
evaluation's greedy answers (``generate``), each with and without the stop, alternating chunk by chunk. Prints
whether the answers are equal and the speed-ups (without / with) last.
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import torch
from _common import DATA, print_machine

from trl_bporag import DenseIndex, Retriever, load_beir, load_generator
from trl_bporag import generation as G
from trl_bporag.generation import build_prompt, generate, generate_candidates

PREFIX = 'The answer is "'


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=24)
    p.add_argument("--offset", type=int, default=1500, help="first train question (the GPO questions start here)")
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--num_samples", type=int, default=7)
    p.add_argument("--generator", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    data = load_beir(DATA / "squad-dev", "train")
    split = data.split
    questions = list(split.questions[args.offset:args.offset + args.queries])
    r = Retriever()
    _, rows = DenseIndex.cached(r, data.corpus).search(r.encode_queries(questions), 5)
    gen, tok = load_generator(args.generator)
    prompts = [build_prompt(tok, q, [data.corpus.passage(int(i), True) for i in row], 96, answer_prefix=PREFIX)
               for q, row in zip(questions, rows)]
    seeds = list(range(len(prompts)))
    off = mock.patch.object(G, "_stop_kwargs", lambda *a, **k: {})
    jobs = {
        "candidates": lambda ps, ss: generate_candidates(gen, tok, ps, sample_seeds=ss, num_samples=args.num_samples,
                                                         temperature=1.0, top_p=0.95, max_new_tokens=24, stop='"'),
        "greedy": lambda ps, ss: generate(gen, tok, ps, max_new_tokens=24, stop='"'),
    }
    summary = {}
    for name, job in jobs.items():
        seconds = {"stop": 0.0, "no_stop": 0.0}
        answers = {"stop": [], "no_stop": []}
        for start in range(0, len(prompts), args.chunk):
            ps, ss = prompts[start:start + args.chunk], seeds[start:start + args.chunk]
            for variant in ("no_stop", "stop") if (start // args.chunk) % 2 == 0 else ("stop", "no_stop"):
                t0 = time.perf_counter()
                if variant == "no_stop":
                    with off:
                        out = job(ps, ss)
                else:
                    out = job(ps, ss)
                seconds[variant] += time.perf_counter() - t0
                answers[variant].append(out)
        same = answers["stop"] == answers["no_stop"]
        summary[name] = {"prompts": len(prompts), "seconds_no_stop": round(seconds["no_stop"], 1),
                         "seconds_stop": round(seconds["stop"], 1), "same_answers": same,
                         "speedup": round(seconds["no_stop"] / seconds["stop"], 2)}
        print(json.dumps({name: summary[name]}), flush=True)
    print(f"speed-up with the early stop (no stop / stop): candidates {summary['candidates']['speedup']}x, "
          f"greedy {summary['greedy']['speedup']}x; answers equal: "
          f"{summary['candidates']['same_answers'] and summary['greedy']['same_answers']}")


if __name__ == "__main__":
    main()
