"""BPO-RAG end to end on one data set: RPO pairs -> RPO -> SFT -> GPO pairs -> GPO -> evaluate the paper's four rows.

    trl-bporag bporag                                  # the small embedded default (minutes on 2 CPU cores)
    trl-bporag bporag --config bporag.yaml             # any flag below, from a YAML file
    trl-bporag bporag --rpo_queries 1500 --gpo_queries 800 --gpo_query_offset 1500 --eval_queries 500 \
        --eval_datasets ../shared/data/squad-dev:test,../shared/data/hotpotqa-distractor:test

The recipe is composed of the stage scripts and nothing else: ``build_rpo_pairs.py``, ``rpo.py``, ``sft.py``,
``build_gpo_pairs.py``, ``gpo.py`` and, for each row, ``evaluate.py``, each called through its ``main``. Every default
here is that stage script's default (the recommended recipe), so the step-by-step commands of the README run the
same thing; only the sizes (how many questions) are smaller. The prompt flags (``--k``, ``--max_passage_tokens``,
``--answer_prefix``, ``--system_prompt``, ``--max_new_tokens``: ``trl_bporag.settings.RAGSettings``) are the same in
every stage and row.

The generator recipe (``--generator_recipe``) is ``sft+gpo`` by default, the one measured best (docs/benchmarks.md,
issue 21): SFT on the gold answers of the GPO questions under the tuned retriever (``generator-sft/``), then GPO pairs
from that SFT model and GPO from it (its reference); ``gpo`` is the paper's GPO from the base generator.

Rows (as in the paper's tables): vanilla (base retriever + base generator), +RPO (tuned retriever + base generator),
+GPO (base retriever + the aligned generator), full BPO-RAG (tuned retriever + the aligned generator). By default the
+GPO row uses the generator aligned under the tuned retriever; ``--gpo_ablation separate`` trains a second generator
under the base retriever for that row, as an ablation that never saw RPO would (the shared generator is then shown
beside it, as a fifth row).

Each stage writes a standard artifact under ``--output_dir``: ``rpo-pairs/`` and ``gpo-pairs/`` (``datasets`` folders
+ stats.json, resumable), ``retriever-rpo/`` (a sentence-transformers folder), ``generator-sft/`` and
``generator-gpo/`` (PEFT adapters + bporag_config.json), and ``results.json``, ``results.md``, ``results.png``,
``predictions-<data set>.jsonl``. A stage whose artifact is there is reused only when it was made with the settings
asked for now (each stage records them in ``<artifact>/.bporag_stage.json``); otherwise the run stops with an error
naming what differs (``--overwrite`` redoes the stages).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from trl import ModelConfig, TrlParser

from trl_bporag import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, SetDPOConfig, load_rag_dataset
from trl_bporag.hardware import DTYPE_CHOICES, describe_hardware, hardware_summary, resolve_dtype
from trl_bporag.hub import push_folder_to_hub
from trl_bporag.losses import REFERENCES
from trl_bporag.monitor import StageLog, large_allocations_returned
from trl_bporag.report import plot_results, results_markdown, row_entry
from trl_bporag.scripts import start_script
from trl_bporag.settings import (
    GPO_DEFAULTS,
    JUDGES,
    PAIRINGS,
    RPO_DEFAULTS,
    GPOPairSettings,
    RAGSettings,
    RAGSettingsOverrides,
    RPOPairSettings,
)
from trl_bporag.stage_files import read_json_object
from trl_bporag.trainers import GPOConfig
from trl_bporag.trainers.gpo import add_results_to_card
from trl_bporag.trainers.sft import GoldSFTConfig

from . import build_gpo_pairs, build_rpo_pairs, evaluate, gpo, rpo, sft  # each stage's script

logger = logging.getLogger("bporag")
DATA = Path(os.environ.get("TRL_BPORAG_DATA", "../shared/data"))  # the shared data sets, from the repository root
STAGE_RECORD = ".bporag_stage.json"


def _default(cls, name):
    """The default of field ``name`` of dataclass ``cls`` (a stage's own default, so that one value serves both)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


_GPO_LOSS = ",".join(_default(GPOConfig, "loss_type"))
STAGES = ("rpo_pairs", "rpo", "sft", "gpo_pairs", "gpo", "eval")
GENERATOR_RECIPES = ("sft+gpo", "gpo")


@dataclass
class BPORAGArguments:
    dataset: str = field(default=str(DATA / "squad-dev"), metadata={"help": "training data (BEIR layout or HF QA)"})
    train_split: str = field(default="train")
    eval_datasets: str = field(default="", metadata={
        "help": "comma-separated path[:split] to evaluate on (default: --dataset with split test)"})
    output_dir: str = field(default="runs/bporag")
    retriever: str = field(default=DEFAULT_RETRIEVER)
    generator: str = field(default=DEFAULT_GENERATOR)
    seed: int = field(default=0)
    overwrite: bool = field(default=False, metadata={"help": "redo stages whose outputs exist"})
    stages: str = field(default=",".join(STAGES), metadata={"help": "which stages to run"})
    dtype: str = field(default="auto", metadata={
        "help": "compute dtype of encoding, generation and both trainings: auto (bf16 where the hardware computes it "
                "natively: a CPU with AVX512-BF16/AMX or a CUDA device with bf16; else float32) | bfloat16 | float32",
        "choices": list(DTYPE_CHOICES)})
    report_to: str = field(default="none", metadata={"help": "trackers of both trainings (wandb, tensorboard, ...)"})
    push_to_hub: bool = field(default=False, metadata={
        "help": "push the four artifacts (RPO pairs, retriever, GPO pairs, adapter) with their cards"})
    hub_model_id: str | None = field(default=None, metadata={
        "help": "Hub namespace/prefix of the pushed artifacts, e.g. user/squad-bporag: user/squad-bporag-retriever, "
                "-rpo-pairs, -generator-sft, -gpo-pairs, -generator (with --gpo_ablation separate also "
                "-generator-sft-base-retriever, -gpo-pairs-base-retriever, -generator-base-retriever)"})
    # The sizes (rpo_queries, gpo_queries, eval_queries) are the embedded default's: a smoke run of every stage that
    # fits 10 minutes on 2 CPU cores without native bf16 (float32); docs/benchmarks.md has the stage times per CPU.
    # RPO pairs (build_rpo_pairs.py; defaults: trl_bporag.settings.RPO_DEFAULTS)
    rpo_queries: int = field(default=100, metadata={"help": "training queries for RPO pairs"})
    rpo_judge: str = field(default=RPO_DEFAULTS.judge, metadata={
        "help": "answer_hit (fast) | answer_likelihood (graded, generator forward passes) | generator_f1 (paper)"})
    rpo_perturbations: str = field(default=RPO_DEFAULTS.perturbations, metadata={"help": "minimal | paper | mixed"})
    rpo_num_perturbations: int = field(default=RPO_DEFAULTS.num_perturbations)
    rpo_top_n: int = field(default=RPO_DEFAULTS.top_n, metadata={"help": "depth of the base retriever's list"})
    rpo_pairing: str = field(default=RPO_DEFAULTS.pairing, metadata={
        "help": "listwise (one row per query, Plackett-Luce: the measured best) | vs_original | best_worst"})
    # RPO training (rpo.py; defaults: rpo.RECIPE_DEFAULTS and SetDPOConfig)
    rpo_loss_type: str = field(default=",".join(_default(SetDPOConfig, "loss_type")), metadata={
        "help": "e.g. sigmoid | sigmoid,sft | sft"})
    rpo_loss_weights: str | None = field(default=None, metadata={"help": "comma-separated, one per loss type"})
    rpo_reference: str = field(default=rpo.RECIPE_DEFAULTS["reference"], metadata={
        "help": "free (reference-free: the measured best) | model (the paper's frozen reference)"})
    rpo_beta: float = field(default=_default(SetDPOConfig, "beta"))
    rpo_learning_rate: float = field(default=_default(SetDPOConfig, "learning_rate"))
    rpo_epochs: float = field(default=rpo.RECIPE_DEFAULTS["num_train_epochs"])
    rpo_batch_size: int = field(default=rpo.RECIPE_DEFAULTS["per_device_train_batch_size"])
    rpo_mini_batch_size: int = field(default=rpo.RECIPE_DEFAULTS["mini_batch_size"], metadata={
        "help": "GradCache mini-batch of the RPO step (0: uncached, every text of a batch in one pass)"})
    # the generator recipe; SFT (sft.py; defaults: GoldSFTConfig) on the GPO questions' gold answers
    generator_recipe: str = field(default="sft+gpo", metadata={
        "help": "sft+gpo: SFT on the gold answers, then GPO from the SFT model (on-policy pairs; measured best) | "
                "gpo: GPO from the base generator (the paper)"})
    sft_learning_rate: float = field(default=_default(GoldSFTConfig, "learning_rate"))
    sft_epochs: float = field(default=_default(GoldSFTConfig, "num_train_epochs"))
    # GPO pairs (build_gpo_pairs.py; defaults: trl_bporag.settings.GPO_DEFAULTS)
    gpo_queries: int = field(default=16, metadata={"help": "training queries for GPO pairs"})
    gpo_query_offset: int = field(default=0, metadata={"help": "first training query used for GPO pairs"})
    num_beams: int = field(default=GPO_DEFAULTS.num_beams, metadata={"help": "beams of the beam candidate (1: greedy)"})
    num_samples: int = field(default=GPO_DEFAULTS.num_samples, metadata={"help": "sampled candidates per question"})
    temperature: float = field(default=GPO_DEFAULTS.temperature)
    top_p: float = field(default=GPO_DEFAULTS.top_p)
    gpo_pairing: str = field(default=GPO_DEFAULTS.pairing)
    max_length: int = field(default=GPO_DEFAULTS.max_length, metadata={
        "help": "DPO max_length (the GPO prompts are fitted to it)"})
    # GPO training (gpo.py; defaults: GPOConfig and gpo.MODEL_DEFAULTS)
    gpo_beta: float = field(default=_default(GPOConfig, "beta"))
    gpo_loss_type: str = field(default=_GPO_LOSS, metadata={
        "help": "DPOConfig.loss_type, comma-separated: e.g. sigmoid,sft (DPO + NLL of the chosen answer) | sigmoid"})
    gpo_loss_weights: str | None = field(default=None, metadata={"help": "comma-separated, one per GPO loss type"})
    gpo_learning_rate: float = field(default=_default(GPOConfig, "learning_rate"))
    gpo_epochs: float = field(default=1.0)
    gpo_batch_size: int = field(default=_default(GPOConfig, "per_device_train_batch_size"))
    gpo_grad_accum: int = field(default=1)
    gpo_eval_fraction: float = field(default=_default(gpo.GPOScriptArguments, "eval_fraction"), metadata={
        "help": "share of the GPO pairs held out to measure reward accuracy after training (0: none)"})
    lora_r: int = field(default=gpo.MODEL_DEFAULTS["lora_r"])
    lora_alpha: int = field(default=gpo.MODEL_DEFAULTS["lora_alpha"])
    lora_top_layers: int = field(default=_default(gpo.GPOScriptArguments, "lora_top_layers"), metadata={
        "help": "LoRA on the last N decoder layers only (0: all layers); cheaper steps, less memory"})
    gpo_ablation: str = field(default="shared", metadata={
        "help": "shared: the +GPO row uses the generator aligned under the tuned retriever; separate: train another "
                "one under the base retriever"})
    # evaluation (evaluate.py)
    eval_queries: int = field(default=30, metadata={"help": "test questions per evaluation data set"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    bootstrap_resamples: int = field(default=1000, metadata={"help": "paired bootstrap resamples for the 95%% CIs"})
    plot: bool = field(default=True, metadata={"help": "write results.png (needs matplotlib)"})

    def __post_init__(self):
        """Refuse bad values at parse time, before any model is loaded or corpus encoded."""
        from trl_bporag.settings import finite

        for name in ("rpo_queries", "rpo_batch_size", "gpo_queries", "gpo_batch_size", "gpo_grad_accum", "lora_r",
                     "lora_alpha", "eval_queries", "batch_size", "bootstrap_resamples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name}: expected an integer >= 1, got {value!r}")
        for name in ("rpo_beta", "gpo_beta", "rpo_learning_rate", "gpo_learning_rate", "rpo_epochs", "gpo_epochs",
                     "sft_learning_rate", "sft_epochs"):
            finite(getattr(self, name), f"--{name}", positive=True)
        if not (isinstance(self.gpo_eval_fraction, (int, float)) and 0 <= self.gpo_eval_fraction < 1):
            raise ValueError(f"--gpo_eval_fraction: expected a value in [0, 1), got {self.gpo_eval_fraction!r}")
        for name in ("lora_top_layers", "gpo_query_offset", "rpo_mini_batch_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}: expected >= 0, got {getattr(self, name)!r}")
        for name, types in (("rpo_loss_weights", "rpo_loss_type"), ("gpo_loss_weights", "gpo_loss_type")):
            _weights(getattr(self, name), getattr(self, types), name)
        for name, allowed in (("rpo_reference", REFERENCES), ("rpo_judge", JUDGES), ("rpo_pairing", PAIRINGS),
                              ("dtype", DTYPE_CHOICES), ("gpo_ablation", ("shared", "separate")),
                              ("generator_recipe", GENERATOR_RECIPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        self.rpo_recipe()  # the stage settings check themselves
        self.gpo_recipe()
        unknown = set(self.stages.split(",")) - set(STAGES)
        if unknown:
            raise ValueError(f"--stages: unknown {sorted(unknown)}; expected {', '.join(STAGES)}")

    def rpo_recipe(self) -> RPOPairSettings:
        return RPOPairSettings(judge=self.rpo_judge, perturbations=self.rpo_perturbations,
                               num_perturbations=self.rpo_num_perturbations, pairing=self.rpo_pairing,
                               top_n=self.rpo_top_n)

    def gpo_recipe(self) -> GPOPairSettings:
        return GPOPairSettings(num_beams=self.num_beams, num_samples=self.num_samples, temperature=self.temperature,
                               top_p=self.top_p, pairing=self.gpo_pairing, max_length=self.max_length)


def _weights(text: str | None, types: str, flag: str) -> list[float] | None:
    """--rpo_loss_weights / --gpo_loss_weights: comma-separated finite floats, one per loss type (None: equal)."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != len(types.split(",")):
        raise ValueError(f"--{flag}: expected one weight per loss type ({types!r}), got {text!r}")
    try:
        values = [float(w) for w in parts]
    except ValueError:
        raise ValueError(f"--{flag}: expected comma-separated numbers, got {text!r}") from None
    if not all(v == v and abs(v) != float("inf") and v >= 0 for v in values):
        raise ValueError(f"--{flag}: expected finite weights >= 0 (a negative weight trains a term backwards), got "
                         f"{text!r}")
    return values


LOG = StageLog("bporag")


def _dtype(args) -> str:
    return resolve_dtype(args.dtype, where="--dtype")


GENERATOR_SUFFIX = "generator"  # the BPO-RAG adapter's repo: <hub_model_id>-generator


def _hub(args, suffix: str) -> dict:
    """push_to_hub / hub_model_id of one artifact."""
    if not args.push_to_hub:
        return {}
    if not args.hub_model_id:
        raise ValueError("--push_to_hub: give --hub_model_id user/name (the artifacts go to user/name-<artifact>)")
    return {"push_to_hub": True, "hub_model_id": f"{args.hub_model_id}-{suffix}"}


def _reuse(out: Path, marker: str, record: dict, args) -> bool:
    """Whether the stage's artifact ``out`` is there and was made with ``record`` (the settings asked for now).
    Made with other settings: a ValueError naming what differs, unless --overwrite (then the stage is redone)."""
    if args.overwrite or not (out / marker).exists():
        return False
    path = out / STAGE_RECORD
    if not path.exists():
        raise ValueError(f"{out}: holds an artifact without a record of the settings it was made with "
                         f"({STAGE_RECORD}); pass --overwrite to redo it, or another --output_dir")
    recorded = read_json_object(path, "the settings a stage of examples/bporag.py was run with")
    want = json.loads(json.dumps(record))  # as it reads back from JSON
    differs = sorted(key for key in set(recorded) | set(want) if recorded.get(key) != want.get(key))
    if differs:
        detail = "; ".join(f"{key}: made with {recorded.get(key)!r}, asked for {want.get(key)!r}" for key in differs)
        raise ValueError(f"{out}: was made with other settings than this run asks for ({detail}). Pass --overwrite to "
                         "redo it, or use another --output_dir")
    return True


def _record(out: Path, record: dict) -> None:
    (out / STAGE_RECORD).write_text(json.dumps(record, indent=2))


def rpo_pairs(args, settings: RAGSettings, out: Path) -> None:
    """build_rpo_pairs.py's main into ``out`` (resumable; a finished build with the same settings is reused)."""
    record = {"stage": "rpo_pairs", "dataset": args.dataset, "split": args.train_split, "queries": args.rpo_queries,
              "retriever": args.retriever, "seed": args.seed, **asdict(args.rpo_recipe()), **settings.to_dict()}
    if _reuse(out, "stats.json", record, args):
        LOG(f"RPO pairs: reusing {out}")
        return
    with LOG.stage("RPO pairs"):
        described = build_rpo_pairs.main(build_rpo_pairs.BuildArguments(
            dataset=args.dataset, output_dir=str(out), split=args.train_split, retriever=args.retriever,
            generator=args.generator, max_queries=args.rpo_queries, seed=args.seed, batch_size=args.batch_size,
            generator_dtype=args.dtype, no_resume=args.overwrite,
            push_to_hub=_hub(args, "rpo-pairs").get("hub_model_id")), args.rpo_recipe(), settings)
        _record(out, record)
        LOG(f"RPO pairs: {described['stats']}")


def rpo_train(args, pairs_dir: Path, out: Path) -> str:
    """rpo.py's main on the pairs folder (k comes from the pairs)."""
    config = dict(beta=args.rpo_beta, reference=args.rpo_reference, loss_type=args.rpo_loss_type.split(","),
                  loss_weights=_weights(args.rpo_loss_weights, args.rpo_loss_type, "rpo_loss_weights"),
                  learning_rate=args.rpo_learning_rate, num_train_epochs=args.rpo_epochs,
                  per_device_train_batch_size=args.rpo_batch_size, mini_batch_size=args.rpo_mini_batch_size or None,
                  seed=args.seed)
    record = {"stage": "rpo", "pairs": str(pairs_dir), "retriever": args.retriever, **config, "dtype": _dtype(args)}
    if _reuse(out, "modules.json", record, args):
        LOG(f"RPO: reusing {out}")
        return str(out)
    with LOG.stage("RPO training"), large_allocations_returned():
        training_args = SetDPOConfig(output_dir=str(out), bf16=_dtype(args) == "bfloat16",
                                     use_cpu=not torch.cuda.is_available(), logging_steps=10, save_strategy="no",
                                     report_to=args.report_to, **_hub(args, "retriever"), **config)
        rpo.main(rpo.RPOScriptArguments(dataset_name=str(pairs_dir)), training_args,
                 ModelConfig(model_name_or_path=args.retriever))
        _record(out, record)
        LOG(f"RPO: retriever saved to {out}")
    return str(out)


def sft_train(args, settings: RAGSettings, retriever_path: str, out: Path, hub_suffix: str) -> str:
    """sft.py's main: the generator fine-tuned on the gold answers of the GPO questions under ``retriever_path``."""
    config = dict(learning_rate=args.sft_learning_rate, num_train_epochs=args.sft_epochs, max_length=args.max_length,
                  seed=args.seed)
    lora = dict(lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_top_layers=args.lora_top_layers)
    record = {"stage": "sft", "dataset": args.dataset, "split": args.train_split, "queries": args.gpo_queries,
              "query_offset": args.gpo_query_offset, "retriever": retriever_path, "generator": args.generator,
              **config, **lora, "dtype": _dtype(args), **settings.to_dict()}
    if _reuse(out, "adapter_config.json", record, args):
        LOG(f"SFT: reusing {out}")
        return str(out)
    with LOG.stage(f"SFT on the gold answers ({out.name})"), large_allocations_returned():
        trainer = sft.main(
            sft.SFTScriptArguments(dataset=args.dataset, split=args.train_split, retriever=retriever_path,
                                   max_queries=args.gpo_queries, query_offset=args.gpo_query_offset,
                                   lora_top_layers=args.lora_top_layers),
            GoldSFTConfig(output_dir=str(out), bf16=_dtype(args) == "bfloat16", report_to=args.report_to,
                          **_hub(args, hub_suffix), **config),
            ModelConfig(model_name_or_path=args.generator, **{**gpo.MODEL_DEFAULTS, "dtype": _dtype(args),
                                                              "lora_r": args.lora_r, "lora_alpha": args.lora_alpha}),
            settings)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        _record(out, record)
        LOG(f"SFT: adapter saved to {out}; {len(trainer.train_dataset)} questions, {trainer.state.global_step} steps"
            + (f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""))
    return str(out)


def gpo_pairs(args, settings: RAGSettings, retriever_path: str, out: Path, hub_suffix: str = "gpo-pairs",
              generator: str | None = None) -> None:
    """build_gpo_pairs.py's main under ``retriever_path`` into ``out`` (pushed as ``<hub_model_id>-<hub_suffix>``),
    the answers from ``generator`` (default ``--generator``; the SFT adapter in the sft+gpo recipe)."""
    generator = generator or args.generator
    record = {"stage": "gpo_pairs", "dataset": args.dataset, "split": args.train_split, "queries": args.gpo_queries,
              "query_offset": args.gpo_query_offset, "retriever": retriever_path, "generator": generator,
              "seed": args.seed, **asdict(args.gpo_recipe()), **settings.to_dict()}
    if _reuse(out, "stats.json", record, args):
        LOG(f"GPO pairs: reusing {out}")
        return
    with LOG.stage(f"GPO pairs ({out.name})"):
        described = build_gpo_pairs.main(build_gpo_pairs.GPOBuildArguments(
            dataset=args.dataset, output_dir=str(out), split=args.train_split, retriever=retriever_path,
            generator=generator, max_queries=args.gpo_queries, query_offset=args.gpo_query_offset,
            seed=args.seed, batch_size=args.batch_size, generator_dtype=args.dtype, no_resume=args.overwrite,
            push_to_hub=_hub(args, hub_suffix).get("hub_model_id")), args.gpo_recipe(), settings)
        _record(out, record)
        LOG(f"GPO pairs: {described['stats']}")


def gpo_train(args, pairs_dir: Path, out: Path, hub_suffix: str = GENERATOR_SUFFIX,
              generator: str | None = None) -> str:
    """gpo.py's main on the pairs folder (the retriever and settings come from its stats.json), with a share of the
    pairs held out and evaluated after the epoch; writes train_curve.json (pushed as
    ``<hub_model_id>-<hub_suffix>``). ``generator``: where GPO starts (default ``--generator``; an SFT adapter is
    merged, trained on and saved stacked with the new adapter)."""
    generator = generator or args.generator
    config = dict(beta=args.gpo_beta, learning_rate=args.gpo_learning_rate, num_train_epochs=args.gpo_epochs,
                  per_device_train_batch_size=args.gpo_batch_size, gradient_accumulation_steps=args.gpo_grad_accum,
                  max_length=args.max_length, loss_type=args.gpo_loss_type.split(","),
                  loss_weights=_weights(args.gpo_loss_weights, args.gpo_loss_type, "gpo_loss_weights"), seed=args.seed)
    lora = dict(lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_top_layers=args.lora_top_layers)
    record = {"stage": "gpo", "pairs": str(pairs_dir), "generator": generator, **config, **lora,
              "eval_fraction": args.gpo_eval_fraction, "dtype": _dtype(args)}
    if _reuse(out, "adapter_config.json", record, args):
        LOG(f"GPO: reusing {out}")
        return str(out)
    with LOG.stage(f"GPO training ({out.name})"), large_allocations_returned():
        training_args = GPOConfig(output_dir=str(out), bf16=_dtype(args) == "bfloat16", per_device_eval_batch_size=1,
                                  eval_strategy="epoch" if args.gpo_eval_fraction else "no", report_to=args.report_to,
                                  **_hub(args, hub_suffix), **config)
        script_args = gpo.GPOScriptArguments(dataset_name=str(pairs_dir), eval_fraction=args.gpo_eval_fraction,
                                             lora_top_layers=args.lora_top_layers)
        # the frozen base in the compute dtype (autocast computes in it anyway; PEFT keeps the LoRA weights in fp32)
        model_args = ModelConfig(model_name_or_path=generator,
                                 **{**gpo.MODEL_DEFAULTS, "dtype": _dtype(args), "lora_r": args.lora_r,
                                    "lora_alpha": args.lora_alpha})
        trainer = gpo.main(script_args, training_args, model_args)
        _write_curve(trainer, out)
        _record(out, record)
    return str(out)


def _write_curve(trainer, out: Path) -> None:
    history = trainer.state.log_history
    curve = [{"step": h["step"], "loss": round(h["loss"], 4),
              "reward_accuracy": round(h.get("rewards/accuracies", float("nan")), 3),
              "reward_margin": round(h.get("rewards/margins", float("nan")), 3)} for h in history if "loss" in h]
    train_loss = next((h["train_loss"] for h in reversed(history) if "train_loss" in h), float("nan"))
    held_out = next((h for h in reversed(history) if "eval_loss" in h), {})
    n_train = len(trainer.train_dataset)
    summary = {"train_pairs": n_train, "held_out_pairs": len(trainer.eval_dataset) if trainer.eval_dataset else 0,
               "steps": trainer.state.global_step, "train_loss": round(train_loss, 4), "curve": curve,
               "held_out": {k: round(v, 4) for k, v in held_out.items() if isinstance(v, float)}}
    (out / "train_curve.json").write_text(json.dumps(summary, indent=2))
    LOG(f"GPO: adapter saved to {out}; {n_train} pairs, {trainer.state.global_step} steps, mean training loss "
        f"{train_loss:.3f}")
    for point in curve:
        LOG(f"  step {point['step']:>4}: loss {point['loss']:.3f}, reward accuracy {point['reward_accuracy']:.2f}, "
            f"margin {point['reward_margin']:.2f}")
    if held_out:
        LOG(f"  held-out pairs ({summary['held_out_pairs']}): loss {held_out['eval_loss']:.3f}, reward accuracy "
            f"{held_out.get('eval_rewards/accuracies', float('nan')):.2f}")


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


def evaluate_rows(args, settings: RAGSettings, retrievers: dict, generators: dict, out: Path | None = None) -> dict:
    """evaluate.py's main for each row on each evaluation data set (same questions and settings for every row), and
    the paired bootstrap 95% CI of each row's difference from vanilla. With ``out``, every row's answer to every
    question goes to ``out/predictions-<data set>.jsonl``."""
    specs = [s for s in (args.eval_datasets or f"{args.dataset}:test").split(",") if s]
    overrides = RAGSettingsOverrides(**settings.to_dict())
    results = []
    for spec in specs:
        path, _, split_name = spec.partition(":")
        data = load_rag_dataset(path, split_name or "test")
        caches = {g: {} for g in generators.values()}  # prompt -> answer per generator: rows share equal prompts
        per_query, answers = {}, {}
        for row, (rname, gname) in row_specs(args).items():
            eval_args = evaluate.EvalArguments(
                dataset=path, split=split_name or "test", retriever=retrievers[rname], generator=generators[gname],
                max_queries=args.eval_queries, batch_size=args.batch_size, generator_dtype=args.dtype,
                output_dir=str((out or Path(args.output_dir)) / "eval" / Path(path).name / row.replace(" ", "_")))
            res = evaluate.main(eval_args, overrides, answer_cache=caches[generators[gname]], data=data)
            per_query[row] = res["per_query"]
            answers[row] = [p["prediction"] for p in res["predictions"]]
            base = {"dataset": Path(path).name, "split": split_name or "test", "row": row,
                    "retriever": retrievers[rname], "generator": generators[gname], "queries": res["num_queries"],
                    "seconds": res["total_seconds"]}
            results.append(row_entry(base, res["metrics"], res["per_query"],
                                     None if row == "vanilla" else per_query["vanilla"],
                                     n_resamples=args.bootstrap_resamples, seed=args.seed))
        if out is not None:
            split = data.split.head(args.eval_queries)
            with (out / f"predictions-{Path(path).name}.jsonl").open("w") as fh:
                for i, (qid, question, gold) in enumerate(zip(split.ids, split.questions, split.answers)):
                    fh.write(json.dumps({"id": qid, "question": question, "answers": gold,
                                         **{row: answers[row][i] for row in answers}}) + "\n")
    return {"rows": results, "args": asdict(args), "settings": settings.to_dict()}


def main(args: BPORAGArguments, settings: RAGSettings | None = None) -> dict:
    settings = settings or RAGSettings()
    start = time.perf_counter()
    LOG.stages.clear()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    LOG(f"machine: {describe_hardware()}; compute dtype {_dtype(args)} (--dtype {args.dtype})")
    retriever_rpo = str(out / "retriever-rpo")
    if "rpo_pairs" in stages or "rpo" in stages:
        rpo_pairs(args, settings, out / "rpo-pairs")
        if "rpo" in stages:
            retriever_rpo = rpo_train(args, out / "rpo-pairs", out / "retriever-rpo")
    generator_gpo = str(out / "generator-gpo")
    generator_ablation = generator_gpo
    # the generator GPO starts from under each retriever: the SFT adapter (sft+gpo) or the base generator (gpo)
    use_sft = args.generator_recipe == "sft+gpo"
    starts = {"rpo": str(out / "generator-sft") if use_sft else None,
              "base": str(out / "generator-sft-base-retriever") if use_sft else None}
    if use_sft and "sft" in stages:
        starts["rpo"] = sft_train(args, settings, retriever_rpo, out / "generator-sft", "generator-sft")
        if args.gpo_ablation == "separate":
            starts["base"] = sft_train(args, settings, args.retriever, out / "generator-sft-base-retriever",
                                       "generator-sft-base-retriever")
    if "gpo_pairs" in stages or "gpo" in stages:
        gpo_pairs(args, settings, retriever_rpo, out / "gpo-pairs", generator=starts["rpo"])
        if "gpo" in stages:
            generator_gpo = gpo_train(args, out / "gpo-pairs", out / "generator-gpo", generator=starts["rpo"])
        if args.gpo_ablation == "separate":
            gpo_pairs(args, settings, args.retriever, out / "gpo-pairs-base-retriever", "gpo-pairs-base-retriever",
                      generator=starts["base"])
            if "gpo" in stages:  # its own Hub repos: the ablation never overwrites the BPO-RAG adapter's
                generator_ablation = gpo_train(args, out / "gpo-pairs-base-retriever",
                                               out / "generator-gpo-base-retriever", "generator-base-retriever",
                                               generator=starts["base"])
    if args.gpo_ablation == "separate":
        generator_ablation = str(out / "generator-gpo-base-retriever")
    results: dict = {}
    if "eval" in stages:
        with LOG.stage("evaluation"):
            results = evaluate_rows(args, settings, {"base": args.retriever, "rpo": retriever_rpo},
                                    {"base": args.generator, "gpo": generator_gpo, "gpo_ablation": generator_ablation},
                                    out)
        results["hardware"] = {**hardware_summary(), "dtype": _dtype(args)}
        results["stages"] = list(LOG.stages)
        results["total_seconds"] = round(time.perf_counter() - start, 1)
        results["peak_rss_gib"] = LOG.peak_gib()
        (out / "results.json").write_text(json.dumps(results, indent=2))
        table = results_markdown(results)
        (out / "results.md").write_text(table)
        if os.path.isdir(generator_gpo) and Path(generator_gpo).resolve().is_relative_to(out.resolve()):
            add_results_to_card(generator_gpo, table, "Measured by `trl-bporag bporag` right after training (the "
                                "+GPO and BPO-RAG rows use this adapter):\n\n")
            if args.push_to_hub:  # the adapter went up at the end of its training, before this table existed
                push_folder_to_hub(generator_gpo, _hub(args, GENERATOR_SUFFIX)["hub_model_id"],
                                   allow_patterns=["README.md"],
                                   commit_message="Add the BPO-RAG evaluation table to the card")
        if args.plot and plot_results(results, out / "results.png"):
            LOG(f"chart: {out / 'results.png'}")
        print(table)
    LOG(f"done in {time.perf_counter() - start:.0f} s, peak memory {LOG.peak_gib():.2f} GiB; outputs in {out}")
    return results


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses."""
    return TrlParser((BPORAGArguments, RAGSettings)).parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag bporag [flags]` (or `python examples/bporag.py`); ``argv``: the
    flags (default: ``sys.argv[1:]``)."""
    start_script()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*parse(argv))


if __name__ == "__main__":
    cli()
