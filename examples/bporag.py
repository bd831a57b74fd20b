"""BPO-RAG end to end on one data set: index -> RPO pairs -> RPO -> GPO pairs -> GPO -> evaluate the paper's four rows.

    python examples/bporag.py                                  # the small embedded default (minutes on 2 CPU cores)
    python examples/bporag.py --config bporag.yaml             # any flag below, from a YAML file
    python examples/bporag.py --rpo_queries 1500 --gpo_queries 300 --eval_queries 200 \
        --eval_datasets ../shared/data/squad-dev:test,../shared/data/hotpotqa-distractor:test

Rows (as in the paper's tables): vanilla (base retriever + base generator), +RPO (tuned retriever + base generator),
+GPO (base retriever + GPO generator), full BPO-RAG (tuned retriever + GPO generator). By default the +GPO row uses the
generator aligned under the tuned retriever; ``--gpo_ablation separate`` trains a second generator under the base
retriever for that row, as an ablation that never saw RPO would (the shared generator is then shown beside it, as a
fifth row).

Each stage writes a standard artifact under ``--output_dir`` and is skipped when its artifact is already there (pass
``--overwrite`` to redo them): ``rpo-pairs/`` and ``gpo-pairs/`` (``datasets`` folders + stats.json, resumable),
``retriever-rpo/`` (a sentence-transformers folder), ``generator-gpo/`` (a PEFT adapter + bporag_config.json), and
``results.json``, ``results.md``, ``results.png``, ``predictions-<data set>.jsonl`` (every row's answer per question).

Every prompt (RPO generator judges, GPO pairs, evaluation) starts the generator's reply with ``--answer_prefix``
(default ``The answer is "``: SmolLM2 then answers with a short quoted span; ``""`` for none).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from trl import DPOConfig, ModelConfig, TrlParser

from trl_bporag import (
    DEFAULT_GENERATOR,
    DEFAULT_RETRIEVER,
    DenseIndex,
    QASplit,
    RAGPipeline,
    Retriever,
    SetDPOConfig,
    load_generator,
    load_rag_dataset,
)
from trl_bporag.generation import QUOTED_ANSWER_PREFIX
from trl_bporag.losses import REFERENCES
from trl_bporag.metrics import paired_bootstrap_ci
from trl_bporag.monitor import StageLog, large_allocations_returned
from trl_bporag.preferences import (
    GENERATOR_JUDGES,
    JUDGES,
    GenerationPreferenceBuilder,
    RetrievalPreferenceBuilder,
)
from trl_bporag.preferences.rpo import PAIRINGS
from trl_bporag.report import plot_results, results_markdown
from trl_bporag.trainers import GPO_MAX_LENGTH, gpo_defaults
from trl_bporag.utils import quiet_known_warnings


def _stage_script(name: str):
    """``examples/<name>.py`` as a module, without putting ``examples/`` on ``sys.path`` for good (its evaluate.py
    would shadow the ``evaluate`` package in the importing process)."""
    spec = importlib.util.spec_from_file_location(f"bporag_stage_{name}", Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rpo, gpo = _stage_script("rpo"), _stage_script("gpo")  # bporag.py runs the stage scripts' main functions

logger = logging.getLogger("bporag")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    max_passage_tokens: int = field(default=96, metadata={
        "help": "each passage the generator reads is cut to this many tokens (GPO pairs, GPO and evaluation alike)"})
    answer_prefix: str = field(default=QUOTED_ANSWER_PREFIX, metadata={
        "help": "text the generator's reply starts with, in every stage and row (\"\": none); the default makes "
                "SmolLM2 answer with a short quoted span (bench/prompt_choice.py)"})
    seed: int = field(default=0)
    overwrite: bool = field(default=False, metadata={"help": "redo stages whose outputs exist"})
    stages: str = field(default="rpo_pairs,rpo,gpo_pairs,gpo,eval", metadata={"help": "which stages to run"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast for training and generation"})
    # RPO pairs
    rpo_queries: int = field(default=300, metadata={"help": "training queries for RPO pairs"})
    rpo_judge: str = field(default="answer_hit", metadata={
        "help": "answer_hit (fast) | answer_likelihood (graded, generator forward passes) | generator_f1 (paper)"})
    rpo_perturbations: str = field(default="minimal", metadata={"help": "paper | minimal | mixed"})
    rpo_num_perturbations: int = field(default=8)
    rpo_top_n: int = field(default=50, metadata={"help": "depth of the base retriever's list"})
    rpo_pairing: str = field(default="listwise", metadata={
        "help": "listwise (one row per query, Plackett-Luce: the measured best) | vs_original | best_worst"})
    # RPO training
    rpo_loss_type: str = field(default="sigmoid", metadata={"help": "e.g. sigmoid | sigmoid,sft | sft"})
    rpo_loss_weights: str | None = field(default=None, metadata={"help": "comma-separated, one per loss type"})
    rpo_reference: str = field(default="free", metadata={
        "help": "free (reference-free: the measured best) | model (the paper's frozen reference)"})
    rpo_beta: float = field(default=10.0)
    rpo_learning_rate: float = field(default=2e-5)
    rpo_epochs: float = field(default=1.0)
    rpo_batch_size: int = field(default=16)
    # GPO pairs
    gpo_queries: int = field(default=64, metadata={"help": "training queries for GPO pairs"})
    gpo_query_offset: int = field(default=0, metadata={"help": "first training query used for GPO pairs"})
    num_beams: int = field(default=1, metadata={"help": "beams of the beam-search candidate (1: greedy)"})
    num_samples: int = field(default=3, metadata={"help": "sampled candidates per question (best vs worst of all)"})
    temperature: float = field(default=1.0)
    top_p: float = field(default=0.95)
    gpo_pairing: str = field(default="best_worst")
    # GPO training (defaults: trl_bporag.trainers.gpo_defaults)
    gpo_beta: float = field(default=0.5)
    gpo_loss_type: str = field(default="sigmoid", metadata={
        "help": "DPOConfig.loss_type, comma-separated: e.g. sigmoid | sigmoid,sft (DPO + NLL of the chosen answer)"})
    gpo_loss_weights: str | None = field(default=None, metadata={"help": "comma-separated, one per GPO loss type"})
    gpo_learning_rate: float = field(default=5e-4)
    gpo_epochs: float = field(default=1.0)
    gpo_batch_size: int = field(default=1)
    gpo_grad_accum: int = field(default=1)
    gpo_eval_fraction: float = field(default=0.1, metadata={
        "help": "share of the GPO pairs held out to measure reward accuracy after training (0: none)"})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_top_layers: int = field(default=6, metadata={
        "help": "LoRA on the last N decoder layers only (0: all layers); cheaper steps, less memory"})
    max_length: int = field(default=GPO_MAX_LENGTH, metadata={
        "help": "DPO max_length (the GPO prompts are fitted to it)"})
    gpo_ablation: str = field(default="shared", metadata={
        "help": "shared: the +GPO row uses the generator aligned under the tuned retriever; separate: train another "
                "one under the base retriever"})
    # evaluation
    eval_queries: int = field(default=50)
    max_new_tokens: int = field(default=24)
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    bootstrap_resamples: int = field(default=1000, metadata={"help": "paired bootstrap resamples for the 95%% CIs"})

    def __post_init__(self):
        """Refuse bad numbers at parse time, before any model is loaded or corpus encoded."""
        positive_ints = ("k", "max_passage_tokens", "rpo_queries", "rpo_num_perturbations", "rpo_top_n",
                         "rpo_batch_size", "gpo_queries", "num_beams", "num_samples", "gpo_batch_size",
                         "gpo_grad_accum", "lora_r", "lora_alpha", "max_length", "eval_queries", "max_new_tokens",
                         "batch_size", "bootstrap_resamples")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name}: expected an integer >= 1, got {value!r}")
        for name in ("rpo_beta", "gpo_beta", "rpo_learning_rate", "gpo_learning_rate", "rpo_epochs", "gpo_epochs",
                     "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"--{name}: expected a finite number > 0, got {value!r}")
        if not 0 <= self.gpo_eval_fraction < 1:
            raise ValueError(f"--gpo_eval_fraction: expected a value in [0, 1), got {self.gpo_eval_fraction!r}")
        if self.lora_top_layers < 0:
            raise ValueError(f"--lora_top_layers: expected >= 0 (0: all layers), got {self.lora_top_layers!r}")
        if self.gpo_loss_weights and len(self.gpo_loss_weights.split(",")) != len(self.gpo_loss_type.split(",")):
            raise ValueError(f"--gpo_loss_weights: expected one weight per --gpo_loss_type entry "
                             f"({self.gpo_loss_type!r}), got {self.gpo_loss_weights!r}")
        if self.gpo_query_offset < 0:
            raise ValueError(f"--gpo_query_offset: expected >= 0, got {self.gpo_query_offset!r}")
        if self.k > self.rpo_top_n:
            raise ValueError(f"--k ({self.k}) must not exceed --rpo_top_n ({self.rpo_top_n})")
        for name, allowed in (("rpo_pairing", PAIRINGS), ("rpo_reference", REFERENCES), ("rpo_judge", JUDGES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name}: expected one of {allowed}, got {getattr(self, name)!r}")
    plot: bool = field(default=True, metadata={"help": "write results.png (needs matplotlib)"})


def _done(path: Path, marker: str, args: BPORAGArguments) -> bool:
    return not args.overwrite and (path / marker).exists()


LOG = StageLog("bporag")


def _dtype(args) -> str:
    """The generator's dtype for generation and (frozen base) GPO training: bf16 with --bf16."""
    return "bfloat16" if args.bf16 else "float32"


def _weights(text: str | None) -> list[float] | None:
    """--rpo_loss_weights / --gpo_loss_weights: comma-separated floats (None: the trainer's equal weights)."""
    return [float(w) for w in text.split(",")] if text else None


def _prefix(args) -> str | None:
    """--answer_prefix, where "" means none."""
    return args.answer_prefix or None


def _retriever(args, path: str) -> Retriever:
    """Encoding under bf16 autocast with --bf16 (2.4x faster on a CPU, Recall@k within 0.001 of float32)."""
    return Retriever(path, dtype=_dtype(args))


def rpo_pairs(args, data, out: Path) -> None:
    """Build the RPO pairs into ``out`` (a ``save_to_disk`` folder + stats.json), unless they are there."""
    if _done(out, "stats.json", args):
        LOG(f"RPO pairs: reusing {out}")
        return
    with LOG.stage("RPO pairs"):
        retriever = _retriever(args, args.retriever)
        gen = tok = None
        if args.rpo_judge in GENERATOR_JUDGES:
            gen, tok = load_generator(args.generator, torch_dtype=_dtype(args))
        builder = RetrievalPreferenceBuilder(retriever, DenseIndex.cached(retriever, data.corpus), data.corpus, gen, tok,
                                             judge=args.rpo_judge, k=args.k, perturbations=args.rpo_perturbations,
                                             num_perturbations=args.rpo_num_perturbations, top_n=args.rpo_top_n,
                                             pairing=args.rpo_pairing, seed=args.seed,
                                             max_passage_tokens=args.max_passage_tokens,
                                             answer_prefix=_prefix(args))
        pairs = builder.build(data.split, output_dir=out, resume=not args.overwrite, max_queries=args.rpo_queries)
        LOG(f"RPO pairs: {len(pairs)} ({builder.describe()['stats']})")


def rpo_train(args, pairs_dir: Path, out: Path) -> str:
    """examples/rpo.py's main on the pairs folder (k comes from the pairs; a folder without pairs is load_pairs'
    ValueError, with the builder's counts)."""
    if _done(out, "modules.json", args):
        LOG(f"RPO: reusing {out}")
        return str(out)
    with LOG.stage("RPO training"), large_allocations_returned():
        config = SetDPOConfig(
            output_dir=str(out), beta=args.rpo_beta, reference=args.rpo_reference,
            loss_type=args.rpo_loss_type.split(","), loss_weights=_weights(args.rpo_loss_weights),
            learning_rate=args.rpo_learning_rate, num_train_epochs=args.rpo_epochs,
            per_device_train_batch_size=args.rpo_batch_size, bf16=args.bf16, use_cpu=not torch.cuda.is_available(), seed=args.seed,
            logging_steps=10, save_strategy="no", report_to=[], max_passage_length=256,
        )
        rpo.main(rpo.RPOScriptArguments(dataset_name=str(pairs_dir)), config,
                 ModelConfig(model_name_or_path=args.retriever))
        LOG(f"RPO: retriever saved to {out}")
    return str(out)


def gpo_pairs(args, data, retriever_path: str, out: Path) -> None:
    """Build the GPO pairs into ``out`` (a ``save_to_disk`` folder + stats.json), unless they are there."""
    if _done(out, "stats.json", args):
        LOG(f"GPO pairs: reusing {out}")
        return
    with LOG.stage(f"GPO pairs ({out.name})"):
        retriever = _retriever(args, retriever_path)
        gen, tok = load_generator(args.generator, torch_dtype=_dtype(args))
        builder = GenerationPreferenceBuilder(
            retriever, DenseIndex.cached(retriever, data.corpus), data.corpus, gen, tok, k=args.k, num_beams=args.num_beams,
            num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p, pairing=args.gpo_pairing,
            seed=args.seed, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            max_passage_tokens=args.max_passage_tokens, max_length=args.max_length,
            answer_prefix=_prefix(args),
        )
        split = data.split
        if args.gpo_query_offset:  # e.g. queries the RPO pairs did not use
            o = args.gpo_query_offset
            split = QASplit(split.ids[o:], split.questions[o:], split.answers[o:], split.gold_ids[o:], split.name)
        pairs = builder.build(split, output_dir=out, resume=not args.overwrite, max_queries=args.gpo_queries)
        LOG(f"GPO pairs: {len(pairs)} ({builder.describe()['stats']})")


def gpo_train(args, pairs_dir: Path, out: Path) -> str:
    """examples/gpo.py's main on the pairs folder (the retriever, k and prompt settings come from its stats.json),
    with a share of the pairs held out and evaluated after the epoch; writes train_curve.json."""
    if _done(out, "adapter_config.json", args):
        LOG(f"GPO: reusing {out}")
        return str(out)
    with LOG.stage(f"GPO training ({out.name})"), large_allocations_returned():
        defaults = gpo_defaults()  # use_cpu + bf16 autocast without CUDA
        defaults.update(bf16=args.bf16, beta=args.gpo_beta, learning_rate=args.gpo_learning_rate,
                        per_device_train_batch_size=args.gpo_batch_size, per_device_eval_batch_size=1,
                        gradient_accumulation_steps=args.gpo_grad_accum, max_length=args.max_length,
                        loss_type=args.gpo_loss_type.split(","), loss_weights=_weights(args.gpo_loss_weights),
                        eval_strategy="epoch" if args.gpo_eval_fraction else "no")
        config = DPOConfig(output_dir=str(out), num_train_epochs=args.gpo_epochs, seed=args.seed, **defaults)
        script_args = gpo.GPOScriptArguments(dataset_name=str(pairs_dir), eval_fraction=args.gpo_eval_fraction,
                                             lora_top_layers=args.lora_top_layers or None)
        # bf16 weights with --bf16 (autocast computes in bf16 anyway; PEFT keeps the LoRA weights in float32): the
        # frozen base takes half the memory
        model_args = ModelConfig(model_name_or_path=args.generator, dtype=_dtype(args), use_peft=True,
                                 lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_target_modules="all-linear",
                                 lora_dropout=0.0)
        trainer = gpo.main(script_args, config, model_args)
        history = trainer.state.log_history
        curve = [{"step": h["step"], "loss": round(h["loss"], 4),
                  "reward_accuracy": round(h.get("rewards/accuracies", float("nan")), 3),
                  "reward_margin": round(h.get("rewards/margins", float("nan")), 3)} for h in history if "loss" in h]
        train_loss = next((h["train_loss"] for h in reversed(history) if "train_loss" in h), float("nan"))
        held_out = next((h for h in reversed(history) if "eval_loss" in h), {})
        n_train = len(trainer.train_dataset)
        summary = {"train_pairs": n_train,
                   "held_out_pairs": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
                   "steps": trainer.state.global_step, "train_loss": round(train_loss, 4), "curve": curve,
                   "held_out": {k: round(v, 4) for k, v in held_out.items() if isinstance(v, float)}}
        (out / "train_curve.json").write_text(json.dumps(summary, indent=2))
        LOG(f"GPO: adapter saved to {out}; {n_train} pairs, {trainer.state.global_step} steps, mean training "
            f"loss {train_loss:.3f}")
        for point in curve:
            LOG(f"  step {point['step']:>4}: loss {point['loss']:.3f}, reward accuracy "
                f"{point['reward_accuracy']:.2f}, margin {point['reward_margin']:.2f}")
        if held_out:
            LOG(f"  held-out pairs ({summary['held_out_pairs']}): loss {held_out['eval_loss']:.3f}, reward "
                f"accuracy {held_out.get('eval_rewards/accuracies', float('nan')):.2f}")
    return str(out)


# the paper's rows: (retriever, generator)
ROW_SPECS = {"vanilla": ("base", "base"), "+RPO": ("rpo", "base"), "+GPO": ("base", "gpo_ablation"),
             "BPO-RAG": ("rpo", "gpo")}
ROWS = tuple(ROW_SPECS)
SHARED_GPO_ROW = "+GPO (aligned under RPO)"


def row_specs(args) -> dict:
    """The rows to evaluate. With ``--gpo_ablation separate`` the +GPO row is the generator aligned under the base
    retriever, and the generator aligned under the tuned one is shown too (under the base retriever), beside it."""
    if args.gpo_ablation != "separate":
        return ROW_SPECS
    specs = dict(ROW_SPECS)
    specs.pop("BPO-RAG")
    return {**specs, SHARED_GPO_ROW: ("base", "gpo"), "BPO-RAG": ROW_SPECS["BPO-RAG"]}


def evaluate_rows(args, retrievers: dict, generators: dict, out: Path | None = None) -> dict:
    """The four rows on each evaluation data set (same questions for every row): retrieval metrics per retriever,
    EM/F1 per (retriever, generator), and the paired bootstrap 95% CI of each row's difference from vanilla. With
    ``out``, every row's answer to every question goes to ``out/predictions-<data set>.jsonl``."""
    specs = [s for s in (args.eval_datasets or f"{args.dataset}:test").split(",") if s]
    by_path: dict = {}
    for path in generators.values():
        if path not in by_path:
            by_path[path] = load_generator(path, torch_dtype=_dtype(args))
    results = []
    for spec in specs:
        path, _, split_name = spec.partition(":")
        data = load_rag_dataset(path, split_name or "test")
        split = data.split.head(args.eval_queries)
        pipes = {}
        for name, rpath in retrievers.items():
            r = _retriever(args, rpath)
            pipes[name] = (r, DenseIndex.cached(r, data.corpus))
        caches = {gpath: {} for gpath in by_path}  # prompt -> answer, per generator: rows share equal prompts
        per_query, answers = {}, {}
        for row, (rname, gname) in row_specs(args).items():
            r, index = pipes[rname]
            gen, tok = by_path[generators[gname]]
            t0 = time.perf_counter()
            pipe = RAGPipeline(r, index, data.corpus, gen, tok, k=args.k, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, max_passage_tokens=args.max_passage_tokens,
                               answer_prefix=_prefix(args))
            res = pipe.evaluate(split, ks=(1, 5, 10), progress=f"{Path(path).name} {row}",
                                answer_cache=caches[generators[gname]], return_predictions=True)
            per_query[row] = res["per_query"]
            answers[row] = [p["prediction"] for p in res["predictions"]]
            entry = {"dataset": Path(path).name, "split": split_name or "test", "row": row,
                     "retriever": retrievers[rname], "generator": generators[gname], "queries": len(split),
                     **{key: round(v, 4) for key, v in res["metrics"].items() if not key.endswith("_seconds")},
                     "seconds": round(time.perf_counter() - t0, 1)}
            if row != "vanilla":
                entry["ci_vs_vanilla"] = {
                    m: {key: (round(v, 4) if isinstance(v, float) else v) for key, v in paired_bootstrap_ci(
                        per_query[row][m], per_query["vanilla"][m], n_resamples=args.bootstrap_resamples,
                        seed=args.seed).items()}
                    for m in res["per_query"]}
            entry["ci_of_mean"] = {
                m: [round(paired_bootstrap_ci(v, [0.0] * len(v), n_resamples=args.bootstrap_resamples,
                                              seed=args.seed)[b], 4) for b in ("low", "high")]
                for m, v in res["per_query"].items()}
            results.append(entry)
        if out is not None:
            with (out / f"predictions-{Path(path).name}.jsonl").open("w") as fh:
                for i, (qid, question, gold) in enumerate(zip(split.ids, split.questions, split.answers)):
                    fh.write(json.dumps({"id": qid, "question": question, "answers": gold,
                                         **{row: answers[row][i] for row in answers}}) + "\n")
    return {"rows": results, "args": asdict(args)}


def main(args: BPORAGArguments) -> dict:
    start = time.perf_counter()
    LOG.stages.clear()
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
        rpo_pairs(args, data, out / "rpo-pairs")
        if "rpo" in stages:
            retriever_rpo = rpo_train(args, out / "rpo-pairs", out / "retriever-rpo")
    generator_gpo = str(out / "generator-gpo")
    generator_ablation = generator_gpo
    if "gpo_pairs" in stages or "gpo" in stages:
        gpo_pairs(args, data, retriever_rpo, out / "gpo-pairs")
        if "gpo" in stages:
            generator_gpo = gpo_train(args, out / "gpo-pairs", out / "generator-gpo")
        if args.gpo_ablation == "separate":
            gpo_pairs(args, data, args.retriever, out / "gpo-pairs-base-retriever")
            if "gpo" in stages:
                generator_ablation = gpo_train(args, out / "gpo-pairs-base-retriever",
                                               out / "generator-gpo-base-retriever")
    if args.gpo_ablation == "separate":
        generator_ablation = str(out / "generator-gpo-base-retriever")
    results: dict = {}
    if "eval" in stages:
        with LOG.stage("evaluation"):
            results = evaluate_rows(args, {"base": args.retriever, "rpo": retriever_rpo},
                                    {"base": args.generator, "gpo": generator_gpo, "gpo_ablation": generator_ablation},
                                    out)
        results["stages"] = list(LOG.stages)
        results["total_seconds"] = round(time.perf_counter() - start, 1)
        results["peak_rss_gib"] = LOG.peak_gib()
        (out / "results.json").write_text(json.dumps(results, indent=2))
        table = results_markdown(results)
        (out / "results.md").write_text(table)
        if args.plot and plot_results(results, out / "results.png"):
            LOG(f"chart: {out / 'results.png'}")
        print(table)
    LOG(f"done in {time.perf_counter() - start:.0f} s, peak memory {LOG.peak_gib():.2f} GiB; outputs in {out}")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_known_warnings()
    (bporag_args,) = TrlParser((BPORAGArguments,)).parse_args_and_config()
    main(bporag_args)
