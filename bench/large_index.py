"""Issue 36: a Wikipedia-size index on one machine.

    python bench/large_index.py synthetic --n 1000000 --specs Flat HNSW32,SQ8 IVF4096,PQ48
    python bench/large_index.py synthetic --n 10000000 --specs IVF4096,PQ48
    python bench/large_index.py real            # recall on real embeddings, squad-dev end to end, encoding pool
    python bench/large_index.py encoder_memory  # peak RSS of the streaming encoder at 10,000 and 100,000 passages
    python bench/large_index.py table           # the markdown table of docs/benchmarks.md from the results

``synthetic``: 384-d vectors that are *synthetic* (1,000 Gaussian clusters in a 64-dimensional subspace, unit norm;
queries drawn the same way), written as the shards the streaming encoder writes, then indexed by ``DenseIndex`` from
those shards exactly as a real corpus would be. Each index is built and searched in its own process, whose peak RSS
(VmHWM) is reported with the build time, the index size on disk, the latency of 1,000 queries and Recall@10 of the
exact top-10 (exact = a flat search streamed over the shards), with and without exact re-scoring.

``real``: the same recall on real all-MiniLM-L6-v2 embeddings (every shared corpus together, all their queries), the
squad-dev test Recall@k of a compressed index against flat (paired bootstrap CIs), and encoding throughput in one
process against sentence-transformers' multi-process pool (the ratio last).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, PeakRSS, mb, peak_rss_bytes, print_machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "large_index"
DIM, SUBSPACE, CLUSTERS, CHUNK = 384, 64, 1000, 100_000


# -- synthetic vectors ------------------------------------------------------------------------------------------------
def synthetic_block(start: int, size: int, seed: int = 0) -> np.ndarray:
    """Rows ``start .. start+size`` of the synthetic collection (deterministic per row block)."""
    basis = np.random.default_rng(seed).normal(size=(SUBSPACE, DIM)).astype(np.float32) / np.sqrt(SUBSPACE)
    centers = np.random.default_rng(seed + 1).normal(size=(CLUSTERS, SUBSPACE)).astype(np.float32)
    rng = np.random.default_rng([seed, start])
    z = centers[rng.integers(0, CLUSTERS, size)] + 0.6 * rng.normal(size=(size, SUBSPACE)).astype(np.float32)
    x = z @ basis + 0.05 * rng.normal(size=(size, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_synthetic_shards(folder: Path, n: int) -> None:
    """The synthetic collection in the streaming encoder's shard layout (a finished ``shards.json``)."""
    from trl_bporag.retrieval.shards import FORMAT_VERSION, MANIFEST, _save_npy, _shard_files

    if (folder / MANIFEST).is_file() and json.loads((folder / MANIFEST).read_text()).get("num_passages") == n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for j, start in enumerate(range(0, n, CHUNK)):
        size = min(CHUNK, n - start)
        vec_path, ids_path = _shard_files(folder, j)
        _save_npy(vec_path, synthetic_block(start, size))
        _save_npy(ids_path, np.array([f"s{i}".encode() for i in range(start, start + size)]))
        records.append({"n": size, "sha256": f"synthetic-{start}-{size}"})
    (folder / MANIFEST).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "model_id": "synthetic", "model_fingerprint": "synthetic", "score": "cos",
        "encode_dtype": None, "with_title": True, "shard_size": CHUNK, "dim": DIM, "shards": records,
        "complete": True, "num_passages": n, "corpus_fingerprint": f"synthetic-{n}"}))


def exact_top(shards, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k rows, streamed over the shards (a flat search that never holds the collection)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_r = np.full((len(queries), k), -1, dtype=np.int64)
    for j, block in enumerate(shards.chunks()):
        scores = queries @ block.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        cand_r = np.concatenate([best_r, top + shards.offsets[j]], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_r, keep, axis=1)
    return best_r


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def one_build(args) -> None:
    """Child process: build one index from the shards, search, report (peak RSS covers this process only)."""
    import faiss

    from trl_bporag import DenseIndex
    from trl_bporag.retrieval.shards import ShardSet

    faiss.omp_set_num_threads(args.threads)
    shards = ShardSet(args.shards)
    queries = np.load(args.queries)
    truth = np.load(args.truth)
    with PeakRSS() as build:
        index = DenseIndex(shards, index_type=args.spec, train_sample=args.train_sample)
    folder = Path(args.work) / args.spec.replace(",", "_")
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index._cpu_index, str(folder / "index.faiss"))
    row = {"spec": args.spec, "n": len(shards), "build_s": round(build.seconds, 1),
           "trained_on": index.params["train_sample"], "index_bytes": (folder / "index.faiss").stat().st_size}
    row["search"] = []
    ivf = index.params["nlist"] is not None
    hnsw = "HNSW" in args.spec
    for nprobe in args.nprobes if ivf else [None]:
        for ef in args.ef_searches if hnsw else [None]:
            for depth in (0, *args.rescores):
                index.configure(nprobe=nprobe, ef_search=ef, rescore=depth)
                index.search(queries[:10], 10)  # warm
                start = time.perf_counter()
                _, rows = index.search(queries, 10)
                row["search"].append({"nprobe": nprobe, "ef_search": ef, "rescore": depth,
                                      "s_per_1000q": round((time.perf_counter() - start) * 1000 / len(queries), 3),
                                      "recall10": round(recall_at(rows, truth), 4)})
    row["peak_rss_bytes"] = peak_rss_bytes()
    (folder / "index.faiss").unlink()
    print("ROW " + json.dumps(row), flush=True)


def synthetic(args) -> None:
    print_machine()
    work = Path(args.work) / f"synthetic-{args.n}"
    start = time.perf_counter()
    write_synthetic_shards(work / "shards", args.n)
    print(f"shards written in {time.perf_counter() - start:.0f} s ({args.n} x {DIM} float32, "
          f"{mb(args.n * DIM * 4) / 1024:.1f} GiB on disk)", flush=True)
    from trl_bporag.retrieval.shards import ShardSet

    shards = ShardSet(work / "shards")
    queries = synthetic_block(10**12, args.queries, seed=0)  # held out: another row block
    start = time.perf_counter()
    truth = exact_top(shards, queries)
    flat_stream_s = time.perf_counter() - start
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", truth)
    rows = []
    for spec in args.specs:
        cmd = [sys.executable, __file__, "_one", "--shards", str(work / "shards"), "--queries", str(work / "queries.npy"),
               "--truth", str(work / "truth.npy"), "--spec", spec, "--work", str(work), "--threads", str(args.threads),
               "--rescores", *map(str, args.rescores), "--nprobes", *map(str, args.nprobes),
               "--ef_searches", *map(str, args.ef_searches)]
        if args.train_sample:
            cmd += ["--train_sample", str(args.train_sample)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in res.stdout.splitlines() if x.startswith("ROW ")), None)
        if line is None:
            print(f"{spec}: failed\n{res.stderr[-3000:]}", flush=True)
            continue
        row = json.loads(line[4:])
        rows.append(row)
        print(f"{spec:>20} n={row['n']:,} build {row['build_s']} s  peak RSS {mb(row['peak_rss_bytes'])} MiB  "
              f"index {mb(row['index_bytes'])} MiB", flush=True)
        for s in row["search"]:
            print(f"{'':>22}nprobe {s['nprobe']} ef_search {s['ef_search']} rescore {s['rescore']}: "
                  f"{s['s_per_1000q']} s per 1000 q, R@10 {s['recall10']}", flush=True)
    # rows of earlier runs at this size are kept, unless this run measured the same string again
    path = OUT / f"synthetic-{args.n}.json"
    old = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    done = {row["spec"] for row in rows}
    result = {"n": args.n, "dim": DIM, "queries": args.queries, "threads": args.threads,
              "flat_streamed_1000q_s": round(flat_stream_s * 1000 / args.queries, 1),
              "rows": [row for row in old["rows"] if row["spec"] not in done] + rows,
              "machine": __import__("trl_bporag.hardware", fromlist=["x"]).describe_hardware()}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"exact search streamed over the shards: {result['flat_streamed_1000q_s']} s per 1000 queries")
    for row in rows:
        print(f"ratio {row['spec']}: peak RSS / 4 GiB = {row['peak_rss_bytes'] / 2**32:.2f}")


def searches(row: dict) -> list[dict]:
    """The search settings of a result row (rows of the first run held one setting with and without re-scoring)."""
    if "search" in row:
        return row["search"]
    return [{"nprobe": 16, "ef_search": 128, "rescore": 0, "s_per_1000q": row["search_1000q_s"],
             "recall10": row["recall10"]},
            {"nprobe": 16, "ef_search": 128, "rescore": row["rescore"], "s_per_1000q": row["search_1000q_s_rescore"],
             "recall10": row["recall10_rescore"]}]


def table() -> None:
    """The markdown table of docs/benchmarks.md from bench/results/large_index/synthetic-*.json."""
    print("| vectors | index | build s | peak RSS GiB | index MiB | nprobe / efSearch | re-score | s per 1,000 q "
          "| R@10 of exact top-10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(OUT.glob("synthetic-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        result = json.loads(path.read_text())
        for row in result["rows"]:
            kind = "efSearch" if "HNSW" in row["spec"] else "nprobe"
            for s in searches(row):
                setting = s["ef_search"] if kind == "efSearch" else s["nprobe"]
                if row["spec"] == "Flat":
                    setting = "-"
                elif kind == "nprobe" and "IVF" not in row["spec"]:
                    setting = "-"
                print(f"| {result['n']:,} | `{row['spec']}` | {row['build_s']} | {row['peak_rss_bytes'] / 2**30:.2f} "
                      f"| {mb(row['index_bytes'])} | {kind if setting != '-' else ''} {setting} | "
                      f"{s['rescore'] or '-'} | {s['s_per_1000q']} | {s['recall10']} |")
        print(f"| {result['n']:,} | exact, streamed over the shards | - | - | - | - | - | "
              f"{result['flat_streamed_1000q_s']} | 1 |")
    real_path = OUT / "real.json"
    if not real_path.is_file():
        return
    real = json.loads(real_path.read_text())
    print("\n| index | nprobe | R@10 of exact top-10 | re-scored top 100 |\n|---|---|---|---|")
    for spec, rows in real["specs"].items():
        for plain, scored in zip(rows[::2], rows[1::2]):
            print(f"| `{spec}` | {plain['nprobe'] or '-'} | {plain['recall10']} | {scored['recall10']} |")
    print("\n| index | Recall@1 | Recall@5 | Recall@10 |\n|---|---|---|---|")
    for name, metrics in real["squad_test"].items():
        cells = [f"{m['mean']:.3f}" + (f" ({m['diff']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}])" if "diff" in m else "")
                 for m in metrics.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


def encode_child(args) -> None:
    """Child process: encode a corpus.jsonl into shards with the packaged MiniLM; report time and peak RSS."""
    from trl_bporag import DEFAULT_RETRIEVER, Retriever
    from trl_bporag.retrieval.shards import encode_shards

    retriever = Retriever(DEFAULT_RETRIEVER)
    start = time.perf_counter()
    shards = encode_shards(retriever, args.corpus, args.folder, shard_size=args.shard_size)
    print("ROW " + json.dumps({"n": len(shards), "seconds": round(time.perf_counter() - start, 1),
                               "encoded": shards.encoded,
                               "shards": len(shards.records), "peak_rss_bytes": peak_rss_bytes(),
                               "dtype": retriever.dtype or "float32"}), flush=True)


def encoder_memory(args) -> None:
    """Peak RSS of the streaming encoder at two corpus sizes (short synthetic passages, to keep the run short)."""
    print_machine()
    words = "the of and in to a is was for on as by with from at his an which were are city river war music art".split()
    rows = []
    for n in args.sizes:
        work = Path(args.work) / f"encode-{n}"
        work.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        with (work / "corpus.jsonl").open("w") as fh:
            for i in range(n):
                fh.write(json.dumps({"_id": f"p{i}", "title": "", "text": " ".join(rng.choice(words, 12))}) + "\n")
        shutil.rmtree(work / "shards", ignore_errors=True)  # a fresh encoding; the second run finds it finished
        runs = []
        for _ in range(2):
            res = subprocess.run([sys.executable, __file__, "_encode", "--corpus", str(work / "corpus.jsonl"),
                                  "--folder", str(work / "shards"), "--shard_size", str(args.shard_size)],
                                 capture_output=True, text=True)
            line = next((x for x in res.stdout.splitlines() if x.startswith("ROW ")), None)
            if line is None:
                raise SystemExit(res.stderr[-3000:])
            runs.append(json.loads(line[4:]))
        rows.append({**runs[0], "rerun_seconds": runs[1]["seconds"], "rerun_encoded": runs[1]["encoded"]})
        print(f"{n:,} passages, shards of {args.shard_size:,}: {rows[-1]['seconds']} s, peak RSS "
              f"{mb(rows[-1]['peak_rss_bytes'])} MiB ({rows[-1]['dtype']}); run again: {runs[1]['encoded']} shards "
              f"encoded in {runs[1]['seconds']} s", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "encoder-memory.json"  # rows of other sizes from earlier runs are kept
    earlier = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = sorted([r for r in earlier if r["n"] not in {row["n"] for row in rows}] + rows, key=lambda r: r["n"])
    path.write_text(json.dumps({"rows": rows, "shard_size": args.shard_size,
                                                         "machine": rows and __import__(
                                                             "trl_bporag.hardware", fromlist=["x"]).describe_hardware()},
                                                        indent=1))
    print(f"ratio peak RSS {rows[-1]['n']:,} / {rows[0]['n']:,} passages: "
          f"{rows[-1]['peak_rss_bytes'] / rows[0]['peak_rss_bytes']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--specs", nargs="+", default=["Flat", "HNSW32,SQ8", "IVF4096,PQ48"])
    s.add_argument("--queries", type=int, default=1000)
    s.add_argument("--rescores", type=int, nargs="+", default=[100], help="re-scoring depths (0 = none, always run)")
    s.add_argument("--nprobes", type=int, nargs="+", default=[16], help="IVF lists probed (IVF strings)")
    s.add_argument("--ef_searches", type=int, nargs="+", default=[128], help="HNSW beam widths (HNSW strings)")
    s.add_argument("--train_sample", type=int, default=None)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--work", default="runs/large-index")
    one = sub.add_parser("_one")
    for flag in ("shards", "queries", "truth", "spec", "work"):
        one.add_argument(f"--{flag}", required=True)
    one.add_argument("--threads", type=int, required=True)
    for flag in ("rescores", "nprobes", "ef_searches"):
        one.add_argument(f"--{flag}", type=int, nargs="+", required=True)
    one.add_argument("--train_sample", type=int, default=None)
    sub.add_parser("table")
    e = sub.add_parser("encoder_memory")
    e.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    e.add_argument("--shard_size", type=int, default=5_000)
    e.add_argument("--work", default="runs/large-index")
    child = sub.add_parser("_encode")
    child.add_argument("--corpus", required=True)
    child.add_argument("--folder", required=True)
    child.add_argument("--shard_size", type=int, required=True)
    r = sub.add_parser("real")
    r.add_argument("--specs", nargs="+", default=["IVF64,PQ48", "OPQ48,IVF64,PQ48", "HNSW32,SQ8", "IVF64,SQ8"])
    r.add_argument("--rescore", type=int, default=100)
    r.add_argument("--nprobes", type=int, nargs="+", default=[16, 64])
    r.add_argument("--devices", nargs="+", default=["cpu", "cpu"], help="the pool's devices (cuda:0 cuda:1 ...)")
    r.add_argument("--work", default="runs/large-index")
    args = parser.parse_args()
    if args.cmd == "synthetic":
        synthetic(args)
    elif args.cmd == "_one":
        one_build(args)
    elif args.cmd == "table":
        table()
    elif args.cmd == "encoder_memory":
        encoder_memory(args)
    elif args.cmd == "_encode":
        encode_child(args)
    else:
        from large_index_real import real

        real(args, DATA, OUT)


if __name__ == "__main__":
    main()
