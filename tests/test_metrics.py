import random
import re
import string
from collections import Counter

import pytest

from trl_bporag.metrics import (
    answer_hit_at_k,
    answer_metrics,
    exact_match_score,
    f1_score,
    has_answer,
    load_metric,
    normalize_answer,
    qa_exact_match,
    qa_f1,
    recall_at_k,
    retrieval_metrics,
)


# --- the official SQuAD v1.1 evaluation functions, verbatim (evaluate-v1.1.py), as an independent reference ---
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


WORDS = ["the", "a", "an", "Denver", "Broncos", "broncos,", "1990", "Paris!", "THE", "in", "an-", "(a)", "theory", "x"]


def random_text(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6))) + rng.choice(["", ".", " ", "'s"])


def test_matches_official_squad_v11_on_random_strings():
    rng = random.Random(0)
    for _ in range(2000):
        pred = random_text(rng)
        golds = [random_text(rng) for _ in range(rng.randint(1, 3))]
        assert normalize_answer(pred) == official_normalize_answer(pred)
        assert f1_score(pred, golds[0]) == pytest.approx(official_f1_score(pred, golds[0]))
        assert qa_f1(pred, golds) == pytest.approx(official_metric_max_over_ground_truths(official_f1_score, pred, golds))
        assert qa_exact_match(pred, golds) == float(
            official_metric_max_over_ground_truths(official_exact_match_score, pred, golds)
        )


def test_hand_made_cases():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match_score("the Denver Broncos", "Denver Broncos") == 1.0
    # pred tokens {denver, broncos, team}, gold {denver, broncos}: P=2/3, R=1 -> F1=0.8
    assert f1_score("Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    assert qa_f1("Carolina", ["Denver Broncos", "Carolina Panthers"]) == pytest.approx(2 / 3)
    assert f1_score("", "Denver") == 0.0
    assert answer_metrics(["Paris", "Rome city"], [["paris"], ["Madrid"]]) == {"exact_match": 0.5, "f1": 0.5}


def test_recall_at_k():
    retrieved = [["a", "b", "c"], ["d", "e", "f"]]
    gold = [["b"], ["f", "x"]]
    assert recall_at_k(retrieved, gold, 1) == 0.0
    assert recall_at_k(retrieved, gold, 2) == pytest.approx(0.5)  # (1 + 0) / 2
    assert recall_at_k(retrieved, gold, 3) == pytest.approx(0.75)  # (1 + 1/2) / 2
    with pytest.raises(ValueError, match=r"gold_ids\[0\]"):
        recall_at_k([["a"]], [[]], 1)
    with pytest.raises(ValueError, match="k"):
        recall_at_k(retrieved, gold, 0)


def test_answer_hit_whole_tokens():
    assert has_answer("The Denver Broncos won.", ["denver broncos"])
    assert not has_answer("Denverite fans", ["Denver"])  # token boundary, not a substring
    passages = [["nothing here", "Paris is big"], ["Rome"]]
    assert answer_hit_at_k(passages, [["paris"], ["madrid"]], 1) == 0.0
    assert answer_hit_at_k(passages, [["paris"], ["madrid"]], 2) == 0.5
    with pytest.raises(ValueError, match="answers"):
        has_answer("x", "paris")


def test_retrieval_metrics_names():
    out = retrieval_metrics([["a", "b"]], [["b"]], [["x", "paris"]], [["paris"]], ks=(1, 2))
    assert out == {"recall@1": 0.0, "answer_hit@1": 0.0, "recall@2": 1.0, "answer_hit@2": 1.0}


def test_evaluate_modules_load_offline():
    qa = load_metric("rag_qa")
    res = qa.compute(predictions=["the Denver Broncos", "x"], references=[["Denver Broncos"], ["y", "x z"]])
    assert res == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})
    ret = load_metric("rag_retrieval")
    assert ret.compute(predictions=[["a", "b"], ["c", "d"]], references=[["b"], ["x", "c"]], ks=[1, 2]) == pytest.approx(
        {"recall@1": 0.25, "recall@2": 0.75}
    )
    with pytest.raises(ValueError, match="unknown"):
        load_metric("bleu_of_doom")
