"""SFT and GPO training steps with TRL's fused LM head projecting every position (TRL's CPU behaviour) against only the
labelled ones (``trl_bporag.trainers.project_labelled_positions_only``, what ``trl-bporag sft`` and ``GPOTrainer``
do), on the same rows.

    python bench/lm_head.py [--steps 12] [--emulate_avx2]

Rows: squad-dev train questions 1,500-1,511 under all-MiniLM-L6-v2's top 5 with the default prompt
(:class:`~trl_bporag.settings.RAGSettings`: passages cut to 96 tokens, the answer prefix), as ``trl-bporag sft`` and
GPO pairs see them. SFT: ``trl-bporag sft``'s main (GoldSFTConfig, the GPO LoRA on the last 6 layers), ``--steps``
steps. GPO: ``GPOTrainer`` with ``GPOConfig`` (reference log-probabilities precomputed, batch 1) on pairs whose chosen
answer is the gold one and whose rejected answer is the next question's (only the lengths matter for speed). Each
variant runs in a fresh process (the switch is process-wide); SmolLM2-135M in the compute dtype the hardware chooses.
Prints each variant's median seconds per step (after the first) and training loss, the machine, and last the
ratios full / labelled-only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _timer():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    return StepTimes()


def _with_timer(trainer_cls, timer):
    """``trainer_cls`` whose instances get ``timer`` as a callback (the scripts build their own trainer)."""

    class Timed(trainer_cls):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_callback(timer)

    return Timed


def worker(args) -> None:
    from trl import ModelConfig

    import trl_bporag.scripts.sft as sft
    import trl_bporag.trainers.gpo as gpo_module
    from trl_bporag import DenseIndex, Retriever, load_beir, load_generator
    from trl_bporag.preferences import GenerationPreferenceBuilder
    from trl_bporag.scripts.gpo import MODEL_DEFAULTS
    from trl_bporag.settings import RAGSettings
    from trl_bporag.trainers import GPOConfig, GPOTrainer, gpo_lora_config
    from trl_bporag.trainers.sft import GoldSFTConfig

    if args.variant == "full":  # TRL's own behaviour: neither trainer turns the switch on
        sft.project_labelled_positions_only = gpo_module.project_labelled_positions_only = lambda: False
    from trl_bporag.hardware import describe_hardware

    out = tempfile.mkdtemp()
    result = {"variant": args.variant, "machine": describe_hardware()}

    timer = _timer()
    sft.SFTTrainer = _with_timer(sft.SFTTrainer, timer)
    t0 = time.perf_counter()
    trainer = sft.main(sft.SFTScriptArguments(dataset=str(DATA / "squad-dev"), max_queries=args.steps,
                                              query_offset=1500),
                       GoldSFTConfig(output_dir=f"{out}/sft", max_steps=args.steps, logging_steps=1000,
                                     disable_tqdm=True),
                       ModelConfig(model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", **MODEL_DEFAULTS),
                       RAGSettings())
    result["sft"] = {"s_per_step": round(statistics.median(timer.times[1:]), 3), "steps": len(timer.times),
                     "seconds": round(time.perf_counter() - t0, 1),
                     "train_loss": round(trainer.state.log_history[-1]["train_loss"], 5)}

    data = load_beir(DATA / "squad-dev", "train")
    split = data.split.slice(1500).head(args.steps)
    r = Retriever()
    model, tok = load_generator()
    builder = GenerationPreferenceBuilder(r, DenseIndex.cached(r, data.corpus), data.corpus, model, tok,
                                          settings=RAGSettings())
    rows = builder.sft_rows(split)
    pairs = [{"prompt": row["prompt"], "chosen": row["completion"],
              "rejected": rows[(i + 1) % len(rows)]["completion"]} for i, row in enumerate(rows)]
    from datasets import Dataset

    timer = _timer()
    t0 = time.perf_counter()
    trainer = _with_timer(GPOTrainer, timer)(
        model=model, args=GPOConfig(output_dir=f"{out}/gpo", num_train_epochs=1, logging_steps=1000, seed=0,
                                    disable_tqdm=True),
        train_dataset=Dataset.from_list(pairs), processing_class=tok,
        peft_config=gpo_lora_config(16, 32, 6, model=model), bporag_config={"retriever": "bench", "k": 5})
    reference = time.perf_counter() - t0
    trainer.train()
    result["gpo"] = {"s_per_step": round(statistics.median(timer.times[1:]), 3), "steps": len(timer.times),
                     "reference_s_per_pair": round(reference / len(pairs), 3),
                     "train_loss": round(trainer.state.log_history[-1]["train_loss"], 5)}
    print(json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12, help="SFT steps and GPO pairs per variant")
    p.add_argument("--emulate_avx2", action="store_true", help="as on an AVX2-only CPU (float32 is then chosen)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="labelled", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    env = dict(os.environ, **(AVX2 if args.emulate_avx2 else {}))
    results = {}
    for variant in ("full", "labelled"):
        proc = subprocess.run([sys.executable, __file__, "--worker", "--variant", variant, "--steps", str(args.steps)],
                              capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            sys.exit(f"{variant}: {proc.stderr[-2000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[variant]), flush=True)
    print(f"machine: {results['labelled']['machine']}")
    full, fast = results["full"], results["labelled"]
    print(f"SFT step: {full['sft']['s_per_step']} -> {fast['sft']['s_per_step']} s; GPO step: "
          f"{full['gpo']['s_per_step']} -> {fast['gpo']['s_per_step']} s; GPO reference pass per pair: "
          f"{full['gpo']['reference_s_per_pair']} -> {fast['gpo']['reference_s_per_pair']} s")
    print(f"full / labelled-only: SFT step {full['sft']['s_per_step'] / fast['sft']['s_per_step']:.2f}x, GPO step "
          f"{full['gpo']['s_per_step'] / fast['gpo']['s_per_step']:.2f}x, GPO reference pass "
          f"{full['gpo']['reference_s_per_pair'] / fast['gpo']['reference_s_per_pair']:.2f}x")


if __name__ == "__main__":
    main()
