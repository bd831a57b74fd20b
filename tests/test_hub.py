"""Hub round trips against a local stand-in (tests/_fake_hub.py): exactly which files and which card text would be
sent, and that what was sent loads back."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset, load_dataset
from sentence_transformers import SentenceTransformer

from trl_bporag import DenseIndex, Retriever, SetDPOConfig, SetDPOTrainer
from trl_bporag.hub import push_folder_to_hub, push_pairs_to_hub, snapshot
from trl_bporag.preferences import RetrievalPreferenceBuilder

REPO = Path(__file__).resolve().parents[1]

ROWS = [
    ("what is the capital of france", ["paris is the capital of france", "the seine is a river in france"],
     ["rome is the capital of italy", "the seine is a river in france"]),
    ("what is the capital of italy", ["rome is the capital of italy", "madrid is the capital of spain"],
     ["berlin is the capital of germany", "madrid is the capital of spain"]),
] * 2


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def rpo_pairs() -> Dataset:
    return Dataset.from_dict({"prompt": [r[0] for r in ROWS], "chosen": [r[1] for r in ROWS],
                              "rejected": [r[2] for r in ROWS]})


def test_rpo_retriever_push_sends_the_sentence_transformers_folder_and_card(tmp_path, tiny_retriever_dir, fake_hub):
    policy = SentenceTransformer(tiny_retriever_dir, device="cpu")
    policy.bporag_model_id = "sentence-transformers/all-MiniLM-L6-v2"  # as load_retriever records a Hub id
    args = SetDPOConfig(output_dir=str(tmp_path / "out"), report_to="none", k=2, beta=0.3, max_steps=1,
                        learning_rate=1e-3, per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True,
                        hub_model_id="user/tiny-rpo", seed=0)
    trainer = SetDPOTrainer(policy, args=args, train_dataset=rpo_pairs())
    trainer.train()
    trainer.save_model(args.output_dir)
    metrics = {"dataset": "squad-dev", "split": "test", "before": {"recall@5": 0.5, "recall@1": 0.25},
               "after": {"recall@5": 0.75, "recall@1": 0.5}}
    trainer.push_to_hub(dataset_name="user/rpo-pairs", retrieval_metrics=metrics)

    (upload,) = fake_hub.uploads()
    assert upload["repo_id"] == "user/tiny-rpo"
    assert ("create_repo", {"repo_id": "user/tiny-rpo", "repo_type": None, "private": None}) in fake_hub.calls
    assert set(upload["files"]) == {
        "README.md", "config.json", "config_sentence_transformers.json", "model.safetensors", "modules.json",
        "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json", "tokenizer_config.json",
        "training_args.bin", "bporag_config.json",
    } | ({"special_tokens_map.json"} & set(upload["files"]))
    sent_config = json.loads((fake_hub.repo_dir("user/tiny-rpo") / "bporag_config.json").read_text())
    assert sent_config["k"] == 2 and sent_config["score"] == "cos"  # what RAGPipeline reads back
    assert not any(f.endswith((".pt", ".pth", ".bin")) and f != "training_args.bin" for f in upload["files"])

    card = (fake_hub.repo_dir("user/tiny-rpo") / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["user/rpo-pairs"]
    assert {"trl", "bporag", "set-dpo", "sentence-transformers"} <= set(meta["tags"])
    cfg = meta["set_dpo"]
    assert cfg["k"] == 2 and cfg["score"] == "cos" and cfg["beta"] == 0.3 and cfg["loss_type"] == ["sigmoid"]
    assert cfg["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["retrieval_metrics"] == metrics
    (index,) = meta["model-index"]  # the Hub's own place for results
    assert index["name"] == "user/tiny-rpo"
    shown = {m["type"]: m["value"] for r in index["results"] for m in r["metrics"]}
    assert shown == {"recall@5": 0.75, "recall@1": 0.5}
    assert index["results"][0]["dataset"]["name"] == "squad-dev" and index["results"][0]["dataset"]["split"] == "test"
    assert "| recall@5 | 0.5000 | 0.7500 |" in card and "| recall@1 | 0.2500 | 0.5000 |" in card
    assert 'SentenceTransformer("user/tiny-rpo")' in card

    # from_pretrained of what was sent: the trained weights
    sent = SentenceTransformer(str(snapshot("user/tiny-rpo")), device="cpu")
    texts = ["paris is the capital of france", "what is the capital of italy"]
    torch.testing.assert_close(sent.encode(texts, convert_to_tensor=True),
                               trainer.model.encode(texts, convert_to_tensor=True))
    with pytest.raises(ValueError, match="retrieval_metrics\\['after'\\]\\['recall@5'\\]: expected a number"):
        trainer.set_retrieval_metrics({"after": {"recall@5": "high"}})


def test_index_push_and_from_pretrained(tmp_path, tiny_st, toy_corpus, fake_hub):
    retriever = Retriever(tiny_st)
    index = DenseIndex.from_corpus(retriever, toy_corpus)
    url = index.push_to_hub("user/toy-index")
    assert "user/toy-index" in url
    (upload,) = fake_hub.uploads()
    assert upload["repo_type"] == "dataset"
    assert upload["files"] == ["README.md", "index.faiss", "metadata.json"]
    card = (fake_hub.repo_dir("user/toy-index", "dataset") / "README.md").read_text()
    info = front_matter(card)["bporag_index"]
    assert info["dim"] == retriever.dim and info["num_passages"] == 6 and info["index_type"] == "flat"
    assert info["model_fingerprint"] == retriever.fingerprint()
    assert info["corpus_fingerprint"] == toy_corpus.fingerprint()
    assert 'DenseIndex.from_pretrained("user/toy-index"' in card

    loaded = DenseIndex.from_pretrained("user/toy-index", retriever=retriever, corpus=toy_corpus)
    q = retriever.encode_queries(["what is the capital of france", "which river is in france"])
    s1, ids1 = index.search_ids(q, 3)
    s2, ids2 = loaded.search_ids(q, 3)
    assert ids1 == ids2 and np.allclose(s1, s2)
    assert loaded.metadata["model_fingerprint"] == retriever.fingerprint()
    # a local folder works the same way, and the checks of load() apply to a downloaded index
    assert DenseIndex.from_pretrained(fake_hub.repo_dir("user/toy-index", "dataset")).ids == index.ids
    other = Retriever(tiny_st, score="dot")
    with pytest.raises(ValueError, match="score 'cos'"):
        DenseIndex.from_pretrained("user/toy-index", retriever=other)
    with pytest.raises(ValueError, match="user/missing: not a local folder.*dataset repo could not be downloaded"):
        DenseIndex.from_pretrained("user/missing")
    with pytest.raises(ValueError, match="repo_id: expected a Hub repo id"):
        index.push_to_hub("a/b/c")


def test_pairs_push_and_load_dataset_round_trip(tmp_path, tiny_st, toy_corpus, toy_split, fake_hub):
    retriever = Retriever(tiny_st)
    index = DenseIndex.from_corpus(retriever, toy_corpus)
    builder = RetrievalPreferenceBuilder(retriever, index, toy_corpus, judge="answer_hit", k=2, top_n=5,
                                         num_perturbations=4, pairing="vs_original")
    pairs = builder.build(toy_split)
    assert len(pairs) > 0
    push_pairs_to_hub(pairs, "user/rpo-pairs", description=builder.describe())
    (upload,) = fake_hub.uploads()
    assert upload["repo_type"] == "dataset"
    assert upload["files"] == ["README.md", "data/train-00000-of-00001.parquet", "stats.json"]
    repo = fake_hub.repo_dir("user/rpo-pairs", "dataset")
    meta = front_matter((repo / "README.md").read_text())
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    assert meta["bporag_builder"]["k"] == 2 and meta["bporag_stats"]["pairs"] == len(pairs)
    assert "rpo-pairs" in meta["tags"]
    back = load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "ds-cache"))
    assert back.to_list() == pairs.to_list()
    with pytest.raises(ValueError, match="missing column 'rejected'"):
        push_pairs_to_hub(pairs.remove_columns("rejected"), "user/bad")
    # listwise rows (the default recipe) push and read back too
    listwise = RetrievalPreferenceBuilder(retriever, index, toy_corpus, judge="answer_hit", k=2, top_n=5,
                                          num_perturbations=4)
    rows = listwise.build(toy_split)
    assert "lists" in rows.column_names and len(rows)
    push_pairs_to_hub(rows, "user/rpo-listwise", description=listwise.describe())
    assert load_dataset(str(fake_hub.repo_dir("user/rpo-listwise", "dataset")), split="train",
                        cache_dir=str(tmp_path / "ds-cache")).to_list() == \
        rows.to_list()
    with pytest.raises(ValueError, match="missing column 'list_scores'"):
        push_pairs_to_hub(rows.remove_columns("list_scores"), "user/bad")


def test_build_rpo_pairs_script_push(tmp_path, tiny_retriever_dir, toy_corpus, toy_split, fake_hub, capsys):
    from conftest import write_beir

    write_beir(tmp_path / "data", toy_corpus, toy_split, "train")
    from trl_bporag.scripts import build_rpo_pairs as script
    args = script.BuildArguments(dataset=str(tmp_path / "data"), output_dir=str(tmp_path / "pairs"),
                                 retriever=tiny_retriever_dir, index_dir=str(tmp_path / "index"),
                                 push_to_hub="user/script-pairs")
    from trl_bporag.settings import RAGSettings, RPOPairSettings

    script.main(args, RPOPairSettings(judge="answer_hit", top_n=5), RAGSettings(k=2))
    repo = fake_hub.repo_dir("user/script-pairs", "dataset")
    assert fake_hub.files("user/script-pairs", "dataset") == ["README.md", "data/train-00000-of-00001.parquet",
                                                              "stats.json"]
    from datasets import load_from_disk

    pushed = load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "ds-cache"))
    assert pushed.to_list() == load_from_disk(str(tmp_path / "pairs")).to_list()
    # the next stage reads the builder's settings from the Hub as from the local folder
    from trl_bporag.artifacts import read_bporag_config, read_stage_config

    assert read_stage_config("user/script-pairs") == read_bporag_config(tmp_path / "pairs")
    assert read_stage_config("user/script-pairs")["k"] == 2
    assert read_stage_config("user/no-such-pairs") is None  # a clear warning, no crash


def test_peft_adapter_folder_push_round_trip(tmp_path, tiny_generator_dir, fake_hub):
    """The generic path for a GPO LoRA adapter folder: push_folder_to_hub + load_generator of what was sent."""
    from peft import LoraConfig, get_peft_model

    from trl_bporag import load_generator

    model, tok = load_generator(tiny_generator_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    push_folder_to_hub(folder, "user/tiny-adapter")
    files = fake_hub.files("user/tiny-adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded, _ = load_generator(str(snapshot("user/tiny-adapter")))
    ids = tok("what is the capital of france", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, peft_model.eval()(ids).logits)
    with pytest.raises(ValueError, match="folder: .* is not a folder"):
        push_folder_to_hub(tmp_path / "nope", "user/x")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # nothing here could have reached the real Hub


def test_the_whole_run_loads_by_hub_id_on_a_machine_that_never_saw_its_folders(
        tmp_path, tiny_retriever_dir, tiny_generator_dir, toy_corpus, toy_split, fake_hub, monkeypatch):
    """Push the tuned retriever, the GPO pairs and the adapter; then, from an empty cache, in another working
    directory, with the run folders gone: RAGPipeline.from_pretrained(generator=<adapter id>) finds the retriever by
    its Hub id, with k and every prompt setting, and retrieves and answers as the local folders did."""
    import shutil

    from peft import LoraConfig

    from trl_bporag import GPOConfig, GPOTrainer, RAGPipeline, load_generator
    from trl_bporag.artifacts import read_stage_config
    from trl_bporag.preferences import GenerationPreferenceBuilder
    from trl_bporag.settings import RAGSettings

    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path / "cache-a"))
    run = tmp_path / "machine-a" / "run"
    # 1. the retriever, trained and pushed: its folder records where it went
    args = SetDPOConfig(output_dir=str(run / "tuned-retriever"), report_to="none", k=2, max_steps=1, learning_rate=1e-3,
                        per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True,
                        hub_model_id="user/retriever-rpo", seed=0)
    trainer = SetDPOTrainer(SentenceTransformer(tiny_retriever_dir, device="cpu"), args=args,
                            train_dataset=rpo_pairs())
    trainer.train()
    trainer.save_model(args.output_dir)
    trainer.push_to_hub()
    assert json.loads((run / "tuned-retriever" / "bporag_config.json").read_text())["retriever_hub_id"] == \
        "user/retriever-rpo"
    # 2. GPO pairs under that folder, pushed: stats.json names the retriever's folder and its Hub id
    retriever = Retriever(str(run / "tuned-retriever"))
    gen, tok = load_generator(tiny_generator_dir)
    settings = RAGSettings(k=2, answer_prefix="Answer: ", max_new_tokens=4, max_passage_tokens=16)
    builder = GenerationPreferenceBuilder(retriever, DenseIndex.from_corpus(retriever, toy_corpus), toy_corpus, gen,
                                          tok, settings=settings, num_beams=2, num_samples=1, batch_size=4,
                                          judge=lambda prediction, answers: len(prediction) % 7 / 7)
    pairs = builder.build(toy_split, output_dir=run / "gpo-pairs", push_to_hub="user/gpo-pairs")
    assert len(pairs) > 0
    recorded = read_stage_config("user/gpo-pairs")  # what a GPO run on the Hub pairs reads
    assert recorded["retriever_hub_id"] == "user/retriever-rpo" and recorded["k"] == 2
    # 3. the adapter, trained on them and pushed
    gpo_args = GPOConfig(output_dir=str(run / "generator-gpo"), per_device_train_batch_size=2, max_steps=1,
                         learning_rate=1e-2, hub_model_id="user/gpo", report_to="none")
    gpo = GPOTrainer(model=gen, args=gpo_args, train_dataset=pairs, processing_class=tok,
                     peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                     bporag_config={**read_stage_config(str(run / "gpo-pairs")), "adapter_hub_id": "user/gpo"})
    gpo.train()
    gpo.save_model(gpo_args.output_dir)
    gpo.create_model_card()
    gpo.push_to_hub()
    local = RAGPipeline.from_pretrained(generator=str(run / "generator-gpo"), corpus=toy_corpus)
    questions = list(toy_split.questions)
    want_ids, _ = local.retrieve(questions)
    want = [out["answer"] for out in local(questions)]

    # 4. another machine: the run folders are gone, the caches are empty, another working directory
    shutil.rmtree(tmp_path / "machine-a")
    (tmp_path / "machine-b").mkdir()
    monkeypatch.chdir(tmp_path / "machine-b")
    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path / "cache-b"))
    before = len(fake_hub.calls)
    remote = RAGPipeline.from_pretrained(generator="user/gpo", corpus=toy_corpus)
    downloads = [kw["repo_id"] for name, kw in fake_hub.calls[before:] if name == "snapshot_download"]
    assert sorted(downloads) == ["user/gpo", "user/retriever-rpo"]  # each model resolved once, at the door
    assert remote.retriever.model_id == "user/retriever-rpo"
    assert remote.settings == local.settings and remote.k == 2 and remote.settings.answer_prefix == "Answer: "
    got_ids, _ = remote.retrieve(questions)
    assert got_ids == want_ids
    assert [out["answer"] for out in remote(questions)] == want
    # an explicit retriever wins, with the mismatch warning
    other = RAGPipeline.from_pretrained(generator="user/gpo", retriever=tiny_retriever_dir, corpus=toy_corpus)
    assert other.retriever.model_id == tiny_retriever_dir and other.k == 2
