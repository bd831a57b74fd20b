"""GPO training defaults (GPOConfig + gpo_lora_config with TRL's DPOTrainer) and the evaluation statistics
(per-query metrics, paired bootstrap CIs) and stage log that examples/bporag.py reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_bporag import load_generator
from trl_bporag.metrics import answer_metrics, paired_bootstrap_ci, per_query_metrics, retrieval_metrics
from trl_bporag.monitor import PeakRSS, StageLog
from trl_bporag.trainers import GPO_MAX_LENGTH, GPOConfig, gpo_lora_config


# --- paired bootstrap ----------------------------------------------------------------------------------------------
def test_paired_bootstrap_on_a_known_case():
    a = [1.0] * 60 + [0.0] * 40
    b = [0.0] * 60 + [0.0] * 40  # a wins on 60 of 100 queries, never loses
    ci = paired_bootstrap_ci(a, b, n_resamples=2000, seed=1)
    assert ci["diff"] == pytest.approx(0.6) and ci["n"] == 100 and ci["significant"]
    # the percentile interval of a resampled proportion: 0.6 +- 1.96 * sqrt(0.6 * 0.4 / 100) = [0.504, 0.696]
    assert ci["low"] == pytest.approx(0.6 - 1.96 * math.sqrt(0.24 / 100), abs=0.02)
    assert ci["high"] == pytest.approx(0.6 + 1.96 * math.sqrt(0.24 / 100), abs=0.02)
    # same systems: difference 0 on every resample; a sign flip mirrors the interval
    same = paired_bootstrap_ci(a, a)
    assert (same["diff"], same["low"], same["high"], same["significant"]) == (0.0, 0.0, 0.0, False)
    flipped = paired_bootstrap_ci(b, a, n_resamples=2000, seed=1)
    assert flipped["low"] == pytest.approx(-ci["high"]) and flipped["high"] == pytest.approx(-ci["low"])


def test_paired_bootstrap_keeps_the_pairing():
    # b = a + 0.01 on every query: the paired interval is exactly [0.01, 0.01] although both vary a lot
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 50)
    ci = paired_bootstrap_ci(a + 0.01, a)
    assert ci["low"] == pytest.approx(0.01) and ci["high"] == pytest.approx(0.01) and ci["significant"]


def test_paired_bootstrap_one_win_in_fifty_is_noise():
    a, b = [0.0] * 50, [0.0] * 50
    a[3] = 1.0
    ci = paired_bootstrap_ci(a, b)
    assert ci["low"] == 0.0 and not ci["significant"]


@pytest.mark.parametrize("a, b, kw, message", [
    ([1, 0], [1], {}, "equally long"),
    ([], [], {}, "no queries"),
    ([1, float("nan")], [0, 0], {}, "finite"),
    ([1, 0], [0, 0], {"n_resamples": 0}, "n_resamples"),
    ([1, 0], [0, 0], {"confidence": 1.0}, "confidence"),
])
def test_paired_bootstrap_rejects_bad_input(a, b, kw, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_ci(a, b, **kw)


def test_per_query_metrics_average_to_the_corpus_metrics():
    retrieved = [["p1", "p2", "p3"], ["p4", "p1", "p2"], ["p3", "p2", "p1"]]
    gold = [["p1"], ["p1", "p2"], ["p9"]]
    passages = [["paris is big", "rome", "x"], ["y", "the seine", "z"], ["a", "b", "c"]]
    answers = [["paris"], ["seine"], ["nothing"]]
    predictions = ["Paris", "the river seine", "no"]
    per = per_query_metrics(retrieved, gold, passages, answers, predictions, ks=(1, 2))
    assert per["recall@2"] == [1.0, 0.5, 0.0] and per["answer_hit@1"] == [1.0, 0.0, 0.0]
    means = {m: sum(v) / len(v) for m, v in per.items()}
    expected = {**retrieval_metrics(retrieved, gold, passages, answers, (1, 2)),
                **answer_metrics(predictions, answers)}
    assert means == pytest.approx(expected)


# --- stage log -----------------------------------------------------------------------------------------------------
def test_stage_log_announces_and_measures_a_stage(capsys):
    log = StageLog("test")
    with log.stage("alloc") as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block += 1
    err = capsys.readouterr().err
    assert "alloc: starting" in err and "alloc: done in" in err and "peak memory" in err
    assert log.stages[0]["stage"] == "alloc" and log.stages[0]["seconds"] >= 0
    assert mem.peak - mem.start >= 60 * 2**20  # the 64 MiB block is in the stage's peak
    assert log.peak_gib() >= mem.peak / 2**30 - 0.01
    del block
    with PeakRSS() as quiet:  # the benchmarks' probe: a fresh block does not inherit the earlier peak
        pass
    if quiet.resettable:
        assert quiet.peak < mem.peak


# --- GPO training --------------------------------------------------------------------------------------------------
def test_gpo_config_is_a_dpo_config_with_the_gpo_recipe_and_lora_targets_the_top_layers(tiny_generator_dir):
    from trl import DPOConfig

    config = GPOConfig(output_dir="unused")
    assert isinstance(config, DPOConfig)
    assert config.precompute_ref_log_probs and config.per_device_train_batch_size == 1 and config.beta == 0.5
    assert config.learning_rate == 5e-4 and config.loss_type == ["sigmoid", "sft"] and config.logging_steps == 5
    assert config.max_length == GPO_MAX_LENGTH and config.use_cpu and config.bf16 is False  # no native bf16 (conftest)
    assert not config.gradient_checkpointing and config.report_to in ([], "none", ["none"])
    assert GPOConfig(output_dir="unused", beta=0.1, loss_type="sigmoid").loss_type == ["sigmoid"]  # flags win
    with pytest.raises(ValueError, match="beta: expected a finite number > 0"):
        GPOConfig(output_dir="unused", beta=-1.0)
    model, _ = load_generator(tiny_generator_dir)
    lora = gpo_lora_config(top_layers=1, model=model)
    assert lora.layers_to_transform == [1] and set(lora.target_modules) >= {"q_proj", "down_proj"}
    assert "lm_head" not in lora.target_modules
    assert gpo_lora_config(top_layers=10, model=model).layers_to_transform == [0, 1]  # all layers of a 2-layer model
    assert gpo_lora_config().target_modules == "all-linear"
    with pytest.raises(ValueError, match="top_layers: pass the model"):
        gpo_lora_config(top_layers=2)
    with pytest.raises(ValueError, match="top_layers: expected an integer >= 1"):
        gpo_lora_config(top_layers=0, model=model)


def test_gpo_config_trains_a_tiny_generator_below_log2_and_move_only_top_layer_lora(tiny_generator_dir, tmp_path):
    """Stock DPOTrainer with GPOConfig (precomputed reference, batch 1, beta 0.5; the DPO term alone here) and LoRA on
    the last layer: the DPO loss falls clearly below log 2, the adapter of the last layer moves and nothing else."""
    from trl import DPOTrainer

    model, tok = load_generator(tiny_generator_dir)
    rows = []
    for city, country in [("paris", "france"), ("rome", "italy"), ("berlin", "germany"), ("london", "england")]:
        prompt = [{"role": "user", "content": f"what is the capital of {country} ?"}]
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": city}],
                     "rejected": [{"role": "assistant", "content": f"the capital of {country} is a city"}]})
    config = GPOConfig(output_dir=str(tmp_path), num_train_epochs=6, seed=0, learning_rate=2e-2, logging_steps=1,
                       max_length=64, loss_type=["sigmoid"])
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=gpo_lora_config(r=4, alpha=8, top_layers=1, model=model))
    assert trainer.ref_model is None and "ref_chosen_logps" in trainer.train_dataset.column_names
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)  # policy == reference at step 0
    assert sum(losses[-4:]) / 4 < 0.45 < math.log(2)
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n and ".layers.1." in n for n in moved)


def test_large_allocations_go_back_to_the_os_once_freed(tmp_path):
    """In a fresh process: a 16 MiB block allocated after an earlier one of that size was freed comes from the heap by
    glibc's default and stays resident when freed below a live small block; with large_allocations_to_os it is
    mapped and returned."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "from trl_bporag.monitor import large_allocations_to_os, rss_bytes\n"
        "if sys.argv[1] == 'on':\n"
        "    assert large_allocations_to_os()\n"
        "n = 16 << 20\n"
        "def touched():\n"
        "    b = bytearray(n)\n"
        "    b[::4096] = b'\\x01' * (n // 4096)\n"
        "    return b\n"
        "a = touched(); del a  # by default this raises glibc's threshold to 16 MiB\n"
        "start = rss_bytes()\n"
        "b = touched(); pin = bytearray(100_000); del b\n"
        "print((rss_bytes() - start) / 2**20)\n")
    kept = {mode: float(subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("off", "on")}
    assert kept["on"] < 2 < 12 < kept["off"]
