"""TRL's fused LM head projecting only the labelled positions on a CPU (trl_bporag.trainers.lm_head): the same values
and gradients as the full projection, fewer rows projected, and turned on by the trainers that need it."""

from __future__ import annotations

import pytest
import torch
import trl.trainer.utils as trl_utils
from datasets import Dataset
from trl.trainer.utils import add_fused_lm_head

from trl_bporag import load_generator
from trl_bporag.trainers import GPOConfig, GPOTrainer, project_labelled_positions_only


def _original_test():
    test = trl_utils._use_triton
    return getattr(test, "__wrapped__", test)


@pytest.fixture
def unpatched(monkeypatch):
    """TRL's own device test for the duration of a test (the patch is process-wide once a trainer turned it on)."""
    monkeypatch.setattr(trl_utils, "_use_triton", _original_test())


def _forward_and_grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    (out.loss + out.entropy.sum() * 0.1).backward()  # both differentiable outputs feed the gradients
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_compact_head_gives_the_full_projections_values_and_gradients(tiny_generator_dir, unpatched):
    """A batch of two rows whose loss is on their last tokens only (as an SFT answer or a DPO completion): the
    log-probabilities, entropies, top-1 flags, loss and every parameter's gradient (the tied embedding / LM head
    included) equal the full projection's to float32 rounding, and are zero where the label is -100."""
    model, _ = load_generator(tiny_generator_dir, torch_dtype="float32")
    model.train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 24))
    labels = ids.clone()
    labels[0, :19] = -100  # 5 answer tokens
    labels[1, :21] = -100  # 3 answer tokens
    assert not _original_test()(torch.device("cpu"))  # TRL's own test: every position is projected on a CPU
    full, full_grads = _forward_and_grads(model, ids, labels)

    assert project_labelled_positions_only() is True
    compact, compact_grads = _forward_and_grads(model, ids, labels)

    for field in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(compact, field), getattr(full, field), atol=1e-6, rtol=1e-5)
        assert torch.all(getattr(compact, field)[~compact.label_mask] == 0)
    assert torch.equal(compact.is_top1, full.is_top1) and torch.equal(compact.label_mask, full.label_mask)
    torch.testing.assert_close(compact.loss, full.loss, atol=1e-6, rtol=1e-6)
    assert set(compact_grads) == set(full_grads) and "model.embed_tokens.weight" in compact_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(compact_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_compact_head_projects_only_the_labelled_rows(tiny_generator_dir, unpatched, monkeypatch):
    """What the speed comes from: the LM head's kernel receives one row per labelled position (8 of 46), not one per
    position."""
    rows = []
    kernel = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    model, _ = load_generator(tiny_generator_dir, torch_dtype="float32")
    add_fused_lm_head(model)
    ids = torch.randint(3, model.config.vocab_size, (2, 24))
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    model(input_ids=ids, labels=labels, fused_lm_head=True)
    project_labelled_positions_only()
    model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert rows == [2 * 23, 8]


def test_the_patch_is_idempotent_and_leaves_other_devices_to_trl(unpatched):
    original = _original_test()
    assert project_labelled_positions_only() and project_labelled_positions_only()
    test = trl_utils._use_triton
    assert test.__wrapped__ is original  # wrapped once, not twice
    assert test(torch.device("cpu")) is True
    assert test(torch.device("meta")) == original(torch.device("meta"))


def test_without_trls_device_test_nothing_is_changed(monkeypatch):
    monkeypatch.delattr(trl_utils, "_use_triton")
    assert project_labelled_positions_only() is False
    assert not hasattr(trl_utils, "_use_triton")


def test_gpo_trainer_turns_it_on_before_the_reference_pass(tiny_generator_dir, tmp_path, unpatched):
    model, tok = load_generator(tiny_generator_dir)
    rows = [{"prompt": [{"role": "user", "content": "what is the capital of france"}],
             "chosen": [{"role": "assistant", "content": "paris"}],
             "rejected": [{"role": "assistant", "content": "rome"}]}] * 2
    assert not trl_utils._use_triton(torch.device("cpu"))
    GPOTrainer(model=model, args=GPOConfig(output_dir=str(tmp_path), max_steps=1, bf16=False),
               train_dataset=Dataset.from_list(rows), processing_class=tok, bporag_config={"retriever": "r", "k": 1})
    assert trl_utils._use_triton(torch.device("cpu")) is True
