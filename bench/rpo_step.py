"""RPO train-step time: SetDPOTrainer's loss path vs a naive set-DPO step and vs a forward+backward floor.

    python bench/rpo_step.py                                  # table over k (5, 10, 20) and batch size
    python bench/rpo_step.py --configs 5x16 --steps 5         # one configuration

Real all-MiniLM-L6-v2 and real RPO pairs: the builder's ``minimal`` recipe (``swap_one`` / ``drop_one``, 8 per query,
judge ``answer_hit``; the recipe of the saved benchmark pairs) on the first ``--queries`` squad-dev train questions,
built for each k (lists of k passages). Three steps are timed on the same batches, from the same initial weights, each
with its own AdamW optimiser, interleaved step by step so that load on a shared machine hits all three alike:

* ours  -- ``SetDPOTrainer.compute_loss`` with ``precompute_ref_scores=True`` (no reference forward) and
  ``skip_shared_passages=True`` (passages in both windows of a pair cancel in the margin and are not encoded;
  the others are encoded once per batch);
* naive -- the same loss with the chosen and the rejected lists encoded separately (every list entry, duplicates
  included) for the policy and again for a live frozen reference copy;
* floor -- one forward+backward of the encoder over the batch's unique texts (queries and the union of the chosen and
  rejected passages) with a trivial loss, then the optimiser step: what any exact set-DPO step has to pay if it
  encodes every distinct passage once.

Each timed step is forward + backward + ``optimizer.step()``; the figure is the median over ``--steps`` steps after
``--warmup``. The losses of ours and naive must agree at every step (same weights, same maths). Peak memory of each
step is the kernel's resident high-water mark over that step (reset before it), minus the resident size at its start.
The last line is ours/naive and ours/floor for the first configuration.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import DATA, PeakRSS, mb, median, print_machine  # noqa: E402
from baselines import naive_scorer  # noqa: E402


def build_pairs(retriever, k: int, queries: int, recipe: str, num_perturbations: int):
    from trl_bporag import DenseIndex, load_beir
    from trl_bporag.preferences import RetrievalPreferenceBuilder

    data = load_beir(DATA / "squad-dev", "train")
    index = DenseIndex.cached(retriever, data.corpus)
    builder = RetrievalPreferenceBuilder(retriever, index, data.corpus, judge="answer_hit", k=k,
                                         perturbations=recipe, num_perturbations=num_perturbations)
    return builder.build(data.split.head(queries))


def make_trainer(model, pairs, k, batch_size, naive: bool, bf16: bool, out: str):
    from trl_bporag import SetDPOConfig, SetDPOTrainer

    cfg = SetDPOConfig(
        output_dir=out, k=k, beta=10.0, loss_type=["sigmoid"], per_device_train_batch_size=batch_size,
        precompute_ref_scores=not naive, skip_shared_passages=not naive, bf16=bf16, use_cpu=True,
        report_to="none", save_strategy="no", seed=0, disable_tqdm=True,
    )
    trainer = SetDPOTrainer(model, args=cfg, train_dataset=pairs)
    if naive:
        trainer.scorer = naive_scorer(trainer)  # encode every list entry: chosen and rejected separately
    return trainer


def run_config(base, pairs, k, batch_size, args, with_naive: bool):
    from trl.trainer.utils import disable_dropout_in_model

    tmp = tempfile.mkdtemp(prefix="rpo-step-")
    n_batches = args.warmup + args.steps
    rows = list(range(n_batches * batch_size))
    if len(pairs) < len(rows):
        raise SystemExit(f"only {len(pairs)} pairs for k={k}: raise --queries")
    pairs = pairs.select(rows)

    t = time.perf_counter()
    ours = make_trainer(copy.deepcopy(base), pairs, k, batch_size, naive=False, bf16=args.bf16, out=tmp)
    precompute_s = time.perf_counter() - t
    variants = {"ours": ours}
    if with_naive:
        variants["naive"] = make_trainer(copy.deepcopy(base), pairs, k, batch_size, naive=True, bf16=args.bf16,
                                         out=tmp)
    floor_model = copy.deepcopy(base)
    disable_dropout_in_model(floor_model)

    def batches(trainer):
        ds = trainer.train_dataset
        return [trainer.data_collator([ds[i] for i in range(b * batch_size, (b + 1) * batch_size)])
                for b in range(n_batches)]

    inputs = {name: batches(tr) for name, tr in variants.items()}
    inputs["floor"] = inputs["ours"]
    models = {name: tr.model for name, tr in variants.items()}
    models["floor"] = floor_model
    # the trainer's default optimiser (SetDPOConfig.optim = adamw_torch_fused), one per variant
    opts = {name: torch.optim.AdamW(m.parameters(), lr=2e-5, fused=True) for name, m in models.items()}

    def floor_loss(batch):
        chosen = [c[:k] for c in batch["chosen"]]
        rejected = [r[:k] for r in batch["rejected"]]
        queries = list(dict.fromkeys(batch["prompt"]))
        passages = list(dict.fromkeys(t for lst in chosen + rejected for t in lst))
        q = ours.scorer.encode(floor_model, queries, "query")
        p = ours.scorer.encode(floor_model, passages, "document")
        return q.mean() + p.mean(), len(queries) + len(passages)

    times = {name: [] for name in models}
    peaks = {name: [] for name in models}
    losses = {name: [] for name in models}
    encoded = {}
    for step in range(n_batches):
        for name, model in models.items():
            model.train()
            batch = inputs[name][step]
            trainer = variants.get(name, ours)
            with PeakRSS() as mem:
                t = time.perf_counter()
                with trainer.compute_loss_context_manager():
                    if name == "floor":
                        loss, n_texts = floor_loss(batch)
                        encoded["floor"] = n_texts
                    else:
                        loss = trainer.compute_loss(model, batch)
                loss.backward()
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
                dt = time.perf_counter() - t
            if step >= args.warmup:
                times[name].append(dt)
                peaks[name].append(mem.delta)
            losses[name].append(float(loss.detach()))

    # texts encoded per step by ours / naive (policy + reference)
    b0 = inputs["ours"][0]
    c = [x[:k] for x in b0["chosen"]]
    r = [x[:k] for x in b0["rejected"]]
    shared = [set(a) & set(b) for a, b in zip(c, r)]
    uq = len(set(b0["prompt"]))
    encoded["ours"] = uq + len({t for lst, sh in zip(c + r, shared + shared) for t in lst if t not in sh})
    if with_naive:
        encoded["naive"] = 2 * (uq + 2 * k * batch_size)

    result = {"k": k, "batch": batch_size, "precompute_ref_s": round(precompute_s, 1)}
    for name in models:
        result[f"{name}_s"] = round(median(times[name]), 3)
        result[f"{name}_peak_mb"] = mb(max(peaks[name]))
        result[f"{name}_texts"] = encoded[name]
    if with_naive:
        diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["naive"]))
        result["max_loss_diff"] = float(f"{diff:.2e}")
        result["losses_equal"] = bool(diff <= args.tol)
        result["ours/naive"] = round(result["ours_s"] / result["naive_s"], 3)
    result["ours/floor"] = round(result["ours_s"] / result["floor_s"], 3)
    result["losses_ours"] = [round(x, 5) for x in losses["ours"]]
    return result


def profile_step(base, pairs, k, batch_size, args):
    """torch.profiler over one warm step of ours: the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    pairs = pairs.select(range(2 * batch_size))
    trainer = make_trainer(copy.deepcopy(base), pairs, k, batch_size, naive=False, bf16=args.bf16,
                           out=tempfile.mkdtemp(prefix="rpo-prof-"))
    ds = trainer.train_dataset
    opt = torch.optim.AdamW(trainer.model.parameters(), lr=2e-5, fused=True)
    batches = [trainer.data_collator([ds[i] for i in range(b * batch_size, (b + 1) * batch_size)]) for b in range(2)]

    def step(batch):
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    trainer.model.train()
    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batches[1])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="5x16,10x8,20x8,5x4,5x8,5x32",
                   help="comma-separated KxBATCH; the first one is the headline")
    p.add_argument("--queries", type=int, default=300, help="squad-dev train questions to build pairs from")
    p.add_argument("--recipe", default="minimal")
    p.add_argument("--num_perturbations", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--naive_max_passages", type=int, default=200,
                   help="skip the naive variant where 2*k*batch exceeds this (its steps get long on a CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32, for the loss-equality check)")
    p.add_argument("--tol", type=float, default=1e-4, help="max |loss_ours - loss_naive| accepted")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops for one step of ours")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from trl_bporag import Retriever, load_retriever

    base = load_retriever("sentence-transformers/all-MiniLM-L6-v2")
    retriever = Retriever(base)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    pairs_by_k = {}
    for k in dict.fromkeys(k for k, _ in configs):
        t = time.perf_counter()
        pairs_by_k[k] = build_pairs(retriever, k, args.queries, args.recipe, args.num_perturbations)
        print(json.dumps({"pairs_k": k, "pairs": len(pairs_by_k[k]), "build_s": round(time.perf_counter() - t, 1)}),
              flush=True)
    if args.profile:
        k, b = configs[0]
        profile_step(base, pairs_by_k[k], k, b, args)

    results = []
    for k, b in configs:
        res = run_config(base, pairs_by_k[k], k, b, args, with_naive=2 * k * b <= args.naive_max_passages)
        results.append(res)
        print(json.dumps(res), flush=True)

    print("\n| k | batch | ours s | floor s | naive s | ours/naive | ours/floor | texts ours/floor/naive | "
          "peak MB ours/floor/naive | loss equal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['k']} | {r['batch']} | {r['ours_s']} | {r['floor_s']} | {r.get('naive_s', '-')} | "
              f"{r.get('ours/naive', '-')} | {r['ours/floor']} | {r['ours_texts']}/{r['floor_texts']}/"
              f"{r.get('naive_texts', '-')} | {r['ours_peak_mb']}/{r['floor_peak_mb']}/{r.get('naive_peak_mb', '-')} "
              f"| {r.get('losses_equal', '-')} |")
    head = results[0]
    ok = head.get("losses_equal")
    print_machine()
    print(f"RPO step k={head['k']} batch={head['batch']}: ours/naive = {head.get('ours/naive', 'n/a')}x, "
          f"ours/floor = {head['ours/floor']}x, losses equal: {ok}")


if __name__ == "__main__":
    main()
