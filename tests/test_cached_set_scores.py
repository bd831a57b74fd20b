"""GradCache for set losses (SetDPOConfig.mini_batch_size): the same loss and gradients as one forward per batch, for
pairwise and listwise rows, with and without a reference, with the sft term, with PEFT, and through training.

Tolerance: float32 throughout; the cached path adds the same per-text contributions in another order (mini-batches,
then a dot product per mini-batch), so losses agree to 1e-6 and gradients to 1e-6 absolute / 1e-4 relative.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer

from trl_bporag.trainers import SetDPOConfig, SetDPOTrainer

os.environ.setdefault("TQDM_DISABLE", "1")

K = 3
P = ["paris is the capital of france", "the seine river in paris", "eiffel tower in paris",
     "london is the capital of england", "the thames river in london", "berlin is the capital of germany",
     "rome is the capital of italy", "madrid is the capital of spain", "random filler text passage", "noise passage",
     "big ben in london", "the colosseum in rome"]
QUERIES = ["what is the capital of france", "which river is in london", "what is the capital of germany",
           "what is the capital of italy", "what is the capital of spain", "which tower is in paris"]


def pairwise_rows() -> Dataset:
    rows = [(0, [0, 1, 2], [3, 1, 2]), (1, [4, 3, 10], [5, 3, 10]), (2, [5, 8, 9], [6, 7, 8]),
            (3, [6, 11, 8], [0, 11, 9]), (4, [7, 8, 9], [3, 8, 9]), (5, [2, 0, 1], [10, 0, 1])]
    return Dataset.from_dict({"prompt": [QUERIES[q] for q, _, _ in rows],
                              "chosen": [[P[i] for i in c] for _, c, _ in rows],
                              "rejected": [[P[i] for i in r] for _, _, r in rows]})


def listwise_rows() -> Dataset:
    windows = [[[0, 1, 2], [3, 1, 2], [0, 8, 2], [9, 1, 2]], [[4, 3, 10], [5, 3, 10], [4, 8, 10]],
               [[5, 8, 9], [6, 8, 9], [5, 7, 9], [5, 8, 11]], [[6, 11, 8], [0, 11, 8]],
               [[7, 8, 9], [3, 8, 9], [7, 2, 9]], [[2, 0, 1], [10, 0, 1], [2, 4, 1]]]
    scores = [[1, 0, 1, 0], [1, 0, 0.5], [1, 0, 0, 1], [1, 0], [1, 0, 0], [1, 0, 0]]
    return Dataset.from_dict({"prompt": QUERIES, "lists": [[[P[i] for i in w] for w in row] for row in windows],
                              "list_scores": [[float(v) for v in row] for row in scores]})


def trainer_for(tmp_path, policy, data, mini_batch_size=None, ref=None, peft=False, **kwargs):
    settings = dict(output_dir=str(tmp_path / f"out{mini_batch_size}"), report_to="none", k=K, logging_steps=1,
                    per_device_train_batch_size=6, save_strategy="no", disable_tqdm=True, seed=0,
                    dataloader_pin_memory=False, mini_batch_size=mini_batch_size)
    args = SetDPOConfig(**{**settings, **kwargs})
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)  # non-zero B: every LoRA weight moves
    return SetDPOTrainer(copy.deepcopy(policy), ref_model=ref, args=args, train_dataset=data, peft_config=peft_config)


def loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.fixture
def policy(tiny_st):
    return tiny_st


@pytest.fixture
def other(tmp_path):
    try:
        from ._tiny_retriever import build_tiny_retriever
    except ImportError:
        from _tiny_retriever import build_tiny_retriever
    return build_tiny_retriever(tmp_path / "other", seed=1)


@pytest.mark.parametrize("rows, options", [
    ("pairwise", {"reference": "free"}),
    ("pairwise", {"reference": "model"}),  # the frozen copy of the policy as reference
    ("pairwise", {"reference": "model", "ref": "other"}),  # an explicit reference model, encoded in mini-batches
    ("pairwise", {"reference": "free", "loss_type": ["sigmoid", "sft"]}),
    ("pairwise", {"reference": "free", "loss_type": ["hinge", "ipo"], "skip_shared_passages": False}),
    ("listwise", {"reference": "free"}),
    ("listwise", {"reference": "model", "ref": "other", "loss_type": ["sigmoid", "sft"]}),
    ("pairwise", {"reference": "model", "peft": True}),  # reference = the adapter-disabled policy
    ("listwise", {"reference": "free", "peft": True}),
])
@pytest.mark.parametrize("mini_batch_size", [1, 4])
def test_cached_loss_and_gradients_equal_the_uncached_ones(tmp_path, policy, other, rows, options, mini_batch_size):
    options = dict(options)
    data = pairwise_rows() if rows == "pairwise" else listwise_rows()
    ref = other if options.pop("ref", None) == "other" else None
    plain = trainer_for(tmp_path, policy, data, None, ref=ref, **options)
    cached = trainer_for(tmp_path, policy, data, mini_batch_size, ref=ref, **options)
    assert cached.cached_scores is not None and plain.cached_scores is None
    batch = plain.data_collator([data[i] for i in range(len(data))])
    loss0, grads0 = loss_and_grads(plain, batch)
    loss1, grads1 = loss_and_grads(cached, batch)
    assert loss0.item() > 0
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-6)
    assert grads0.keys() == grads1.keys() and grads0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in grads1.values())
    if options.get("peft"):
        assert all("lora_" in n for n in grads1)


def test_cached_training_reaches_the_same_weights_and_metrics(tmp_path, policy):
    data = listwise_rows()
    runs = {}
    for mbs in (None, 2):
        trainer = trainer_for(tmp_path, policy, data, mbs, reference="free", max_steps=3, learning_rate=1e-2,
                              per_device_train_batch_size=3, gradient_accumulation_steps=2)
        trainer.train()
        logged = [h for h in trainer.state.log_history if "loss" in h]
        runs[mbs] = (trainer.model.state_dict(), logged)
    (w0, log0), (w1, log1) = runs[None], runs[2]
    moved = max((w0[n] - policy.state_dict()[n]).abs().max().item() for n in w0)
    assert moved > 1e-3  # training moved the weights
    for name in w0:
        torch.testing.assert_close(w1[name], w0[name], atol=1e-5, rtol=1e-4, msg=name)
    for a, b in zip(log0, log1):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-4)


def test_cached_evaluation_gives_the_uncached_loss(tmp_path, policy):
    data = pairwise_rows()
    losses = [trainer_for(tmp_path, policy, data, mbs, reference="free").evaluate(data)["eval_loss"]
              for mbs in (None, 3)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_mini_batch_size_is_checked(tmp_path):
    for bad in (-2, 1.5, True):
        with pytest.raises(ValueError, match="mini_batch_size must be an integer >= 1, or 0 / None"):
            SetDPOConfig(output_dir=str(tmp_path), mini_batch_size=bad)
    assert SetDPOConfig(output_dir=str(tmp_path), mini_batch_size=0).mini_batch_size is None  # the flag's "off"


def test_the_saved_cached_retriever_loads_as_a_sentence_transformer(tmp_path, policy):
    trainer = trainer_for(tmp_path, policy, pairwise_rows(), 2, reference="free", max_steps=1, learning_rate=1e-2)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    torch.testing.assert_close(loaded.encode(P, convert_to_tensor=True),
                               trainer.model.encode(P, convert_to_tensor=True))
