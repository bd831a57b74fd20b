"""RPO training memory and time per step, uncached against GradCache (``SetDPOConfig.mini_batch_size``).

    python examples/build_rpo_pairs.py --dataset ../shared/data/squad-dev --split train --judge answer_hit \
        --max_queries 1500 --num_perturbations 8 --pairing listwise --output_dir runs/readme/rpo-pairs
    python bench/rpo_memory.py --pairs_dir runs/readme/rpo-pairs --configs 16:none,16:32,64:32

Each ``batch:mini_batch_size`` configuration (``none``: uncached) trains the README's Stage-1 recipe (all-MiniLM-L6-v2,
listwise reference-free set DPO, β 10, lr 2e-5, passages cut to 256 tokens, compute dtype by the hardware) for one
epoch (or ``--steps`` optimizer steps) in a fresh process of its own, so that each peak resident memory (the process's
high-water mark, ``VmHWM``) is its own. Time per step is the median over the steps after the first. The same rows are
read in the same order by every configuration. Printed last: the time ratio cached / uncached at the first batch
size that has both, and each configuration's peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import PeakRSS, print_machine, rss_bytes

from trl_bporag.monitor import large_allocations_returned, peak_rss_bytes


def worker(args) -> None:
    from datasets import load_from_disk
    from transformers import TrainerCallback

    from trl_bporag import SetDPOConfig, SetDPOTrainer, load_retriever

    pairs = load_from_disk(args.pairs_dir)
    if args.steps:  # else one epoch, as the README's command
        pairs = pairs.select([i % len(pairs) for i in range(args.batch * args.steps)])  # seed 0: the same batches

    class StepTimes(TrainerCallback):
        """Each step's time, and the process's resident memory after it and its high-water mark so far: where in
        the epoch the peak is reached (one large batch, or a creep over the steps)."""

        def __init__(self):
            self.times, self.start, self.rss, self.high = [], None, [], []

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)
            self.rss.append(round(rss_bytes() / 2**30, 2))
            self.high.append(round(peak_rss_bytes() / 2**30, 2))
            print(f"step {len(self.times)}: {self.times[-1]:.2f} s, rss {self.rss[-1]} GiB, high-water "
                  f"{self.high[-1]} GiB", file=sys.stderr, flush=True)

    with PeakRSS() as mem, large_allocations_returned():  # as examples/rpo.py trains
        config = SetDPOConfig(output_dir=str(Path(args.out) / "model"), reference="free", beta=10.0,
                              learning_rate=2e-5, per_device_train_batch_size=args.batch, max_steps=args.steps or -1, num_train_epochs=1,
                              mini_batch_size=args.mini_batch_size, max_passage_length=256, save_strategy="no",
                              report_to="none", logging_steps=1000, seed=0, disable_tqdm=True,
                              dataloader_drop_last=True)
        timer = StepTimes()
        trainer = SetDPOTrainer(load_retriever(), args=config, train_dataset=pairs, callbacks=[timer])
        trainer.train()
    loss = next(h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h)
    print(json.dumps({"batch": args.batch, "mini_batch_size": args.mini_batch_size, "steps": len(timer.times),
                      "step_s": [round(t, 2) for t in timer.times], "rss_after_step_gib": timer.rss,
                      "high_water_after_step_gib": timer.high,
                      "median_step_s": round(statistics.median(timer.times[1:] or timer.times), 2),
                      "peak_rss_gib": round(mem.peak / 2**30, 2), "peak_resettable": mem.resettable,
                      "train_loss": round(loss, 5), "bf16": bool(config.bf16)}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs_dir", default="runs/readme/rpo-pairs")
    p.add_argument("--configs", default="16:none,16:32,64:32", help="comma-separated batch:mini_batch_size")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps per configuration (0: one epoch)")
    p.add_argument("--out", default="runs/bench-rpo-memory")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--mini_batch_size", type=lambda v: None if v == "none" else int(v), default=None,
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for spec in args.configs.split(","):
        batch, mbs = spec.split(":")
        cmd = [sys.executable, __file__, "--worker", "--pairs_dir", args.pairs_dir, "--steps", str(args.steps),
               "--out", args.out, "--batch", batch, "--mini_batch_size", mbs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(json.dumps({"batch": int(batch), "mini_batch_size": mbs, "error": proc.stderr[-800:]}), flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| batch | mini_batch_size | s / step (median) | peak RSS GiB | train loss |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['mini_batch_size'] or 'none (uncached)'} | {r['median_step_s']} | "
              f"{r['peak_rss_gib']} | {r['train_loss']} |")
    print_machine()
    for batch in dict.fromkeys(r["batch"] for r in rows):
        plain = next((r for r in rows if r["batch"] == batch and r["mini_batch_size"] is None), None)
        for cached in (r for r in rows if r["batch"] == batch and r["mini_batch_size"] is not None):
            if plain:
                print(f"batch {batch}: cached (mini-batch {cached['mini_batch_size']}) / uncached time per step "
                      f"{cached['median_step_s'] / plain['median_step_s']:.2f}x, peak {cached['peak_rss_gib']} vs "
                      f"{plain['peak_rss_gib']} GiB")
    print("peaks: " + ", ".join(f"batch {r['batch']} mini-batch {r['mini_batch_size'] or 'none'}: "
                                f"{r['peak_rss_gib']} GiB" for r in rows))


if __name__ == "__main__":
    main()
