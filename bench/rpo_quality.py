"""RPO quality: build pairs on squad-dev train -> SetDPOTrainer -> Recall@1/5/10 on squad-dev test and hotpotqa.

    python bench/rpo_quality.py --recipe minimal --judge answer_hit --train_queries 1500

Prints a JSON line per evaluated model and, last, the relative Recall@1 change on squad-dev test.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl_bporag import DenseIndex, Retriever, SetDPOConfig, SetDPOTrainer, load_beir, load_retriever  # noqa: E402
from trl_bporag.hardware import describe_hardware  # noqa: E402
from trl_bporag.metrics import recall_at_k  # noqa: E402
from trl_bporag.preferences import RetrievalPreferenceBuilder  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def recall(model, name, split, index_dir=None):
    data = load_beir(DATA / name, split)
    r = Retriever(model)
    index = DenseIndex.cached(r, data.corpus, index_dir=index_dir)
    _, ids = index.search_ids(r.encode_queries(data.split.questions), 10)
    return {f"R@{k}": round(recall_at_k(ids, data.split.gold_ids, k), 4) for k in (1, 5, 10)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train_queries", type=int, default=1500)
    p.add_argument("--recipe", default="minimal")
    p.add_argument("--judge", default="answer_hit")
    p.add_argument("--num_perturbations", type=int, default=8)
    p.add_argument("--pairing", default="vs_original")
    p.add_argument("--max_pairs_per_query", type=int, default=None)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--loss_type", default="sigmoid", help="comma-separated, e.g. sigmoid,sft")
    p.add_argument("--loss_weights", default=None, help="comma-separated, one per loss type")
    p.add_argument("--contrastive_scale", type=float, default=20.0)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--position_weights", default=None, help="comma-separated w_1..w_k")
    p.add_argument("--bf16", action="store_true", help="force bf16 autocast (default: where the CPU computes it natively)")
    p.add_argument("--output_dir", default="runs/bench-rpo")
    p.add_argument("--skip_base", action="store_true")
    p.add_argument("--pairs_dir", default=None, help="reuse pairs built by an earlier run (skips building)")
    p.add_argument("--init_model", default=None,
                   help="start from this retriever (e.g. a tuned one, for an iterative round): it mines the pairs, "
                        "initialises the policy and is the frozen reference")
    args = p.parse_args()
    out = Path(args.output_dir)
    t0 = time.perf_counter()
    base = load_retriever()
    base_results = {}
    if not args.skip_base:
        for name, split in (("squad-dev", "test"), ("hotpotqa-distractor", "test")):
            base_results[name] = recall(base, name, split)
            print(json.dumps({"model": "base", "data": name, **base_results[name]}), flush=True)
    start = load_retriever(args.init_model) if args.init_model else base
    if args.pairs_dir:
        from datasets import load_from_disk

        pairs = load_from_disk(args.pairs_dir)
        stats = json.loads((Path(args.pairs_dir) / "stats.json").read_text())["stats"]
    else:
        train = load_beir(DATA / "squad-dev", "train")
        r = Retriever(start)
        index = DenseIndex.from_corpus(r, train.corpus)
        recipe = args.recipe.split(",") if "," in args.recipe else args.recipe
        builder = RetrievalPreferenceBuilder(r, index, train.corpus, judge=args.judge, k=args.k, perturbations=recipe,
                                             num_perturbations=args.num_perturbations, pairing=args.pairing,
                                             max_pairs_per_query=args.max_pairs_per_query)
        pairs = builder.build(train.split.head(args.train_queries), output_dir=out / "pairs", resume=False)
        stats = builder.describe()["stats"]
    t_pairs = time.perf_counter() - t0
    print(json.dumps({"pairs": len(pairs), **stats, "seconds": round(t_pairs, 1)}), flush=True)
    pw = [float(x) for x in args.position_weights.split(",")] if args.position_weights else None
    weights = [float(x) for x in args.loss_weights.split(",")] if args.loss_weights else None
    cfg = SetDPOConfig(output_dir=str(out / "model"), k=args.k, beta=args.beta, loss_type=args.loss_type.split(","),
                       loss_weights=weights, contrastive_scale=args.contrastive_scale,
                       learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
                       num_train_epochs=args.epochs, logging_steps=10, save_strategy="no", report_to=[],
                       position_weights=pw, bf16=True if args.bf16 else None, use_cpu=True, seed=0, max_passage_length=256)
    policy = load_retriever(args.init_model) if args.init_model else load_retriever()
    trainer = SetDPOTrainer(policy, args=cfg, train_dataset=pairs.shuffle(seed=0))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    print(json.dumps({"train_curve": [(h["step"], round(h.get("loss", h.get("train_loss", float("nan"))), 4), round(h["rewards/accuracies"], 3))
                                      for h in logs]}), flush=True)
    trainer.save_model()
    tuned = trainer.model
    results = {}
    for name, split in (("squad-dev", "test"), ("hotpotqa-distractor", "test")):
        results[name] = recall(tuned, name, split)
        print(json.dumps({"model": "rpo", "data": name, **results[name], "args": vars(args)}), flush=True)
    print(f"total seconds {time.perf_counter() - t0:.0f}")
    if not base_results:  # --skip_base: measure the base model's squad R@1 now, for the ratio
        base_results["squad-dev"] = recall(base, "squad-dev", "test")
    r1 = base_results["squad-dev"]["R@1"]
    print(f"machine: {describe_hardware()}")
    print(f"squad-dev test R@1 relative change vs base {r1:.3f}: {results['squad-dev']['R@1'] / r1 - 1:+.3f}")


if __name__ == "__main__":
    main()
