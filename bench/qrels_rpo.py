"""Stage 1 on a BEIR set *without answers* (issue 23): the qrels judge, evaluated with paired CIs.

    python bench/qrels_rpo.py                       # squad-dev, answers stripped; 1,500 training questions
    python bench/qrels_rpo.py --train_queries 800

A copy of ``../shared/data/squad-dev`` with the ``answers`` field removed from every query (a standard BEIR layout:
``corpus.jsonl``, ``queries.jsonl``, ``qrels/``) goes to ``--work_dir``; then the commands of docs/howto/beir-qrels.md,
as the installed stage scripts run them: ``build-rpo-pairs --judge qrels`` on the first ``--train_queries`` train
questions, ``rpo --config rpo.yaml`` (the recommended recipe), and ``evaluate --retrieval_only`` of the base and the
tuned retriever on all 1,589 test questions. Writes the per-question Recall@k of both to
``bench/results/qrels_rpo/`` and prints each metric's paired bootstrap 95% CI (1,000 resamples, seed 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, PeakRSS, hardware_summary, print_machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "qrels_rpo"
BASE = "sentence-transformers/all-MiniLM-L6-v2"


def strip_answers(src: Path, dst: Path) -> Path:
    """``src`` as a standard BEIR folder: the same corpus and qrels, queries without ``answers``."""
    if (dst / "queries.jsonl").is_file():
        return dst
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "corpus.jsonl", dst / "corpus.jsonl")
    for qrels in (src / "qrels").glob("*.tsv"):
        shutil.copy(qrels, dst / "qrels" / qrels.name)
    with (src / "queries.jsonl").open() as fin, (dst / "queries.jsonl").open("w") as fout:
        for line in fin:
            query = json.loads(line)
            query.pop("answers", None)
            fout.write(json.dumps(query) + "\n")
    return dst


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work_dir", default="runs/qrels-rpo")
    p.add_argument("--train_queries", type=int, default=1500)
    p.add_argument("--results_dir", default=str(RESULTS))
    args = p.parse_args()
    print_machine()
    from trl_bporag import configs, load_rag_dataset
    from trl_bporag.metrics import paired_bootstrap_ci
    from trl_bporag.scripts import build_rpo_pairs, evaluate, rpo

    work = Path(args.work_dir)
    data = strip_answers(DATA / "squad-dev", work / "squad-dev-no-answers")
    seconds = {}
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        if not (work / "rpo-pairs" / "stats.json").is_file():
            build_rpo_pairs.main(*build_rpo_pairs.parse([
                "--config", configs.path("build_rpo_pairs.yaml"), "--dataset", str(data), "--judge", "qrels",
                "--max_queries", str(args.train_queries), "--output_dir", str(work / "rpo-pairs")]))
        seconds["pairs"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        if not (work / "retriever-rpo" / "modules.json").is_file():
            rpo.main(*rpo.parse(["--config", configs.path("rpo.yaml"), "--dataset_name", str(work / "rpo-pairs"),
                                 "--output_dir", str(work / "retriever-rpo"), "--use_cpu", "true"]))
        seconds["rpo"] = round(time.perf_counter() - t0, 1)
        test = load_rag_dataset(data, "test", require_answers=False)  # read once, for both rows and the ids
        per_query = {}
        for name, retriever in (("base", BASE), ("qrels-rpo", str(work / "retriever-rpo"))):
            ev_args, ev_settings = evaluate.parse(["--dataset", str(data), "--split", "test", "--retriever", retriever,
                                                   "--retrieval_only", "--output_dir", str(work / f"eval-{name}")])
            per_query[name] = evaluate.main(ev_args, ev_settings, data=test)["per_query"]
    stats = json.loads((work / "rpo-pairs" / "stats.json").read_text())
    ids = list(test.split.ids)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    for name, values in per_query.items():
        (results / f"{name}-squad-dev-test.json").write_text(json.dumps(
            {"row": name, "dataset": "squad-dev:test (answers stripped)", "ids": ids, **values}))
    summary = {"train_queries": args.train_queries, "pairs": stats.get("stats"), "seconds": seconds,
               "peak_rss_gib": round(peak.peak / 2**30, 2), "hardware": hardware_summary()}
    for metric in ("recall@1", "recall@5", "recall@10"):
        ci = paired_bootstrap_ci(per_query["qrels-rpo"][metric], per_query["base"][metric], n_resamples=1000, seed=0)
        means = {name: sum(values[metric]) / len(values[metric]) for name, values in per_query.items()}
        summary[metric] = {"base": round(means["base"], 3), "qrels-rpo": round(means["qrels-rpo"], 3),
                           "diff [95% CI]": f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"}
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
