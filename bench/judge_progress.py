"""Carry a long Stage-1 judge from one machine to the next: its progress as ids and scores, without the data's text.

The reader's ``generator_f1`` judge takes hours on a 2-core CPU. The RPO builder's shards (``<pairs>/shards/``) let an
interrupted build resume on the same machine, but they hold the questions and passages as text (a copy of the shared
data, which stays out of the repository) and they are lost with the machine. ``export`` writes the same progress as
one gzipped JSON-lines file of ids, window scores and per-query counts (about 1 KB a question), small enough to
commit; ``restore`` rebuilds the shards from that file and the data set, so a fresh machine resumes the build where
the last one stopped (``bench/rpo_table.py --resume_pairs``). Restoring checks that the file was made from the same
split and corpus (their fingerprints), and never replaces a query the shards already hold.

    python bench/judge_progress.py export runs/rpo-table/work/rpo-reader-f1/pairs \
        bench/results/reader_stage1/rpo-reader-f1-judged.jsonl.gz
    python bench/judge_progress.py restore bench/results/reader_stage1/rpo-reader-f1-judged.jsonl.gz \
        runs/rpo-table/work/rpo-reader-f1/pairs --dataset ../shared/data/squad-dev --split train --train_queries 1500
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
from pathlib import Path

from trl_bporag.preferences.base import end_shard_line, read_shard_records

#: the text columns of an RPO row and the id columns they are rebuilt from (listwise rows, then pairwise rows)
TEXT_FROM_IDS = {"lists": "list_ids", "chosen": "chosen_ids", "rejected": "rejected_ids"}


def export(pairs_dir: str | os.PathLike, path: str | os.PathLike) -> int:
    """Write the shards of ``pairs_dir`` to ``path`` (gzipped JSON lines: the shards' ``config.json``, then one record
    per query with its rows stripped of question and passage texts). Returns the number of queries written."""
    shard_dir = Path(pairs_dir) / "shards"
    config_path = shard_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{pairs_dir}: no shards/config.json; expected the work folder of a pairs build")
    records = {}
    for rec in read_shard_records(shard_dir):
        rows = []
        for row in rec["rows"]:
            if "prompt" not in row or not any(col in row for col in TEXT_FROM_IDS):
                raise ValueError(f"{shard_dir}: query {rec['query_id']!r} has a row without 'prompt' and passage "
                                 f"columns ({sorted(row)}); expected RPO rows")
            rows.append({key: value for key, value in row.items() if key != "prompt" and key not in TEXT_FROM_IDS})
        records[rec["position"]] = {**rec, "rows": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as fh:  # mtime 0: the same progress gives the same bytes
        fh.write(json.dumps({"config": json.loads(config_path.read_text(encoding="utf-8"))}, sort_keys=True) + "\n")
        for pos in sorted(records):
            fh.write(json.dumps(records[pos], sort_keys=True) + "\n")
    os.replace(tmp, path)
    return len(records)


def read_export(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The shards' configuration and the per-query records of an exported file."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    if not lines or "config" not in lines[0]:
        raise ValueError(f"{path}: expected a first line with the key 'config' (a file written by export)")
    return lines[0]["config"], lines[1:]


def restore(path: str | os.PathLike, pairs_dir: str | os.PathLike, split, corpus) -> int:
    """Rebuild ``pairs_dir/shards`` from an exported file and the data it was built from (``split``: the
    :class:`~trl_bporag.data.QASplit` the build was given, e.g. ``bench/rpo_table.py``'s first ``--train_queries``;
    ``corpus``: its :class:`~trl_bporag.data.Corpus`). Queries the shards already hold are kept; the others are
    appended to ``rank0.jsonl``. Returns the number of queries added."""
    config, records = read_export(path)
    data = config.get("data") or {}
    with_title = (config.get("builder") or {}).get("with_title", True)
    expected = {"split_fingerprint": split.fingerprint(), "corpus_fingerprint": corpus.fingerprint(with_title)}
    wrong = [key for key, value in expected.items() if data.get(key) != value]
    if wrong:
        raise ValueError(f"{path}: made from other data ({', '.join(wrong)} differs from the data set given); "
                         "restore it with the split and corpus it was built from")
    shard_dir = Path(pairs_dir) / "shards"
    config_path = shard_dir / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text(encoding="utf-8")) != config:
        raise ValueError(f"{shard_dir}: holds shards of another configuration than {path}; restore into an empty "
                         "work folder")
    shard_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, sort_keys=True))
    have = {(rec["position"], rec["query_id"]) for rec in read_shard_records(shard_dir)}
    row_of = {pid: i for i, pid in enumerate(corpus.ids)}
    added = []
    for rec in records:
        pos, qid = rec["position"], rec["query_id"]
        if pos >= len(split) or split.ids[pos] != qid:
            raise ValueError(f"{path}: query {qid!r} at position {pos} is not in the split given")
        if (pos, qid) in have:
            continue
        rows = []
        for row in rec["rows"]:
            full = {"prompt": split.questions[pos]}
            for text_col, id_col in TEXT_FROM_IDS.items():
                if id_col in row:  # listwise rows hold a list of windows, pairwise rows one window per column
                    ids = row[id_col]
                    windows = ids if ids and isinstance(ids[0], list) else [ids]
                    texts = [[corpus.passage(row_of[pid], with_title) for pid in w] for w in windows]
                    full[text_col] = texts if windows is ids else texts[0]
            rows.append({**full, **row})
        added.append({**rec, "rows": rows})
    shard = shard_dir / "rank0.jsonl"
    end_shard_line(shard)
    with shard.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(rec) + "\n" for rec in added))
    return len(added)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="shards -> a committed file of ids and scores")
    e.add_argument("pairs_dir")
    e.add_argument("path")
    r = sub.add_parser("restore", help="a committed file + the data set -> shards")
    r.add_argument("path")
    r.add_argument("pairs_dir")
    r.add_argument("--dataset", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-dev"))
    r.add_argument("--split", default="train")
    r.add_argument("--train_queries", type=int, default=1500, help="the split's first queries the build was given "
                   "(bench/rpo_table.py --train_queries)")
    args = p.parse_args()
    if args.command == "export":
        print(f"{export(args.pairs_dir, args.path)} queries written to {args.path}")
    else:
        from trl_bporag import load_beir

        data = load_beir(args.dataset, args.split)
        added = restore(args.path, args.pairs_dir, data.split.head(args.train_queries), data.corpus)
        print(f"{added} queries restored into {args.pairs_dir}")


if __name__ == "__main__":
    main()
