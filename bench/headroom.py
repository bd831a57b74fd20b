"""How much retrieval can give each generator (issue 35): closed-book, vanilla and oracle rows, per question.

    python bench/headroom.py --generator reader  --row closed-book      # one row x both data sets
    python bench/headroom.py --generator smollm2 --row vanilla
    python bench/headroom.py --table                                    # the table of docs/benchmarks.md

Rows, on the first ``--test_queries`` (500) squad-dev test questions and all 100 hotpotqa-distractor questions, greedy:

* ``closed-book``: the question alone, no passage (what the generator knows by itself);
* ``vanilla``: the base retriever's (all-MiniLM-L6-v2) top k = 5 passages;
* ``oracle``: the gold passage(s) first, then the base top k's other passages (the most a retriever can give);
* ``rpo``: the top k of a tuned retriever (``--retriever``, default the README's Stage-1 folder): the paper's +RPO row;
  ``--name rpo-<recipe>`` keeps one file per retriever (e.g. the ``retriever/`` that ``bench/rpo_table.py`` saves in
  ``runs/rpo-table/work/<row>/``), each compared with vanilla in ``--table``.

Both generators read the same prompt: the project's (default system prompt, the reply started with ``The answer is
"``, which also helps the reader: oracle F1 0.546 against 0.503 without it on 40 squad-dev *dev* questions,
``bench/results/reader/prompt_choice.log``), but passages cut to **256** tokens instead of the default 96: cut to 96,
27 % of the squad-dev dev gold passages lose the answer's start (3.4 % at 192, 0.7 % at 256, of 1,745; ``--answer_positions``),
so the oracle row would not hold the answer. ``--choose_prompt`` reruns the prompt comparison. Every row x data set writes
``bench/results/reader/<row>@<generator>-<data set>.json`` with ``row``, ``seed`` (null), ``dataset``, ``ids``,
``f1``, ``em`` (one value per question, the same order in every file), ``predictions``, ``generator``, ``settings``,
``dtype`` and ``hardware``. The generator computes in float32 by default (``--dtype``), so that rows made on CPUs with
and without native bf16 compare. ``--table`` prints the mean F1 / EM of every row and the paired bootstrap 95% CI of each difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, hardware_summary, print_machine  # noqa: E402

from trl_bporag import DEFAULT_GENERATOR  # noqa: E402
from trl_bporag.packaged import READER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "reader"
EVAL_SETS = (("squad-dev", "test"), ("hotpotqa-distractor", "test"))
ROWS = ("closed-book", "vanilla", "oracle")
RETRIEVER_ROWS = ("rpo",)  # the base generator under another retriever (--retriever): the paper's +RPO row
K = 5
#: generator tag -> (model id, the settings it reads with)
GENERATORS = {
    "smollm2": (DEFAULT_GENERATOR, {"max_passage_tokens": 256}),
    "reader": (READER, {"max_passage_tokens": 256}),
}


def is_retriever_row(row: str) -> bool:
    """Whether a file's row is an ``rpo`` row (``rpo`` or ``rpo-<recipe>``, by ``--name``)."""
    return row.split("-")[0] in RETRIEVER_ROWS


def contexts(row: str, top: list[list[str]], gold: list[list[str]]) -> list[list[str]]:
    """The passage ids each question's prompt reads in ``row``."""
    if row == "closed-book":
        return [[] for _ in top]
    if row == "oracle":  # the gold passages first, then the retrieved ones that are not gold
        return [(list(g) + [p for p in t if p not in g])[:max(K, len(g))] for g, t in zip(gold, top)]
    return [list(t[:K]) for t in top]


def run(row: str, tag: str, args) -> None:
    from trl_bporag import DenseIndex, RAGPipeline, Retriever, load_generator, load_rag_dataset
    from trl_bporag.metrics import per_query_metrics

    model_id, settings = GENERATORS[tag]
    gen, tok = load_generator(model_id, torch_dtype=args.dtype)
    retriever_id = args.retriever if row in RETRIEVER_ROWS else "sentence-transformers/all-MiniLM-L6-v2"
    if row in RETRIEVER_ROWS and not os.path.isdir(retriever_id):
        sys.exit(f"--retriever {retriever_id}: train it first (the README's Stage 1 commands)")
    retriever = Retriever(retriever_id)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, split_name in EVAL_SETS:
        if name not in args.datasets.split(","):
            continue
        data = load_rag_dataset(DATA / name, split_name)
        split = data.split.head(args.test_queries if name == "squad-dev" else args.hotpot_queries)
        pipe = RAGPipeline(retriever, DenseIndex.cached(retriever, data.corpus), data.corpus, gen, tok, k=K,
                           **settings)
        top, _ = pipe.retrieve(split.questions, k=K)
        ids = contexts(row, top, split.gold_ids)
        t0 = time.perf_counter()
        predictions = pipe.answer(split.questions, ids, progress=f"{row} {tag} {name}")
        seconds = time.perf_counter() - t0
        m = per_query_metrics(ids, None, [pipe.passages(p) for p in ids], split.answers, predictions, ks=(K,))
        out = {"row": row, "seed": None, "dataset": f"{name}:{split_name}", "ids": list(split.ids), "f1": m["f1"],
               "em": m["exact_match"], "predictions": predictions, "generator": model_id, "retriever": retriever_id,
               "settings": pipe.settings.to_dict(), "dtype": str(gen.dtype).removeprefix("torch."),
               "seconds": round(seconds, 1), "hardware": hardware_summary()}
        (RESULTS / f"{args.name or row}@{tag}-{name}.json").write_text(json.dumps(out))
        print(json.dumps({"row": row, "generator": tag, "dataset": name, "f1": round(sum(m["f1"]) / len(split), 4),
                          "em": round(sum(m["exact_match"]) / len(split), 4),
                          "s_per_question": round(seconds / len(split), 2)}), flush=True)


def load(results: Path = RESULTS) -> dict:
    """{(row, generator tag, data set): file contents} for every headroom file."""
    found = {}
    for path in sorted(results.glob("*@*-*.json")):
        row, rest = path.stem.split("@", 1)
        tag, name = rest.split("-", 1)
        if (row in ROWS or is_retriever_row(row)) and tag in GENERATORS:
            found[(row, tag, name)] = json.loads(path.read_text())
    return found


def _ci(a, b) -> str:
    from trl_bporag.metrics import paired_bootstrap_ci

    ci = paired_bootstrap_ci(a, b, n_resamples=2000)
    text = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
    return f"**{text}**" if ci["significant"] else text


def table(results: Path = RESULTS) -> str:
    """Markdown: per data set, each generator's rows (F1, EM) and the paired CIs of what retrieval gives."""
    import numpy as np

    found = load(results)
    lines = []
    for name, _ in EVAL_SETS:
        tags = [t for t in GENERATORS if all((r, t, name) in found for r in ROWS)]
        if not tags:
            continue
        first = found[(ROWS[0], tags[0], name)]
        assert all(found[(r, t, name)]["ids"] == first["ids"] for r in ROWS for t in tags), "question orders differ"
        lines += [f"**{name}** ({len(first['ids'])} questions; F1 / EM; differences: paired bootstrap 95% CI, bold "
                  "when it excludes 0)", "",
                  "| generator | closed-book | vanilla (base top 5) | oracle (gold first) | vanilla − closed-book | "
                  "oracle − vanilla | oracle − closed-book |", "|---|---|---|---|---|---|---|"]
        for t in tags:
            f = {r: found[(r, t, name)]["f1"] for r in ROWS}
            e = {r: found[(r, t, name)]["em"] for r in ROWS}
            cells = [f"{np.mean(f[r]):.3f} / {np.mean(e[r]):.3f}" for r in ROWS]
            lines.append(f"| {GENERATORS[t][0].split('/')[-1]} | " + " | ".join(cells) + " | "
                         + " | ".join([_ci(f["vanilla"], f["closed-book"]), _ci(f["oracle"], f["vanilla"]),
                                       _ci(f["oracle"], f["closed-book"])]) + " |")
        if len(tags) == 2:
            a, b = tags[1], tags[0]
            lines.append(f"| {a} − {b} | " + " | ".join(
                _ci(found[(r, a, name)]["f1"], found[(r, b, name)]["f1"]) for r in ROWS) + " | | | |")
        lines.append("")
        for row, t, _ in sorted(k for k in found if k[2] == name and is_retriever_row(k[0])):
            if t in tags:
                rpo, van = found[(row, t, name)], found[("vanilla", t, name)]
                assert rpo["ids"] == van["ids"], "question orders differ"
                lines.append(f"- +RPO ({rpo['retriever']}'s top {K}), {GENERATORS[t][0].split('/')[-1]}: F1 "
                             f"{np.mean(rpo['f1']):.3f} / EM {np.mean(rpo['em']):.3f}; − vanilla: F1 "
                             f"{_ci(rpo['f1'], van['f1'])}, EM {_ci(rpo['em'], van['em'])}")
        lines.append("")
    return "\n".join(lines)


def choose_prompt(args) -> None:
    """The reader's passage budget and answer prefix, chosen on squad-dev *dev* questions (never test)."""
    from trl_bporag import DenseIndex, RAGPipeline, Retriever, load_generator, load_rag_dataset
    from trl_bporag.metrics import per_query_metrics

    gen, tok = load_generator(GENERATORS["reader"][0])
    data = load_rag_dataset(DATA / "squad-dev", "dev")
    split = data.split.head(args.dev_queries)
    retriever = Retriever("sentence-transformers/all-MiniLM-L6-v2")
    index = DenseIndex.cached(retriever, data.corpus)
    for prefix in ('The answer is "', ""):
        for budget in (96, 192, 256):
            pipe = RAGPipeline(retriever, index, data.corpus, gen, tok, k=K, max_passage_tokens=budget,
                               answer_prefix=prefix)
            top, _ = pipe.retrieve(split.questions, k=K)
            for row in ("oracle", "vanilla"):
                ids = contexts(row, top, split.gold_ids)
                t0 = time.perf_counter()
                pred = pipe.answer(split.questions, ids)
                m = per_query_metrics(ids, None, [pipe.passages(p) for p in ids], split.answers, pred, ks=(K,))
                print(json.dumps({"answer_prefix": prefix, "max_passage_tokens": budget, "row": row,
                                  "f1": round(sum(m["f1"]) / len(split), 3),
                                  "em": round(sum(m["exact_match"]) / len(split), 3),
                                  "s_per_question": round((time.perf_counter() - t0) / len(split), 2)}), flush=True)


def answer_positions() -> None:
    """Where the first gold answer starts in each squad-dev *dev* question's gold passage, in the reader's tokens: the
    share of answers a passage budget cuts off."""
    import numpy as np

    from trl_bporag import load_generator, load_rag_dataset

    _, tok = load_generator(GENERATORS["reader"][0])
    data = load_rag_dataset(DATA / "squad-dev", "dev")
    starts = []
    for answers, golds in zip(data.split.answers, data.split.gold_ids):
        text = data.corpus.passage(data.corpus.index_of(golds[0]))
        found = [text.find(a) for a in answers if a and text.find(a) >= 0]
        if found:
            starts.append(len(tok(text[:min(found)], add_special_tokens=False)["input_ids"]))
    starts = np.array(starts)
    print(json.dumps({"questions": len(starts), **{f"answer_starts_beyond_{b}": round(float((starts >= b).mean()), 3)
                                                   for b in (96, 192, 256)}}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--generator", choices=tuple(GENERATORS), default="reader")
    p.add_argument("--row", choices=ROWS + RETRIEVER_ROWS)
    p.add_argument("--retriever", default="runs/readme/retriever-rpo", help="the retriever of the rpo row")
    p.add_argument("--name", default=None, help="the rpo row's file name, rpo-<recipe> (default: rpo)")
    p.add_argument("--table", action="store_true")
    p.add_argument("--choose_prompt", action="store_true", help="the reader's prompt on squad-dev dev questions")
    p.add_argument("--test_queries", type=int, default=500)
    p.add_argument("--hotpot_queries", type=int, default=None, help="default: all 100")
    p.add_argument("--dev_queries", type=int, default=40)
    p.add_argument("--answer_positions", action="store_true", help="answer starts in dev gold passages (tokens)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--datasets", default=",".join(n for n, _ in EVAL_SETS), help="comma-separated: which data sets")
    p.add_argument("--dtype", default="float32", help="the generator's compute dtype ('auto': bf16 where native)")
    args = p.parse_args()
    if args.name is not None and not (args.row in RETRIEVER_ROWS and is_retriever_row(args.name)):
        p.error(f"--name {args.name!r}: names an rpo row's file and must start with 'rpo-' (with --row rpo); "
                "--table reads no other name")
    import torch

    torch.set_num_threads(args.threads)
    if args.row or args.choose_prompt:
        print_machine()
    if args.answer_positions:
        answer_positions()
    if args.choose_prompt:
        choose_prompt(args)
    if args.row:
        run(args.row, args.generator, args)
    if args.table:
        print(table())


if __name__ == "__main__":
    main()
