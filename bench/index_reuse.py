"""Index reuse: a second ``DenseIndex.from_corpus`` (or ``examples/evaluate.py``) run on an unchanged corpus encodes 0
passages.

    python bench/index_reuse.py                         # squad-dev corpus (2,067 passages), in-process
    python bench/index_reuse.py --passages 500          # a subset
    python bench/index_reuse.py --evaluate              # also: examples/evaluate.py --retrieval_only, twice

Each run uses a fresh :class:`Retriever` (its ``num_encoded`` counts the texts run through the encoder) and the same
fresh ``index_dir``; the second run must load the saved index (model and corpus fingerprints match) and return the
same top-10 for the test questions. The last line gives the passages encoded by the first and second runs and the
time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import DATA, print_machine  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default=str(DATA / "squad-dev"))
    p.add_argument("--passages", type=int, default=None, help="use the first N passages of the corpus")
    p.add_argument("--index_type", default="flat")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--evaluate", action="store_true", help="also time examples/evaluate.py --retrieval_only twice")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from trl_bporag import DenseIndex, Retriever, load_beir, load_retriever
    from trl_bporag.data import Corpus

    data = load_beir(args.dataset, "test")
    corpus = data.corpus
    if args.passages:
        n = args.passages
        corpus = Corpus(ids=corpus.ids[:n], titles=corpus.titles[:n], texts=corpus.texts[:n])
    model = load_retriever("sentence-transformers/all-MiniLM-L6-v2")
    index_dir = Path(tempfile.mkdtemp(prefix="index-reuse-")) / "index"
    queries = data.split.questions[:200]

    runs = []
    for run in (1, 2):
        retriever = Retriever(model)  # a fresh retriever: nothing cached in memory
        t = time.perf_counter()
        index = DenseIndex.from_corpus(retriever, corpus, index_dir=index_dir, index_type=args.index_type)
        seconds = time.perf_counter() - t
        encoded = retriever.num_encoded
        _, rows = index.search(retriever.encode_queries(queries), 10)
        runs.append({"run": run, "passages": len(corpus), "passages_encoded": encoded, "seconds": round(seconds, 2),
                     "rows": rows})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "rows"}), flush=True)
    same = bool(np.array_equal(runs[0]["rows"], runs[1]["rows"]))
    print(json.dumps({"same_top10": same}), flush=True)

    if args.evaluate:
        script = Path(__file__).resolve().parents[1] / "examples" / "evaluate.py"
        eval_dir = Path(tempfile.mkdtemp(prefix="index-reuse-eval-"))
        for run in (1, 2):
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, str(script), "--dataset", args.dataset, "--split", "test", "--retrieval_only",
                 "--index_dir", str(eval_dir / "index"), "--output_dir", str(eval_dir / f"out{run}")],
                capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            seconds = time.perf_counter() - t
            found = re.search(r"passages encoded: (\d+)", proc.stderr)
            if proc.returncode or not found:
                raise SystemExit(f"evaluate.py failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            print(json.dumps({"evaluate_run": run, "passages_encoded": int(found.group(1)),
                              "seconds": round(seconds, 1)}), flush=True)

    first, second = runs
    print_machine()
    print(f"index reuse ({len(corpus)} passages): first run encoded {first['passages_encoded']}, second run encoded "
          f"{second['passages_encoded']} ({first['seconds']} s vs {second['seconds']} s, "
          f"{first['seconds'] / max(second['seconds'], 1e-9):.0f}x faster), same top-10: {same}")


if __name__ == "__main__":
    main()
