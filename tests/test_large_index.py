"""Factory-string indexes, the streaming sharded encoder and their checks (issue 36)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _tiny_retriever import WORDS, build_tiny_retriever
from trl_bporag import DenseIndex, Retriever
from trl_bporag.data import Corpus
from trl_bporag.retrieval import factory
from trl_bporag.retrieval.passages import iter_blocks, passage_fingerprint
from trl_bporag.retrieval.shards import ShardSet, encode_shards


def word_corpus(n: int, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    words = sorted(set(WORDS))
    texts = [" ".join(rng.choice(words, size=8)) for _ in range(n)]
    return Corpus(ids=[f"d{i}" for i in range(n)], texts=texts, titles=[words[i % len(words)] for i in range(n)])


def clustered(n: int, d: int = 32, centers: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def retriever(tiny_st):
    return Retriever(tiny_st, dtype="float32")


def test_chunked_flat_build_equals_the_one_shot_build(tmp_path, retriever):
    corpus = word_corpus(45)
    one_shot = DenseIndex(retriever.encode_passages(corpus.passages()), corpus.ids)
    shards = encode_shards(retriever, corpus, tmp_path / "shards", shard_size=7)
    assert len(shards.records) == 7 and [r["n"] for r in shards.records] == [7] * 6 + [3]
    chunked = DenseIndex(shards)  # filled shard by shard from the memory-mapped files
    queries = retriever.encode_queries(["capital of france", "river in spain", "old museum"])
    s1, ids1 = one_shot.search_ids(queries, 10)
    s2, ids2 = chunked.search_ids(queries, 10)
    assert ids1 == ids2
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)
    assert list(chunked.ids) == corpus.ids and chunked.ids[44] == "d44"


def test_streamed_sources_hash_and_read_like_the_corpus(tmp_path):
    import datasets

    corpus = word_corpus(12)
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                             for i, t, x in zip(corpus.ids, corpus.titles, corpus.texts)))
    datasets.Dataset.from_dict({"_id": corpus.ids, "title": corpus.titles, "text": corpus.texts}).save_to_disk(
        str(tmp_path / "arrow"))
    for source in (jsonl, tmp_path, tmp_path / "arrow"):
        assert passage_fingerprint(source) == corpus.fingerprint()
        assert passage_fingerprint(source, with_title=False) == corpus.fingerprint(False)
        blocks = list(iter_blocks(source, 5))
        assert [len(ids) for ids, _ in blocks] == [5, 5, 2]
        assert sum((texts for _, texts in blocks), []) == corpus.passages()
    jsonl.write_text('{"_id": "a", "text": 3}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:1: field 'text' of passage 'a'"):
        passage_fingerprint(jsonl)


def test_bad_factory_string_and_oversized_sample_name_their_flag():
    emb = clustered(300)
    ids = [str(i) for i in range(300)]
    with pytest.raises(ValueError, match=r"index_type \(--index_type\): FAISS cannot build the index_factory string 'IVF16,PQ7x' .*could "
                                         "not parse code description PQ7x"):
        DenseIndex(emb, ids, index_type="IVF16,PQ7x")
    with pytest.raises(ValueError, match=r"train_sample \(--train_sample\): 301 training passages asked for, but the corpus holds only "
                                         "300"):
        DenseIndex(emb, ids, index_type="IVF16,PQ8", train_sample=301)
    with pytest.raises(ValueError, match=r"train_sample \(--train_sample\): 'IVF64,PQ8' has 64 IVF lists"):
        DenseIndex(emb, ids, index_type="IVF64,PQ8", train_sample=40)
    with pytest.raises(ValueError, match=r"train_sample \(--train_sample\): FAISS cannot train 'IVF4,PQ8' on 100 "
                                         r"vectors \(Number of training points \(100\) should be at least"):
        DenseIndex(emb, ids, index_type="IVF4,PQ8", train_sample=100)  # 8-bit PQ codes: 256 centroids
    index = DenseIndex(emb, ids, index_type="IVF16,PQ8")
    with pytest.raises(ValueError, match="rescore: this index keeps no float32 vectors"):
        index.configure(rescore=20)
    with pytest.raises(ValueError, match=r"nprobe \(--nprobe\): expected an integer >= 1, got 0"):
        index.configure(nprobe=0)


def test_compressed_index_with_rescoring_returns_exact_scores(tmp_path):
    emb, queries = clustered(2000, seed=0), clustered(50, seed=1)
    ids = [f"p{i}" for i in range(2000)]
    exact_scores, exact_rows = DenseIndex(emb, ids).search(queries, 10)
    plain = DenseIndex(emb, ids, index_type="IVF16,PQ8", nprobe=4, train_sample=1000)
    assert plain.params["train_sample"] == 1000 and plain.params["nlist"] == 16
    p_scores, p_rows = plain.search(queries, 10)
    index = DenseIndex(emb, ids, index_type="IVF16,PQ8", nprobe=4, train_sample=1000, rescore=100)
    scores, rows = index.search(queries, 10)
    # re-scored: every returned score is the exact inner product, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, emb[rows]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_rows)])

    assert recall(rows) >= 0.95 and recall(rows) > recall(p_rows)
    assert not np.allclose(p_scores, exact_scores, atol=1e-3)  # PQ codes alone do not give exact scores
    index.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "vectors.npy").is_file()
    back = DenseIndex.load(tmp_path / "ix")
    assert back.index_type == "IVF16,PQ8" and back.params["rescore"] == 100 and back.params["nprobe"] == 4
    np.testing.assert_array_equal(back.search(queries, 10)[1], rows)
    np.save(tmp_path / "ix" / "vectors.npy", emb[:10])
    with pytest.raises(ValueError, match="vectors.npy: holds"):
        DenseIndex.load(tmp_path / "ix")


def test_sharded_factory_index_is_reused_and_searched_from_shards(tmp_path, retriever):
    corpus = word_corpus(120)
    kw = {"index_type": "IVF4,SQ8", "shard_size": 50, "rescore": 30, "nprobe": 4}
    index = DenseIndex.from_corpus(retriever, corpus, index_dir=tmp_path / "ix", **kw)
    assert retriever.num_encoded == 120 and len(index) == 120
    meta = json.loads((tmp_path / "ix" / "metadata.json").read_text())
    assert "ids" not in meta and meta["shards_fingerprint"] and meta["index_type"] == "IVF4,SQ8"
    before = retriever.num_encoded
    again = DenseIndex.from_corpus(retriever, corpus, index_dir=tmp_path / "ix", **{**kw, "rescore": 60})
    assert retriever.num_encoded == before and again.params["rescore"] == 60  # nothing encoded; search params apply
    q = retriever.encode_queries(["capital of france"])
    exact = DenseIndex(retriever.encode_passages(corpus.passages()), corpus.ids)
    assert again.search_ids(q, 5)[1] == exact.search_ids(q, 5)[1]
    again.check_compatible(retriever, corpus)
    other = Retriever(build_tiny_retriever(tmp_path / "other", seed=3), dtype="float32")
    with pytest.raises(ValueError, match="not with this retriever"):
        DenseIndex.load(tmp_path / "ix", retriever=other)
    with pytest.raises(ValueError, match="holds shards of another retriever"):
        encode_shards(other, corpus, tmp_path / "ix" / "shards", shard_size=50)
    # the index refuses shards that are not the ones it was built from
    encode_shards(retriever, word_corpus(120, seed=5), tmp_path / "ix" / "shards", shard_size=50)
    with pytest.raises(ValueError, match="not the ones the index was built from"):
        DenseIndex.load(tmp_path / "ix")


def test_an_edited_corpus_re_encodes_from_its_first_changed_shard(tmp_path, retriever):
    corpus = word_corpus(30)
    encode_shards(retriever, corpus, tmp_path / "s", shard_size=10)
    edited = Corpus(ids=corpus.ids, texts=corpus.texts[:25] + ["new text"] * 5, titles=corpus.titles)
    before = retriever.num_encoded
    shards = encode_shards(retriever, edited, tmp_path / "s", shard_size=10)
    assert (shards.reused, shards.encoded, retriever.num_encoded - before) == (2, 1, 10)
    np.testing.assert_allclose(shards.vectors(np.arange(30)), retriever.encode_passages(edited.passages()),
                               atol=1e-6)
    shorter = encode_shards(retriever, Corpus(ids=corpus.ids[:12], texts=corpus.texts[:12],
                                              titles=corpus.titles[:12]), tmp_path / "s", shard_size=10)
    assert len(shorter) == 12 and not (tmp_path / "s" / "shard-00002.npy").exists()


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, "tests")
    from test_large_index import word_corpus
    from trl_bporag import Retriever
    from trl_bporag.retrieval.shards import encode_shards

    def die(j):
        if j == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: as an OOM kill or a pulled plug

    encode_shards(Retriever(sys.argv[1], dtype="float32"), word_corpus(50), sys.argv[2], shard_size=10, on_shard=die)
""")


def test_a_killed_encoding_resumes_at_the_next_shard(tmp_path, tiny_retriever_dir, tiny_st):
    folder = tmp_path / "shards"
    res = subprocess.run([sys.executable, "-c", KILLED_RUN, tiny_retriever_dir, str(folder), "2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr[-2000:]
    record = json.loads((folder / "shards.json").read_text())
    assert len(record["shards"]) == 3 and not record["complete"]
    with pytest.raises(ValueError, match="the encoding was interrupted"):
        ShardSet(folder)
    retriever = Retriever(tiny_st, dtype="float32")
    shards = encode_shards(retriever, word_corpus(50), folder, shard_size=10)
    assert (shards.reused, shards.encoded, retriever.num_encoded) == (3, 2, 20)  # only shards 3 and 4
    np.testing.assert_allclose(shards.vectors(np.arange(50)), retriever.encode_passages(word_corpus(50).passages()),
                               atol=1e-6)
    done = encode_shards(retriever, word_corpus(50), folder, shard_size=10)
    assert (done.reused, done.encoded) == (5, 0)


def test_pool_encoding_equals_one_process(tmp_path, retriever):
    corpus = word_corpus(24)
    one = encode_shards(retriever, corpus, tmp_path / "one", shard_size=10)
    pool = encode_shards(retriever, corpus, tmp_path / "pool", shard_size=10, devices=["cpu", "cpu"])
    np.testing.assert_allclose(pool.vectors(np.arange(24)), one.vectors(np.arange(24)), atol=1e-5)
    assert pool.manifest["encode_dtype"] is None
    with pytest.raises(ValueError, match="encode_devices: expected a list"):
        encode_shards(retriever, corpus, tmp_path / "bad", devices="cpu")


def test_lazy_corpus_needs_a_folder(tmp_path, retriever):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "a", "text": "paris"}) + "\n")
    with pytest.raises(ValueError, match="index_dir: a corpus read lazily"):
        DenseIndex.from_corpus(retriever, tmp_path / "corpus.jsonl")
    index = DenseIndex.from_corpus(retriever, tmp_path / "corpus.jsonl", index_dir=tmp_path / "ix")
    assert list(index.ids) == ["a"] and index.metadata["corpus_fingerprint"] == passage_fingerprint(
        tmp_path / "corpus.jsonl")


def test_sample_rows_draws_without_replacement_in_one_pass():
    array = np.arange(100, dtype=np.float32)[:, None]
    rows = factory.sample_rows(factory.array_chunks(array, 7), 100, 30, seed=1)
    assert rows.shape == (30, 1) and len(set(rows[:, 0].tolist())) == 30
    assert factory.default_train_sample(factory.new_index("IVF8,Flat", 4), 50) == 50


def test_bad_index_flags_are_refused_before_any_passage_is_encoded(tmp_path, retriever):
    corpus = word_corpus(20)
    with pytest.raises(ValueError, match=r"index_type \(--index_type\)"):
        DenseIndex.from_corpus(retriever, corpus, index_dir=tmp_path / "a", index_type="IVF4,PQ5")  # 32 % 5 != 0
    with pytest.raises(ValueError, match=r"train_sample \(--train_sample\): 21 training passages"):
        DenseIndex.from_corpus(retriever, corpus, index_dir=tmp_path / "b", index_type="IVF4,Flat", train_sample=21)
    assert retriever.num_encoded == 0


def test_index_command_streams_a_corpus_file_into_shards(tmp_path, tiny_retriever_dir):
    from trl_bporag.scripts.index import main, parse

    corpus = word_corpus(40)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                            for i, t, x in zip(corpus.ids, corpus.titles, corpus.texts)))
    flags = ["--corpus", str(path), "--retriever", tiny_retriever_dir, "--index_type", "IVF2,SQ8", "--rescore", "20",
             "--shard_size", "16", "--output_dir", str(tmp_path / "ix")]
    index = main(*parse(flags))
    assert len(index) == 40 and index.params["rescore"] == 20
    assert sorted(p.name for p in (tmp_path / "ix" / "shards").glob("shard-*[0-9].npy")) == [
        "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    again = main(*parse(flags))
    assert again.metadata["corpus_fingerprint"] == corpus.fingerprint()
    with pytest.raises(ValueError, match="--dataset / --corpus: pass exactly one"):
        main(*parse(flags + ["--dataset", str(tmp_path)]))


def test_builders_and_pipeline_run_unchanged_on_a_sharded_compressed_index(tmp_path, retriever):
    from test_rpo_builder import make_corpus
    from trl_bporag import RAGPipeline
    from trl_bporag.data import QASplit
    from trl_bporag.preferences import RetrievalPreferenceBuilder

    corpus = make_corpus(60)
    split = QASplit(ids=["q0", "q1"], questions=["what is the capital of france", "what is the capital of italy"],
                    answers=[["paris"], ["rome"]], gold_ids=[["p00"], ["p01"]])
    flat = DenseIndex.from_corpus(retriever, corpus)
    sharded = DenseIndex.from_corpus(retriever, corpus, index_dir=tmp_path / "ix", index_type="IVF4,PQ4x4",
                                     shard_size=25, rescore=60, nprobe=4)
    pairs = {}
    for name, index in (("flat", flat), ("sharded", sharded)):
        builder = RetrievalPreferenceBuilder(retriever, index, corpus, judge="answer_hit", k=3, top_n=50,
                                             num_perturbations=4, seed=0)
        pairs[name] = builder.build(split).to_list()
    assert pairs["sharded"] == pairs["flat"] and pairs["flat"]  # re-scored top-50 = exact top-50 here
    pipe = RAGPipeline(retriever, DenseIndex.load(tmp_path / "ix", retriever=retriever, corpus=corpus), corpus, k=3)
    assert pipe.retrieve(split.questions)[0] == RAGPipeline(retriever, flat, corpus, k=3).retrieve(split.questions)[0]


def test_rescoring_in_query_batches_gives_the_same_lists(monkeypatch):
    from trl_bporag.retrieval import index as index_module

    emb, queries = clustered(1500, seed=2), clustered(30, seed=3)
    index = DenseIndex(emb, [f"p{i}" for i in range(1500)], index_type="IVF8,PQ8", nprobe=8, rescore=50)
    whole = index.search(queries, 10)
    monkeypatch.setattr(index_module, "RESCORE_ROWS", 120)  # 2 queries per batch
    batched = index.search(queries, 10)
    np.testing.assert_array_equal(batched[1], whole[1])
    np.testing.assert_allclose(batched[0], whole[0], atol=1e-6)
