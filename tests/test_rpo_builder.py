import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from baselines import UncachedRetrievalPreferenceBuilder
from datasets import load_from_disk

from conftest import run_two, write_beir
from trl_bporag import load_generator
from trl_bporag.data import Corpus, QASplit
from trl_bporag.preferences import RetrievalPreferenceBuilder, answer_hit_judge, get_judge
from trl_bporag.retrieval import DenseIndex, Retriever

REPO = Path(__file__).resolve().parents[1]
FILL = "random filler text passage noise old new large small famous museum tower bridge war peace music art".split()


def make_corpus(n=40, seed=0):
    rng = np.random.default_rng(seed)
    cities = [("paris", "france"), ("rome", "italy"), ("berlin", "germany"), ("madrid", "spain"),
              ("london", "england")]
    ids, texts = [], []
    for i in range(n):
        if i < len(cities):
            texts.append(f"{cities[i][0]} is the capital of {cities[i][1]}")
        else:
            texts.append(" ".join(rng.choice(FILL, 6)) + f" {cities[i % 5][1]}")
        ids.append(f"p{i:02d}")
    return Corpus(ids, texts, [f"T{i}" for i in range(n)])


@pytest.fixture
def setup(tiny_st):
    corpus = make_corpus()
    r = Retriever(tiny_st)
    index = DenseIndex.from_corpus(r, corpus)
    split = QASplit(
        ids=[f"q{i}" for i in range(5)],
        questions=["what is the capital of france", "what is the capital of italy", "what is the capital of germany",
                   "what is the capital of spain", "what is the capital of england"],
        answers=[["paris"], ["rome"], ["berlin"], ["madrid"], ["london"]],
        gold_ids=[[f"p{i:02d}"] for i in range(5)],
    )
    return r, index, corpus, split


def test_perturbations(setup):
    r, index, corpus, _ = setup
    b = RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", k=5, top_n=20, noise_rate=0.2)
    ranked, extra = list(range(20)), list(range(20, 40))
    rng = np.random.default_rng(0)
    dropped = b.perturb("drop", ranked, rng, extra)
    assert len(dropped) >= 5 and dropped == sorted(dropped) and set(dropped) < set(ranked)
    shuffled = b.perturb("shuffle", ranked, rng, extra)
    assert sorted(shuffled) == ranked and shuffled != ranked
    noisy = b.perturb("noise", ranked, rng, extra)
    assert len(noisy) == 24 and set(noisy) - set(ranked) and all(x not in ranked for x in set(noisy) - set(ranked))
    hard = b.perturb("hard_noise", ranked, rng, extra)
    assert set(hard) - set(ranked) <= set(extra) and len(hard) == 24
    for _ in range(20):
        swapped = b.perturb("swap_one", ranked, rng, extra)
        assert len(set(swapped[:5]) ^ set(ranked[:5])) == 2  # exactly one passage in, one out
        assert sorted(swapped) == ranked
        one = b.perturb("drop_one", ranked, rng, extra)
        assert set(one[:5]) - set(ranked[:5]) == {5} and len(one) == 19


def test_pairs_have_different_windows_and_scores(setup):
    r, index, corpus, split = setup
    b = RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", k=3, top_n=20, num_perturbations=6,
                                   pairing="vs_original")
    ds = b.build(split)
    stats = b.describe()["stats"]
    assert stats["queries"] == 5 and stats["lists"] == 35
    assert stats["pairs"] == len(ds) > 0
    # vs_original: 6 comparisons per query, each a pair, a tie, a degenerate or a duplicate
    assert stats["pairs"] + stats["ties"] + stats["degenerate"] + stats["duplicates"] == 30
    for row in ds:
        assert row["chosen_score"] > row["rejected_score"]
        assert set(row["chosen_ids"]) != set(row["rejected_ids"]) and len(row["chosen"]) == 3
        assert row["chosen"] == [corpus.passage(corpus.index_of(p)) for p in row["chosen_ids"]]
        golds = split.answers[split.ids.index(row["query_id"])]
        assert row["chosen_score"] == pytest.approx(answer_hit_judge([row["prompt"]], [golds], [row["chosen"]])[0])
    assert set(ds.column_names) >= {"prompt", "chosen", "rejected", "chosen_ids", "rejected_ids", "perturbation"}


def test_degenerate_and_ties_are_counted_not_emitted(setup):
    r, index, corpus, split = setup
    # shuffle of a list whose window is kept: make windows equal by k = top_n - 1 and shuffling only... use a judge
    # that always ties: nothing is emitted, every non-degenerate comparison is a tie.
    b = RetrievalPreferenceBuilder(r, index, corpus, judge=lambda q, a, w: [0.5] * len(w), k=3, top_n=20,
                                   perturbations=["drop_one", "shuffle"], num_perturbations=4, pairing="vs_original")
    ds = b.build(split)
    stats = b.describe()["stats"]
    assert len(ds) == 0 and stats["pairs"] == 0 and stats["ties"] + stats["degenerate"] == 20 and stats["ties"] >= 10
    # a judge that distinguishes every window: degenerate comparisons (same first-k set) are still dropped
    b2 = RetrievalPreferenceBuilder(r, index, corpus, judge=lambda q, a, w: [float(hash(tuple(x))) for x in w], k=19,
                                    top_n=20, perturbations=["shuffle"], num_perturbations=3, pairing="vs_original")
    b2.build(split)
    # the window (19 of 20) changes set only when the shuffle moves the 20th passage into it
    s2 = b2.describe()["stats"]
    assert s2["degenerate"] + s2["pairs"] + s2["ties"] + s2["duplicates"] == 15


def test_seeded_and_reproducible(setup):
    r, index, corpus, split = setup
    kw = dict(judge="answer_hit", k=3, top_n=20, perturbations="mixed", num_perturbations=5)
    a = RetrievalPreferenceBuilder(r, index, corpus, seed=1, **kw).build(split)
    b = RetrievalPreferenceBuilder(r, index, corpus, seed=1, query_batch_size=2, **kw).build(split)
    assert a.to_list() == b.to_list()  # batch size does not matter
    c = RetrievalPreferenceBuilder(r, index, corpus, seed=2, **kw).build(split)
    assert a.to_list() != c.to_list()


def test_generator_judge_caches_identical_windows(setup, tiny_generator_dir):
    from trl_bporag.generation import build_prompt, generate

    r, index, corpus, split = setup
    gen, tok = load_generator(tiny_generator_dir)
    kw = dict(judge="generator_f1", k=2, top_n=10, perturbations=["drop_one", "swap_one"], num_perturbations=6,
              max_new_tokens=3, pairing="vs_original", answer_prefix=None)
    # make the judge discriminate: the gold answer of each query is what the generator says for one window
    windows = [[0, 1], [2, 3], [0, 1], [4, 5]]
    questions = [split.questions[0]] * 4
    settings = RetrievalPreferenceBuilder(r, index, corpus, gen, tok, **kw).settings  # the prompt the judge uses
    said = generate(gen, tok, [build_prompt(tok, questions[0], [corpus.passage(i) for i in w],
                                            settings.max_passage_tokens, settings.system_prompt,
                                            settings.answer_prefix) for w in windows[:2]],
                    max_new_tokens=3, stop=settings.stop)
    assert said[0] != said[1]
    answers = [[said[0]]] * 4
    cached = RetrievalPreferenceBuilder(r, index, corpus, gen, tok, **kw)
    scores = cached.judge_windows(questions, answers, windows)
    assert cached.stats["generations"] == 3  # the repeated window is generated once
    assert scores[0] == scores[2] == 1.0 and scores[1] < 1.0
    naive = UncachedRetrievalPreferenceBuilder(r, index, corpus, gen, tok, **kw)
    assert naive.judge_windows(questions, answers, windows) == scores
    assert naive.stats["generations"] == 4
    # whole builds: same pairs, fewer generations with the cache
    cached = RetrievalPreferenceBuilder(r, index, corpus, gen, tok, **kw)
    naive = UncachedRetrievalPreferenceBuilder(r, index, corpus, gen, tok, **kw)
    ds, ds_naive = cached.build(split), naive.build(split)
    assert ds.to_list() == ds_naive.to_list()
    assert naive.stats["generations"] == 35 and cached.stats["generations"] < 35
    with pytest.raises(ValueError, match="generator_f1' needs generator"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="generator_f1", top_n=20)


def test_resume_after_interruption(setup, tmp_path):
    r, index, corpus, split = setup
    kw = dict(judge="answer_hit", k=3, top_n=20, num_perturbations=4, query_batch_size=1)
    full = RetrievalPreferenceBuilder(r, index, corpus, **kw).build(split, output_dir=tmp_path / "a")
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["stats"]["pairs"] == len(full)
    assert load_from_disk(str(tmp_path / "a")).to_list() == full.to_list()
    # simulate a kill after 2 queries, the last line half written
    shard = tmp_path / "a" / "shards" / "rank0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:2]) + lines[2][:15])
    again = RetrievalPreferenceBuilder(r, index, corpus, **kw)
    resumed = again.build(split, output_dir=tmp_path / "a")
    assert resumed.to_list() == full.to_list()  # nothing lost or duplicated
    fresh = RetrievalPreferenceBuilder(r, index, corpus, **kw)
    fresh.build(split)
    assert 0 < again.stats["windows_judged"] < fresh.stats["windows_judged"]  # only the 3 unfinished queries
    assert again.describe()["stats"]["pairs"] == len(full)
    other = RetrievalPreferenceBuilder(r, index, corpus, **{**kw, "num_perturbations": 2})
    with pytest.raises(ValueError, match="another builder configuration"):
        other.build(split, output_dir=tmp_path / "a")
    restarted = other.build(split, output_dir=tmp_path / "a", resume=False)  # an explicit restart works
    assert restarted.to_list() == RetrievalPreferenceBuilder(r, index, corpus, **{**kw, "num_perturbations": 2}).build(
        split).to_list()


def test_input_errors(setup):
    r, index, corpus, split = setup
    with pytest.raises(ValueError, match="perturbations: unknown"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", perturbations=["explode"], top_n=20)
    with pytest.raises(ValueError, match="perturbations: expected a recipe"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", perturbations="chaos", top_n=20)
    with pytest.raises(ValueError, match="k: expected 1 <= k < top_n"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", k=20, top_n=20)
    with pytest.raises(ValueError, match="top_n: 50 exceeds the corpus size 40"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit")
    with pytest.raises(ValueError, match="judge: expected one of"):
        get_judge("bleu")
    with pytest.raises(ValueError, match="pairing"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", top_n=20, pairing="random")


def test_one_and_two_processes_give_the_same_pairs(setup, tmp_path, tiny_retriever_dir):
    _, _, corpus, split = setup
    write_beir(tmp_path / "data", corpus, split, "train")
    base = ["examples/build_rpo_pairs.py", "--dataset", str(tmp_path / "data"), "--retriever", tiny_retriever_dir,
            "--judge", "answer_hit", "--k", "3", "--top_n", "20", "--perturbations", "mixed",
            "--num_perturbations", "5", "--index_dir", str(tmp_path / "index")]
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRL_BPORAG_CPU_BF16": "0", "PATH": __import__("os").environ["PATH"]}
    subprocess.run([sys.executable, *base, "--output_dir", str(tmp_path / "one")], cwd=REPO, check=True,
                   capture_output=True, env=env)
    two = run_two(*base, "--output_dir", str(tmp_path / "two"), outputs=[tmp_path / "two"], cwd=REPO, env=env)
    assert two.returncode == 0, two.rank_errors + two.stderr[-2000:]
    assert len(list((tmp_path / "two" / "shards").glob("rank*.jsonl"))) == 2  # both processes did work
    one_ds, two_ds = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "two"))
    assert one_ds.num_rows > 0 and one_ds.to_list() == two_ds.to_list()


def test_listwise_rows_hold_every_distinct_window_and_its_score(setup):
    r, index, corpus, split = setup
    pairwise = RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", k=3, top_n=10, num_perturbations=6,
                                          pairing="vs_original")
    listwise = RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", k=3, top_n=10, num_perturbations=6,
                                          pairing="listwise")
    pairs, rows = pairwise.build(split), listwise.build(split)
    assert set(rows.column_names) == {"prompt", "lists", "list_ids", "list_scores", "perturbations", "query_id"}
    for row in rows:
        windows = [frozenset(w) for w in row["list_ids"]]
        assert len(set(windows)) == len(windows) >= 2 and len(set(row["list_scores"])) >= 2
        for ids, score in zip(row["list_ids"], row["list_scores"]):  # the judge's score of that window
            texts = [corpus.passage(corpus.ids.index(i)) for i in ids]
            assert score == pytest.approx(answer_hit_judge([row["prompt"]], [split.answers[split.ids.index(
                row["query_id"])]], [texts])[0])
        assert row["perturbations"][0] == "original"
    # every pairwise pair of a query is a (chosen, rejected) combination of that query's listwise windows
    by_query = {row["query_id"]: {frozenset(w): s for w, s in zip(row["list_ids"], row["list_scores"])}
                for row in rows}
    for p in pairs:
        scores = by_query[p["query_id"]]
        assert scores[frozenset(p["chosen_ids"])] > scores[frozenset(p["rejected_ids"])]


def test_answer_likelihood_judge_scores_windows_with_the_generator(setup, tiny_generator_dir):
    from trl_bporag.likelihood import answer_log_likelihood

    r, index, corpus, split = setup
    model, tok = load_generator(tiny_generator_dir)
    b = RetrievalPreferenceBuilder(r, index, corpus, model, tok, judge="answer_likelihood", k=2, top_n=6,
                                   num_perturbations=2, max_passage_tokens=16, pairing="vs_original")
    rows = b.build(split.head(2))
    assert len(rows) > 0 and b.describe()["stats"]["ties"] == 0  # a graded judge: no ties
    for row in rows:
        answers = split.answers[split.ids.index(row["query_id"])]
        expect = answer_log_likelihood(model, tok, [row["prompt"]] * 2, [row["chosen"], row["rejected"]],
                                       [answers] * 2, max_passage_tokens=16)
        assert [row["chosen_score"], row["rejected_score"]] == pytest.approx(expect, abs=1e-4)
    with pytest.raises(ValueError, match="answer_likelihood"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="answer_likelihood", top_n=6)


def test_qrels_judge_is_ndcg_of_the_window_against_the_gold_passages():
    import math

    from trl_bporag.preferences import qrels_judge

    scores = qrels_judge([["a"], ["a", "b"], ["a"], ["a", "b"]], [["a", "x"], ["x", "a"], ["x", "y"], ["b", "a"]])
    assert scores[0] == 1.0 and scores[2] == 0.0 and scores[3] == pytest.approx(1.0)
    assert scores[1] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    with pytest.raises(ValueError, match="without gold passages"):
        qrels_judge([[]], [["a"]])


def _strip_answers(folder: Path) -> None:
    rows = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": r["_id"], "text": r["text"]}) + "\n"
                                                  for r in rows))


def test_rpo_runs_on_a_beir_set_with_qrels_and_no_answers(setup, tmp_path, tiny_retriever_dir):
    from trl_bporag import load_rag_dataset

    r, index, corpus, split = setup
    folder = write_beir(tmp_path / "beir", corpus, split, "train")
    _strip_answers(folder)
    with pytest.raises(ValueError, match=r"queries.jsonl:1: missing field 'answers' \(a BEIR set without answers: "
                                         r"load it with require_answers=False"):
        load_rag_dataset(str(folder), "train")
    data = load_rag_dataset(str(folder), "train", require_answers=False)
    assert data.split.answers == [[]] * 5 and not data.split.has_answers and data.split.has_gold_passages
    with pytest.raises(ValueError, match=r"split.answers\[0\].*non-empty list of answers"):
        RetrievalPreferenceBuilder(r, index, corpus, judge="answer_hit", k=2, top_n=8).build(data.split)
    builder = RetrievalPreferenceBuilder(r, index, corpus, judge="qrels", k=2, top_n=8, num_perturbations=4)
    rows = builder.build(data.split)
    assert len(rows) > 0 and builder.describe()["config"]["judge"] == "qrels"
    for row in rows:  # a window holding the query's gold passage is judged above one without it
        gold = corpus.passage(corpus.index_of(split.gold_ids[split.questions.index(row["prompt"])][0]), True)
        holds = [gold in window for window in row["lists"]]
        for has, score in zip(holds, row["list_scores"]):
            assert (score > 0) == has
    # the script on the same folder, then retrieval-only evaluation (no answers needed), per-query values for CIs
    out = subprocess.run([sys.executable, "examples/build_rpo_pairs.py", "--dataset", str(folder), "--split", "train",
                          "--retriever", tiny_retriever_dir, "--judge", "qrels", "--k", "2", "--top_n", "8",
                          "--output_dir", str(tmp_path / "pairs"), "--index_dir", str(tmp_path / "index")],
                         cwd=REPO, capture_output=True, text=True,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(load_from_disk(str(tmp_path / "pairs"))) > 0
    from trl_bporag.pipeline import RAGPipeline

    pipe = RAGPipeline.from_pretrained(retriever=tiny_retriever_dir, generator=None, corpus=data.corpus, k=2,
                                       cache_index=False)
    result = pipe.evaluate(data.split, ks=(1, 2), generate_answers=False)
    assert set(result["per_query"]) == {"recall@1", "recall@2"} and len(result["per_query"]["recall@1"]) == 5
