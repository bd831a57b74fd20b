"""GPO against what a user would do instead (issue 21): SFT on the gold answers, over seeds, and the two stages together.

    python bench/gpo_table.py --row vanilla                 # untrained rows: vanilla, oracle, rpo, mnrl
    python bench/gpo_table.py --row sft-gold --seed 0       # trained rows: sft-gold, gpo-only, gpo, gpo+rpo, bporag, simple
    python bench/gpo_table.py --table                       # every table of docs/benchmarks.md, from the saved files
    python bench/gpo_table.py --generator reader --row gpo --seed 0   # the same rows with the reader (issue 35)

Every row answers the same questions: the first ``--test_queries`` (500) squad-dev test questions and all 100
hotpotqa-distractor questions; the prompt is the best one found (``The answer is "``, the default system prompt, k = 5
passages cut to 96 tokens (the reader, ``--generator reader``: 256), greedy, 24 new tokens). Every trained row trains on squad-dev **train** questions
1,500-2,299 (``--train_offset`` / ``--train_queries``; not the RPO questions) with the same LoRA (r 16, α 32, the last 6
of 30 layers, no dropout) for one epoch. Rows:

* ``vanilla``: the base retriever (all-MiniLM-L6-v2) and the base generator (SmolLM2-135M-Instruct).
* ``oracle``: the base generator reading the gold passage(s) first, then the base top-k's other passages: the most any
  retriever can give this generator. ``rpo``: the README's Stage-1 retriever with the base generator.
  ``mnrl``: the sentence-transformers MNRL retriever on answer positives (``bench/rpo_table.py``'s ``mnrl-answers``).
* ``sft-gold``: ``trl-bporag sft`` (TRL's ``SFTTrainer``, ``GoldSFTConfig``), completion-only loss on the first gold
  answer written after the answer prefix and closed with ``"``, under the base retriever's top-k (lr 2e-4, TRL's
  LoRA-SFT value). The committed sft-gold files were made by this script's own SFTTrainer call before the stage
  existed: the same rows, LoRA and SFTConfig values.
* ``gpo-only``: the issue-12 recipe: GPO pairs from the base generator (greedy + 7 seeded samples, best vs worst F1),
  stock ``DPOTrainer`` with ``loss_type=[sigmoid, sft]`` (DPO + NLL), β 0.5, lr 5e-4.
* ``gpo``: the recommended recipe, SFT then GPO: the ``sft-gold`` adapter merged into the generator, on-policy pairs
  from that model, then the same DPO + NLL on a new adapter (its reference: the SFT model).
* ``gpo+rpo``: the ``gpo`` generator (aligned under the base retriever) reading the README's Stage-1 retriever's top-k:
  the two stages combined without re-aligning the generator (an evaluation only, reusing the ``gpo`` work folders).
* ``bporag``: the same recipe aligned under the README's Stage-1 retriever, evaluated with it.
* ``simple``: stock parts: the ``mnrl`` retriever + ``sft-gold`` trained under it, evaluated with it.

The seed drives the sampling of the pairs, the LoRA initialisation and the training order. Each row x seed x data set
writes ``bench/results/gpo/<row>[-s<seed>]-<data set>.json`` with ``row``, ``seed``, ``dataset``, ``ids``, ``f1``,
``em`` (one value per question, the same question order in every file of a data set) and ``predictions``. Work folders
(adapters, pairs, merged models) go to ``--work_dir`` and are reused when present. bf16 greedy answers depend on the
CPU kind, so a row measured on another CPU than the committed ``vanilla`` needs a ``vanilla`` of its own CPU:
``--row vanilla --file_tag amd-epyc`` writes ``vanilla@amd-epyc-<data set>.json``, and ``--table`` compares each row
with the vanilla of its CPU (the ``hardware`` key of every file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, hardware_summary, print_machine  # noqa: E402

from trl_bporag.packaged import READER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpo"
EVAL_SETS = (("squad-dev", "test"), ("hotpotqa-distractor", "test"))
UNTRAINED = ("vanilla", "oracle", "rpo", "mnrl")
TRAINED = ("sft-gold", "gpo-only", "gpo", "gpo+rpo", "bporag", "simple")
PREFIX = 'The answer is "'
K, PASSAGE_TOKENS, NEW_TOKENS, MAX_LENGTH = 5, 96, 24, 640
BASE_RETRIEVER = "sentence-transformers/all-MiniLM-L6-v2"
BASE_GENERATOR = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: --generator -> (model id, passage budget, SFT / DPO max_length, results folder, work folder). The reader reads 256-token
#: passages (at 96, 27 % of the squad-dev gold passages lose the answer's start: bench/headroom.py --answer_positions)
GENERATORS = {
    "smollm2": (BASE_GENERATOR, PASSAGE_TOKENS, MAX_LENGTH, RESULTS, "runs/gpo-table"),
    "reader": (READER, 256, 1536, REPO / "bench" / "results" / "reader_rows",
               "runs/gpo-table-reader"),
}


# -- models and data -----------------------------------------------------------------------------------------------
def retriever_path(name: str, args) -> str:
    if name == "base":
        return BASE_RETRIEVER
    if name == "rpo":
        if not (Path(args.rpo_retriever) / "modules.json").is_file():
            sys.exit(f"--rpo_retriever {args.rpo_retriever}: train it with the README's Stage 1 commands first")
        return args.rpo_retriever
    out = Path(args.work_dir) / "mnrl-answers"
    if not (out / "modules.json").is_file():  # bench/rpo_table.py's anchor (a), saved
        from rpo_table import mnrl_row

        info = mnrl_row(SimpleNamespace(train_queries=1500, batch_size=16, lr=2e-5, epochs=1.0), out, gold=False)
        info["model"].save_pretrained(str(out))
    return str(out)


def train_split(args):
    from trl_bporag import load_beir

    data = load_beir(DATA / "squad-dev", "train")
    o, n = args.train_offset, args.train_queries
    s = data.split
    from trl_bporag import QASplit

    return data.corpus, QASplit(s.ids[o:o + n], s.questions[o:o + n], s.answers[o:o + n], s.gold_ids[o:o + n],
                                s.name)


def builder_for(retriever_name: str, generator_path: str, args, seed: int):
    """The GPO pair builder under a retriever (also what fits the SFT prompts: the same prompts in both)."""
    from trl_bporag import DenseIndex, GenerationPreferenceBuilder, Retriever, load_generator

    corpus, split = train_split(args)
    r = Retriever(retriever_path(retriever_name, args))
    gen, tok = load_generator(generator_path)
    builder = GenerationPreferenceBuilder(
        r, DenseIndex.cached(r, corpus), corpus, gen, tok, k=K, num_beams=1, num_samples=args.num_samples,
        temperature=1.0, top_p=0.95, pairing="best_worst", seed=seed, max_new_tokens=NEW_TOKENS,
        max_passage_tokens=args.passage_tokens, max_length=args.max_length, answer_prefix=PREFIX)
    return builder, split


# -- training steps (each cached in the work folder) ---------------------------------------------------------------
def sft(retriever_name: str, seed: int, args) -> str:
    """``sft-gold`` under a retriever: ``trl-bporag sft``'s main (GoldSFTConfig, the GPO LoRA on the last 6 layers) on
    the training questions, the prompts of the pairs; an adapter folder."""
    out = Path(args.work_dir) / f"sft-{retriever_name}-s{seed}"
    if (out / "adapter_config.json").is_file():
        return str(out)
    from trl import ModelConfig

    from trl_bporag.settings import RAGSettings
    from trl_bporag.trainers.sft import GoldSFTConfig

    script = _example("sft")
    t0 = time.perf_counter()
    trainer = script.main(
        script.SFTScriptArguments(dataset=str(DATA / "squad-dev"), split="train",
                                  retriever=retriever_path(retriever_name, args), max_queries=args.train_queries,
                                  query_offset=args.train_offset, lora_top_layers=6),
        GoldSFTConfig(output_dir=str(out), seed=seed, max_length=args.max_length, logging_steps=50),
        ModelConfig(model_name_or_path=args.base_generator, **script.MODEL_DEFAULTS),
        RAGSettings(k=K, max_passage_tokens=args.passage_tokens, max_new_tokens=NEW_TOKENS, answer_prefix=PREFIX))
    _log(out, trainer, time.perf_counter() - t0, len(trainer.train_dataset))
    return str(out)


def merged(adapter: str) -> str:
    """An adapter merged into its base: the starting point (and DPO reference) of GPO after SFT."""
    out = Path(f"{adapter}-merged")
    if (out / "config.json").is_file():
        return str(out)
    from trl_bporag import load_generator

    model, tok = load_generator(adapter, torch_dtype="float32")
    model = model.merge_and_unload()
    tmp = Path(f"{out}.partial")  # written whole, then renamed: a run stopped mid-save leaves no folder that looks done
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return str(out)


def pairs(generator: str, retriever_name: str, seed: int, args) -> str:
    tag = Path(generator).name if os.path.isdir(generator) else "base"
    out = Path(args.work_dir) / f"pairs-{tag}-{retriever_name}-s{seed}"
    if (out / "stats.json").is_file():
        return str(out)
    builder, split = builder_for(retriever_name, generator, args, seed)
    builder.build(split, output_dir=out)
    return str(out)


def dpo(pairs_dir: str, generator: str, seed: int, args) -> str:
    out = Path(f"{pairs_dir}-dpo".replace("pairs-", "gpo-"))
    if (out / "adapter_config.json").is_file():
        return str(out)
    from trl import ModelConfig

    from trl_bporag.trainers import GPOConfig

    gpo = _example("gpo")
    # GPOConfig's defaults are the issue-12 recipe: DPO + NLL, beta 0.5, lr 5e-4, batch 1 (max_length: the generator's)
    config = GPOConfig(output_dir=str(out), num_train_epochs=1, seed=seed, logging_steps=50, eval_strategy="no",
                       max_length=args.max_length)
    t0 = time.perf_counter()
    trainer = gpo.main(gpo.GPOScriptArguments(dataset_name=pairs_dir, eval_fraction=0.0, lora_top_layers=6), config,
                       ModelConfig(model_name_or_path=generator, **gpo.MODEL_DEFAULTS))
    _log(out, trainer, time.perf_counter() - t0, len(trainer.train_dataset))
    return str(out)


def _example(name: str):
    import importlib

    return importlib.import_module(f"trl_bporag.scripts.{name}")  # the stage script examples/<name>.py runs


def _log(out: Path, trainer, seconds: float, rows: int) -> None:
    history = [h for h in trainer.state.log_history if "loss" in h]
    (out / "train_log.json").write_text(json.dumps({"seconds": round(seconds, 1), "rows": rows,
                                                    "steps": trainer.state.global_step, "log": history,
                                                    "hardware": hardware_summary()}, indent=2))


# -- evaluation ----------------------------------------------------------------------------------------------------
def evaluate(row: str, seed: int | None, retriever_name: str, generator: str, args, oracle: bool = False) -> None:
    from trl_bporag import DenseIndex, RAGPipeline, Retriever, load_generator, load_rag_dataset
    from trl_bporag.metrics import per_query_metrics

    gen, tok = load_generator(generator)
    r = Retriever(retriever_path(retriever_name, args))
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    for name, split_name in EVAL_SETS:
        data = load_rag_dataset(DATA / name, split_name)
        split = data.split.head(args.test_queries if name == "squad-dev" else args.hotpot_queries)
        pipe = RAGPipeline(r, DenseIndex.cached(r, data.corpus), data.corpus, gen, tok, k=K,
                           max_new_tokens=NEW_TOKENS, max_passage_tokens=args.passage_tokens, answer_prefix=PREFIX)
        ids, _ = pipe.retrieve(split.questions, k=K)
        if oracle:  # the gold passages first, then the retrieved ones that are not gold
            ids = [(list(g) + [p for p in top if p not in g])[:max(K, len(g))] for g, top in zip(split.gold_ids, ids)]
        t0 = time.perf_counter()
        predictions = pipe.answer(split.questions, ids, progress=f"{row} {name}")
        m = per_query_metrics(ids, None, [pipe.passages(p) for p in ids], split.answers, predictions, ks=(K,))
        tag = f"@{args.file_tag}" if args.file_tag else ""
        path = results / f"{row}{'' if seed is None else f'-s{seed}'}{tag}-{name}.json"
        path.write_text(json.dumps({"row": row, "seed": seed, "dataset": f"{name}:{split_name}",
                                    "ids": list(split.ids), "f1": m["f1"], "em": m["exact_match"],
                                    "predictions": predictions, "retriever": retriever_name, "generator": generator,
                                    "seconds": round(time.perf_counter() - t0, 1), "hardware": hardware_summary()}))
        print(json.dumps({"row": row, "seed": seed, "dataset": name, "f1": round(sum(m["f1"]) / len(split), 4),
                          "em": round(sum(m["exact_match"]) / len(split), 4)}), flush=True)


def run_row(row: str, seed: int, args) -> None:
    if row in UNTRAINED:
        retriever = {"vanilla": "base", "oracle": "base"}.get(row, row)
        return evaluate(row, None, retriever, args.base_generator, args, oracle=row == "oracle")
    if row == "sft-gold":
        return evaluate(row, seed, "base", sft("base", seed, args), args)
    if row == "simple":
        return evaluate(row, seed, "mnrl", sft("mnrl", seed, args), args)
    if row == "gpo-only":
        return evaluate(row, seed, "base", dpo(pairs(args.base_generator, "base", seed, args), args.base_generator,
                                               seed, args), args)
    retriever = "rpo" if row == "bporag" else "base"  # the retriever the generator is aligned under
    start = merged(sft(retriever, seed, args))
    generator = dpo(pairs(start, retriever, seed, args), start, seed, args)
    return evaluate(row, seed, "rpo" if row == "gpo+rpo" else retriever, generator, args)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--row", choices=UNTRAINED + TRAINED)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="print the tables from bench/results/gpo/")
    p.add_argument("--generator", choices=tuple(GENERATORS), default="smollm2",
                   help="the base generator of every row: smollm2 (results in bench/results/gpo/) or the reader "
                        "(256-token passages, max_length 1536; results in bench/results/reader_rows/)")
    p.add_argument("--work_dir", default=None, help="default: runs/gpo-table[-reader]")
    p.add_argument("--rpo_retriever", default="runs/readme/retriever-rpo")
    p.add_argument("--results_dir", default=None, help="where the per-question files go (and --table reads); "
                   "default: the generator's folder")
    p.add_argument("--file_tag", default=None,
                   help="written into the file names (<row>[-s<seed>]@<tag>-<data set>.json): a row measured again on "
                        "another CPU (--table compares each row with the vanilla of its own CPU)")
    p.add_argument("--test_queries", type=int, default=500)
    p.add_argument("--hotpot_queries", type=int, default=None, help="default: all 100")
    p.add_argument("--train_offset", type=int, default=1500)
    p.add_argument("--train_queries", type=int, default=800)
    p.add_argument("--num_samples", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    args.base_generator, args.passage_tokens, args.max_length, results, work = GENERATORS[args.generator]
    args.results_dir, args.work_dir = args.results_dir or str(results), args.work_dir or work
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.row:
        print_machine()
        t0 = time.perf_counter()
        run_row(args.row, args.seed, args)
        print(f"{args.row} seed {args.seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.table:
        from gpo_tables import tables

        print(tables(Path(args.results_dir)))


if __name__ == "__main__":
    main()
