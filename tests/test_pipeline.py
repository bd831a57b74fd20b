import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_beir
from trl_bporag import RAGPipeline, load_generator
from trl_bporag.generation import build_messages, build_prompt, generate, truncate_passage
from trl_bporag.retrieval import DenseIndex, Retriever

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipe(tiny_st, tiny_generator_dir, toy_corpus):
    r = Retriever(tiny_st)
    index = DenseIndex.from_corpus(r, toy_corpus)
    model, tok = load_generator(tiny_generator_dir)
    return RAGPipeline(r, index, toy_corpus, model, tok, k=2, max_new_tokens=4)


def test_prompt_uses_chat_template_and_truncates_passages_only(tiny_generator_dir):
    _, tok = load_generator(tiny_generator_dir)
    long = " ".join(["paris"] * 50)
    prompt = build_prompt(tok, "what is the capital of france", [long, "rome"], max_passage_tokens=5,
                          answer_prefix=None)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "Passage 1: paris paris paris paris paris\n" in prompt and "Passage 2: rome" in prompt
    assert "Question: what is the capital of france" in prompt
    assert truncate_passage(long, tok, None) == long
    msgs = build_messages("q", ["a"], system_prompt=None)
    assert msgs == [{"role": "user", "content": "Passage 1: a\n\nQuestion: q"}]


def test_batched_generation_matches_one_by_one(tiny_generator_dir):
    model, tok = load_generator(tiny_generator_dir)
    prompts = [build_prompt(tok, q, ["paris is the capital of france"]) for q in
               ["what is the capital of france", "which river", "who was king of england in the year 10"]]
    batched = generate(model, tok, prompts, batch_size=3, max_new_tokens=5, clean=False)
    single = [generate(model, tok, [p], batch_size=1, max_new_tokens=5, clean=False)[0] for p in prompts]
    assert batched == single  # left padding: the padded batch gives the unpadded answers
    assert tok.padding_side == "right"  # restored afterwards
    sampled = generate(model, tok, prompts, max_new_tokens=5, do_sample=True, seed=3, num_return_sequences=2)
    assert len(sampled) == 3 and all(len(s) == 2 for s in sampled)
    assert sampled == generate(model, tok, prompts, max_new_tokens=5, do_sample=True, seed=3, num_return_sequences=2)


def test_pipeline_answer_prefix_ends_every_prompt_and_cuts_answers_at_its_stop(pipe, toy_split):
    from trl_bporag.generation import QUOTED_ANSWER_PREFIX, clean_answer

    pipe.settings = pipe.settings.replace(answer_prefix=QUOTED_ANSWER_PREFIX)
    ids, _ = pipe.retrieve(toy_split.questions)
    prompts = pipe.prompts(toy_split.questions, ids)
    assert all(p.endswith("<|im_start|>assistant\n" + QUOTED_ANSWER_PREFIX) for p in prompts)
    raw = generate(pipe.generator, pipe.tokenizer, prompts, max_new_tokens=pipe.max_new_tokens, clean=False)
    assert pipe.answer(toy_split.questions, ids) == [clean_answer(r, '"') for r in raw]
    text = build_prompt(pipe.tokenizer, "q", ["a"], answer_prefix=QUOTED_ANSWER_PREFIX)
    assert text == build_prompt(pipe.tokenizer, "q", ["a"], answer_prefix=None) + QUOTED_ANSWER_PREFIX
    assert build_prompt(pipe.tokenizer, "q", ["a"]) == text  # the quoted prefix is the default (RAGSettings)


def test_pipeline_retrieves_and_answers(pipe, toy_split):
    out = pipe(toy_split.questions)
    assert len(out) == 3
    for row in out:
        assert len(row["passage_ids"]) == 2 and len(row["passages"]) == 2 and isinstance(row["answer"], str)
        assert row["scores"][0] >= row["scores"][1]
    single = pipe("what is the capital of france")
    assert single["passage_ids"] == out[0]["passage_ids"]
    ids, _ = pipe.retrieve(toy_split.questions, k=6)
    assert sorted(ids[0]) == sorted(pipe.corpus.ids)  # k = corpus size returns everything


def test_pipeline_evaluate_reports_all_metrics(pipe, toy_split):
    import numpy as np

    from trl_bporag.metrics import has_answer, qa_f1

    res = pipe.evaluate(toy_split, ks=(1, 2), return_predictions=True)
    m = res["metrics"]
    # against an independent exact search with the same encoder
    q = pipe.retriever.model.encode(toy_split.questions, normalize_embeddings=True)
    d = pipe.retriever.model.encode(pipe.corpus.passages(True), normalize_embeddings=True)
    order = np.argsort(-(q @ d.T), axis=1)
    for k in (1, 2):
        top = [[pipe.corpus.ids[j] for j in row[:k]] for row in order]
        recall = np.mean([len(set(t) & set(g)) / len(g) for t, g in zip(top, toy_split.gold_ids)])
        hit = np.mean([any(has_answer(pipe.corpus.passage(pipe.corpus.index_of(i)), a) for i in t)
                       for t, a in zip(top, toy_split.answers)])
        assert m[f"recall@{k}"] == pytest.approx(recall) and m[f"answer_hit@{k}"] == pytest.approx(hit)
    assert m["f1"] == pytest.approx(np.mean([qa_f1(p["prediction"], a) for p, a in zip(res["predictions"],
                                                                                        toy_split.answers)]))
    assert len(res["predictions"]) == 3 and res["predictions"][0]["id"] == "q1"


def test_pipeline_input_errors(tiny_st, toy_corpus):
    r = Retriever(tiny_st)
    index = DenseIndex.from_corpus(r, toy_corpus)
    with pytest.raises(ValueError, match="generator and tokenizer go together"):
        RAGPipeline(r, index, toy_corpus, generator=object())
    smaller = type(toy_corpus)(toy_corpus.ids[:2], toy_corpus.texts[:2], toy_corpus.titles[:2])
    with pytest.raises(ValueError, match="index holds 6 passages but the corpus has 2"):
        RAGPipeline(r, index, smaller)
    retrieval_only = RAGPipeline(r, index, toy_corpus)
    with pytest.raises(ValueError, match="no generator"):
        retrieval_only.prompts(["q"], [["p1"]])


def test_evaluate_script_end_to_end(tmp_path, tiny_retriever_dir, tiny_generator_dir, toy_corpus, toy_split):
    write_beir(tmp_path / "data", toy_corpus, toy_split)
    cmd = [sys.executable, str(REPO / "examples" / "evaluate.py"), "--dataset", str(tmp_path / "data"),
           "--retriever", tiny_retriever_dir, "--generator", tiny_generator_dir, "--ks", "1,2", "--k", "2",
           "--max_new_tokens", "3", "--index_dir", str(tmp_path / "index"), "--output_dir", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "passages encoded: 6" in first.stderr
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    import numpy as np
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(tiny_retriever_dir, device="cpu")
    q = encoder.encode(toy_split.questions, normalize_embeddings=True)
    d = encoder.encode(toy_corpus.passages(True), normalize_embeddings=True)
    top2 = [[toy_corpus.ids[j] for j in row[:2]] for row in np.argsort(-(q @ d.T), axis=1)]
    expect = np.mean([len(set(t) & set(g)) / len(g) for t, g in zip(top2, toy_split.gold_ids)])
    assert res["metrics"]["recall@2"] == pytest.approx(expect) and "f1" in res["metrics"] and res["num_queries"] == 3
    assert "| recall@1 |" in (tmp_path / "out" / "results.md").read_text()
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 3
    second = subprocess.run(cmd + ["--retrieval_only", "--max_queries", "2"], capture_output=True, text=True,
                            check=True)
    assert "passages encoded: 0" in second.stderr  # unchanged corpus + model: the saved index is reused
    res2 = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res2["num_queries"] == 2 and "f1" not in res2["metrics"]


def test_index_and_evaluate_prompt_flags_encode_with_the_prompts(tmp_path, tiny_retriever_dir, tiny_st, toy_corpus,
                                                                 toy_split):
    """--query_prompt / --document_prompt of `index` and `evaluate` (e5-style prompts): the passages are encoded with
    the document prompt, the questions with the query prompt, and an index of other prompts is not reused."""
    import numpy as np

    from conftest import write_beir
    from trl_bporag.scripts import evaluate, index

    write_beir(tmp_path / "qa", toy_corpus, toy_split)
    texts = toy_corpus.passages(True)
    plain = tiny_st.encode(texts, normalize_embeddings=True)
    prompted = tiny_st.encode(["passage: " + t for t in texts], normalize_embeddings=True)
    assert np.abs(plain - prompted).max() > 1e-3  # the prompt changes the vectors, so the check below can fail
    (args,) = index.parse(["--dataset", str(tmp_path / "qa"), "--retriever", tiny_retriever_dir,
                           "--query_prompt", "query: ", "--document_prompt", "passage: ",
                           "--output_dir", str(tmp_path / "idx")])
    np.testing.assert_allclose(index.main(args).embeddings(), prompted, atol=1e-5)

    args, settings = evaluate.parse(["--dataset", str(tmp_path / "qa"), "--retriever", tiny_retriever_dir,
                                     "--retrieval_only", "--ks", "1,2", "--query_prompt", "query: ",
                                     "--document_prompt", "passage: ", "--index_dir", str(tmp_path / "idx"),
                                     "--output_dir", str(tmp_path / "out")])
    result = evaluate.main(args, settings)
    assert result["passages_encoded"] == 0  # the index above, same model and prompts, is reused
    q = tiny_st.encode(["query: " + x for x in toy_split.questions], normalize_embeddings=True)
    top1 = [toy_corpus.ids[j] for j in np.argmax(q @ prompted.T, axis=1)]
    expect = np.mean([t in g for t, g in zip(top1, toy_split.gold_ids)])
    assert result["metrics"]["recall@1"] == pytest.approx(expect)
    args.query_prompt = None  # only the query prompt differs: the passages' vectors are the same, the index is reused
    assert evaluate.main(args, settings)["passages_encoded"] == 0
    args.document_prompt = None  # another document prompt: the named index folder is refused, not reused
    with pytest.raises(ValueError, match="index"):
        evaluate.main(args, settings)
