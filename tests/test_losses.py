"""The RPO objectives of trl_bporag.losses, their use in SetDPOTrainer, listwise rows and the answer-likelihood judge."""

import copy
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_bporag import ContrastiveSetLoss, ListwiseSetDPOLoss, SetDPOLoss, load_generator
from trl_bporag.generation import build_prompt
from trl_bporag.likelihood import answer_log_likelihood
from trl_bporag.trainers import SetDPOConfig, SetDPOTrainer


def _nls(x):  # -log sigmoid(x), by hand
    return math.log1p(math.exp(-x))


def test_set_dpo_loss_with_and_without_reference_by_hand():
    c, r = torch.tensor([1.3, 0.9]), torch.tensor([1.1, 1.0])
    rc, rr = torch.tensor([1.2, 0.7]), torch.tensor([1.2, 1.1])
    beta = 10.0
    with_ref = SetDPOLoss(beta=beta)(c, r, rc, rr).item()
    assert with_ref == pytest.approx(np.mean([_nls(beta * ((1.3 - 1.1) - (1.2 - 1.2))),
                                              _nls(beta * ((0.9 - 1.0) - (0.7 - 1.1)))]), rel=1e-5)
    free = SetDPOLoss(beta=beta, reference="free")(c, r).item()
    assert free == pytest.approx(np.mean([_nls(beta * 0.2), _nls(beta * -0.1)]), rel=1e-5)
    # the reference is ignored by the reference-free loss, and required by the other one
    assert SetDPOLoss(beta=beta, reference="free")(c, r, rc, rr).item() == pytest.approx(free)
    with pytest.raises(ValueError, match="ref_chosen_scores"):
        SetDPOLoss(beta=beta)(c, r)
    # hinge and ipo on the same margins
    d = np.array([0.2, 0.3])
    assert SetDPOLoss(beta=beta, loss_type="hinge")(c, r, rc, rr).item() == pytest.approx(
        np.maximum(0, 1 - beta * d).mean(), rel=1e-5)
    assert SetDPOLoss(beta=beta, loss_type="ipo")(c, r, rc, rr).item() == pytest.approx(
        ((d - 1 / (2 * beta)) ** 2).mean(), rel=1e-5)


def test_reference_margin_weights_by_hand():
    c, r = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])
    rc, rr = torch.tensor([1.0, 0.2]), torch.tensor([0.2, 1.0])  # reference margins +0.8 (right), -0.8 (wrong)
    loss = SetDPOLoss(beta=10.0, reference="free", reference_margin_scale=5.0)(c, r, rc, rr).item()
    w = [2 / (1 + math.exp(5.0 * 0.8)), 2 / (1 + math.exp(-5.0 * 0.8))]
    assert loss == pytest.approx(np.mean([w[0] * _nls(5.0), w[1] * _nls(5.0)]), rel=1e-5)
    assert w[1] > 1 > w[0]
    with pytest.raises(ValueError, match="reference_margin_scale"):
        SetDPOLoss(reference_margin_scale=0.0)


def test_listwise_loss_reduces_to_pairwise_for_two_lists():
    g = torch.Generator().manual_seed(0)
    s, ref = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    judge = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 3)  # chosen first in half of the rows
    chosen = torch.where(judge[:, 0] > judge[:, 1], s[:, 0], s[:, 1])
    rejected = torch.where(judge[:, 0] > judge[:, 1], s[:, 1], s[:, 0])
    ref_c = torch.where(judge[:, 0] > judge[:, 1], ref[:, 0], ref[:, 1])
    ref_r = torch.where(judge[:, 0] > judge[:, 1], ref[:, 1], ref[:, 0])
    for reference in ("model", "free"):
        listwise = ListwiseSetDPOLoss(beta=3.0, reference=reference)(s, judge, ref)
        pairwise = SetDPOLoss(beta=3.0, reference=reference)(chosen, rejected, ref_c, ref_r)
        assert listwise.item() == pytest.approx(pairwise.item(), rel=1e-5)


def test_listwise_loss_by_hand_with_a_tie_and_padding():
    # one query, lists A (judge 1), B (0.5), C (0.5), a padded slot; reference-free, beta 1
    s = torch.tensor([[0.3, 0.1, -0.2, 9.0]])
    judge = torch.tensor([[1.0, 0.5, 0.5, 7.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss = ListwiseSetDPOLoss(beta=1.0, reference="free")(s, judge, mask=mask).item()
    a, b, c = 0.3, 0.1, -0.2
    term_a = -(a - math.log(math.exp(a) + math.exp(b) + math.exp(c)))  # A against the two worse lists
    assert loss == pytest.approx(term_a, rel=1e-5)  # B and C tie: no term for them, and the pad is ignored
    # all lists tied: no preference, zero loss with a graph
    flat = torch.zeros(1, 3, requires_grad=True)
    out = ListwiseSetDPOLoss(beta=1.0, reference="free")(flat, torch.ones(1, 3))
    assert out.item() == 0.0 and out.requires_grad


def test_contrastive_loss_by_hand():
    sims = torch.tensor([[0.5, 0.1, 0.3], [0.2, 0.4, 0.0]])
    loss = ContrastiveSetLoss(scale=2.0)(sims, positives=[(0, 0), (1, 1)], masked=[(0, 0), (0, 2), (1, 1)])
    t0 = -(1.0 - math.log(math.exp(1.0) + math.exp(0.2)))  # row 0: passage 2 masked (another chosen passage)
    t1 = -(0.8 - math.log(math.exp(0.4) + math.exp(0.8) + math.exp(0.0)))
    assert loss.item() == pytest.approx((t0 + t1) / 2, rel=1e-5)


def _listwise_rows():
    docs = [f"passage {i} about {w}" for i, w in enumerate("paris rome berlin madrid london seine tiber spree".split())]
    rows = []
    for q in range(4):
        base = docs[q:q + 3]
        lists = [base, [docs[(q + 4) % 8]] + base[1:], base[:2] + [docs[(q + 5) % 8]]]
        rows.append({"prompt": f"question {q}", "lists": lists, "list_scores": [1.0, 0.0, 0.5]})
    return Dataset.from_list(rows)


@pytest.mark.parametrize("reference", ["model", "free"])
def test_listwise_trainer_moves_only_the_policy(tmp_path, tiny_st, reference):
    data = _listwise_rows()
    cfg = SetDPOConfig(output_dir=str(tmp_path / "out"), k=3, beta=5.0, reference=reference, learning_rate=1e-3,
                       per_device_train_batch_size=2, max_steps=2, report_to=[], save_strategy="no", use_cpu=True,
                       loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    ref = copy.deepcopy(tiny_st) if reference == "model" else None
    before = {n: p.detach().clone() for n, p in tiny_st.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in ref.named_parameters()} if ref is not None else {}
    trainer = SetDPOTrainer(tiny_st, ref_model=ref, args=cfg, train_dataset=data)
    assert (trainer.ref_model is None) == (reference == "free")
    batch = trainer.data_collator([data[0], data[1]])
    scores, _ = trainer._batch_scores(batch)
    assert scores.shape == (2, 3)
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    if ref is not None:
        assert all(torch.equal(ref_before[n], p) for n, p in trainer.ref_model.named_parameters())
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h or "loss" in h]
    assert logged


def test_listwise_scores_match_set_scores(tmp_path, tiny_st):
    """compute_list_scores' differences between lists equal those of full set scores (shared passages skipped)."""
    from trl_bporag.retrieval import Retriever

    data = _listwise_rows()
    cfg = SetDPOConfig(output_dir=str(tmp_path / "out"), k=3, reference="free", report_to=[], use_cpu=True)
    trainer = SetDPOTrainer(tiny_st, args=cfg, train_dataset=data)
    trainer.model.eval()
    batch = trainer.data_collator([data[i] for i in range(4)])
    with torch.no_grad():
        scores, _ = trainer._batch_scores(batch)
    r = Retriever(tiny_st)
    for b, row in enumerate(batch["lists"]):
        full = r.set_score([batch["prompt"][b]] * len(row), row, k=3)
        got = scores[b].numpy()
        np.testing.assert_allclose(got - got[0], full - full[0], atol=1e-4)


def test_listwise_rows_are_checked(tmp_path, tiny_st):
    bad = Dataset.from_list([{"prompt": "q", "lists": [["a", "b"], ["c", "d"]], "list_scores": [1.0]}])
    cfg = SetDPOConfig(output_dir=str(tmp_path / "out"), k=2, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="list_scores"):
        SetDPOTrainer(tiny_st, args=cfg, train_dataset=bad)
    good = Dataset.from_list([{"prompt": "q", "lists": [["a", "b"], ["c", "d"]], "list_scores": [1.0, 0.0]}])
    with pytest.raises(ValueError, match="listwise rows"):
        SetDPOTrainer(tiny_st, args=SetDPOConfig(output_dir=str(tmp_path / "o2"), k=2, loss_type="hinge",
                                                 report_to=[], use_cpu=True), train_dataset=good)


@pytest.mark.parametrize("prefix", [None, 'The answer is "'])
def test_answer_log_likelihood_matches_a_direct_computation(tiny_generator_dir, prefix, monkeypatch):
    """One forward pass over prompt + answer per (window, distinct gold), against the judge's shared KV cache: windows
    of one question that share their first passages (read once), a window repeated, and two questions."""
    model, tok = load_generator(tiny_generator_dir)
    model.float()
    questions = ["what is the capital of france"] * 4 + ["which river"]
    windows = [["paris is the capital of france", "rome is in italy"], ["paris is the capital of france", "a river"],
               ["rome is in italy", "paris is the capital of france"], ["paris is the capital of france", "a river"],
               ["the seine is a river"]]
    answers = [["Paris", "paris", "the city of paris"]] * 4 + [["seine"]]
    got = answer_log_likelihood(model, tok, questions, windows, answers, max_passage_tokens=32, answer_prefix=prefix)
    assert got[1] == got[3] and len(set(got)) == 4
    for q, w, golds, value in zip(questions, windows, answers, got):
        prompt = tok(build_prompt(tok, q, w, 32, answer_prefix=prefix), add_special_tokens=False)["input_ids"]
        best = -float("inf")
        distinct = ["Paris", "the city of paris"] if len(golds) == 3 else golds  # "paris" normalises like "Paris"
        for a in distinct:
            ids = tok(a, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([prompt + ids])).logits[0].float()
            lp = torch.log_softmax(logits[len(prompt) - 1:-1], -1).gather(1, torch.tensor(ids)[:, None]).mean()
            best = max(best, float(lp))
        assert value == pytest.approx(best, abs=1e-4)
    # the order of the windows does not change the values, nor does a model whose cache cannot be cut (read whole)
    again = answer_log_likelihood(model, tok, questions[::-1], windows[::-1], answers[::-1], 32, answer_prefix=prefix)
    assert again[::-1] == pytest.approx(got, abs=1e-4)
    monkeypatch.setattr("trl_bporag.generation._plain_kv_cache", lambda m: False)
    whole = answer_log_likelihood(model, tok, questions, windows, answers, 32, answer_prefix=prefix)
    assert whole == pytest.approx(got, abs=1e-4)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
def test_set_dpo_loss_equals_trls_own_dpo_loss_on_the_same_margins(loss_type):
    """TRL's DPOTrainer computes the loss from sequence log-probabilities; feed it 'sequences' of one completion token
    whose log-probabilities are our set scores (and the reference's), and compare with SetDPOLoss."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import DPOTrainer

    g = torch.Generator().manual_seed(1)
    c, r, rc, rr = (torch.randn(5, generator=g) for _ in range(4))
    beta, smoothing = 2.0, (0.1 if loss_type == "robust" else 0.0)

    class OneTokenModel(torch.nn.Module):
        training = True

        def forward(self, input_ids=None, labels=None, **kwargs):  # log_probs: [2B, 1], the batch is [chosen, rejected]
            n = 2 * len(c)
            return SimpleNamespace(log_probs=torch.cat([c, r])[:, None], aux_loss=None, entropy=torch.zeros(n, 1),
                                   mean_logits=torch.zeros(n, 1), is_top1=torch.zeros(n, 1, dtype=torch.bool))

    model = OneTokenModel()
    trainer = SimpleNamespace(
        model=model, beta=beta, loss_types=[loss_type], loss_weights=[1.0], label_smoothing=smoothing,
        f_divergence_type="reverse_kl", ld_alpha=None, precompute_ref_logps=True, aux_loss_enabled=False,
        use_weighting=False, args=SimpleNamespace(rpo_alpha=None, use_weighting=False),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x),
        _total_train_tokens=0, _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {"input_ids": torch.zeros(10, 2, dtype=torch.long), "attention_mask": torch.ones(10, 2, dtype=torch.long),
              "completion_mask": torch.tensor([[0, 1]] * 10), "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    theirs = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    ours = SetDPOLoss(beta=beta, loss_type=loss_type, label_smoothing=smoothing)(c, r, rc, rr)
    assert ours.item() == pytest.approx(float(theirs), rel=1e-5)


def test_losses_report_their_settings_and_bibtex_as_sentence_transformers_losses_do():
    from trl_bporag.losses import ContrastiveSetLoss, ListwiseSetDPOLoss, SetDPOLoss

    pairwise = SetDPOLoss(beta=5.0, loss_type=["sigmoid", "hinge"], loss_weights=[1.0, 0.5], reference="free")
    assert pairwise.get_config_dict() == {"beta": 5.0, "loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0, 0.5],
                                          "reference": "free", "reference_margin_scale": None,
                                          "label_smoothing": 0.0, "discopop_tau": 0.05}
    assert pairwise.citation.strip().startswith("@inproceedings{rafailov2023direct,")
    listwise = ListwiseSetDPOLoss(beta=10.0, reference="free")
    assert listwise.get_config_dict() == {"beta": 10.0, "reference": "free"}
    assert "@misc{liu2024lipo," in listwise.citation and "rafailov2023direct" in listwise.citation
    assert ContrastiveSetLoss(scale=7.0).get_config_dict() == {"scale": 7.0}
    assert "1705.00652" in ContrastiveSetLoss().citation


def test_plackett_luce_passage_loss_matches_its_hand_computation_and_masks_padding():
    from trl_bporag import PlackettLucePassageLoss

    loss = PlackettLucePassageLoss(model=None, scale=2.0)
    q = torch.tensor([[1.0, 0.0]])
    p = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]])]  # cos 1, 0, -1
    z = torch.tensor([2.0, 0.0, -2.0])
    # grades 2 > 1 > 0: -log e^z1/(e^z1+e^z2+e^z3) and -log e^z2/(e^z2+e^z3), averaged
    expected = ((torch.logsumexp(z, 0) - z[0]) + (torch.logsumexp(z[1:], 0) - z[1])) / 2
    got = loss.compute_loss_from_embeddings([q, *p], torch.tensor([[2.0, 1.0, 0.0]]))
    torch.testing.assert_close(got, expected)
    padded = loss.compute_loss_from_embeddings([q, *p], torch.tensor([[1.0, 0.0, float("nan")]]))
    torch.testing.assert_close(padded, torch.logsumexp(z[:2], 0) - z[0])  # the NaN-graded passage is left out
    with pytest.raises(ValueError, match=r"label: expected one grade per passage, shape \[batch, 3\]"):
        loss.compute_loss_from_embeddings([q, *p], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="scale: expected a finite number > 0"):
        PlackettLucePassageLoss(model=None, scale=-1.0)


def test_plackett_luce_passage_loss_trains_a_model_in_sentence_transformers_trainer(tmp_path, tiny_st):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from trl_bporag import PlackettLucePassageLoss

    rows = {"query": ["capital of france", "capital of italy", "river in paris", "capital of spain"] * 2,
            "p1": ["paris is the capital of france", "rome is the capital of italy", "the seine flows in paris",
                   "madrid is the capital of spain"] * 2,
            "p2": ["paris has the eiffel tower", "rome has the colosseum", "paris is in france",
                   "spain is in europe"] * 2,
            "p3": ["berlin is in germany", "london is in england", "the thames is in london",
                   "oslo is in norway"] * 2,
            "label": [[2.0, 1.0, 0.0]] * 8}
    train = Dataset.from_dict(rows)
    loss = PlackettLucePassageLoss(tiny_st)

    def mean_loss():
        features = [tiny_st.tokenize(rows[c]) for c in ("query", "p1", "p2", "p3")]
        with torch.no_grad():
            return loss(features, torch.tensor(rows["label"])).item()

    before = mean_loss()
    weights = {n: p.detach().clone() for n, p in tiny_st.named_parameters()}
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "st"), num_train_epochs=8,
                                                per_device_train_batch_size=4, learning_rate=5e-4, report_to="none",
                                                save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    SentenceTransformerTrainer(model=tiny_st, args=args, train_dataset=train, loss=loss).train()
    assert any(not torch.equal(weights[n], p) for n, p in tiny_st.named_parameters())  # parameters moved
    assert mean_loss() < before - 0.05  # and the graded order is learned: the loss falls
