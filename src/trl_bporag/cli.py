"""``trl-bporag <stage> [flags]``: one subcommand per stage script (:mod:`trl_bporag.scripts`), as ``trl dpo``.

    trl-bporag bporag                      # the whole recipe on the embedded default
    trl-bporag build-rpo-pairs --help      # a stage's flags
    trl-bporag rpo --config rpo.yaml       # any stage reads its flags from a YAML file (TrlParser)
    accelerate launch -m trl_bporag.scripts.rpo --dataset_name ...   # several processes
"""

from __future__ import annotations

import importlib
import os
import sys

#: subcommand -> (module in trl_bporag.scripts, one line on what it does)
STAGES = {
    "build-rpo-pairs": ("build_rpo_pairs", "Stage 1 data: perturbed top-k lists of each query, judged, as RPO rows"),
    "rpo": ("rpo", "Stage 1: train the retriever with set-level DPO (SetDPOTrainer)"),
    "sft": ("sft", "Stage 2 start: fine-tune the generator on the gold answers under the retriever's top-k (LoRA)"),
    "build-gpo-pairs": ("build_gpo_pairs", "Stage 2 data: answers under the frozen retriever's top-k, F1-judged"),
    "gpo": ("gpo", "Stage 2: train the generator with TRL's DPOTrainer + LoRA (GPOTrainer)"),
    "evaluate": ("evaluate", "Recall@k, answer-hit@k, EM and F1 of a retriever (+ generator) on a split"),
    "index": ("index", "Encode a corpus into a FAISS index folder (optionally pushed to the Hub)"),
    "bporag": ("bporag", "The whole recipe: the stages above in order, then the paper's four rows with CIs"),
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: trl-bporag <stage> [flags]   (trl-bporag <stage> --help for a stage's flags)", "", "stages:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in STAGES.items()]
    return "\n".join(lines)


def _shipped_configs(argv: list[str]) -> list[str]:
    """``--config rpo.yaml`` (or ``--config rpo``) names the shipped file (:mod:`trl_bporag.configs`) when no such
    file exists here."""
    from . import configs

    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--config" and not os.path.isfile(out[i + 1]):
            try:
                out[i + 1] = configs.path(out[i + 1])
            except ValueError:
                pass  # TrlParser names the missing file
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0].replace("_", "-")
    if name not in STAGES:
        print(f"trl-bporag: unknown stage {argv[0]!r}; expected one of {list(STAGES)}\n\n{usage()}", file=sys.stderr)
        return 2
    argv = _shipped_configs(argv)
    module = importlib.import_module(f"trl_bporag.scripts.{STAGES[name][0]}")
    sys.argv[0] = f"trl-bporag {name}"  # what the stage's --help calls itself
    module.cli(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
