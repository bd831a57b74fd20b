"""HNSW vs exact flat search through DenseIndex: QPS at recall@10 >= target, same queries, same run.

    python bench/hnsw.py --n 1000000 --dim 384                    # random normalised vectors (the hardest case)
    python bench/hnsw.py --n 1000000 --dim 384 --data clustered   # low intrinsic dimension, like real embeddings

Both indexes are DenseIndex objects built from the same raw float32 vectors (``DenseIndex(emb, ids,
index_type=...)``): the exact baseline is ``IndexFlatIP``, ours is ``IndexHNSWFlat`` (inner product). The bench
sweeps ``efSearch`` and reports, for each value, recall@10 against the exact top-10 and queries per second; the last
line is the QPS ratio of the fastest setting whose recall@10 reaches ``--target_recall``. The flat search is timed
again right after each HNSW setting (the ratio uses that local figure), so that load changes on a shared machine
during a long sweep do not bias the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
from _common import print_machine


def make_vectors(n: int, dim: int, kind: str, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``n`` L2-normalised float32 vectors. ``random``: isotropic Gaussian. ``clustered``: points near a
    ``--intrinsic``-dimensional subspace, grouped around cluster centres (a stand-in for text embeddings)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    if kind == "clustered":
        sub = 32
        basis = np.linalg.qr(rng.standard_normal((dim, sub)))[0].astype(np.float32).T  # [sub, dim]
        centres = rng.standard_normal((1000, sub)).astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        if kind == "random":
            x = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            z = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.standard_normal((m, sub), dtype=np.float32)
            x = z @ basis + 0.05 * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def timed_search(index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` wall time of one batched search over all queries (the rows of the first run)."""
    best, rows = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        _, r = index.search(queries, k)
        best = min(best, time.perf_counter() - t)
        rows = r if rows is None else rows
    return best, rows


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--data", choices=["random", "clustered"], default="random")
    p.add_argument("--hnsw_m", type=int, default=32)
    p.add_argument("--ef_construction", type=int, default=200)
    p.add_argument("--ef_search", default="16,32,64,128,256,512,1024,2048")
    p.add_argument("--target_recall", type=float, default=0.98)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import faiss

    from trl_bporag import DenseIndex

    faiss.omp_set_num_threads(args.threads)
    k = 10
    t0 = time.perf_counter()
    emb = make_vectors(args.n, args.dim, args.data, args.seed)
    queries = make_vectors(args.queries, args.dim, args.data, args.seed + 1)
    ids = [str(i) for i in range(args.n)]
    print(json.dumps({"data": args.data, "n": args.n, "dim": args.dim, "queries": args.queries,
                      "generate_s": round(time.perf_counter() - t0, 1)}), flush=True)

    t = time.perf_counter()
    flat = DenseIndex(emb, ids, index_type="flat", use_gpu=False)
    flat_build = time.perf_counter() - t
    flat_s, exact = timed_search(flat, queries, k, args.repeats)
    flat_qps = args.queries / flat_s
    print(json.dumps({"index": "flat", "build_s": round(flat_build, 1), "search_s": round(flat_s, 3),
                      "qps": round(flat_qps, 1)}), flush=True)

    t = time.perf_counter()
    hnsw = DenseIndex(emb, ids, index_type="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                      use_gpu=False)
    hnsw_build = time.perf_counter() - t
    print(json.dumps({"index": "hnsw", "M": args.hnsw_m, "efConstruction": args.ef_construction,
                      "build_s": round(hnsw_build, 1)}), flush=True)
    del emb

    best = None
    for ef in [int(x) for x in args.ef_search.split(",")]:
        hnsw._cpu_index.hnsw.efSearch = ef
        s, rows = timed_search(hnsw, queries, k, args.repeats)
        rec = recall_at_k(rows, exact, k)
        qps = args.queries / s
        # the exact baseline again, right after: a shared machine's load changes during a long sweep
        local_flat_qps = args.queries / timed_search(flat, queries, k, 1)[0]
        row = {"index": "hnsw", "efSearch": ef, "recall@10": round(rec, 4), "qps": round(qps, 1),
               "flat_qps": round(local_flat_qps, 1), "speedup_vs_flat": round(qps / local_flat_qps, 2)}
        print(json.dumps(row), flush=True)
        if rec >= args.target_recall and (best is None or qps > best["qps"]):
            best = row
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"peak_rss_gb": round(peak_gb, 2), "threads": args.threads}), flush=True)
    print_machine()
    if best is None:
        print(f"HNSW never reached recall@10 >= {args.target_recall} (largest efSearch tried); "
              f"flat {flat_qps:.1f} QPS")
    else:
        print(f"HNSW/flat QPS ratio at recall@10 >= {args.target_recall}: {best['speedup_vs_flat']}x "
              f"(efSearch={best['efSearch']}, recall@10={best['recall@10']}, {best['qps']} vs {best['flat_qps']} QPS, "
              f"n={args.n}, {args.data})")


if __name__ == "__main__":
    main()
