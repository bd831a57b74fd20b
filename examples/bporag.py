"""BPO-RAG end to end on one data set: index -> RPO pairs -> RPO -> GPO pairs -> GPO -> evaluate the paper's four rows.

    python examples/bporag.py                                  # the small embedded default (minutes on 2 CPU cores)
    python examples/bporag.py --config bporag.yaml             # any flag below, from a YAML file
    python examples/bporag.py --rpo_queries 1500 --gpo_queries 300 --eval_queries 200 \
        --eval_datasets ../shared/data/squad-dev:test,../shared/data/hotpotqa-distractor:test

Rows (as in the paper's tables): vanilla (base retriever + base generator), +RPO (tuned retriever + base generator),
+GPO (base retriever + GPO generator), full BPO-RAG (tuned retriever + GPO generator). By default the +GPO row uses the
generator aligned under the tuned retriever; ``--gpo_ablation separate`` trains a second generator under the base
retriever for that row, as an ablation that never saw RPO would.

Each stage writes a standard artifact under ``--output_dir`` and is skipped when its artifact is already there (pass
``--overwrite`` to redo them): ``rpo-pairs/`` and ``gpo-pairs/`` (``datasets`` folders + stats.json, resumable),
``retriever-rpo/`` (a sentence-transformers folder), ``generator-gpo/`` (a PEFT adapter + bporag_config.json), and
``results.json``, ``results.md``, ``results.png``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import TrlParser

from trl_bporag import (
    DEFAULT_GENERATOR,
    DEFAULT_RETRIEVER,
    DenseIndex,
    QASplit,
    RAGPipeline,
    Retriever,
    SetDPOConfig,
    SetDPOTrainer,
    load_generator,
    load_rag_dataset,
    load_retriever,
)
from trl_bporag.preferences import GenerationPreferenceBuilder, RetrievalPreferenceBuilder, check_dpo_lengths
from trl_bporag.trainers import add_bporag_card, gpo_defaults

logger = logging.getLogger("bporag")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROWS = ("vanilla", "+RPO", "+GPO", "BPO-RAG")


@dataclass
class BPORAGArguments:
    dataset: str = field(default=str(DATA / "squad-dev"), metadata={"help": "training data (BEIR layout or HF QA)"})
    train_split: str = field(default="train")
    eval_datasets: str = field(default="", metadata={
        "help": "comma-separated path[:split] to evaluate on (default: --dataset with split test)"})
    output_dir: str = field(default="runs/bporag")
    retriever: str = field(default=DEFAULT_RETRIEVER)
    generator: str = field(default=DEFAULT_GENERATOR)
    k: int = field(default=5, metadata={"help": "passages the generator reads"})
    seed: int = field(default=0)
    overwrite: bool = field(default=False, metadata={"help": "redo stages whose outputs exist"})
    stages: str = field(default="rpo_pairs,rpo,gpo_pairs,gpo,eval", metadata={"help": "which stages to run"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast for training and generation"})
    # RPO pairs
    rpo_queries: int = field(default=300, metadata={"help": "training queries for RPO pairs"})
    rpo_judge: str = field(default="answer_hit", metadata={"help": "answer_hit (fast) or generator_f1 (paper)"})
    rpo_perturbations: str = field(default="minimal", metadata={"help": "paper | minimal | mixed"})
    rpo_num_perturbations: int = field(default=8)
    rpo_top_n: int = field(default=50, metadata={"help": "depth of the base retriever's list"})
    # RPO training
    rpo_loss_type: str = field(default="sigmoid,sft")
    rpo_loss_weights: str = field(default="0.25,1")
    rpo_beta: float = field(default=10.0)
    rpo_learning_rate: float = field(default=2e-5)
    rpo_epochs: float = field(default=1.0)
    rpo_batch_size: int = field(default=16)
    # GPO pairs
    gpo_queries: int = field(default=48, metadata={"help": "training queries for GPO pairs"})
    gpo_query_offset: int = field(default=0, metadata={"help": "first training query used for GPO pairs"})
    num_beams: int = field(default=2)
    num_samples: int = field(default=1)
    temperature: float = field(default=1.0)
    top_p: float = field(default=0.95)
    gpo_pairing: str = field(default="best_worst")
    # GPO training
    gpo_beta: float = field(default=0.1)
    gpo_learning_rate: float = field(default=1e-4)
    gpo_epochs: float = field(default=1.0)
    gpo_batch_size: int = field(default=2)
    gpo_grad_accum: int = field(default=2)
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    max_length: int = field(default=1024, metadata={"help": "DPO max_length (the GPO prompts are fitted to it)"})
    gpo_ablation: str = field(default="shared", metadata={
        "help": "shared: the +GPO row uses the generator aligned under the tuned retriever; separate: train another "
                "one under the base retriever"})
    # evaluation
    eval_queries: int = field(default=50)
    max_new_tokens: int = field(default=24)
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    plot: bool = field(default=True, metadata={"help": "write results.png (needs matplotlib)"})


def _done(path: Path, marker: str, args: BPORAGArguments) -> bool:
    return not args.overwrite and (path / marker).exists()


def _log(msg: str) -> None:
    print(f"[bporag {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _index(retriever: Retriever, corpus) -> DenseIndex:
    return DenseIndex.cached(retriever, corpus)


def rpo_pairs(args, data, out: Path):
    from datasets import load_from_disk

    if _done(out, "stats.json", args):
        _log(f"RPO pairs: reusing {out}")
        return load_from_disk(str(out))
    retriever = Retriever(args.retriever)
    gen = tok = None
    if args.rpo_judge == "generator_f1":
        gen, tok = load_generator(args.generator, torch_dtype="bfloat16" if args.bf16 else "float32")
    builder = RetrievalPreferenceBuilder(retriever, _index(retriever, data.corpus), data.corpus, gen, tok,
                                         judge=args.rpo_judge, k=args.k, perturbations=args.rpo_perturbations,
                                         num_perturbations=args.rpo_num_perturbations, top_n=args.rpo_top_n,
                                         seed=args.seed)
    pairs = builder.build(data.split, output_dir=out, resume=not args.overwrite, max_queries=args.rpo_queries)
    _log(f"RPO pairs: {len(pairs)} ({builder.describe()['stats']})")
    return pairs


def rpo_train(args, pairs, out: Path) -> str:
    if _done(out, "modules.json", args):
        _log(f"RPO: reusing {out}")
        return str(out)
    config = SetDPOConfig(
        output_dir=str(out), k=args.k, beta=args.rpo_beta, loss_type=args.rpo_loss_type.split(","),
        loss_weights=[float(w) for w in args.rpo_loss_weights.split(",")] if args.rpo_loss_weights else None,
        learning_rate=args.rpo_learning_rate, num_train_epochs=args.rpo_epochs,
        per_device_train_batch_size=args.rpo_batch_size, bf16=args.bf16, use_cpu=not _cuda(), seed=args.seed,
        logging_steps=10, save_strategy="no", report_to=[], max_passage_length=256,
    )
    trainer = SetDPOTrainer(load_retriever(args.retriever), args=config, train_dataset=pairs.shuffle(seed=args.seed))
    trainer.train()
    trainer.save_model(str(out))
    trainer.create_model_card(dataset_name=args.dataset)
    _log(f"RPO: retriever saved to {out}")
    return str(out)


def gpo_pairs(args, data, retriever_path: str, out: Path):
    from datasets import load_from_disk

    if _done(out, "stats.json", args):
        _log(f"GPO pairs: reusing {out}")
        return load_from_disk(str(out))
    retriever = Retriever(retriever_path)
    gen, tok = load_generator(args.generator, torch_dtype="bfloat16" if args.bf16 else "float32")
    builder = GenerationPreferenceBuilder(
        retriever, _index(retriever, data.corpus), data.corpus, gen, tok, k=args.k, num_beams=args.num_beams,
        num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p, pairing=args.gpo_pairing,
        seed=args.seed, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, max_length=args.max_length,
    )
    split = data.split
    if args.gpo_query_offset:  # e.g. queries the RPO pairs did not use
        o = args.gpo_query_offset
        split = QASplit(split.ids[o:], split.questions[o:], split.answers[o:], split.gold_ids[o:], split.name)
    pairs = builder.build(split, output_dir=out, resume=not args.overwrite, max_queries=args.gpo_queries)
    _log(f"GPO pairs: {len(pairs)} ({builder.describe()['stats']})")
    return pairs


def gpo_train(args, pairs, retriever_path: str, out: Path) -> str:
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    if _done(out, "adapter_config.json", args):
        _log(f"GPO: reusing {out}")
        return str(out)
    if len(pairs) == 0:
        raise ValueError("GPO pairs: none were built (all ties?); raise --gpo_queries or --num_samples")
    model, tok = load_generator(args.generator, torch_dtype="float32")
    pairs, _ = check_dpo_lengths(pairs, tok, args.max_length)
    defaults = gpo_defaults(_cuda())
    defaults.update(bf16=args.bf16)
    config = DPOConfig(
        output_dir=str(out), beta=args.gpo_beta, learning_rate=args.gpo_learning_rate,
        num_train_epochs=args.gpo_epochs, per_device_train_batch_size=args.gpo_batch_size,
        gradient_accumulation_steps=args.gpo_grad_accum, max_length=args.max_length, seed=args.seed,
        **{k: v for k, v in defaults.items() if k != "learning_rate"},
    )
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=pairs.shuffle(seed=args.seed),
                         processing_class=tok, peft_config=lora)
    add_bporag_card(trainer, {"retriever": retriever_path, "k": args.k, "generator": args.generator,
                              "pairs": str(out.parent / "gpo-pairs"), "beta": args.gpo_beta,
                              "learning_rate": args.gpo_learning_rate, "num_beams": args.num_beams,
                              "num_samples": args.num_samples})
    trainer.train()
    trainer.save_model(str(out))
    trainer.create_model_card(dataset_name=args.dataset)
    curve = [(h["step"], round(h["loss"], 4), round(h.get("rewards/accuracies", float("nan")), 3))
             for h in trainer.state.log_history if "loss" in h]
    (out / "train_curve.json").write_text(json.dumps(curve))
    _log(f"GPO: adapter saved to {out}; curve (step, loss, reward acc) {curve}")
    return str(out)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def evaluate_rows(args, retrievers: dict, generators: dict, out: Path) -> dict:
    """The four rows on each evaluation data set: retrieval metrics per retriever, EM/F1 per (retriever, generator)."""
    specs = [s for s in (args.eval_datasets or f"{args.dataset}:test").split(",") if s]
    rows = {"vanilla": ("base", "base"), "+RPO": ("rpo", "base"), "+GPO": ("base", "gpo_ablation"),
            "BPO-RAG": ("rpo", "gpo")}
    dtype = "bfloat16" if args.bf16 else "float32"
    by_path: dict = {}
    for path in generators.values():
        if path not in by_path:
            by_path[path] = load_generator(path, torch_dtype=dtype)
    loaded = {name: by_path[path] for name, path in generators.items()}
    results = []
    for spec in specs:
        path, _, split_name = spec.partition(":")
        data = load_rag_dataset(path, split_name or "test")
        split = data.split.head(args.eval_queries)
        pipes = {}
        for name, rpath in retrievers.items():
            r = Retriever(rpath)
            pipes[name] = (r, _index(r, data.corpus))
        for row, (rname, gname) in rows.items():
            r, index = pipes[rname]
            gen, tok = loaded[gname]
            t0 = time.perf_counter()
            pipe = RAGPipeline(r, index, data.corpus, gen, tok, k=args.k, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens)
            res = pipe.evaluate(split, ks=(1, 5, 10))
            m = res["metrics"]
            entry = {"dataset": Path(path).name, "split": split_name or "test", "row": row,
                     "retriever": retrievers[rname], "generator": generators[gname], "queries": len(split),
                     **{key: round(v, 4) for key, v in m.items() if not key.endswith("_seconds")},
                     "seconds": round(time.perf_counter() - t0, 1)}
            results.append(entry)
            _log(json.dumps(entry))
    return {"rows": results, "args": asdict(args)}


def markdown(results: dict) -> str:
    cols = ["recall@1", "recall@5", "recall@10", "answer_hit@5", "exact_match", "f1"]
    lines = ["| dataset | row | queries | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for r in results["rows"]:
        lines.append(f"| {r['dataset']} | {r['row']} | {r['queries']} | "
                     + " | ".join(f"{r[c]:.3f}" if c in r else "-" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install matplotlib): no results.png")
        return False
    datasets = list(dict.fromkeys(r["dataset"] for r in results["rows"]))
    metrics = ["recall@5", "recall@10", "exact_match", "f1"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        rows = [r for r in results["rows"] if r["dataset"] == name]
        width = 0.8 / len(rows)
        for j, r in enumerate(rows):
            xs = [i + j * width for i in range(len(metrics))]
            ax.bar(xs, [r.get(m, 0.0) for m in metrics], width, label=r["row"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], metrics)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} ({rows[0]['queries']} queries)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(args: BPORAGArguments) -> dict:
    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    unknown = stages - {"rpo_pairs", "rpo", "gpo_pairs", "gpo", "eval"}
    if unknown:
        raise ValueError(f"stages: unknown {sorted(unknown)}")
    if args.gpo_ablation not in ("shared", "separate"):
        raise ValueError(f"gpo_ablation: expected 'shared' or 'separate', got {args.gpo_ablation!r}")
    data = load_rag_dataset(args.dataset, args.train_split)
    retriever_rpo = str(out / "retriever-rpo")
    if "rpo_pairs" in stages or "rpo" in stages:
        pairs = rpo_pairs(args, data, out / "rpo-pairs")
        if "rpo" in stages:
            retriever_rpo = rpo_train(args, pairs, out / "retriever-rpo")
    generator_gpo = str(out / "generator-gpo")
    generator_ablation = generator_gpo
    if "gpo_pairs" in stages or "gpo" in stages:
        pairs = gpo_pairs(args, data, retriever_rpo, out / "gpo-pairs")
        if "gpo" in stages:
            generator_gpo = gpo_train(args, pairs, retriever_rpo, out / "generator-gpo")
        if args.gpo_ablation == "separate":
            pairs_b = gpo_pairs(args, data, args.retriever, out / "gpo-pairs-base-retriever")
            if "gpo" in stages:
                generator_ablation = gpo_train(args, pairs_b, args.retriever, out / "generator-gpo-base-retriever")
    if args.gpo_ablation == "separate":
        generator_ablation = str(out / "generator-gpo-base-retriever")
    results: dict = {}
    if "eval" in stages:
        results = evaluate_rows(args, {"base": args.retriever, "rpo": retriever_rpo},
                                {"base": args.generator, "gpo": generator_gpo, "gpo_ablation": generator_ablation},
                                out)
        results["total_seconds"] = round(time.perf_counter() - start, 1)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        table = markdown(results)
        (out / "results.md").write_text(table)
        if args.plot and plot(results, out / "results.png"):
            _log(f"chart: {out / 'results.png'}")
        print(table)
    _log(f"done in {time.perf_counter() - start:.0f} s; outputs in {out}")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (bporag_args,) = TrlParser((BPORAGArguments,)).parse_args_and_config()
    main(bporag_args)
