"""RPO against the label-free anchors a user would pick instead, with paired bootstrap 95% CIs (issue 11).

Each row trains one retriever from all-MiniLM-L6-v2 on the first ``--train_queries`` squad-dev *train* questions
(answers only, except the ``mnrl-gold`` ceiling) and evaluates it on the full test splits of squad-dev,
hotpotqa-distractor and nq-open: Recall@1/5/10/20 and answer-hit@1/5/10/20, one value per question, saved to
``<out>/<row>.json``. ``--table`` prints the markdown table of every saved row: each cell is the value and its
difference from the base [paired bootstrap 95% CI], and a second table gives the differences against the anchors.

    python bench/rpo_table.py --row base
    python bench/rpo_table.py --row mnrl-answers          # anchor (a): sentence-transformers MNRL, answer positives
    python bench/rpo_table.py --row mnrl-gold             # a ceiling: MNRL on the gold passages (uses labels)
    python bench/rpo_table.py --row lsr --train_queries 500   # anchor (b): REPLUG-LSR answer-likelihood distillation
    python bench/rpo_table.py --row rpo --name rpo-free-sft --loss_type sigmoid,sft --reference free
    python bench/rpo_table.py --row rpo --name rpo-listwise --pairing listwise --reference free
    python bench/rpo_table.py --row rpo --name rpo-reader-f1 --pairing listwise --reference free \
        --judge generator_f1 --generator reader --judge_passage_tokens 256      # the paper's judge, a reader that reads
    python bench/judge_progress.py export runs/rpo-table/work/rpo-reader-f1/pairs \
        bench/results/reader_stage1/rpo-reader-f1-judged.jsonl.gz    # its progress, to resume on another machine
    python bench/rpo_table.py --table

Run one at a time with nothing else on the machine: the seconds in the rows are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from trl_bporag import DenseIndex, Retriever, load_beir, load_retriever  # noqa: E402
from trl_bporag.hardware import bf16_native, describe_hardware, hardware_summary  # noqa: E402
from trl_bporag.metrics import has_answer, paired_bootstrap_ci, per_query_metrics  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EVAL_SETS = (("squad-dev", "test"), ("hotpotqa-distractor", "test"), ("nq-open", "test"))
KS = (1, 5, 10, 20)
ANCHORS = ("mnrl-answers", "lsr")


# -- evaluation ----------------------------------------------------------------------------------------------------
def evaluate(model) -> dict:
    """Per-question Recall@k and answer-hit@k on each test split (encoding in the machine's compute dtype:
    bf16 where native, as the issue-11 rows were measured; exact search)."""
    out = {}
    for name, split in EVAL_SETS:
        data = load_beir(DATA / name, split)
        r = Retriever(model)
        index = DenseIndex.from_corpus(r, data.corpus)
        _, rows = index.search(r.encode_queries(data.split.questions), max(KS))
        ids = [[data.corpus.ids[j] for j in row if j >= 0] for row in rows]
        passages = [[data.corpus.passage(j, True) for j in row if j >= 0] for row in rows]
        out[name] = per_query_metrics(ids, data.split.gold_ids, passages, data.split.answers, ks=KS)
    return out


# -- the training questions and their base top-n -------------------------------------------------------------------
def train_top(n_questions: int, depth: int = 50):
    """The first ``n_questions`` squad-dev train questions and the base retriever's top-``depth`` rows."""
    train = load_beir(DATA / "squad-dev", "train")
    split = train.split.head(n_questions)
    r = Retriever(load_retriever())
    index = DenseIndex.from_corpus(r, train.corpus)
    _, rows = index.search(r.encode_queries(split.questions), depth)
    return train.corpus, split, [[int(j) for j in row if j >= 0] for row in rows]


def _st_args(out: Path, args):
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments(
        output_dir=str(out / "model"), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        num_train_epochs=args.epochs, bf16=bf16_native("cpu"), use_cpu=True, seed=0, save_strategy="no",
        report_to=[], logging_steps=20, batch_sampler="no_duplicates")


def mnrl_row(args, out: Path, gold: bool) -> dict:
    """Anchor (a) / the ceiling: sentence-transformers' MNRL with one hard negative per question.

    Positive: the best-ranked top-50 passage that holds a gold answer (``gold``: the gold passage). Hard negative: the
    best-ranked top-50 passage that holds no gold answer (``gold``: the best-ranked non-gold passage)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    t0 = time.perf_counter()
    corpus, split, tops = train_top(args.train_queries)
    rows = {"anchor": [], "positive": [], "negative": []}
    for q, answers, golds, top in zip(split.questions, split.answers, split.gold_ids, tops):
        texts = [corpus.passage(j, True) for j in top]
        if gold:
            pos_ok = [corpus.ids[j] in golds for j in top]
        else:
            pos_ok = [has_answer(t, answers) for t in texts]
        if gold and not any(pos_ok):
            texts.insert(0, corpus.passage(corpus.index_of(golds[0]), True))
            pos_ok.insert(0, True)
        if not any(pos_ok) or all(pos_ok):
            continue
        rows["anchor"].append(q)
        rows["positive"].append(texts[pos_ok.index(True)])
        rows["negative"].append(texts[pos_ok.index(False)])
    t_data = time.perf_counter() - t0
    model = load_retriever()
    trainer = SentenceTransformerTrainer(model=model, args=_st_args(out, args), train_dataset=Dataset.from_dict(rows),
                                         loss=MultipleNegativesRankingLoss(model))
    t1 = time.perf_counter()
    trainer.train()
    return {"model": model, "train_rows": len(rows["anchor"]), "data_seconds": t_data,
            "train_seconds": time.perf_counter() - t1}


def lsr_row(args, out: Path) -> dict:
    """Anchor (b), REPLUG-LSR: KL between the retriever's softmax over its top-m passages and the softmax of the
    generator's log p(gold answer | question, passage); sentence-transformers' DistillKLDivLoss."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
    from sentence_transformers.util import pairwise_cos_sim

    from trl_bporag.likelihood import answer_log_likelihood
    from trl_bporag.models import load_generator

    t0 = time.perf_counter()
    corpus, split, tops = train_top(args.train_queries, args.lsr_top_m)
    gen, tok = load_generator(args.generator)
    questions, windows, answers = [], [], []
    for q, a, top in zip(split.questions, split.answers, tops):
        for j in top:
            questions.append(q)
            windows.append([corpus.passage(j, True)])
            answers.append(a)
    scores = answer_log_likelihood(gen, tok, questions, windows, answers, max_passage_tokens=args.judge_passage_tokens,
                                   progress=True)
    m = args.lsr_top_m
    data = {"query": list(split.questions)}
    for i in range(m):
        data[f"passage_{i}"] = [corpus.passage(top[i], True) for top in tops]
    data["label"] = [scores[b * m:(b + 1) * m] for b in range(len(tops))]
    t_data = time.perf_counter() - t0
    model = load_retriever()
    loss = DistillKLDivLoss(model, similarity_fct=pairwise_cos_sim, student_temperature=args.lsr_student_temperature,
                            teacher_temperature=args.lsr_teacher_temperature)
    trainer = SentenceTransformerTrainer(model=model, args=_st_args(out, args), train_dataset=Dataset.from_dict(data),
                                         loss=loss)
    t1 = time.perf_counter()
    trainer.train()
    return {"model": model, "train_rows": len(tops), "generator_passes": len(questions), "data_seconds": t_data,
            "train_seconds": time.perf_counter() - t1}


def vs_original_pairs(rows):
    """Listwise rows -> the pairs ``pairing="vs_original"`` makes of the same judged windows: the original list (the
    first) against each other list whose score differs, the better one chosen."""
    from datasets import Dataset

    out = []
    for row in rows:
        (orig, *others), (s0, *scores) = row["lists"], row["list_scores"]
        for window, score in zip(others, scores):
            if score != s0:
                chosen, rejected = (orig, window) if s0 > score else (window, orig)
                out.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
                            "chosen_score": max(s0, score), "rejected_score": min(s0, score)})
    return Dataset.from_list(out)


def rpo_row(args, out: Path) -> dict:
    """RPO: RetrievalPreferenceBuilder pairs (answers only) -> SetDPOTrainer."""
    from datasets import load_from_disk

    from trl_bporag import SetDPOConfig, SetDPOTrainer
    from trl_bporag.preferences import RetrievalPreferenceBuilder

    t0 = time.perf_counter()
    pairs_dir = Path(args.pairs_dir) if args.pairs_dir else out / "pairs"
    if args.pairs_dir and (pairs_dir / "stats.json").is_file():
        pairs = load_from_disk(str(pairs_dir))
        described = json.loads((pairs_dir / "stats.json").read_text())
        stats, t_data = described["stats"], described.get("seconds")
        if args.pairing == "vs_original" and "lists" in pairs.column_names:  # the same judged windows, as pairs
            pairs = vs_original_pairs(pairs)
            stats = {**stats, "pairs": len(pairs)}
    else:
        train = load_beir(DATA / "squad-dev", "train")
        r = Retriever(load_retriever())
        index = DenseIndex.from_corpus(r, train.corpus)
        builder_kwargs = {}
        if args.judge in ("answer_likelihood", "generator_f1"):
            from trl_bporag.models import load_generator

            builder_kwargs["generator"], builder_kwargs["tokenizer"] = load_generator(args.generator)
        builder = RetrievalPreferenceBuilder(r, index, train.corpus, judge=args.judge, k=5, perturbations="minimal",
                                             num_perturbations=args.num_perturbations, pairing=args.pairing,
                                             max_passage_tokens=args.judge_passage_tokens, **builder_kwargs)
        # --resume_pairs: a long judge (the reader's generator_f1: hours on a CPU) is built over several runs; the
        # builder refuses shards written with another configuration
        pairs = builder.build(train.split.head(args.train_queries), output_dir=pairs_dir, resume=args.resume_pairs)
        stats = builder.describe()["stats"]
        t_data = time.perf_counter() - t0
        described = json.loads((pairs_dir / "stats.json").read_text())
        (pairs_dir / "stats.json").write_text(json.dumps({**described, "seconds": t_data}, indent=2))
    loss_types = args.loss_type.split(",")
    weights = [float(x) for x in args.loss_weights.split(",")] if args.loss_weights else None
    cfg = SetDPOConfig(output_dir=str(out / "model"), k=5, beta=args.beta, loss_type=loss_types, loss_weights=weights,
                       reference=args.reference, reference_margin_scale=args.reference_margin_scale,
                       learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
                       num_train_epochs=args.epochs, logging_steps=20, save_strategy="no", report_to=[],
                       use_cpu=True, seed=0, max_passage_length=256)  # bf16: where the CPU computes it natively
    trainer = SetDPOTrainer(load_retriever(), args=cfg, train_dataset=pairs.shuffle(seed=0))
    t1 = time.perf_counter()
    trainer.train()
    return {"model": trainer.model, "pairs": len(pairs), "pair_stats": stats, "data_seconds": t_data,
            "train_seconds": time.perf_counter() - t1, "steps": trainer.state.global_step}


# -- the table -----------------------------------------------------------------------------------------------------
def _mean(values) -> float:
    return float(np.mean(values))


COLUMNS = [("squad-dev", "recall@1"), ("squad-dev", "recall@5"), ("squad-dev", "answer_hit@5"),
           ("squad-dev", "recall@20"), ("hotpotqa-distractor", "recall@5"), ("hotpotqa-distractor", "answer_hit@5"),
           ("nq-open", "recall@1")]
SHORT = {"squad-dev": "squad", "hotpotqa-distractor": "hotpot", "nq-open": "nq"}


def _diff_cell(a, b, value: str = "") -> str:
    """``value (diff [low, high])`` (or ``diff [low, high]`` without a value) of mean(a) − mean(b), bold when the
    paired bootstrap 95% CI excludes 0."""
    ci = paired_bootstrap_ci(a, b, n_resamples=1000)
    text = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
    text = f"{value} ({text})" if value else text
    return f"**{text}**" if ci["significant"] else text


def _header(*first: str) -> list[str]:
    """The markdown header of a table with the columns ``first`` then one per metric in COLUMNS."""
    names = [*first, *(f"{SHORT[d]} {m}" for d, m in COLUMNS)]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def compare(out: Path, pairs: list[str]) -> str:
    """Rows 'A-B': A minus B [95% CI] on every column (e.g. a recipe against its ablation)."""
    lines = _header("A vs B")
    for pair in pairs:
        a, b = (json.loads((out / f"{name}.json").read_text())["per_query"] for name in pair.split(":"))
        cells = [_diff_cell(a[d][m], b[d][m]) for d, m in COLUMNS]
        lines.append(f"| {pair.replace(':', ' vs ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(out: Path) -> str:
    rows = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    if "base" not in rows:
        raise ValueError(f"{out}: no base.json; run --row base first")
    order = ["base", "mnrl-gold", *ANCHORS] + sorted(n for n in rows if n not in ("base", "mnrl-gold", *ANCHORS))
    names = [n for n in order if n in rows]
    lines = _header("row", "train rows", "data s", "train s")
    base = rows["base"]["per_query"]
    for n in names:
        row = rows[n]["per_query"]
        if n == "base":
            cells = [f"{_mean(row[d][m]):.3f}" for d, m in COLUMNS]
        else:
            cells = [_diff_cell(row[d][m], base[d][m], f"{_mean(row[d][m]):.3f}") for d, m in COLUMNS]
        info = rows[n].get("info", {})
        n_rows = info.get("pairs", info.get("train_rows", ""))
        lines.append(f"| {n} | {n_rows} | {info.get('data_seconds', 0) or 0:.0f} | {info.get('train_seconds', 0):.0f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Differences against the anchors (row minus anchor [95% CI]; bold: the CI excludes 0):", ""]
    for anchor in (a for a in ANCHORS if a in rows):
        lines += _header(f"row vs {anchor}")
        for n in names:
            if n in ("base", anchor, "mnrl-gold") or n in ANCHORS:
                continue
            cells = [_diff_cell(rows[n]["per_query"][d][m], rows[anchor]["per_query"][d][m]) for d, m in COLUMNS]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--row", choices=("base", "mnrl-answers", "mnrl-gold", "lsr", "rpo"))
    p.add_argument("--name", default=None, help="file name of the row (default: --row)")
    p.add_argument("--table", action="store_true", help="print the table of the saved rows")
    p.add_argument("--compare", default=None, help="comma-separated A:B row pairs: A minus B with CIs")
    p.add_argument("--smoke", action="store_true", help="train, but neither evaluate nor save the row (a quick check)")
    p.add_argument("--output_dir", default="runs/rpo-table")
    p.add_argument("--train_queries", type=int, default=1500)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--judge", default="answer_hit")
    p.add_argument("--generator", default="HuggingFaceTB/SmolLM2-135M-Instruct",
                   help="the generator of the generator_f1 / answer_likelihood judges and of lsr (e.g. reader)")
    p.add_argument("--judge_passage_tokens", type=int, default=96,
                   help="passages the judging generator reads are cut to this many tokens (the reader: 256)")
    p.add_argument("--pairs_dir", default=None, help="reuse the pairs of an earlier rpo row")
    p.add_argument("--resume_pairs", action="store_true",
                   help="continue the pairs an interrupted run of this row left in its work folder (default: rebuild; "
                        "the pairs' seconds then count the last run only)")
    p.add_argument("--loss_type", default="sigmoid")
    p.add_argument("--loss_weights", default=None)
    p.add_argument("--beta", type=float, default=10.0)
    p.add_argument("--reference", default="model", choices=("model", "free"))
    p.add_argument("--reference_margin_scale", type=float, default=None)
    p.add_argument("--num_perturbations", type=int, default=8)
    p.add_argument("--pairing", default="vs_original", choices=("vs_original", "listwise"))
    p.add_argument("--lsr_top_m", type=int, default=10)
    p.add_argument("--lsr_student_temperature", type=float, default=0.05)
    p.add_argument("--lsr_teacher_temperature", type=float, default=1.0)
    args = p.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.row:
        name = args.name or args.row
        work = out / "work" / name
        t0 = time.perf_counter()
        if args.row == "base":
            info = {"model": load_retriever()}
        elif args.row in ("mnrl-answers", "mnrl-gold"):
            info = mnrl_row(args, work, gold=args.row == "mnrl-gold")
        elif args.row == "lsr":
            info = lsr_row(args, work)
        else:
            info = rpo_row(args, work)
        model = info.pop("model")
        if args.row != "base":  # kept for the +RPO row's answers: bench/headroom.py --row rpo --retriever <it>
            model.save_pretrained(str(work / "retriever"))
        if args.smoke:
            print(json.dumps({"row": name, "smoke": True, "info": info}), flush=True)
            return
        per_query = evaluate(model)
        info["total_seconds"] = time.perf_counter() - t0
        info["hardware"] = hardware_summary()
        summary = {d: {m: round(_mean(v), 4) for m, v in per_query[d].items()} for d in per_query}
        (out / f"{name}.json").write_text(json.dumps({"args": vars(args), "info": info, "summary": summary,
                                                      "per_query": per_query}))
        print(json.dumps({"row": name, "info": info, "summary": summary}), flush=True)
        print(f"machine: {describe_hardware()}", flush=True)
    if args.table:
        print(table(out))
    if args.compare:
        print(compare(out, args.compare.split(",")))


if __name__ == "__main__":
    main()
