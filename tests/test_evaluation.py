"""Retrieval evaluation in training: retrieval_evaluator against the pipeline's own Recall@k, the trainer running it
with and without an eval data set, and the k / score a trained folder hands to the pipeline."""

import json

import pytest
from datasets import Dataset

from trl_bporag import RAGPipeline, SetDPOConfig, SetDPOTrainer
from trl_bporag.data import QASplit, RAGDataset
from trl_bporag.evaluation import retrieval_evaluator
from trl_bporag.retrieval import Retriever


def test_evaluator_accuracy_is_the_pipelines_recall(tiny_st, toy_corpus, toy_split):
    data = RAGDataset(toy_corpus, toy_split, "toy")
    metrics = retrieval_evaluator(data, ks=(1, 2), name="toy")(tiny_st)
    pipe = RAGPipeline.from_pretrained(retriever=tiny_st, generator=None, corpus=toy_corpus, cache_index=False)
    ours = pipe.evaluate(toy_split, ks=(1, 2))["metrics"]
    for k in (1, 2):
        assert metrics[f"toy_cosine_accuracy@{k}"] == pytest.approx(ours[f"recall@{k}"])
    no_gold = QASplit(toy_split.ids, toy_split.questions, toy_split.answers, name="test")
    with pytest.raises(ValueError, match="no gold passage ids"):
        retrieval_evaluator(RAGDataset(toy_corpus, no_gold))


def _pairs(n=8):
    rows = [("what is the capital of france", ["paris is the capital of france", "the seine is a river in france"],
             ["rome is the capital of italy", "the seine is a river in france"]),
            ("what is the capital of italy", ["rome is the capital of italy", "madrid is the capital of spain"],
             ["berlin is the capital of germany", "madrid is the capital of spain"])] * (n // 2)
    return Dataset.from_dict({"prompt": [r[0] for r in rows], "chosen": [r[1] for r in rows],
                              "rejected": [r[2] for r in rows]})


def test_trainer_runs_the_evaluator_without_an_eval_dataset_and_saves_k_and_score(tmp_path, tiny_st, toy_corpus,
                                                                                   toy_split):
    evaluator = retrieval_evaluator(RAGDataset(toy_corpus, toy_split), ks=(1,), name="toy")
    args = SetDPOConfig(output_dir=str(tmp_path / "out"), report_to="none", score="dot", max_steps=2,
                        eval_strategy="steps", eval_steps=1, per_device_train_batch_size=4, learning_rate=1e-3,
                        save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = SetDPOTrainer(tiny_st, args=args, train_dataset=_pairs(), evaluator=evaluator)
    assert trainer.k == 2  # from the data: its lists hold 2 passages
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_toy_dot_accuracy@1" in log]
    assert len(evals) == 2 and "eval_loss" not in evals[0]  # the evaluator alone, at every eval step
    assert trainer.evaluate()["eval_toy_dot_accuracy@1"] == pytest.approx(evaluator(tiny_st)["toy_dot_accuracy@1"])
    trainer.save_model()
    assert json.loads((tmp_path / "out" / "bporag_config.json").read_text())["k"] == 2
    # the folder hands k and the score to the pipeline without the user repeating them
    pipe = RAGPipeline.from_pretrained(retriever=str(tmp_path / "out"), generator=None, corpus=toy_corpus,
                                       cache_index=False)
    assert pipe.k == 2 and pipe.retriever.score == "dot"
    assert Retriever(str(tmp_path / "out")).score == "dot"


def test_compute_metrics_is_refused_with_a_pointer_to_evaluator(tmp_path, tiny_st):
    with pytest.raises(ValueError, match="evaluator="):
        SetDPOTrainer(tiny_st, args=SetDPOConfig(output_dir=str(tmp_path), report_to="none"), train_dataset=_pairs(),
                      compute_metrics=lambda p: {})
