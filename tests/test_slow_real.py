"""Real packaged models on the shared data sets (minutes on 2 CPU cores): pytest -m slow."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_packaged, shared_data

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_squad_dev_test_recall_matches_the_independent_measurement(tmp_path):
    require_packaged("retriever")
    cmd = [sys.executable, str(REPO / "examples" / "evaluate.py"), "--dataset", shared_data("squad-dev"),
           "--split", "test", "--retrieval_only", "--index_dir", str(tmp_path / "index"),
           "--output_dir", str(tmp_path / "out")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    m = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    # shared/data/README.md: exact search, all-MiniLM-L6-v2, title + " " + text -> 0.658 / 0.896 / 0.941
    assert m["recall@1"] == pytest.approx(0.658, abs=0.005)
    assert m["recall@5"] == pytest.approx(0.896, abs=0.005)
    assert m["recall@10"] == pytest.approx(0.941, abs=0.005)
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "passages encoded: 0" in again.stderr


def test_real_rag_pipeline_answers(tmp_path):
    require_packaged("retriever", "generator")
    from trl_bporag import RAGPipeline, load_beir

    data = load_beir(shared_data("hotpotqa-distractor"), "test")
    pipe = RAGPipeline.from_pretrained(corpus=data.corpus, index_dir=str(tmp_path / "index"), k=5,
                                       max_new_tokens=16)
    res = pipe.evaluate(data.split.head(8), ks=(1, 5, 10), return_predictions=True)
    m = res["metrics"]
    assert all(isinstance(p["prediction"], str) and p["prediction"] for p in res["predictions"])
    # the metrics are those of the predictions and of an independent exact search
    import numpy as np

    from trl_bporag.metrics import qa_f1

    split = data.split.head(8)
    assert m["f1"] == pytest.approx(np.mean([qa_f1(p["prediction"], a) for p, a in zip(res["predictions"],
                                                                                        split.answers)]))
    q = pipe.retriever.model.encode(split.questions, normalize_embeddings=True)
    d = pipe.retriever.model.encode(data.corpus.passages(True), normalize_embeddings=True)
    top5 = np.argsort(-(q @ d.T), axis=1)[:, :5]
    expect = np.mean([len({data.corpus.ids[j] for j in row} & set(g)) / len(g)
                      for row, g in zip(top5, split.gold_ids)])
    assert m["recall@5"] == pytest.approx(expect, abs=1e-9)


def test_real_gpo_pairs_train_and_pipeline(tmp_path):
    """Real MiniLM + SmolLM2: GPO pairs on squad-dev train questions, stock DPOTrainer + LoRA steps on them, and the
    pipeline answering with the adapter under the retriever recorded in it."""
    require_packaged("retriever", "generator")
    import torch
    from peft import LoraConfig

    from trl_bporag import DenseIndex, RAGPipeline, Retriever, load_beir, load_generator
    from trl_bporag.preferences import GenerationPreferenceBuilder, check_dpo_lengths
    from trl_bporag.trainers import GPOConfig, GPOTrainer

    data = load_beir(shared_data("squad-dev"), "train")
    r = Retriever()
    index = DenseIndex.from_corpus(r, data.corpus, index_dir=str(tmp_path / "index"))
    gen, tok = load_generator(torch_dtype="bfloat16")
    b = GenerationPreferenceBuilder(r, index, data.corpus, gen, tok, k=3, num_beams=2, num_samples=2,
                                    max_passage_tokens=96, max_length=512, max_new_tokens=16)
    pairs = b.build(data.split.head(12))
    stats = b.describe()["stats"]
    assert stats["queries"] == 12 and stats["pairs"] + stats["ties"] + stats["identical"] == 12
    assert len(pairs) >= 2, stats
    assert all(row["chosen_f1"] > row["rejected_f1"] for row in pairs)
    # the default prompt starts the reply with the answer prefix, so the rows carry the rendered prompt text
    assert "Passage 1:" in pairs[0]["prompt"] and pairs[0]["prompt"].endswith('The answer is "')
    pairs, counts = check_dpo_lengths(pairs, tok, 512)
    assert counts["prompt_too_long"] == counts["completion_cut"] == 0

    model, tok = load_generator(torch_dtype="float32")
    args = GPOConfig(output_dir=str(tmp_path / "gpo"), per_device_train_batch_size=2, max_steps=2,
                     learning_rate=1e-4, max_length=512, logging_steps=1)  # bf16 by the hardware
    trainer = GPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
                         bporag_config={"retriever": "sentence-transformers/all-MiniLM-L6-v2", "k": 3})
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    trainer.save_model(str(tmp_path / "gpo"))
    trainer.create_model_card()
    adapter = json.loads((tmp_path / "gpo" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub id, not a cache path
    test = load_beir(shared_data("squad-dev"), "test")
    pipe = RAGPipeline.from_pretrained(generator=str(tmp_path / "gpo"), corpus=test.corpus, generator_dtype="bfloat16",
                                       max_new_tokens=16)
    assert pipe.k == 3
    out = pipe(test.split.questions[0])
    assert isinstance(out["answer"], str) and out["answer"] and len(out["passage_ids"]) == 3


def test_compressed_sharded_index_of_the_real_corpus_matches_flat(tmp_path):
    """The index command on squad-dev's corpus.jsonl, read lazily into shards, with an OPQ+IVF+PQ index whose top 100
    is re-scored: the squad-dev test Recall@k equals flat's, and a second run encodes nothing."""
    require_packaged("retriever")
    corpus = Path(shared_data("squad-dev")) / "corpus.jsonl"
    cmd = [sys.executable, str(REPO / "examples" / "index.py"), "--corpus", str(corpus), "--index_type",
           "OPQ48,IVF32,PQ48", "--rescore", "100", "--nprobe", "32", "--shard_size", "500",
           "--output_dir", str(tmp_path / "ix")]
    first = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    assert first["passages"] == first["passages_encoded"] == 2067
    again = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    assert again["passages_encoded"] == 0
    evaluate = [sys.executable, str(REPO / "examples" / "evaluate.py"), "--dataset", shared_data("squad-dev"),
                "--split", "test", "--retrieval_only", "--index_dir", str(tmp_path / "ix"), "--index_type",
                "OPQ48,IVF32,PQ48", "--output_dir", str(tmp_path / "out")]
    res = subprocess.run(evaluate, check=True, capture_output=True, text=True)
    assert "passages encoded: 0" in res.stderr  # the index built from the streamed file serves the loaded corpus
    m = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    assert m["recall@1"] == pytest.approx(0.658, abs=0.005)
    assert m["recall@10"] == pytest.approx(0.941, abs=0.005)
