"""GPO training step: time and peak memory of stock TRL ``DPOTrainer`` + LoRA on SmolLM2-135M-Instruct, the old
settings of the main command against the new ones, on the same preference rows.

    python bench/gpo_step.py --pairs 12

Rows: the first ``--pairs`` squad-dev train questions, their top-5 all-MiniLM-L6-v2 passages in the generator's chat
prompt (``GenerationPreferenceBuilder.fit_prompt``), chosen = a gold answer, rejected = another question's gold answer.
Only the lengths matter for speed; the rows have the shape of real GPO pairs.

* old: passages cut to 192 tokens (prompts ~1,000 tokens), ``max_length`` 1024, batch 2 x 2 accumulation, the
  reference pass in every step, LoRA on all linear layers.
* new (``GPOConfig()`` + ``gpo_lora_config()`` with passages cut to 96 tokens): prompts ~600 tokens, batch 1,
  reference log-probabilities precomputed once (timed as part of the run), LoRA on all linear layers.

Both train one epoch over the same questions. Prints seconds per pair, peak RSS of each run and, last, the ratio
old / new of seconds per pair.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import torch
from _common import DATA, PeakRSS, mb, print_machine

from trl_bporag import DenseIndex, Retriever, load_beir, load_generator
from trl_bporag.preferences import GenerationPreferenceBuilder
from trl_bporag.trainers import GPO_MAX_LENGTH, GPOConfig, gpo_lora_config


def rows(n: int, max_passage_tokens: int, max_length: int):
    from datasets import Dataset

    data = load_beir(DATA / "squad-dev", "train")
    split = data.split.head(n)
    r = Retriever()
    index = DenseIndex.cached(r, data.corpus)
    _, tok = load_generator(torch_dtype="float32")
    # the builder is used only for its prompt fitting; it never generates here
    b = GenerationPreferenceBuilder(r, index, data.corpus, object(), tok, k=5, max_passage_tokens=max_passage_tokens,
                                    max_length=max_length, answer_prefix=None)  # conversational rows
    _, top = index.search(r.encode_queries(split.questions), 5)
    out = []
    for i, (q, ranked) in enumerate(zip(split.questions, top)):
        prompt, _, _ = b.fit_prompt(q, [data.corpus.passage(int(j)) for j in ranked])
        wrong = split.answers[(i + 1) % n][0]
        out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": split.answers[i][0]}],
                    "rejected": [{"role": "assistant", "content": wrong}]})
    return Dataset.from_list(out), tok


def run(name: str, dataset, config_kwargs: dict, lora, dtype: str = "float32") -> dict:
    from trl import DPOTrainer

    model, tok = load_generator(torch_dtype=dtype)
    out = tempfile.mkdtemp()
    try:
        config = GPOConfig(output_dir=out, num_train_epochs=1, seed=0, **config_kwargs)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                                 peft_config=lora(model))
            trainer.train()
            seconds = time.perf_counter() - t0
        tokens = [len(tok(tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)["input_ids"]) for row in dataset]
        result = {"run": name, "pairs": len(dataset), "mean_prompt_tokens": round(sum(tokens) / len(tokens)),
                  "seconds": round(seconds, 1), "s_per_pair": round(seconds / len(dataset), 2),
                  "peak_rss_mb": mb(mem.peak), "rss_at_start_mb": mb(mem.start), "final_loss": trainer.state.log_history[-1].get("train_loss")}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max_passage_tokens", type=int, default=96)
    p.add_argument("--top_layers", type=int, default=None, help="LoRA on the last N of the 30 layers only")
    p.add_argument("--dtype", default="float32", help="dtype the generator is loaded in for the new run")
    p.add_argument("--only", choices=["old", "new"], default=None, help="run one side only (its own peak memory)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    new_defaults = {}  # GPOConfig's
    if args.only == "new":
        new_rows, _ = rows(args.pairs, args.max_passage_tokens, GPO_MAX_LENGTH)
        run("new", new_rows, new_defaults, lambda model: gpo_lora_config(top_layers=args.top_layers, model=model),
            args.dtype)
        return
    old_rows, _ = rows(args.pairs, 192, 1024)
    old = run("old", old_rows, {"max_length": 1024, "per_device_train_batch_size": 2, "loss_type": ["sigmoid"],
                                "gradient_accumulation_steps": 2, "learning_rate": 1e-4,
                                "precompute_ref_log_probs": False},
              lambda model: gpo_lora_config(r=16, alpha=32))
    if args.only == "old":
        return
    new_rows, _ = rows(args.pairs, args.max_passage_tokens, GPO_MAX_LENGTH)
    new = run("new", new_rows, new_defaults, lambda model: gpo_lora_config(top_layers=args.top_layers, model=model),
              args.dtype)
    print_machine()
    print(f"GPO seconds per pair, old / new: {old['s_per_pair'] / new['s_per_pair']:.2f}x "
          f"(peak RSS {old['peak_rss_mb']:.0f} -> {new['peak_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
