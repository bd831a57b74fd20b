"""Tests of SetDPOConfig / SetDPOTrainer on a tiny offline sentence-transformers retriever."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from baselines import naive_scorer  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from trl_bporag.trainers import SetDPOConfig, SetDPOTrainer  # noqa: E402
from trl_bporag.trainers.set_dpo_config import SUPPORTED_LOSS_TYPES  # noqa: E402

try:  # tests/ is a package (tests/__init__.py) or a plain folder on sys.path
    from ._tiny_retriever import build_tiny_retriever
except ImportError:
    from _tiny_retriever import build_tiny_retriever

K = 3
P = [
    "paris is the capital of france",
    "the seine river in paris",
    "eiffel tower in paris",
    "london is the capital of england",
    "the thames river in london",
    "berlin is the capital of germany",
    "rome is the capital of italy",
    "madrid is the capital of spain",
    "random filler text passage",
    "noise passage",
    "big ben in london",
    "the colosseum in rome",
]
ROWS = [
    ("what is the capital of france", [P[0], P[1], P[2]], [P[3], P[1], P[2]]),
    ("what is the capital of france", [P[0], P[2], P[8]], [P[9], P[2], P[8]]),
    ("which river is in london", [P[4], P[3], P[10]], [P[5], P[3], P[10]]),
    ("what is the capital of germany", [P[5], P[8], P[9]], [P[6], P[7], P[8]]),
    ("what is the capital of italy", [P[6], P[11], P[8]], [P[0], P[11], P[9]]),
    ("what is the capital of spain", [P[7], P[8], P[9]], [P[3], P[8], P[9]]),
    ("which tower is in paris", [P[2], P[0], P[1], P[9]], [P[10], P[0], P[1], P[2]]),
    ("what is in rome", [P[11], P[6], P[8]], [P[4], P[6], P[8]]),
]


def make_pairs(rows=ROWS) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [r[0] for r in rows],
            "chosen": [r[1] for r in rows],
            "rejected": [r[2] for r in rows],
            "chosen_ids": [[f"c{i}" for i in range(len(r[1]))] for r in rows],
            "perturbation": ["drop"] * len(rows),
        }
    )


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """Two tiny retrievers (different random weights, same vocabulary) saved as sentence-transformers folders."""
    root = tmp_path_factory.mktemp("tiny")
    paths = []
    for seed in (0, 1):
        model = build_tiny_retriever(root / f"bert{seed}", seed=seed)
        model.save_pretrained(str(root / f"st{seed}"), create_model_card=False)
        paths.append(str(root / f"st{seed}"))
    return paths


@pytest.fixture
def policy(tiny_paths):
    return SentenceTransformer(tiny_paths[0], device="cpu")


@pytest.fixture
def other(tiny_paths):
    return SentenceTransformer(tiny_paths[1], device="cpu")


@pytest.fixture
def pairs():
    return make_pairs()


def make_args(tmp_path, name="out", **kwargs) -> SetDPOConfig:
    defaults = dict(
        output_dir=str(tmp_path / name),
        report_to="none",
        k=K,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    defaults.update(kwargs)
    return SetDPOConfig(**defaults)


def batch_of(trainer, dataset, n=4):
    return trainer.data_collator([dataset[i] for i in range(n)])


def hand_scores(model, batch, k=K, score="cos", weights=None):
    """Set scores computed independently with SentenceTransformer.encode (each list encoded on its own)."""
    with torch.no_grad():
        q = model.encode(batch["prompt"], convert_to_tensor=True, batch_size=64)
        c = torch.stack([model.encode(lst[:k], convert_to_tensor=True) for lst in batch["chosen"]])
        r = torch.stack([model.encode(lst[:k], convert_to_tensor=True) for lst in batch["rejected"]])
    if score == "cos":
        q, c, r = F.normalize(q, dim=-1), F.normalize(c, dim=-1), F.normalize(r, dim=-1)
    w = torch.ones(k) if weights is None else torch.tensor(weights[:k])
    f_c = (c * q[:, None, :]).sum(-1)
    f_r = (r * q[:, None, :]).sum(-1)
    return (f_c * w).sum(-1), (f_r * w).sum(-1)


def hand_loss(loss_type, delta, beta, eps=0.0, tau=0.05):
    """TRL 1.16 DPOTrainer formulas (dpo_trainer.py `_compute_loss`) with delta_score = set-score margin."""
    z = beta * delta
    if loss_type == "sigmoid":
        per = -F.logsigmoid(z)
    elif loss_type == "hinge":
        per = torch.clamp(1 - z, min=0)
    elif loss_type == "ipo":
        per = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "exo_pair":
        per = torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(eps)
        )
    elif loss_type == "robust":
        per = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    elif loss_type == "discopop":
        m = torch.sigmoid(z / tau)
        per = -F.logsigmoid(z) * (1 - m) + torch.exp(-z) * m
    else:
        raise AssertionError(loss_type)
    return per.mean()


# ----------------------------------------------------------------------------------------------------------------
# 1. loss = hand computation, for each supported loss type
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", [lt for lt in SUPPORTED_LOSS_TYPES if lt != "sft"])
def test_loss_matches_hand_computation(tmp_path, policy, other, pairs, loss_type):
    eps = 0.1 if loss_type in ("robust", "exo_pair") else 0.0
    beta = 0.5
    args = make_args(tmp_path, loss_type=loss_type, beta=beta, label_smoothing=eps, skip_shared_passages=False)
    trainer = SetDPOTrainer(policy, ref_model=other, args=args, train_dataset=pairs)
    batch = batch_of(trainer, pairs, 8)
    loss = trainer.compute_loss(trainer.model, batch)
    mode = "train" if trainer.model.training else "eval"  # encode() below switches the model to eval
    trainer.scorer.skip_shared = True  # shared passages cancel in the margin: same loss without encoding them
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch).detach(), loss.detach(), atol=1e-5, rtol=1e-5)
    for name in ("rewards/margins", "rewards/accuracies"):
        assert trainer._metrics[mode][name][-1] == pytest.approx(trainer._metrics[mode][name][-2], abs=1e-5)
    for values in trainer._metrics[mode].values():
        values.pop()  # keep the full computation's metrics for the checks below

    s_c, s_r = hand_scores(policy, batch)
    ref_c, ref_r = hand_scores(other, batch)
    delta = (s_c - ref_c) - (s_r - ref_r)
    assert delta.abs().max() > 1e-3  # policy != reference: a non-trivial check
    expected = hand_loss(loss_type, delta, beta, eps)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)

    # Metrics with TRL's names
    metrics = trainer._metrics[mode]
    torch.testing.assert_close(metrics["rewards/chosen"][-1], (beta * (s_c - ref_c)).mean().item(), atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics["rewards/margins"][-1], (beta * delta).mean().item(), atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics["scores/chosen"][-1], s_c.mean().item(), atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics["scores/rejected"][-1], s_r.mean().item(), atol=1e-5, rtol=0)
    assert metrics["rewards/accuracies"][-1] == pytest.approx((delta > 0).float().mean().item())


@pytest.mark.parametrize("skip_shared", [True, False])
def test_sft_term_is_the_contrastive_nll_of_chosen_only_passages(tmp_path, policy, other, pairs, skip_shared):
    scale, alpha = 20.0, 0.3
    args = make_args(tmp_path, beta=0.5, loss_type=["sigmoid", "sft"], loss_weights=[1.0, alpha],
                     contrastive_scale=scale, skip_shared_passages=skip_shared)
    trainer = SetDPOTrainer(policy, ref_model=other, args=args, train_dataset=pairs)
    batch = batch_of(trainer, pairs, 8)
    loss = trainer.compute_loss(trainer.model, batch)
    mode = "train" if trainer.model.training else "eval"  # encode() below switches the model to eval
    s_c, s_r = hand_scores(policy, batch)
    ref_c, ref_r = hand_scores(other, batch)
    dpo = hand_loss("sigmoid", (s_c - ref_c) - (s_r - ref_r), 0.5)
    # by hand: candidates = the batch's encoded passages (only the differing ones when shared passages are skipped)
    chosen = [list(c[:K]) for c in batch["chosen"]]
    rejected = [list(r[:K]) for r in batch["rejected"]]
    if skip_shared:
        cands = list(dict.fromkeys(t for c, r in zip(chosen + rejected, rejected + chosen) for t in c if t not in r))
    else:
        cands = list(dict.fromkeys(t for lst in chosen + rejected for t in lst))
    q = F.normalize(torch.as_tensor(policy.encode(list(batch["prompt"]))), dim=-1)
    p = F.normalize(torch.as_tensor(policy.encode(cands)), dim=-1)
    terms = []
    for b in range(len(chosen)):
        for t in chosen[b]:
            if t in rejected[b]:
                continue
            others = [cands.index(x) for x in chosen[b] if x != t and x in cands]
            logits = scale * (q[b] @ p.T)
            logits[others] = float("-inf")
            terms.append(torch.logsumexp(logits, 0) - logits[cands.index(t)])
    assert terms
    expected = dpo + alpha * torch.stack(terms).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-4, rtol=1e-4)
    assert trainer._metrics[mode]["nll_loss"][-1] == pytest.approx(torch.stack(terms).mean().item(), abs=1e-4)


def test_dot_score_and_combined_losses(tmp_path, policy, other, pairs):
    args = make_args(tmp_path, score="dot", beta=0.2, loss_type=["sigmoid", "hinge"], loss_weights=[0.7, 0.3])
    trainer = SetDPOTrainer(policy, ref_model=other, args=args, train_dataset=pairs)
    batch = batch_of(trainer, pairs, 8)
    loss = trainer.compute_loss(trainer.model, batch)
    s_c, s_r = hand_scores(policy, batch, score="dot")
    ref_c, ref_r = hand_scores(other, batch, score="dot")
    delta = (s_c - ref_c) - (s_r - ref_r)
    expected = 0.7 * hand_loss("sigmoid", delta, 0.2) + 0.3 * hand_loss("hinge", delta, 0.2)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# 2. gradients flow only through the policy
# ----------------------------------------------------------------------------------------------------------------
def test_gradient_only_through_policy(tmp_path, policy, pairs):
    args = make_args(tmp_path, max_steps=1, learning_rate=1e-2)
    trainer = SetDPOTrainer(policy, args=args, train_dataset=pairs)
    ref = trainer.ref_model
    assert ref is not None and ref is not trainer.model
    assert not any(p.requires_grad for p in ref.parameters())

    # Make policy != reference so that the loss has a non-zero gradient
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loss = trainer.compute_loss(trainer.model, batch_of(trainer, pairs, 8))
    loss.backward()
    assert all(p.grad is None for p in ref.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    trainer.model.zero_grad()

    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert all(torch.equal(ref_before[k], v) for k, v in ref.state_dict().items())
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(policy_before[k], v)]
    assert len(moved) > 0


# ----------------------------------------------------------------------------------------------------------------
# 3. unique-passage encoding == naive encoding
# ----------------------------------------------------------------------------------------------------------------
def loss_grads_and_encodings(trainer, batch, scorers):
    """For each named scorer put in ``trainer.scorer``: (loss, policy gradients, [(kind, number of texts)] encoded)."""
    original = trainer.scorer
    results = {}
    for name, scorer in scorers.items():
        encoded = []
        encode = scorer.encode

        def recording_encode(model, texts, kind, encode=encode, encoded=encoded):
            encoded.append((kind, len(texts)))
            return encode(model, texts, kind)

        scorer.encode = recording_encode
        trainer.scorer = scorer
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
        results[name] = (loss.detach(), grads, encoded)
        del scorer.encode
    trainer.scorer = original
    return results


def test_unique_passage_encoding_matches_naive(tmp_path, policy, other, pairs):
    args = make_args(tmp_path, beta=0.3, skip_shared_passages=False)
    trainer = SetDPOTrainer(policy, ref_model=other, args=args, train_dataset=pairs)
    batch = batch_of(trainer, pairs, 8)
    results = loss_grads_and_encodings(trainer, batch, {"unique": trainer.scorer, "naive": naive_scorer(trainer)})

    torch.testing.assert_close(results["unique"][0], results["naive"][0], atol=1e-6, rtol=1e-5)
    for g_unique, g_naive in zip(results["unique"][1], results["naive"][1]):
        torch.testing.assert_close(g_unique, g_naive, atol=1e-6, rtol=1e-4)
    # Each unique passage text is encoded once per model (policy, reference): one passage forward each
    n_unique = len({t for lst in batch["chosen"] + batch["rejected"] for t in lst})
    doc_calls = [n for kind, n in results["unique"][2] if kind == "document"]
    assert doc_calls == [n_unique, n_unique]
    assert n_unique < 2 * len(batch["prompt"]) * K
    naive_docs = [n for kind, n in results["naive"][2] if kind == "document"]
    assert sum(naive_docs) == 2 * 2 * len(batch["prompt"]) * K


def test_skipping_shared_passages_is_exact_and_encodes_less(tmp_path, policy, other, pairs):
    trainer = SetDPOTrainer(policy, ref_model=other, args=make_args(tmp_path, beta=0.3), train_dataset=pairs)
    assert trainer.scorer.skip_shared  # the default with the sum score
    batch = batch_of(trainer, pairs, 8)
    full = copy.copy(trainer.scorer)
    full.skip_shared = False
    results = loss_grads_and_encodings(trainer, batch, {True: trainer.scorer, False: full})
    n_docs = {skip: sum(n for kind, n in results[skip][2] if kind == "document") for skip in (True, False)}
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-6, rtol=1e-5)
    for g_skip, g_full in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(g_skip, g_full, atol=1e-6, rtol=1e-4)
    differing = set()
    for c, r in zip(batch["chosen"], batch["rejected"]):
        differing |= set(c[:K]) ^ set(r[:K])
    assert n_docs[True] == 2 * len(differing) < n_docs[False]  # policy + reference, differing passages only
    weighted = SetDPOTrainer(policy, ref_model=other, train_dataset=pairs,
                             args=make_args(tmp_path, position_weights=[1.0, 0.5, 0.25][:K] + [0.1] * max(0, K - 3)))
    assert not weighted.scorer.skip_shared  # with position weights shared passages do not cancel


# ----------------------------------------------------------------------------------------------------------------
# 4. precomputed reference == live reference
# ----------------------------------------------------------------------------------------------------------------
def test_precomputed_reference_matches_live(tmp_path, tiny_paths, pairs):
    eval_pairs = make_pairs(ROWS[:4])
    live = SetDPOTrainer(
        SentenceTransformer(tiny_paths[0], device="cpu"),
        ref_model=SentenceTransformer(tiny_paths[1], device="cpu"),
        args=make_args(tmp_path, "live"),
        train_dataset=pairs,
    )
    pre = SetDPOTrainer(
        SentenceTransformer(tiny_paths[0], device="cpu"),
        ref_model=SentenceTransformer(tiny_paths[1], device="cpu"),
        args=make_args(tmp_path, "pre", precompute_ref_scores=True),
        train_dataset=pairs,
        eval_dataset=eval_pairs,
    )
    assert {"ref_chosen_score", "ref_rejected_score"} <= set(pre.train_dataset.column_names)
    assert {"ref_chosen_score", "ref_rejected_score"} <= set(pre.eval_dataset.column_names)
    batch_live = batch_of(live, pairs, 8)
    batch_pre = batch_of(pre, pre.train_dataset, 8)
    assert "ref_chosen_score" in batch_pre and "ref_chosen_score" not in batch_live
    torch.testing.assert_close(
        pre.compute_loss(pre.model, batch_pre), live.compute_loss(live.model, batch_live), atol=1e-6, rtol=1e-5
    )

    # Without ref_model, precomputation uses the policy as it is before training and keeps no reference in memory
    own = SetDPOTrainer(
        SentenceTransformer(tiny_paths[0], device="cpu"),
        args=make_args(tmp_path, "own", precompute_ref_log_probs=True),  # TRL's name is an alias
        train_dataset=pairs,
    )
    assert own.args.precompute_ref_scores and own.ref_model is None
    loss = own.compute_loss(own.model, batch_of(own, own.train_dataset, 8))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)

    # Existing columns are used as they are, with no reference model at all
    given = pairs.add_column("ref_chosen_score", [0.0] * len(pairs)).add_column(
        "ref_rejected_score", [0.0] * len(pairs)
    )
    reuse = SetDPOTrainer(
        SentenceTransformer(tiny_paths[0], device="cpu"),
        args=make_args(tmp_path, "reuse", precompute_ref_scores=True, beta=0.5),
        train_dataset=given,
    )
    assert reuse.ref_model is None
    batch = batch_of(reuse, reuse.train_dataset, 8)
    s_c, s_r = hand_scores(reuse.model, batch)
    torch.testing.assert_close(
        reuse.compute_loss(reuse.model, batch).detach(), hand_loss("sigmoid", s_c - s_r, 0.5), atol=1e-5, rtol=1e-5
    )


# ----------------------------------------------------------------------------------------------------------------
# 5. position weights, equal first-k sets, log 2 at the start
# ----------------------------------------------------------------------------------------------------------------
def test_position_weighted_score(tmp_path, policy, pairs):
    weights = [1.0, 0.5, 0.25, 9.0]  # only the first k=3 are used
    trainer = SetDPOTrainer(policy, args=make_args(tmp_path, position_weights=weights), train_dataset=pairs)
    batch = batch_of(trainer, pairs, 8)
    with torch.no_grad():
        s_c, s_r = trainer.compute_set_scores(batch)
    h_c, h_r = hand_scores(policy, batch, weights=weights)
    torch.testing.assert_close(s_c, h_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_r, h_r, atol=1e-5, rtol=1e-5)


def test_equal_first_k_sets_and_log2_at_start(tmp_path, policy, other):
    # Rejected = the chosen first-k set in another order, then different tail passages (beyond k)
    rows = [
        ("what is the capital of france", [P[0], P[1], P[2], P[8]], [P[2], P[0], P[1], P[9]]),
        ("which river is in london", [P[4], P[3], P[10]], [P[10], P[4], P[3], P[5]]),
    ]
    swapped = make_pairs(rows)
    trainer = SetDPOTrainer(policy, ref_model=other, args=make_args(tmp_path, "a"), train_dataset=swapped)
    batch = batch_of(trainer, swapped, 2)
    with torch.no_grad():
        s_c, s_r = trainer.compute_set_scores(batch)
        ref_c, ref_r = trainer.compute_ref_scores(batch)
    torch.testing.assert_close(s_c - s_r, torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_c - ref_r, torch.zeros(2), atol=1e-5, rtol=0)
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(math.log(2), abs=1e-5)

    # A position-aware score does see the order
    weighted = SetDPOTrainer(
        other,
        args=make_args(tmp_path, "b", position_weights=[1.0, 0.5, 0.25]),
        train_dataset=swapped,
    )
    with torch.no_grad():
        w_c, w_r = weighted.compute_set_scores(batch_of(weighted, swapped, 2))
    assert (w_c - w_r).abs().min() > 1e-6

    # policy == reference (default frozen copy): logits are 0, sigmoid loss is log 2 exactly, for any pairs
    fresh = SetDPOTrainer(policy, args=make_args(tmp_path, "c"), train_dataset=make_pairs())
    loss = fresh.compute_loss(fresh.model, batch_of(fresh, fresh.train_dataset, 8))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# 6. validation errors
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["bco_pair", "nca_pair", "sppo_hard", "apo_zero", "aot", "sigmoid_norm"])
def test_unsupported_loss_type(tmp_path, loss_type):
    with pytest.raises(ValueError, match=loss_type) as err:
        make_args(tmp_path, loss_type=loss_type)
    assert "sigmoid" in str(err.value) and "hinge" in str(err.value)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="k must be"):
        make_args(tmp_path, k=0)
    with pytest.raises(ValueError, match="score"):
        make_args(tmp_path, score="euclidean")
    with pytest.raises(ValueError, match="position_weights"):
        make_args(tmp_path, position_weights=[1.0, 0.5])
    with pytest.raises(ValueError, match="exo_pair"):
        make_args(tmp_path, loss_type="exo_pair")
    with pytest.raises(ValueError, match="f_divergence_type"):
        make_args(tmp_path, f_divergence_type="forward_kl")
    args = make_args(tmp_path)
    assert args.learning_rate == 2e-5 and args.bf16 is False and args.remove_unused_columns is False
    assert args.gradient_checkpointing is False and args.loss_type == ["sigmoid"] and args.beta == 10.0


@pytest.mark.parametrize("column", ["prompt", "chosen", "rejected"])
def test_missing_column(tmp_path, policy, pairs, column):
    with pytest.raises(ValueError, match=repr(column)):
        SetDPOTrainer(policy, args=make_args(tmp_path), train_dataset=pairs.remove_columns(column))


def test_list_shorter_than_k(tmp_path, policy):
    rows = list(ROWS[:3]) + [("what is in rome", [P[11], P[6], P[8]], [P[4], P[6]])]
    with pytest.raises(ValueError, match=r"Row 3 .*'rejected'.*k=3"):
        SetDPOTrainer(policy, args=make_args(tmp_path), train_dataset=make_pairs(rows))
    with pytest.raises(ValueError, match=r"Row 0 of the eval dataset: field 'chosen'"):
        SetDPOTrainer(
            policy,
            args=make_args(tmp_path),
            train_dataset=make_pairs(),
            eval_dataset=make_pairs([("q", [P[0]], [P[1], P[2], P[3]])]),
        )


# ----------------------------------------------------------------------------------------------------------------
# 7. train / evaluate / save / checkpoints / resume
# ----------------------------------------------------------------------------------------------------------------
class _CaptureWeightsAtStart(TrainerCallback):
    def __init__(self):
        self.weights = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_evaluate_save_resume(tmp_path, tiny_paths, pairs):
    train_kwargs = dict(
        max_steps=4,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        beta=0.5,
    )
    base = SentenceTransformer(tiny_paths[0], device="cpu")
    before = base.encode(P, convert_to_tensor=True)
    trainer = SetDPOTrainer(
        base, args=make_args(tmp_path, "run", **train_kwargs), train_dataset=pairs, eval_dataset=make_pairs(ROWS[:4])
    )
    trainer.train()
    after = trainer.model.encode(P, convert_to_tensor=True)
    assert not torch.allclose(before, after)

    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h]
    eval_logs = [h for h in history if "eval_loss" in h]
    assert len(train_logs) == 4 and len(eval_logs) == 2
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "scores/chosen"):
        assert key in train_logs[0] and f"eval_{key}" in eval_logs[0]
    assert "scores/rejected" in train_logs[-1]

    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_scores/chosen"} <= set(metrics)
    metrics = trainer.evaluate(eval_dataset={"small": make_pairs(ROWS[4:])})
    assert "eval_small_loss" in metrics and "eval_small_rewards/accuracies" in metrics

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    torch.testing.assert_close(SentenceTransformer(str(out), device="cpu").encode(P, convert_to_tensor=True), after)
    card = (out / "README.md").read_text()
    for needle in ("set-dpo", "bporag", "sentence-transformers", "trl", "k: 3", "score: cos", "beta: 0.5", "sigmoid"):
        assert needle in card, needle
    assert card.startswith("---\n")
    assert "SetDPOLoss" in card and "@inproceedings{rafailov2023direct," in card  # the loss's config and BibTeX

    ckpt2, ckpt4 = tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4"
    assert (ckpt2 / "modules.json").is_file() and (ckpt2 / "README.md").is_file()
    torch.testing.assert_close(SentenceTransformer(str(ckpt4), device="cpu").encode(P, convert_to_tensor=True), after)
    at_ckpt2 = SentenceTransformer(str(ckpt2), device="cpu")
    assert not torch.allclose(at_ckpt2.encode(P, convert_to_tensor=True), after)

    # Resume from checkpoint-2 in a fresh trainer on the base weights: the weights come from the checkpoint and the
    # run ends where the uninterrupted one did
    capture = _CaptureWeightsAtStart()
    resumed = SetDPOTrainer(
        SentenceTransformer(tiny_paths[0], device="cpu"),
        args=make_args(tmp_path, "resumed", **train_kwargs),
        train_dataset=pairs,
        eval_dataset=make_pairs(ROWS[:4]),
        callbacks=[capture],
    )
    resumed.train(resume_from_checkpoint=str(ckpt2))
    assert resumed.state.global_step == 4
    for k, v in at_ckpt2.state_dict().items():
        torch.testing.assert_close(capture.weights[k], v)
    torch.testing.assert_close(resumed.model.encode(P, convert_to_tensor=True), after, atol=1e-5, rtol=1e-4)


def test_load_best_model_at_end(tmp_path, policy, pairs):
    args = make_args(
        tmp_path,
        "best",
        max_steps=3,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
    )
    trainer = SetDPOTrainer(policy, args=args, train_dataset=pairs, eval_dataset=make_pairs(ROWS[:4]))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    torch.testing.assert_close(
        trainer.model.encode(P, convert_to_tensor=True),
        SentenceTransformer(best, device="cpu").encode(P, convert_to_tensor=True),
    )


def test_peft_adapter_reference(tmp_path, tiny_paths, policy, pairs):
    from peft import LoraConfig

    base_emb = policy.encode(P, convert_to_tensor=True)
    trainer = SetDPOTrainer(
        policy,
        args=make_args(tmp_path, "peft", max_steps=2, learning_rate=5e-2),
        train_dataset=pairs,
        peft_config=LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"),  # what trl's get_peft_config gives
    )
    assert trainer.ref_model is None
    batch = batch_of(trainer, pairs, 8)
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(math.log(2), abs=1e-6)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= trainable
    with trainer._peft_model().disable_adapter():
        torch.testing.assert_close(trainer.model.encode(P, convert_to_tensor=True), base_emb)
    tuned = trainer.model.encode(P, convert_to_tensor=True)
    assert not torch.allclose(tuned, base_emb)

    out = tmp_path / "peft_saved"
    trainer.save_model(str(out))
    assert (out / "adapter" / "adapter_config.json").is_file()
    torch.testing.assert_close(SentenceTransformer(str(out), device="cpu").encode(P, convert_to_tensor=True), tuned)

    # The adapter reloads into a fresh PEFT trainer (the resume path)
    fresh = SetDPOTrainer(
        SentenceTransformer(tiny_paths[0], device="cpu"),
        args=make_args(tmp_path, "peft2"),
        train_dataset=pairs,
        peft_config=LoraConfig(r=4, lora_alpha=8),
    )
    fresh._load_from_checkpoint(str(out))
    torch.testing.assert_close(fresh.model.encode(P, convert_to_tensor=True), tuned, atol=1e-5, rtol=1e-4)


def test_sync_ref_model_and_remove_unused_columns(tmp_path, policy, pairs):
    args = make_args(
        tmp_path,
        max_steps=1,
        learning_rate=1e-2,
        sync_ref_model=True,
        ref_model_sync_steps=1,
        ref_model_mixup_alpha=1.0,
        remove_unused_columns=True,
    )
    trainer = SetDPOTrainer(policy, args=args, train_dataset=pairs)
    trainer.train()
    for p_ref, p in zip(trainer.ref_model.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(p_ref, p)


def test_iterable_dataset(tmp_path, policy):
    from datasets import IterableDataset

    def rows():
        yield from make_pairs()

    stream = IterableDataset.from_generator(rows)
    trainer = SetDPOTrainer(policy, args=make_args(tmp_path, max_steps=2, learning_rate=1e-2), train_dataset=stream)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    with pytest.raises(ValueError, match="IterableDataset"):
        SetDPOTrainer(policy, args=make_args(tmp_path, precompute_ref_scores=True), train_dataset=stream)


def test_push_to_hub_uploads_the_saved_folder(tmp_path, policy, pairs, monkeypatch):
    import transformers.trainer as hf_trainer

    uploads = []

    class FakeApi:
        def upload_folder(self, **kwargs):
            uploads.append(kwargs)
            return "https://huggingface.co/user/tiny-set-dpo"

    monkeypatch.setattr(hf_trainer, "hf_api", lambda: FakeApi())
    trainer = SetDPOTrainer(policy, args=make_args(tmp_path, "hub"), train_dataset=pairs)
    monkeypatch.setattr(trainer, "init_hf_repo", lambda **kw: setattr(trainer, "hub_model_id", "user/tiny-set-dpo"))
    trainer.push_to_hub(dataset_name="runs/rpo-pairs")
    (upload,) = uploads
    folder = upload["folder_path"]
    assert folder == trainer.args.output_dir and upload["repo_id"] == "user/tiny-set-dpo"
    SentenceTransformer(folder, device="cpu")
    card = open(os.path.join(folder, "README.md")).read()
    assert "runs/rpo-pairs" in card and "user/tiny-set-dpo" in card and "set-dpo" in card


# ----------------------------------------------------------------------------------------------------------------
# 8. drop-in: TRL's own trl/scripts/dpo.py with the classes swapped
# ----------------------------------------------------------------------------------------------------------------
def test_trl_dpo_script_drop_in(tmp_path, tiny_paths, monkeypatch):
    import trl
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser
    from trl.scripts import dpo as dpo_script

    data_dir = tmp_path / "rpo-pairs"
    data_dir.mkdir()
    for split, rows in (("train", ROWS), ("test", ROWS[:2])):
        with open(data_dir / f"{split}.jsonl", "w") as f:
            for q, c, r in rows:
                f.write(json.dumps({"prompt": q, "chosen": c, "rejected": r, "perturbation": "drop"}) + "\n")

    parser = TrlParser((ScriptArguments, SetDPOConfig, ModelConfig, DatasetMixtureConfig))
    out = tmp_path / "dpo-out"
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        args=[
            "--dataset_name", str(data_dir),
            "--model_name_or_path", tiny_paths[0],
            "--output_dir", str(out),
            "--k", "2",
            "--score", "cos",
            "--beta", "0.2",
            "--learning_rate", "1e-3",
            "--max_steps", "2",
            "--per_device_train_batch_size", "4",
            "--logging_steps", "1",
            "--save_strategy", "no",
            "--report_to", "none",
            "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert isinstance(training_args, SetDPOConfig) and training_args.k == 2
    monkeypatch.setattr(trl, "DPOTrainer", SetDPOTrainer)
    dpo_script.main(script_args, training_args, model_args, dataset_args)

    trained = SentenceTransformer(str(out), device="cpu")
    base = SentenceTransformer(tiny_paths[0], device="cpu")
    assert not torch.allclose(trained.encode(P, convert_to_tensor=True), base.encode(P, convert_to_tensor=True))
    assert "k: 2" in (out / "README.md").read_text()


def test_model_init_kwargs_reach_the_retriever_loaded_from_a_path(tmp_path, tiny_retriever_dir):
    pairs = Dataset.from_list([{"prompt": "q", "chosen": ["a"], "rejected": ["b"]}])
    cfg = SetDPOConfig(output_dir=str(tmp_path / "out"), k=1, report_to=[], use_cpu=True, reference="free",
                       model_init_kwargs={"dtype": "bfloat16"})
    trainer = SetDPOTrainer(tiny_retriever_dir, args=cfg, train_dataset=pairs)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    plain = SetDPOTrainer(tiny_retriever_dir, args=SetDPOConfig(output_dir=str(tmp_path / "o2"), k=1, report_to=[],
                                                                use_cpu=True, reference="free"), train_dataset=pairs)
    assert {p.dtype for p in plain.model.parameters()} == {torch.float32}


def test_infer_k_is_the_list_length_of_the_data_and_ragged_lengths_are_refused():
    from trl_bporag.trainers import infer_k

    pairwise = Dataset.from_dict({"prompt": ["q", "q"], "chosen": [["a", "b", "c"], ["a", "b", "d"]],
                                  "rejected": [["a", "b", "e"], ["x", "y", "z"]]})
    assert infer_k(pairwise) == 3
    assert infer_k(pairwise.to_iterable_dataset()) == 3  # an IterableDataset: its first row
    listwise = Dataset.from_dict({"prompt": ["q"], "lists": [[["a", "b"], ["c", "d"]]], "list_scores": [[1, 0]]})
    assert infer_k(listwise) == 2
    ragged = Dataset.from_dict({"prompt": ["q", "q"], "chosen": [["a", "b", "c"], ["a", "b"]],
                                "rejected": [["a", "b", "e"], ["x", "y"]]})
    with pytest.raises(ValueError, match=r"Row 1 of the RPO dataset holds a list of 2 passage\(s\), others hold up "
                                         r"to 3.*Set k explicitly"):
        infer_k(ragged)
    ragged_lists = Dataset.from_dict({"prompt": ["q"], "lists": [[["a", "b"], ["c", "d", "e"]]],
                                      "list_scores": [[1, 0]]})
    with pytest.raises(ValueError, match="Row 0 of the RPO dataset holds a list of 2"):
        infer_k(ragged_lists)
    with pytest.raises(ValueError, match="The RPO dataset has no rows"):
        infer_k(pairwise.select([]))


def test_a_gathered_state_dict_is_what_the_saved_folder_holds(tmp_path, policy, pairs, monkeypatch):
    """Under FSDP (full state dict) or DeepSpeed, transformers' ``save_model`` gathers the weights with
    ``accelerator.get_state_dict`` and passes them to ``_save``: the folder must hold those, not the module's own
    (sharded) parameters. Simulated on CPU by making ``save_model`` take its FSDP branch."""
    from types import SimpleNamespace

    trainer = SetDPOTrainer(policy, args=make_args(tmp_path), train_dataset=pairs)
    own = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    gathered = {k: v + 0.5 if v.is_floating_point() else v.clone() for k, v in own.items()}
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", SimpleNamespace(state_dict_type="FULL_STATE_DICT"),
                        raising=False)
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", lambda model, unwrap=True: gathered)
    trainer.save_model(str(tmp_path / "saved"))
    saved = SentenceTransformer(str(tmp_path / "saved"), device="cpu").state_dict()
    assert saved.keys() == gathered.keys()
    for key, value in gathered.items():
        torch.testing.assert_close(saved[key], value)
    after = trainer.model.state_dict()  # the module's own state_dict() is back, and its weights untouched
    assert all(torch.equal(after[k], v) for k, v in own.items())
    assert (tmp_path / "saved" / "bporag_config.json").is_file() and (tmp_path / "saved" / "README.md").is_file()


def test_writes_state_dict_maps_fsdp1_wrapper_names_to_the_state_dict_keys():
    from trl_bporag.trainers.st_checkpoints import writes_state_dict

    class Wrapper(torch.nn.Module):  # FSDP1 wraps a submodule as `<name>._fsdp_wrapped_module`
        def __init__(self, inner):
            super().__init__()
            self._fsdp_wrapped_module = inner

    model = torch.nn.Sequential(Wrapper(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 1))
    given = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2), "1.weight": torch.full((1, 2), 3.0),
             "1.bias": torch.ones(1)}
    with writes_state_dict(model, given):
        assert model.state_dict().keys() == given.keys()
        inner = model[0]._fsdp_wrapped_module.state_dict()
        assert inner.keys() == {"weight", "bias"} and torch.equal(inner["weight"], torch.ones(2, 2))
        assert torch.equal(model[1].state_dict()["weight"], torch.full((1, 2), 3.0))
    assert "0._fsdp_wrapped_module.weight" in model.state_dict()  # restored


def test_peft_under_zero3_or_fsdp_is_refused_before_training(tmp_path, policy, pairs, monkeypatch):
    from peft import LoraConfig
    from transformers import Trainer

    set_up = Trainer.create_accelerator_and_postprocess

    def as_under_fsdp(self):  # the accelerator transformers sets up, then marked as FSDP's
        set_up(self)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_under_fsdp)
    with pytest.raises(ValueError, match="PEFT retriever cannot be trained under DeepSpeed ZeRO-3 or FSDP"):
        SetDPOTrainer(policy, args=make_args(tmp_path), train_dataset=pairs, peft_config=LoraConfig(r=4))


def test_set_score_gradients_are_bitwise_reproducible():
    """The same batch gives bit-identical gradients every time, as ``transformers.set_seed`` promises a user. Picking the
    windows' embeddings by indexing (``table[idx]``) had a backward that adds in parallel with atomics on CPU, so the
    main command's retriever differed between runs with the same seed; the scorer now gathers similarities."""
    from trl_bporag.trainers.set_scores import SetScorer

    torch.manual_seed(0)
    n, d, B, L, k = 60, 384, 16, 9, 5  # sizes of the main command's batches: big enough for a parallel backward
    texts = [f"passage {i}" for i in range(n)]
    table = torch.nn.Parameter(torch.randn(n + 1, d))
    scorer = SetScorer(k=k, skip_shared=False)
    scorer.encode = lambda model, ts, kind: table[[int(t.split()[1]) if kind == "document" else n for t in ts]]
    lists = [[[texts[i] for i in torch.randperm(n)[:k].tolist()] for _ in range(L)] for _ in range(B)]
    queries = [f"query {b}" for b in range(B)]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        grads = []
        for _ in range(6):
            table.grad = None
            scores, _ = scorer.list_scores(None, queries, lists)
            (scores * torch.randn(B, L, generator=torch.Generator().manual_seed(1))).sum().backward()
            grads.append(table.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert table.grad.abs().sum() > 0
    assert all(torch.equal(grads[0], g) for g in grads[1:])
