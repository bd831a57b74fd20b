import json

import numpy as np
import pytest
import torch

from _tiny_retriever import build_tiny_retriever
from trl_bporag.retrieval import DenseIndex, Retriever, set_scores


@pytest.fixture
def retriever(tiny_st):
    return Retriever(tiny_st)


def test_encode_normalised_and_deduplicated(retriever):
    emb = retriever.encode(["paris is big", "rome is old", "paris is big"])
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[2])
    assert retriever.num_encoded == 2  # the repeated text is encoded once
    raw = Retriever(retriever.model, score="dot").encode(["paris is big"])
    assert not np.allclose(np.linalg.norm(raw), 1.0)
    with pytest.raises(ValueError, match="texts"):
        retriever.encode("paris")


def test_cache_skips_known_texts(tiny_st):
    r = Retriever(tiny_st, cache_size=10)
    a = r.encode(["paris", "rome"])
    b = r.encode(["rome", "berlin"])
    assert r.num_encoded == 3
    np.testing.assert_array_equal(a[1], b[0])


def test_set_score_equals_manual_sum(retriever):
    q = ["what is the capital of france", "which river is in france"]
    lists = [["paris is big", "rome is old", "the seine", "berlin"], ["the thames", "the seine", "paris", "rome"]]
    k = 3
    got = retriever.set_score(q, lists, k)
    qe = retriever.encode(q)
    manual = [sum(float(qe[i] @ retriever.encode([p])[0]) for p in lists[i][:k]) for i in range(2)]
    np.testing.assert_allclose(got, manual, rtol=1e-5)
    # position weights: s = sum_i w_i f(q, P_i)
    w = [1.0, 0.5, 0.25]
    got_w = retriever.set_score(q, lists, k, weights=w)
    manual_w = [sum(wi * float(qe[i] @ retriever.encode([p])[0]) for wi, p in zip(w, lists[i][:k])) for i in range(2)]
    np.testing.assert_allclose(got_w, manual_w, rtol=1e-5)
    with pytest.raises(ValueError, match=r"lists\[0\]: has 4 passages, fewer than k=5"):
        retriever.set_score(q, lists, 5)


def test_set_scores_mask_and_shapes():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[[0.5, 0.0], [0.25, 1.0], [9.0, 9.0]]])
    assert set_scores(q, p, 2).item() == pytest.approx(0.75)
    assert set_scores(q, p, 2, mask=torch.tensor([[True, False, True]])).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k"):
        set_scores(q, p, 4)
    with pytest.raises(ValueError, match="position weights"):
        set_scores(q, p, 2, weights=[1.0])


def test_fingerprint_tracks_weights(tiny_st):
    r = Retriever(tiny_st)
    fp = r.fingerprint()
    assert fp == Retriever(tiny_st).fingerprint()
    with torch.no_grad():
        next(tiny_st.parameters()).add_(1.0)
    assert Retriever(tiny_st).fingerprint() != fp


def test_passage_fingerprint_ignores_only_the_query_prompt(tiny_st):
    """An index depends on the passages' encoding: the query prompt changes the retriever's fingerprint but not its
    passage fingerprint; a passage prompt changes both. Without a query prompt the two are equal (old caches stay)."""
    plain = Retriever(tiny_st)
    assert plain.passage_fingerprint() == plain.fingerprint()
    queried = Retriever(tiny_st, query_prompt="query: ")
    assert queried.fingerprint() != plain.fingerprint()
    assert queried.passage_fingerprint() == plain.passage_fingerprint()
    assert Retriever(tiny_st, passage_prompt="passage: ").passage_fingerprint() != plain.passage_fingerprint()


def random_unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_search_matches_brute_force(index_type):
    emb = random_unit(500, 16, 0)
    q = random_unit(20, 16, 1)
    ids = [f"p{i}" for i in range(500)]
    index = DenseIndex(emb, ids, index_type=index_type, nprobe=64)
    scores, rows = index.search(q, 5)
    truth = np.argsort(-(q @ emb.T), axis=1)[:, :5]
    if index_type == "flat":
        np.testing.assert_array_equal(rows, truth)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ emb.T, truth, 1), rtol=1e-5)
    else:  # approximate: top-1 agrees almost always at this size
        assert (rows[:, 0] == truth[:, 0]).mean() >= 0.9
    _, top_ids = index.search_ids(q[:1], 3)
    assert top_ids[0] == [ids[r] for r in rows[0, :3]]
    np.testing.assert_allclose(index.embeddings(), emb, rtol=1e-6)


def test_index_validates_input():
    with pytest.raises(ValueError, match="index_type"):
        DenseIndex(random_unit(3, 4, 0), ["a", "b", "c"], index_type="lsh")
    with pytest.raises(ValueError, match="one row per id"):
        DenseIndex(random_unit(3, 4, 0), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        DenseIndex(random_unit(2, 4, 0), ["a", "a"])
    bad = random_unit(2, 4, 0)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DenseIndex(bad, ["a", "b"])
    index = DenseIndex(random_unit(3, 4, 0), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expected shape \[n, 4\]"):
        index.search(random_unit(1, 5, 0), 2)
    assert index.search(random_unit(1, 4, 0), 10)[1].shape == (1, 3)  # k is capped at the corpus size


def test_from_corpus_save_load_and_reuse(tmp_path, tiny_st, toy_corpus):
    r = Retriever(tiny_st)
    index = DenseIndex.from_corpus(r, toy_corpus, index_dir=tmp_path / "idx")
    assert r.num_encoded == len(toy_corpus)
    meta = json.loads((tmp_path / "idx" / "metadata.json").read_text())
    assert meta["dim"] == 32 and meta["ids"] == toy_corpus.ids and meta["model_fingerprint"] == r.fingerprint()
    assert meta["corpus_fingerprint"] == toy_corpus.fingerprint() and meta["normalized"] is True
    q = r.encode_queries(["what is the capital of france"])
    loaded = DenseIndex.load(tmp_path / "idx", retriever=r, corpus=toy_corpus)
    np.testing.assert_array_equal(loaded.search(q, 3)[1], index.search(q, 3)[1])
    # second run on the unchanged corpus: nothing encoded
    r2 = Retriever(tiny_st)
    again = DenseIndex.from_corpus(r2, toy_corpus, index_dir=tmp_path / "idx")
    assert r2.num_encoded == 0 and again.ids == index.ids
    # a changed corpus: the folder the user named is not overwritten unless asked; then it is re-encoded
    toy_corpus.texts[0] = "paris is a city"
    toy_corpus2 = type(toy_corpus)(toy_corpus.ids, toy_corpus.texts, toy_corpus.titles)
    r3 = Retriever(tiny_st)
    with pytest.raises(ValueError, match="another model/corpus/type"):
        DenseIndex.from_corpus(r3, toy_corpus2, index_dir=tmp_path / "idx")
    assert r3.num_encoded == 0
    DenseIndex.from_corpus(r3, toy_corpus2, index_dir=tmp_path / "idx", overwrite=True)
    assert r3.num_encoded == len(toy_corpus2)


def test_load_refuses_mismatches(tmp_path, tiny_st, toy_corpus):
    r = Retriever(tiny_st)
    DenseIndex.from_corpus(r, toy_corpus, index_dir=tmp_path / "idx")
    other = Retriever(build_tiny_retriever(tmp_path / "other", seed=1))
    with pytest.raises(ValueError, match="index built with model .* not with this retriever"):
        DenseIndex.load(tmp_path / "idx", retriever=other)
    small = Retriever(build_tiny_retriever(tmp_path / "small", hidden_size=16))
    with pytest.raises(ValueError, match="index dim 32 .* does not match the retriever's dim 16"):
        DenseIndex.load(tmp_path / "idx", retriever=small)
    changed = type(toy_corpus)(toy_corpus.ids, ["x"] * len(toy_corpus), toy_corpus.titles)
    with pytest.raises(ValueError, match="another corpus"):
        DenseIndex.load(tmp_path / "idx", corpus=changed)
    with pytest.raises(ValueError, match="score 'cos'"):
        DenseIndex.load(tmp_path / "idx", retriever=Retriever(tiny_st, score="dot"))


def test_load_refuses_corrupt_or_truncated_files(tmp_path, tiny_st, toy_corpus):
    DenseIndex.from_corpus(Retriever(tiny_st), toy_corpus, index_dir=tmp_path / "idx")
    path = tmp_path / "idx" / "index.faiss"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        DenseIndex.load(tmp_path / "idx")
    with pytest.raises(ValueError, match="cannot read the FAISS index"):
        DenseIndex.load(tmp_path / "idx", verify=False)
    (tmp_path / "idx" / "metadata.json").write_text("{oops")
    with pytest.raises(ValueError, match="corrupt metadata"):
        DenseIndex.load(tmp_path / "idx")
    with pytest.raises(ValueError, match="not a saved DenseIndex"):
        DenseIndex.load(tmp_path / "nothing")


def test_index_script_writes_a_reusable_index(tmp_path, tiny_retriever_dir, toy_corpus, toy_split):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import write_beir

    write_beir(tmp_path / "qa", toy_corpus, toy_split)
    cmd = [sys.executable, "examples/index.py", "--dataset", str(tmp_path / "qa"), "--retriever", tiny_retriever_dir,
           "--output_dir", str(tmp_path / "index")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[1]
    first = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout.strip().splitlines()[-1])["passages_encoded"] == len(toy_corpus)
    second = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    assert json.loads(second.stdout.strip().splitlines()[-1])["passages_encoded"] == 0
    assert {"index.faiss", "metadata.json"} <= {p.name for p in (tmp_path / "index").iterdir()}


def test_cached_index_goes_to_the_shared_cache_folder_and_is_reused(tmp_path, monkeypatch, tiny_st, toy_corpus):
    from trl_bporag.retrieval import DenseIndex, Retriever
    from trl_bporag.retrieval.index import default_index_dir

    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path / "cache"))
    r = Retriever(tiny_st)
    first = DenseIndex.cached(r, toy_corpus)
    folder = default_index_dir(r, toy_corpus)
    assert folder.is_relative_to(tmp_path / "cache") and (folder / "index.faiss").is_file()
    assert r.num_encoded == len(toy_corpus)
    again = DenseIndex.cached(Retriever(tiny_st), toy_corpus)
    assert again.ids == first.ids and again.metadata["model_fingerprint"] == first.metadata["model_fingerprint"]
    r2 = Retriever(tiny_st)
    DenseIndex.cached(r2, toy_corpus)
    assert r2.num_encoded == 0  # reused, not re-encoded
    DenseIndex.cached(r2, toy_corpus, index_dir=tmp_path / "elsewhere")  # an explicit folder wins
    assert (tmp_path / "elsewhere" / "index.faiss").is_file() and r2.num_encoded == len(toy_corpus)


def test_bf16_encoding_is_close_to_fp32_and_cached_apart(tiny_st, toy_corpus, tmp_path, monkeypatch):
    from trl_bporag.retrieval.index import default_index_dir

    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path))
    fp32, bf16 = Retriever(tiny_st), Retriever(tiny_st, dtype="bfloat16")
    a, b = fp32.encode_passages(toy_corpus.passages()), bf16.encode_passages(toy_corpus.passages())
    assert b.dtype == np.float32 and not np.array_equal(a, b)  # computed in bf16...
    assert np.min(np.sum(a * b, axis=1)) > 0.99  # ...and close (unit vectors: cosine)
    assert default_index_dir(bf16, toy_corpus) != default_index_dir(fp32, toy_corpus)
    assert DenseIndex.cached(bf16, toy_corpus).metadata["encode_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="dtype: expected 'auto', 'float32', 'bfloat16' or None"):
        Retriever(tiny_st, dtype="float16")


@pytest.mark.parametrize("prompts", [{}, {"query": "query: ", "document": "passage: "}])
def test_retriever_and_trainer_encode_the_same_way(tmp_path, tiny_st, prompts):
    """Serving (Retriever, the index) and training (SetDPOTrainer) encode through the model's own query / document
    prompts: a folder with prompts and one without."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from trl_bporag.trainers import SetDPOConfig, SetDPOTrainer

    tiny_st.prompts = dict(prompts)
    tiny_st.save(str(tmp_path / "model"))
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert (model.prompts.get("query") or None) == prompts.get("query")
    r = Retriever(model)
    q, p = r.encode_queries(["capital of france"]), r.encode_passages(["paris is the capital"])
    by_hand_q = model.encode([prompts.get("query", "") + "capital of france"], normalize_embeddings=True)
    by_hand_p = model.encode([prompts.get("document", "") + "paris is the capital"], normalize_embeddings=True)
    np.testing.assert_allclose(q, by_hand_q, atol=1e-5)
    np.testing.assert_allclose(p, by_hand_p, atol=1e-5)
    if prompts:  # the prompts matter: without them the embeddings differ
        assert not np.allclose(q, model.encode(["capital of france"], normalize_embeddings=True), atol=1e-4)
    pairs = Dataset.from_list([{"prompt": "capital of france", "chosen": ["a"], "rejected": ["b"]}])
    cfg = SetDPOConfig(output_dir=str(tmp_path / "out"), k=1, report_to=[], use_cpu=True, reference="free")
    trainer = SetDPOTrainer(model, args=cfg, train_dataset=pairs)
    trainer.model.eval()
    with torch.no_grad():
        tq = torch.nn.functional.normalize(trainer.scorer.encode(trainer.model, ["capital of france"], "query"), dim=-1)
        tp = torch.nn.functional.normalize(trainer.scorer.encode(trainer.model, ["paris is the capital"], "document"), dim=-1)
    np.testing.assert_allclose(tq.numpy(), q, atol=1e-5)
    np.testing.assert_allclose(tp.numpy(), p, atol=1e-5)
    # the prompts are part of the fingerprint, so indexes of the two kinds of folder are kept apart
    other = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    other.prompts = {} if prompts else {"query": "q: "}
    assert Retriever(other).fingerprint() != r.fingerprint()


@pytest.mark.parametrize("field", ["query_prompt", "passage_prompt"])
def test_retriever_refuses_a_prompt_that_is_not_a_string(tiny_st, field):
    with pytest.raises(ValueError, match=f"{field}: expected a string.*got dict"):
        Retriever(tiny_st, **{field: {"query": "query: "}})
