"""What the generator stages cost on a CPU with a given generator (issue 35, item 7): SFT steps, GPO pair building and
GPO training steps, each with its peak resident memory, in one fresh process per generator.

    python bench/reader_cost.py                                  # the reader and SmolLM2, the same rows and settings
    python bench/reader_cost.py --generators reader --questions 8 --max_passage_tokens 256 --max_length 1536

Rows: squad-dev train questions 1,500 onwards (the GPO questions of the full-scale command) under all-MiniLM-L6-v2's
top 5, the default prompt with passages cut to ``--max_passage_tokens``; ``--max_length`` is the SFT / DPO
``max_length`` (what holds five such passages and the answer). SFT: ``trl-bporag sft``'s main (``GoldSFTConfig``, the
GPO LoRA on the last 6 layers) for ``--questions`` steps. GPO pairs: ``GenerationPreferenceBuilder`` on the same
questions with the default recipe (greedy + ``--num_samples`` seeded samples, best vs worst F1). GPO: ``GPOTrainer``
(``GPOConfig``: reference log-probabilities precomputed, batch 1) on those pairs. Prints one JSON line per generator
(seconds per SFT step and per GPO step after the first, seconds per question of the pair builder, the reference pass
per pair, and the peak RSS of each block), the machine, and last the ratio reader / SmolLM2 of each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA  # noqa: E402
from lm_head import _timer, _with_timer  # noqa: E402

from trl_bporag import DEFAULT_GENERATOR  # noqa: E402
from trl_bporag.packaged import READER  # noqa: E402

GENERATORS = {"reader": READER, "smollm2": DEFAULT_GENERATOR}


def worker(args) -> None:
    import torch
    from datasets import Dataset
    from trl import ModelConfig

    import trl_bporag.scripts.sft as sft
    from trl_bporag import DenseIndex, Retriever, load_beir, load_generator
    from trl_bporag.hardware import describe_hardware
    from trl_bporag.monitor import PeakRSS
    from trl_bporag.preferences import GenerationPreferenceBuilder
    from trl_bporag.scripts.gpo import MODEL_DEFAULTS
    from trl_bporag.settings import RAGSettings
    from trl_bporag.trainers import GPOConfig, GPOTrainer, gpo_lora_config
    from trl_bporag.trainers.sft import GoldSFTConfig

    torch.set_num_threads(args.threads)
    generator = GENERATORS[args.generator]
    settings = RAGSettings(max_passage_tokens=args.max_passage_tokens)
    out = tempfile.mkdtemp()
    result = {"generator": generator, "machine": describe_hardware(), "questions": args.questions,
              "max_passage_tokens": args.max_passage_tokens, "max_length": args.max_length}
    load_generator(generator)  # a packaged copy is converted before anything is timed

    timer = _timer()
    sft.SFTTrainer = _with_timer(sft.SFTTrainer, timer)
    with PeakRSS() as peak:
        sft.main(sft.SFTScriptArguments(dataset=str(DATA / "squad-dev"), max_queries=args.questions,
                                        query_offset=1500),
                 GoldSFTConfig(output_dir=f"{out}/sft", max_steps=args.questions, logging_steps=1000,
                               disable_tqdm=True, max_length=args.max_length),
                 ModelConfig(model_name_or_path=generator, **MODEL_DEFAULTS), settings)
    result["sft"] = {"s_per_step": round(statistics.median(timer.times[1:]), 2), "steps": len(timer.times),
                     "peak_gib": round(peak.peak / 2**30, 2)}

    data = load_beir(DATA / "squad-dev", "train")
    split = data.split.slice(1500).head(args.questions)
    r = Retriever()
    model, tok = load_generator(generator)
    builder = GenerationPreferenceBuilder(r, DenseIndex.cached(r, data.corpus), data.corpus, model, tok,
                                          settings=settings, num_samples=args.num_samples, max_length=args.max_length,
                                          seed=0)
    with PeakRSS() as peak:
        pairs = builder.build(split)
    result["gpo_pairs"] = {"s_per_question": round(peak.seconds / len(split), 2), "pairs": len(pairs),
                           "generations": len(split) * (1 + args.num_samples), "peak_gib": round(peak.peak / 2**30, 2)}
    if len(pairs) < 2:  # too few non-tie pairs to time steps: rows of the same shape (gold vs another gold)
        rows = builder.sft_rows(split)
        pairs = Dataset.from_list([{"prompt": row["prompt"], "chosen": row["completion"],
                                    "rejected": rows[(i + 1) % len(rows)]["completion"]}
                                   for i, row in enumerate(rows)])
    timer = _timer()
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        trainer = _with_timer(GPOTrainer, timer)(
            model=model, args=GPOConfig(output_dir=f"{out}/gpo", num_train_epochs=1, logging_steps=1000, seed=0,
                                        disable_tqdm=True, max_length=args.max_length),
            train_dataset=pairs, processing_class=tok, peft_config=gpo_lora_config(16, 32, 6, model=model),
            bporag_config={"retriever": "bench", "k": settings.k})
        reference = time.perf_counter() - t0
        trainer.train()
    result["gpo"] = {"s_per_step": round(statistics.median(timer.times[1:]), 2), "steps": len(timer.times),
                     "reference_s_per_pair": round(reference / len(pairs), 2), "peak_gib": round(peak.peak / 2**30, 2)}
    print(json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--generators", default="reader,smollm2")
    p.add_argument("--questions", type=int, default=8, help="SFT steps and GPO pair questions")
    p.add_argument("--num_samples", type=int, default=7)
    p.add_argument("--max_passage_tokens", type=int, default=256)
    p.add_argument("--max_length", type=int, default=1536)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--generator", default="reader", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    results = {}
    for tag in args.generators.split(","):
        cmd = [sys.executable, __file__, "--worker", "--generator", tag] + [
            f"--{k}={getattr(args, k)}" for k in ("questions", "num_samples", "max_passage_tokens", "max_length",
                                                  "threads")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                              env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
        if proc.returncode != 0:
            sys.exit(f"{tag}: {proc.stderr[-3000:]}")
        results[tag] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[tag]), flush=True)
    print(f"machine: {next(iter(results.values()))['machine']}")
    if {"reader", "smollm2"} <= set(results):
        a, b = results["reader"], results["smollm2"]
        print("reader / SmolLM2: " + ", ".join(
            f"{stage} {key} {a[stage][key] / b[stage][key]:.2f}x"
            for stage, key in (("sft", "s_per_step"), ("gpo_pairs", "s_per_question"), ("gpo", "s_per_step"),
                               ("sft", "peak_gib"), ("gpo", "peak_gib"))))


if __name__ == "__main__":
    main()
