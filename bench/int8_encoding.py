"""Cheaper corpus encoding where bf16 is not native (issue 22): PyTorch dynamic int8 against float32 (and bf16).

    python bench/int8_encoding.py                     # this CPU as it is
    python bench/int8_encoding.py --emulate_avx2      # as on an AVX2-only CPU (torch, oneDNN, MKL capped at AVX2)

The issue asks whether an int8 encoder would bring the AVX2-only main command within budget, "if recall stays within
0.005 on the full squad-dev test split". sentence-transformers' ONNX / OpenVINO backends need ``optimum-onnx`` /
``optimum-intel``, which require transformers < 4.58 (this stack runs transformers 5), so the int8 path measured here
is PyTorch's own dynamic quantisation (``torch.ao.quantization.quantize_dynamic``: every ``nn.Linear`` of
all-MiniLM-L6-v2 with int8 weights, activations quantised per batch; PyTorch marks the qint8 tensor functions
deprecated). Each variant encodes the whole squad-dev test corpus and its 1,589 questions (``encode_document`` /
``encode_query``, batch 64); the corpus encoding is timed. Printed per variant: passages/s, Recall@1/5/10, and against
float32 the per-question paired bootstrap CI of each recall difference and the largest difference; the speed-ups
(float32 s / variant s) last.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--emulate_avx2", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max_passages", type=int, default=None, help="a smoke run: 50 questions, N passages")
    p.add_argument("--output", default=None, help="write the summary (and per-question hits) to this JSON file")
    args = p.parse_args()
    if args.emulate_avx2 and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":  # the caps must be set before torch
        env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
        sys.exit(subprocess.run([sys.executable, *sys.argv], env=env).returncode)

    import numpy as np
    import torch
    from _common import DATA, print_machine

    from trl_bporag import Corpus, Retriever, load_beir
    from trl_bporag.hardware import bf16_native
    from trl_bporag.metrics import paired_bootstrap_ci, per_query_metrics
    from trl_bporag.models import load_retriever

    torch.set_num_threads(args.threads)
    print_machine()
    data = load_beir(DATA / "squad-dev", "test")
    corpus, split = data.corpus, data.split
    if args.max_passages:  # smoke run: the first 50 questions, their gold passages and the first N others
        split = split.head(50)
        keep = set(corpus.ids[:args.max_passages]) | {g for gold in split.gold_ids for g in gold}
        rows = [i for i, pid in enumerate(corpus.ids) if pid in keep]
        corpus = Corpus([corpus.ids[i] for i in rows], [corpus.titles[i] for i in rows],
                        [corpus.texts[i] for i in rows])
    base = load_retriever("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    variants = {"float32": (base, "float32")}
    if bf16_native("cpu"):
        variants["bfloat16"] = (base, "bfloat16")
    from torch.ao.quantization import quantize_dynamic

    variants["int8"] = (quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8), "float32")
    texts = corpus.passages(True)
    results, hits = {}, {}
    for name, (model, dtype) in variants.items():
        r = Retriever(model, dtype=dtype)
        r.encode_passages(texts[:64])  # warm-up
        t0 = time.perf_counter()
        emb = r.encode_passages(texts)
        seconds = time.perf_counter() - t0
        q = r.encode_queries(list(split.questions))
        top = np.argsort(-(q @ emb.T), axis=1)[:, :10]
        ranked = [[corpus.ids[j] for j in row] for row in top]
        hits[name] = per_query_metrics(ranked, split.gold_ids, ks=(1, 5, 10))
        results[name] = {"passages": len(texts), "seconds": round(seconds, 1),
                         "passages_per_s": round(len(texts) / seconds, 1),
                         **{k: round(float(np.mean(v)), 4) for k, v in hits[name].items()}}
        print(json.dumps({name: results[name]}), flush=True)
    for name in results:
        if name == "float32":
            continue
        for metric, values in hits[name].items():
            ci = paired_bootstrap_ci(values, hits["float32"][metric], n_resamples=1000, seed=0)
            results[name][f"{metric} vs float32"] = [round(ci["diff"], 4), round(ci["low"], 4), round(ci["high"], 4)]
        results[name]["speedup"] = round(results["float32"]["seconds"] / results[name]["seconds"], 2)
        print(json.dumps({f"{name} vs float32": {k: v for k, v in results[name].items() if "vs" in k}}), flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"results": results, "ids": list(split.ids), "hits": hits}))
    print("speed-up of the corpus encoding against float32: " +
          ", ".join(f"{n} {results[n]['speedup']}x" for n in results if n != "float32"))


if __name__ == "__main__":
    main()
