"""What oneDNN's primitive cache costs a bf16 training process on a CPU, and what bounding it saves.

    python bench/onednn_cache.py                  # 200 shapes, oneDNN's default cache (1024) against ours (16)
    python bench/onednn_cache.py --shapes 400 --capacities 1024,64,16

Each capacity runs in a fresh process (torch reads ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` when it is imported): a bf16
linear layer 384 -> 1536 (all-MiniLM-L6-v2's feed-forward), forward and backward on ``--shapes`` batches of 16
sequences whose lengths differ (100, 101, ...), as RPO training meets them. Printed per capacity: the growth of the
process's anonymous resident memory over the loop and the loop's time; last, the default's growth / the bounded
one's and the time ratio bounded / default. Where bf16 is not native the matmuls are emulated (slow) and may not go
through oneDNN's cached primitives at all; the machine line says which.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(shapes: int) -> None:
    import torch
    import torch.nn.functional as F

    def anon_mib() -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("RssAnon"))

    torch.manual_seed(0)
    weight = torch.randn(1536, 384, dtype=torch.bfloat16, requires_grad=True)
    start, t0 = anon_mib(), time.perf_counter()
    for n in range(shapes):
        x = torch.randn(16, 100 + n, 384, dtype=torch.bfloat16, requires_grad=True)
        F.linear(x, weight).sum().backward()
    print(json.dumps({"growth_mib": anon_mib() - start, "seconds": round(time.perf_counter() - t0, 2)}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", type=int, default=200)
    p.add_argument("--capacities", default="1024,16", help="comma-separated; the first is the baseline")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.shapes)
    from _common import print_machine

    print_machine()
    rows = {}
    for capacity in args.capacities.split(","):
        env = dict(os.environ, ONEDNN_PRIMITIVE_CACHE_CAPACITY=capacity)
        out = subprocess.run([sys.executable, __file__, "--worker", "--shapes", str(args.shapes)], env=env,
                             capture_output=True, text=True, check=True)
        rows[capacity] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"capacity {capacity:>5}: +{rows[capacity]['growth_mib']} MiB over {args.shapes} shapes, "
              f"{rows[capacity]['seconds']:.1f} s", flush=True)
    base, *others = args.capacities.split(",")
    for capacity in others:
        grown = max(rows[capacity]["growth_mib"], 1)
        print(f"capacity {base} / {capacity}: memory growth {rows[base]['growth_mib'] / grown:.1f}x; "
              f"time {capacity} / {base}: {rows[capacity]['seconds'] / rows[base]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
