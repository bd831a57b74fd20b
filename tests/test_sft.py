"""SFT on the gold answers (trl-bporag sft) and GPO started from its adapter: the rows, the training, and the one
stacked adapter that reproduces the trained model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from trl import ModelConfig

from test_gpo import make_split, word_judge
from test_rpo_builder import make_corpus
from trl_bporag import load_generator
from trl_bporag.preferences import GenerationPreferenceBuilder
from trl_bporag.retrieval import DenseIndex, Retriever
from trl_bporag.trainers import GPOConfig
from trl_bporag.trainers.adapters import is_lora_adapter, stack_lora_adapters
from trl_bporag.trainers.sft import GoldSFTConfig

TINY_LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": "all-linear",
             "dtype": "float32"}


@pytest.fixture
def sft_parts(tiny_retriever_dir, tiny_generator_dir):
    corpus = make_corpus()
    r = Retriever(tiny_retriever_dir)
    return r, DenseIndex.from_corpus(r, corpus), corpus


@pytest.mark.parametrize("prefix", ['The answer is "', None])
def test_sft_rows_are_the_gpo_prompts_completed_by_the_first_gold_answer(sft_parts, tiny_generator_dir, prefix):
    r, index, corpus = sft_parts
    gen, tok = load_generator(tiny_generator_dir, torch_dtype="float32")
    b = GenerationPreferenceBuilder(r, index, corpus, gen, tok, k=3, max_new_tokens=6, answer_prefix=prefix,
                                    conversational=False, max_length=256)
    split = make_split(6)
    rows = b.sft_rows(split, max_queries=4)
    prompts, _, pids, _ = b.prompts(split.questions[:4])
    assert rows["prompt"] == prompts and rows["passage_ids"] == pids and rows["query_id"] == split.ids[:4]
    if prefix:  # the prompt ends in the prefix and the answer is closed by its stop, as the GPO rows' answers
        assert all(p.endswith(prefix) for p in rows["prompt"])
        assert rows["completion"] == [a[0] + '"' for a in split.answers[:4]]
    else:
        assert rows["completion"] == [" " + a[0] for a in split.answers[:4]]
    blank = make_split(2)
    blank.answers[1] = ["  "]
    with pytest.raises(ValueError, match="'q1' has no gold answer"):
        b.sft_rows(blank)


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_sft_script_trains_then_gpo_from_it_saves_one_adapter_equal_to_the_trained_model(
        tmp_path, tiny_retriever_dir, tiny_generator_dir, monkeypatch):
    import trl.trainer.utils as trl_utils

    from conftest import write_beir
    from trl_bporag.scripts import gpo, sft

    device_test = trl_utils._use_triton
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(device_test, "__wrapped__", device_test))  # TRL's own

    corpus, split = make_corpus(), make_split(10)
    data = write_beir(tmp_path / "data", corpus, split, "train")
    sft_dir = tmp_path / "generator-sft"
    sft_trainer = sft.main(
        sft.SFTScriptArguments(dataset=str(data), retriever=tiny_retriever_dir, max_queries=8, lora_top_layers=1),
        GoldSFTConfig(output_dir=str(sft_dir), max_steps=4, learning_rate=1e-2, bf16=False, max_length=256),
        ModelConfig(model_name_or_path=tiny_generator_dir, **TINY_LORA))
    assert sft_trainer.train_dataset.num_rows == 8
    assert trl_utils._use_triton(torch.device("cpu"))  # the LM head projected the answer positions only
    # the loss is on the answer only: the labels of the prompt's tokens are masked (-100), the answer's are kept
    first = sft_trainer.train_dataset[0]
    target = [t for t in first["labels"] if t != -100]
    assert 0 < len(target) < len(first["input_ids"]) / 2 and first["labels"][0] == -100
    assert is_lora_adapter(sft_dir)
    config = json.loads((sft_dir / "bporag_config.json").read_text())
    assert config["stage"] == "sft" and config["k"] == 5 and config["queries"] == 8
    base, tok = load_generator(tiny_generator_dir, torch_dtype="float32")
    tuned, _ = load_generator(str(sft_dir), torch_dtype="float32")
    ids = tok("what is the capital of france", return_tensors="pt")["input_ids"]
    assert not torch.allclose(_logits(base, ids), _logits(tuned, ids))  # the SFT steps moved the model

    # on-policy GPO pairs from the SFT model, then GPO from the SFT adapter
    r = Retriever(tiny_retriever_dir)
    pairs_dir = tmp_path / "pairs"
    builder = GenerationPreferenceBuilder(r, DenseIndex.from_corpus(r, corpus), corpus, tuned, tok, k=3,
                                          num_beams=2, max_new_tokens=6, judge=word_judge, max_length=256)
    assert len(builder.build(split, output_dir=pairs_dir)) >= 2
    out = tmp_path / "generator-gpo"
    trainer = gpo.main(
        gpo.GPOScriptArguments(dataset_name=str(pairs_dir), eval_fraction=0.0, lora_top_layers=1),
        GPOConfig(output_dir=str(out), max_steps=2, learning_rate=1e-2, bf16=False, max_length=256,
                  per_device_train_batch_size=2, logging_steps=1),
        ModelConfig(model_name_or_path=str(sft_dir), **TINY_LORA))
    trained = _logits(trainer.model, ids)  # the SFT model (merged) with the new adapter
    assert not torch.allclose(trained, _logits(tuned, ids), atol=1e-5)  # GPO moved it past the SFT model
    stacked = json.loads((out / "adapter_config.json").read_text())
    assert stacked["r"] == 8 and os.path.realpath(stacked["base_model_name_or_path"]) == os.path.realpath(
        tiny_generator_dir)  # one adapter of rank 4 + 4 on the original base, not on the merged model
    reloaded, _ = load_generator(str(out), torch_dtype="float32")
    torch.testing.assert_close(_logits(reloaded, ids), trained, atol=1e-4, rtol=1e-4)
    assert json.loads((out / "bporag_config.json").read_text())["start_adapter"] == str(sft_dir)


def test_stacking_refuses_what_is_not_a_lora_adapter_or_adapts_other_layers(tmp_path, tiny_generator_dir):
    from peft import get_peft_model

    from trl_bporag.trainers import gpo_lora_config

    with pytest.raises(ValueError, match="bottom: .* is not a LoRA adapter"):
        stack_lora_adapters(tiny_generator_dir, tiny_generator_dir, tmp_path / "out")
    folders = []
    for n, top in ((0, 1), (1, 2)):
        model, _ = load_generator(tiny_generator_dir, torch_dtype="float32")
        get_peft_model(model, gpo_lora_config(4, 8, top, model=model)).save_pretrained(tmp_path / f"a{n}")
        folders.append(tmp_path / f"a{n}")
    with pytest.raises(ValueError, match="stacking needs the same layers"):
        stack_lora_adapters(folders[0], folders[1], tmp_path / "out")
