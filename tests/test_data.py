import json

import pytest
from datasets import Dataset

from conftest import shared_data
from trl_bporag.data import Corpus, load_beir, load_hf, load_qa_dataset, load_rag_dataset, passage_id


def write_beir(root, corpus=None, queries=None, qrels=None, split="test"):
    corpus = corpus if corpus is not None else [
        {"_id": "p1", "title": "Paris", "text": "paris is the capital of france"},
        {"_id": "p2", "title": "", "text": "rome is the capital of italy"},
    ]
    queries = queries if queries is not None else [
        {"_id": "q1", "text": "capital of france?", "answers": ["Paris"]},
        {"_id": "q2", "text": "capital of italy?", "answers": ["Rome", "rome city"]},
    ]
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\tp1\t1\nq2\tp2\t1\n"
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in queries))
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


def test_load_beir_roundtrip(tmp_path):
    data = load_beir(write_beir(tmp_path), "test")
    assert data.corpus.ids == ["p1", "p2"]
    assert data.corpus.passages() == ["Paris paris is the capital of france", "rome is the capital of italy"]
    assert data.corpus.passages(with_title=False)[0] == "paris is the capital of france"
    assert data.split.questions == ["capital of france?", "capital of italy?"]
    assert data.split.answers[1] == ["Rome", "rome city"]
    assert data.split.gold_ids == [["p1"], ["p2"]]
    assert load_rag_dataset(str(tmp_path), "test").split.ids == ["q1", "q2"]


def test_corpus_fingerprint_changes_with_text(tmp_path):
    a = Corpus(["p1"], ["x"], ["t"])
    assert a.fingerprint() == Corpus(["p1"], ["x"], ["t"]).fingerprint()
    assert a.fingerprint() != Corpus(["p1"], ["y"], ["t"]).fingerprint()
    assert a.fingerprint() != a.fingerprint(with_title=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\tpX\t1\n"}, r"test\.tsv:2: field 'corpus-id' 'pX'"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq9\tp1\t1\n"}, r"test\.tsv:2: field 'query-id' 'q9'"),
        ({"qrels": "qid\tpid\n"}, r"test\.tsv:1: expected the header"),
        ({"queries": [{"_id": "q1", "text": "x", "answers": []}]}, r"queries\.jsonl:1: field 'answers'"),
        ({"queries": [{"_id": "q1", "text": "x", "answers": "Paris"}]}, r"queries\.jsonl:1: field 'answers'"),
        ({"queries": [{"_id": "q1", "text": "x"}]}, r"queries\.jsonl:1: missing field 'answers'"),
        (
            {"queries": [{"_id": "q1", "text": "x", "answers": ["ax"]}, {"_id": "q1", "text": "y", "answers": ["b"]}]},
            r"queries\.jsonl:2: duplicate query id 'q1' in field '_id'",
        ),
        (
            {"corpus": [{"_id": "p1", "text": "a"}, {"_id": "p2", "text": "b"}, {"_id": "p1", "text": "c"}]},
            r"corpus\.jsonl:3: duplicate passage id 'p1' in field '_id' \(first on line 1\)",
        ),
        ({"corpus": [{"_id": "p1", "text": "a"}, "{not json\n"]}, r"corpus\.jsonl:2: invalid JSON"),
        ({"corpus": [{"_id": "p1"}]}, r"corpus\.jsonl:1: missing field 'text'"),
    ],
)
def test_validation_errors_name_file_line_and_field(tmp_path, kwargs, match):
    write_beir(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=match):
        load_beir(tmp_path, "test")


def test_unknown_split_lists_available(tmp_path):
    write_beir(tmp_path)
    with pytest.raises(ValueError, match=r"splits available: \['test'\]"):
        load_beir(tmp_path, "train")


def test_load_hf_with_column_names():
    corpus = Dataset.from_dict({"doc_id": ["a", "b"], "body": ["paris text", "rome text"]})
    queries = Dataset.from_dict({"qid": [1, 2], "q": ["where paris", "where rome"], "golds": [["Paris"], ["Rome"]]})
    qrels = Dataset.from_dict({"query-id": ["2"], "corpus-id": ["b"]})
    data = load_hf(corpus, queries, qrels, corpus_id_column="doc_id", title_column=None, text_column="body",
                   query_id_column="qid", question_column="q", answers_column="golds")
    assert data.split.ids == ["2"] and data.split.gold_ids == [["b"]] and data.split.answers == [["Rome"]]
    with pytest.raises(ValueError, match="column 'text' not found"):
        load_hf(corpus, queries, corpus_id_column="doc_id")
    bad = Dataset.from_dict({"query-id": ["2"], "corpus-id": ["zzz"]})
    with pytest.raises(ValueError, match="qrels row 0: column 'corpus-id' value 'zzz'"):
        load_hf(corpus, queries, bad, corpus_id_column="doc_id", text_column="body", query_id_column="qid",
                question_column="q", answers_column="golds")


def test_load_squad_style_qa_dataset(tmp_path):
    ds = Dataset.from_dict({
        "id": ["a", "b", "c"],
        "title": ["T", "T", "U"],
        "context": ["ctx one", "ctx one", "ctx two"],
        "question": ["q1", "q2", "q3"],
        "answers": [{"text": ["one"], "answer_start": [4]}, {"text": ["ctx"], "answer_start": [0]},
                    {"text": ["two"], "answer_start": [4]}],
    })
    ds.save_to_disk(str(tmp_path / "squad"))
    data = load_rag_dataset(str(tmp_path / "squad"), split="validation")
    assert len(data.corpus) == 2  # contexts de-duplicated
    assert data.split.gold_ids == [[passage_id("T", "ctx one")]] * 2 + [[passage_id("U", "ctx two")]]
    assert data.split.answers == [["one"], ["ctx"], ["two"]]
    with pytest.raises(ValueError, match="dataset row 0: field 'answers'"):
        load_qa_dataset(ds.remove_columns("answers").add_column("answers", [[], ["x"], ["y"]]))


@pytest.mark.slow
def test_shared_data_sets_load():
    for name, split, n_queries, n_passages in [("squad-dev", "test", 1589, 2067), ("nq-open", "train", 1200, 1574),
                                               ("hotpotqa-distractor", "test", 100, 1000)]:
        data = load_beir(shared_data(name), split)
        assert (len(data.split), len(data.corpus)) == (n_queries, n_passages)
        assert all(data.split.gold_ids) and all(data.split.answers)
