import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from datasets import Dataset
from sentence_transformers import SentenceTransformer

REPO = Path(__file__).resolve().parents[1]


def test_rpo_script_trains_and_saves_a_sentence_transformers_folder(tmp_path, tiny_retriever_dir, toy_corpus,
                                                                    toy_split):
    from conftest import write_beir

    write_beir(tmp_path / "qa", toy_corpus, toy_split)
    rows = []
    for city, country, other in [("paris", "france", "rome"), ("rome", "italy", "berlin"),
                                 ("berlin", "germany", "madrid"), ("madrid", "spain", "paris")] * 3:
        rows.append({"prompt": f"what is the capital of {country}",
                     "chosen": [f"{city} is the capital", "the river", "old city"],
                     "rejected": [f"{other} is the capital", "the river", "old city"]})
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "pairs"))
    out = tmp_path / "model"
    cmd = [sys.executable, "examples/rpo.py", "--dataset_name", str(tmp_path / "pairs"), "--model_name_or_path",
           tiny_retriever_dir, "--output_dir", str(out), "--per_device_train_batch_size", "4",
           "--num_train_epochs", "2", "--learning_rate", "1e-3", "--eval_strategy", "epoch",
           "--eval_fraction", "0.25", "--report_to", "none", "--save_strategy", "epoch", "--logging_steps", "1",
           "--retrieval_eval_dataset", str(tmp_path / "qa"), "--retrieval_eval_ks", "1", "3",
           "--retrieval_dev_split", "test", "--load_best_model_at_end",
           "--metric_for_best_model", "eval_qa-test_cosine_accuracy@1"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1",
                                                                             "PATH": __import__("os").environ["PATH"]})
    assert res.returncode == 0, res.stderr[-3000:]
    tuned = SentenceTransformer(str(out), device="cpu")
    base = SentenceTransformer(tiny_retriever_dir, device="cpu")
    q = ["what is the capital of france"]
    assert not np.allclose(tuned.encode(q), base.encode(q))  # the weights moved
    card = (out / "README.md").read_text()
    assert "set_dpo" in card and "k: 3" in card  # k read from the pairs (lists of 3), not given
    assert json.loads((out / "bporag_config.json").read_text())["k"] == 3
    # the retrieval evaluator ran at every evaluation, and selected the kept checkpoint
    (last,) = sorted(out.glob("checkpoint-*"))[-1:]
    state = json.loads((last / "trainer_state.json").read_text())
    recalls = [log["eval_qa-test_cosine_accuracy@1"] for log in state["log_history"]
               if "eval_qa-test_cosine_accuracy@1" in log]
    assert len(recalls) == 2 and state["best_metric"] == max(recalls)
    assert state["best_model_checkpoint"] is not None
    # --retrieval_eval_dataset: Recall@k before and after training, in the card
    assert "### Retrieval metrics" in card and "| recall@3 |" in card and "| answer_hit@1 |" in card
    assert "Retrieval metrics: {" in res.stdout


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_retriever_dir):
    """accelerate launch --multi_gpu --num_processes 2 of examples/rpo.py on CPU (gloo), 4 rows per process, gives the
    losses and final weights of one process with 8 rows per batch; a checkpoint saved under 2 processes reloads as a
    sentence-transformers folder holding those weights."""
    import torch

    from conftest import run_two

    countries = [("paris", "france"), ("rome", "italy"), ("berlin", "germany"), ("madrid", "spain"),
                 ("lisbon", "portugal"), ("vienna", "austria"), ("oslo", "norway"), ("athens", "greece")]
    rows = []
    for i, (city, country) in enumerate(countries * 3):
        other = countries[(i + 1) % len(countries)][0]
        rows.append({"prompt": f"what is the capital of {country}",
                     "chosen": [f"{city} is the capital", f"{country} has a river", "old city"],
                     "rejected": [f"{other} is the capital", f"{country} has a river", "old city"]})
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "pairs"))
    common = ["examples/rpo.py", "--dataset_name", str(tmp_path / "pairs"), "--model_name_or_path", tiny_retriever_dir,
              "--max_steps", "3", "--learning_rate", "1e-3", "--reference", "free", "--report_to", "none",
              "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "3", "--seed", "0",
              "--dataloader_drop_last", "true", "--train_sampling_strategy", "sequential"]
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRL_BPORAG_CPU_BF16": "0", "PATH": __import__("os").environ["PATH"]}
    one = subprocess.run([sys.executable, *common, "--per_device_train_batch_size", "8", "--output_dir",
                          str(tmp_path / "one")], cwd=REPO, capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_two(*common, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "two"),
                  outputs=[tmp_path / "two"], cwd=REPO, env=env)
    assert two.returncode == 0, two.rank_errors + two.stderr[-2000:]

    def losses(run):
        state = json.loads((tmp_path / run / "checkpoint-3" / "trainer_state.json").read_text())
        return [log["loss"] for log in state["log_history"] if "loss" in log]

    assert len(losses("one")) == 3
    np.testing.assert_allclose(losses("two"), losses("one"), atol=1e-4)
    assert losses("one")[0] != losses("one")[-1]  # it trained
    final = {run: SentenceTransformer(str(tmp_path / run), device="cpu").state_dict() for run in ("one", "two")}
    base = SentenceTransformer(tiny_retriever_dir, device="cpu").state_dict()
    # the same weights, up to float rounding of the gradient average (that Adam's normalisation scales up where a
    # gradient is near 0): the gap between the runs is tiny against how far training moved the weights
    moved = max((v - base[k]).abs().max().item() for k, v in final["one"].items())
    gap = max((final["two"][k] - v).abs().max().item() for k, v in final["one"].items())
    assert moved > 1e-3 and gap < 0.05 * moved, (moved, gap)  # measured: 0.7 %; a process alone on 4 rows: 190 %
    checkpoint = SentenceTransformer(str(tmp_path / "two" / "checkpoint-3"), device="cpu").state_dict()
    for key, value in final["two"].items():
        torch.testing.assert_close(checkpoint[key], value)


def test_e5_style_prompts_are_trained_with_saved_with_the_model_and_served(tmp_path, tiny_retriever_dir):
    """--query_prompt / --document_prompt: set on the model before the trainer (so the reference copy has them too),
    used by the training's encode path, saved in the sentence-transformers folder, and what serving encodes with."""
    from trl_bporag import Retriever
    from trl_bporag.scripts import rpo

    rows = [{"prompt": "what is the capital of france", "chosen": ["paris is the capital", "the river"],
             "rejected": ["rome is the capital", "the river"]}] * 4
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "pairs"))
    args = rpo.parse(["--dataset_name", str(tmp_path / "pairs"), "--model_name_or_path", tiny_retriever_dir,
                      "--output_dir", str(tmp_path / "model"), "--max_steps", "1", "--per_device_train_batch_size",
                      "4", "--query_prompt", "query: ", "--document_prompt", "passage: ", "--use_cpu", "--bf16",
                      "false", "--reference", "model", "--save_strategy", "no"])
    trainer = rpo.main(*args)
    assert trainer.ref_model.prompts["query"] == "query: "  # the reference encodes as the policy does
    features = trainer.scorer.features(trainer.model, ["paris"], "query")
    plain = trainer.model.tokenizer("paris")["input_ids"]
    assert len(features["input_ids"][0]) > len(plain)  # the training encode path prepends the prompt
    saved = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert saved.prompts["query"] == "query: " and saved.prompts["document"] == "passage: "
    served = Retriever(str(tmp_path / "model"))
    with_prompt = saved.encode(["query: paris"], normalize_embeddings=True)
    np.testing.assert_allclose(served.encode_queries(["paris"]), with_prompt, atol=1e-5)
