"""GPO: GenerationPreferenceBuilder, seeded sampling, TRL DPOTrainer on its rows, the adapter card and the pipeline."""

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from baselines import PerAnswerGenerationPreferenceBuilder
from datasets import Dataset, load_from_disk

from _tiny_generator import build_tiny_generator
from test_rpo_builder import make_corpus
from trl_bporag import RAGPipeline, load_generator
from trl_bporag.artifacts import read_bporag_config
from trl_bporag.data import QASplit
from trl_bporag.generation import build_prompt, generate, generate_candidates
from trl_bporag.preferences import GenerationPreferenceBuilder, check_dpo_lengths
from trl_bporag.retrieval import DenseIndex, Retriever

REPO = Path(__file__).resolve().parents[1]
CITIES = [("paris", "france"), ("rome", "italy"), ("berlin", "germany"), ("madrid", "spain"), ("london", "england")]


def make_split(n=10):
    qs = [(f"what is the capital of {c}", a) for a, c in CITIES] + [(f"which city is in {c} ?", a) for a, c in CITIES]
    qs = qs[:n]
    return QASplit(ids=[f"q{i}" for i in range(len(qs))], questions=[q for q, _ in qs], answers=[[a] for _, a in qs],
                   gold_ids=[[f"p{i % 5:02d}"] for i in range(len(qs))])


@pytest.fixture
def parts(tiny_st, tiny_generator_dir):
    corpus = make_corpus()
    r = Retriever(tiny_st)
    index = DenseIndex.from_corpus(r, corpus)
    gen, tok = load_generator(tiny_generator_dir)
    return r, index, corpus, gen, tok


def word_judge(prediction, answers):
    """A judge with many distinct values on the tiny model's random words: the fraction of 'a'-free words."""
    words = prediction.split()
    return sum("a" not in w for w in words) / max(len(words), 1)


def builder(parts, cls=GenerationPreferenceBuilder, **kw):
    r, index, corpus, gen, tok = parts
    kw.setdefault("judge", word_judge)
    kw.setdefault("num_beams", 2)
    kw.setdefault("num_samples", 1)
    kw.setdefault("answer_prefix", None)  # conversational rows (these tests are about them; the prefix has its own)
    return cls(r, index, corpus, gen, tok, k=3, max_new_tokens=6,
                                       batch_size=4, query_batch_size=4, **kw)


def test_sampling_with_seeds_does_not_depend_on_the_batch(tiny_generator_dir):
    gen, tok = load_generator(tiny_generator_dir)
    prompts = [build_prompt(tok, q, ["paris is the capital of france"]) for q in
               ("what is the capital of france", "who is the capital of italy ? the answer", "where")]
    kw = dict(max_new_tokens=6, do_sample=True, num_return_sequences=2)
    a = generate(gen, tok, prompts, batch_size=3, sample_seeds=[1, 2, 3], **kw)
    b = generate(gen, tok, prompts, batch_size=1, sample_seeds=[1, 2, 3], **kw)
    c = generate(gen, tok, prompts[1:], batch_size=2, sample_seeds=[2, 3], **kw)
    d = generate(gen, tok, prompts, batch_size=3, sample_seeds=[4, 5, 6], **kw)
    assert a == b and a[1:] == c
    assert a != d  # other seeds, other draws
    assert all(len(x) == 2 for x in a) and any(x[0] != x[1] for x in a)
    with pytest.raises(ValueError, match="sample_seeds"):
        generate(gen, tok, prompts, sample_seeds=[1], do_sample=True)


def test_seeded_gumbel_sampling_matches_the_softmax():
    from trl_bporag.generation import SeededGumbelSampling

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(4)
    for s in range(4000):
        counts[SeededGumbelSampling([s]).__call__(None, logits.clone()).argmax()] += 1
    expected = torch.softmax(logits[0], -1)
    assert torch.allclose(counts / counts.sum(), expected, atol=0.03)
    # top_p=0.5 keeps only the most likely token (p=0.64)
    picks = {int(SeededGumbelSampling([s], top_p=0.5)(None, logits.clone()).argmax()) for s in range(200)}
    assert picks == {0}


def test_builder_rows_stats_and_reproducibility(parts, tmp_path):
    split = make_split()
    b = builder(parts, num_samples=2)
    pairs = b.build(split, output_dir=tmp_path / "pairs")
    stats = b.describe()["stats"]
    assert stats["queries"] == 10
    assert stats["pairs"] == len(pairs) > 0
    assert stats["pairs"] + stats["ties"] + stats["identical"] == 10  # best_worst: one outcome per query
    assert stats["generations"] == 10 * 3
    row = pairs[0]
    assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
    assert "Question: " in row["prompt"][-1]["content"] and "Passage 3:" in row["prompt"][-1]["content"]
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    assert len(row["passage_ids"]) == 3
    for r in pairs:
        assert r["chosen_f1"] > r["rejected_f1"]
        assert word_judge(r["chosen"][0]["content"], None) == pytest.approx(r["chosen_f1"])
        assert {r["chosen_source"], r["rejected_source"]} <= {"beam", "sample_0", "sample_1"}
    saved = load_from_disk(str(tmp_path / "pairs"))
    assert saved.to_list() == pairs.to_list()
    meta = json.loads((tmp_path / "pairs" / "stats.json").read_text())
    assert meta["config"]["k"] == 3 and meta["config"]["retriever"] is not None
    # the same seed gives the same pairs whatever the batch sizes; another seed changes the samples
    again = builder(parts, num_samples=2)
    again.batch_size, again.query_batch_size = 3, 7
    assert again.build(split).to_list() == pairs.to_list()
    other = builder(parts, num_samples=2, seed=1).build(split)
    assert other.to_list() != pairs.to_list()


def test_unbatched_baseline_gives_the_same_pairs(parts):
    split = make_split(6)
    fast = builder(parts, num_samples=2).build(split)
    assert len(fast) > 0
    for per_answer in (True, False):  # one generate per answer; two batched calls
        other = builder(parts, num_samples=2, cls=PerAnswerGenerationPreferenceBuilder, per_answer=per_answer)
        assert other.build(split).to_list() == fast.to_list()


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("num_beams,num_samples,share_prefixes", [(1, 1, True), (2, 1, False), (3, 2, True),
                                                                  (2, 0, True)])
def test_generate_candidates_reads_each_prompt_once_and_matches_generate(tiny_generator_dir, num_beams, num_samples,
                                                                          share_prefixes):
    gen, tok = load_generator(tiny_generator_dir)
    prompts = [build_prompt(tok, q, ["paris is the capital of france", "rome is in italy"]) for q in
               ("what is the capital of france", "who is the capital of italy ? the answer", "where")]
    prompts.append(build_prompt(tok, "where", ["berlin is in germany"]))  # shares only the system prompt
    seeds = [11, 12, 13, 14]
    beam_kw = {"num_beams": num_beams} if num_beams > 1 else {}
    tokens = []  # (rows, positions) of every forward pass through the decoder
    hook = gen.model.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.append(tuple(kwargs["input_ids"].shape if kwargs.get("input_ids")
                                                         is not None else kwargs["inputs_embeds"].shape[:2])),
        with_kwargs=True)
    beams = generate(gen, tok, prompts, batch_size=4, max_new_tokens=6, **beam_kw)
    samples = generate(gen, tok, prompts, batch_size=4, max_new_tokens=6, do_sample=True, top_p=0.9,
                       num_return_sequences=max(num_samples, 1), sample_seeds=seeds)
    two_calls_prefill = sum(r * n for r, n in tokens if n > 1)
    tokens.clear()
    stats = {}
    got_beams, got_samples = generate_candidates(gen, tok, prompts, seeds, num_beams=num_beams,
                                                 num_samples=num_samples, batch_size=4, max_new_tokens=6, top_p=0.9,
                                                 share_prefixes=share_prefixes, stats=stats)
    hook.remove()
    assert got_beams == beams
    if num_samples == 0:
        assert got_samples == [[] for _ in prompts]
    else:
        assert got_samples == (samples if num_samples > 1 else [[s] for s in samples])
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # one prefill per prompt, unpadded, of all its tokens but the last; with share_prefixes (prompts in token order)
    # only what a prompt does not share with the one before it
    if share_prefixes:
        bodies = [t[:-1] for t in sorted(ids)]
        reads = [len(b) - (_common_prefix(b, bodies[n - 1]) if n else 0) for n, b in enumerate(bodies)]
        assert min(reads) < min(len(b) for b in bodies)  # something was shared
    else:
        reads = [len(t) - 1 for t in sorted(ids, key=len, reverse=True)]
    assert tokens[: len(prompts)] == [(1, n) for n in reads]
    assert all(n == 1 for _, n in tokens[len(prompts) :])  # then one token per row and step
    assert stats == {"prompt_tokens": sum(map(len, ids)), "prefilled_tokens": sum(reads)}
    assert two_calls_prefill >= (num_beams + max(num_samples, 1)) * sum(map(len, ids))
    assert generate_candidates(gen, tok, prompts, seeds, num_beams=num_beams, num_samples=num_samples,
                               batch_size=1, max_new_tokens=6, top_p=0.9,
                               share_prefixes=share_prefixes) == (got_beams, got_samples)


def test_ties_are_counted_and_not_emitted(parts, caplog):
    split = make_split(4)
    b = builder(parts, judge=lambda prediction, answers: 0.5)
    with caplog.at_level(logging.WARNING):
        pairs = b.build(split)
    assert len(pairs) == 0
    assert b.stats["ties"] + b.stats["identical"] == 4 and b.stats["pairs"] == 0
    assert "No preference pair" in caplog.text
    assert set(pairs.column_names) >= {"prompt", "chosen", "rejected"}


def test_beam_vs_sample_pairing(parts):
    b = builder(parts, num_samples=3, pairing="beam_vs_sample")
    pairs = b.build(make_split())
    assert b.stats["pairs"] + b.stats["ties"] + b.stats["identical"] <= 30
    assert all("beam" in (r["chosen_source"], r["rejected_source"]) for r in pairs)
    assert max(pairs.to_pandas().groupby("query_id").size()) > 1  # several pairs per query


def test_prompts_are_fitted_to_max_length_by_cutting_passages(parts):
    r, index, corpus, gen, tok = parts
    long_passage = " ".join(["paris is the capital of france"] * 40)
    b = builder(parts, max_length=120)
    prompt, text, cut = b.fit_prompt("what is the capital of france", [long_passage] * 3)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert cut and n <= 120 - 6 - 1
    assert prompt[-1]["content"].endswith("Question: what is the capital of france")  # the question is kept whole
    free = builder(parts, max_length=None)
    _, text_free, cut_free = free.fit_prompt("what is the capital of france", [long_passage] * 3)
    assert not cut_free and len(tok(text_free, add_special_tokens=False)["input_ids"]) > 120
    with pytest.raises(ValueError, match="max_length"):
        builder(parts, max_length=6)


def test_plain_text_rows_without_a_chat_template(tiny_st, tmp_path):
    corpus = make_corpus()
    r = Retriever(tiny_st)
    gen, tok = load_generator(build_tiny_generator(tmp_path / "gen", chat_template=False))
    b = GenerationPreferenceBuilder(r, DenseIndex.from_corpus(r, corpus), corpus, gen, tok, k=2, num_beams=2,
                                    num_samples=1, max_new_tokens=5, judge=word_judge, answer_prefix=None)
    pairs = b.build(make_split())
    assert len(pairs) and isinstance(pairs[0]["prompt"], str) and pairs[0]["prompt"].endswith("Answer:")
    assert pairs[0]["chosen"].startswith(" ")


def test_the_default_f1_judge_prefers_the_answer_closest_to_the_gold(parts):
    """judge=None is SQuAD token F1: with each question's greedy answer as its gold, the greedy answer wins every pair
    whose sample differs from it, and the rows carry the F1 of their answers."""
    from trl_bporag.metrics import qa_f1

    split = make_split(8)
    probe = builder(parts, num_samples=2, num_beams=1)
    texts = [probe.fit_prompt(q, [probe.corpus.passage(int(i), True) for i in ids[:3] if i >= 0])[1]
             for q, ids in zip(split.questions, probe.index.search(probe.retriever.encode_queries(split.questions),
                                                                    3)[1])]
    greedy = [c[0][1] for c in probe.answers(texts, split.ids)]
    gold = QASplit(split.ids, split.questions, [[g] for g in greedy], split.gold_ids)
    b = builder(parts, num_samples=2, num_beams=1, judge=None)
    pairs = b.build(gold)
    assert b.describe()["config"]["judge"] == "f1" and len(pairs) > 0
    for row in pairs:
        answer = greedy[gold.ids.index(row["query_id"])]
        assert row["chosen_source"] == "beam" and row["chosen"][0]["content"] == answer and row["chosen_f1"] == 1.0
        assert row["rejected_f1"] == pytest.approx(qa_f1(row["rejected"][0]["content"], [answer]))
        assert row["rejected_f1"] < 1.0


def test_answer_prefix_ends_the_prompt_and_the_answers_close_it(parts):
    from trl_bporag.generation import QUOTED_ANSWER_PREFIX, answer_stop, clean_answer

    assert answer_stop(QUOTED_ANSWER_PREFIX) == '"' and answer_stop("Answer:") is None and answer_stop(None) is None
    assert clean_answer(' Paris" is the capital.\nmore', '"') == "Paris"
    assert clean_answer("no quote here\nsecond line", '"') == "no quote here"
    b = builder(parts, num_samples=2, answer_prefix=QUOTED_ANSWER_PREFIX)
    assert b.conversational is False  # TRL's conversational rows cannot end in a started reply
    pairs = b.build(make_split())
    assert len(pairs) > 0 and b.describe()["config"]["answer_prefix"] == QUOTED_ANSWER_PREFIX
    for row in pairs:
        assert isinstance(row["prompt"], str) and row["prompt"].startswith("<|im_start|>system")
        assert row["prompt"].endswith("<|im_start|>assistant\n" + QUOTED_ANSWER_PREFIX)
        for side in ("chosen", "rejected"):
            answer = row[side]
            assert answer.endswith('"') and '"' not in answer[:-1]  # the answer up to its stop, then the stop
            assert row[f"{side}_f1"] == pytest.approx(word_judge(answer[:-1], None))
    with pytest.raises(ValueError, match="answer_prefix"):
        builder(parts, answer_prefix=QUOTED_ANSWER_PREFIX, conversational=True)


def test_check_dpo_lengths_counts_and_drops(tiny_generator_dir, caplog):
    _, tok = load_generator(tiny_generator_dir)
    user = lambda n: [{"role": "user", "content": " ".join(["paris"] * n)}]  # noqa: E731
    ans = lambda n: [{"role": "assistant", "content": " ".join(["rome"] * n)}]  # noqa: E731
    ds = Dataset.from_list([
        {"prompt": user(5), "chosen": ans(2), "rejected": ans(1)},     # fits
        {"prompt": user(60), "chosen": ans(2), "rejected": ans(1)},    # the prompt fills max_length
        {"prompt": user(30), "chosen": ans(30), "rejected": ans(1)},   # the chosen answer would be cut
    ])
    with caplog.at_level(logging.WARNING):
        kept, counts = check_dpo_lengths(ds, tok, max_length=50)
    assert counts == {"rows": 3, "prompt_too_long": 1, "completion_cut": 1}
    assert len(kept) == 1 and kept[0]["prompt"] == ds[0]["prompt"]
    assert "2 of 3 preference rows" in caplog.text
    with pytest.raises(ValueError, match="'rejected'"):
        check_dpo_lengths(ds.remove_columns("rejected"), tok, 50)


def test_gpo_script_trains_lora_and_the_pipeline_uses_the_adapter(parts, tmp_path, tiny_retriever_dir,
                                                                  tiny_generator_dir, toy_corpus, toy_split):
    r, index, corpus, gen, tok = parts
    b = GenerationPreferenceBuilder(Retriever(tiny_retriever_dir), index, corpus, gen, tok, k=3, num_beams=2,
                                    max_new_tokens=6, judge=word_judge, max_length=256)
    pairs = b.build(make_split(), output_dir=tmp_path / "pairs")
    assert len(pairs) >= 2
    out = tmp_path / "gpo"
    cmd = [sys.executable, "examples/gpo.py", "--dataset_name", str(tmp_path / "pairs"), "--model_name_or_path",
           tiny_generator_dir, "--output_dir", str(out), "--use_peft", "--lora_r", "4", "--lora_alpha", "8",
           "--per_device_train_batch_size", "2", "--max_steps", "2", "--learning_rate", "1e-2", "--max_length", "256",
           "--bf16", "false", "--logging_steps", "1"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-4000:]
    assert (out / "adapter_config.json").is_file()
    config = json.loads((out / "bporag_config.json").read_text())
    # recorded relative to the adapter folder, resolved from it
    assert config["retriever"] == os.path.relpath(tiny_retriever_dir, out) and config["k"] == 3
    assert read_bporag_config(out)["retriever"] == os.path.realpath(tiny_retriever_dir)
    card = (out / "README.md").read_text()
    assert "## BPO-RAG" in card and tiny_retriever_dir in card and "| k | `3` |" in card
    assert "DPO" in card  # TRL's own card is kept above our section
    tuned, _ = load_generator(str(out))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: the step moved it
    # the pipeline pairs the adapter with the retriever and k it was aligned under
    pipe = RAGPipeline.from_pretrained(generator=str(out), corpus=toy_corpus, cache_index=False)
    assert pipe.k == 3 and os.path.realpath(pipe.retriever.model_id) == os.path.realpath(tiny_retriever_dir)
    answer = pipe(toy_split.questions[0])
    assert isinstance(answer["answer"], str) and len(answer["passage_ids"]) == 3


def test_bporag_end_to_end_with_tiny_models(tmp_path, tiny_retriever_dir, tiny_generator_dir, monkeypatch):
    """examples/bporag.py: every stage runs, writes its artifact, and the four rows are evaluated; a rerun reuses."""
    import functools

    from conftest import write_beir
    from trl_bporag.scripts import bporag
    from trl_bporag.settings import RAGSettings

    # the tiny random generator never hits a gold answer (all F1 ties): judge its words instead
    monkeypatch.setattr(bporag.build_gpo_pairs, "GenerationPreferenceBuilder",
                        functools.partial(GenerationPreferenceBuilder, judge=word_judge))

    corpus = make_corpus(60)
    split = make_split()
    write_beir(tmp_path / "qa", corpus, split, "train")
    write_beir(tmp_path / "qa_test", corpus, make_split(5), "test")
    out = tmp_path / "run"
    args = bporag.BPORAGArguments(
        dataset=str(tmp_path / "qa"), eval_datasets=f"{tmp_path / 'qa_test'}:test", output_dir=str(out),
        retriever=tiny_retriever_dir, generator=tiny_generator_dir, rpo_queries=10, rpo_top_n=20,
        rpo_num_perturbations=4, rpo_batch_size=4, rpo_mini_batch_size=8, rpo_learning_rate=1e-3, gpo_queries=10,
        num_samples=2, gpo_learning_rate=1e-2, gpo_batch_size=2, gpo_grad_accum=1, lora_r=4, lora_alpha=8,
        max_length=256, eval_queries=5, dtype="float32", plot=False,
    )
    settings = RAGSettings(k=3, max_new_tokens=6)
    results = bporag.main(args, settings)
    assert [r["row"] for r in results["rows"]] == list(bporag.ROWS)
    rows = {r["row"]: r for r in results["rows"]}
    assert rows["+RPO"]["retriever"] == rows["BPO-RAG"]["retriever"] == str(out / "retriever-rpo")
    assert rows["+GPO"]["generator"] == rows["BPO-RAG"]["generator"] == str(out / "generator-gpo")
    assert rows["vanilla"]["recall@5"] == rows["+GPO"]["recall@5"]  # same retriever, same retrieval
    for name in ("rpo-pairs/stats.json", "retriever-rpo/modules.json", "gpo-pairs/stats.json",
                 "generator-gpo/adapter_config.json", "generator-gpo/bporag_config.json", "results.json",
                 "results.md", "predictions-qa_test.jsonl"):
        assert (out / name).is_file(), name
    answers = [json.loads(line) for line in (out / "predictions-qa_test.jsonl").read_text().splitlines()]
    assert len(answers) == 5 and set(answers[0]) == {"id", "question", "answers", *bporag.ROWS}
    assert all(isinstance(a[row], str) for a in answers for row in bporag.ROWS)
    # the adapter records its retriever relative to itself (the run folder can move) and resolves it from there
    assert json.loads((out / "generator-gpo" / "bporag_config.json").read_text())["retriever"] == "../retriever-rpo"
    assert read_bporag_config(out / "generator-gpo")["retriever"] == os.path.realpath(out / "retriever-rpo")
    table = (out / "results.md").read_text()
    assert "| qa_test | BPO-RAG | 5 |" in table and "paired bootstrap 95% CI" in table
    assert "no measurable change" in table or "measurable differences from vanilla" in table
    card = (out / "generator-gpo" / "README.md").read_text()  # the adapter's card carries the table with its CIs
    assert "## BPO-RAG evaluation" in card and "| qa_test | BPO-RAG | 5 |" in card and "## BPO-RAG" in card
    # every row but vanilla carries the paired CI of its difference from vanilla, for every metric
    for r in results["rows"][1:]:
        for metric in ("recall@1", "answer_hit@5", "f1", "exact_match"):
            ci = r["ci_vs_vanilla"][metric]
            assert ci["low"] <= ci["diff"] <= ci["high"] and ci["n"] == 5
            assert ci["diff"] == pytest.approx(r[metric] - rows["vanilla"][metric], abs=1e-3)
    assert rows["+GPO"]["ci_vs_vanilla"]["recall@5"]["diff"] == 0  # same retriever as vanilla
    assert [s["stage"] for s in results["stages"]] == ["RPO pairs", "RPO training",
                                                       "SFT on the gold answers (generator-sft)",
                                                       "GPO pairs (gpo-pairs)", "GPO training (generator-gpo)",
                                                       "evaluation"]
    # the default generator recipe, SFT then GPO: SFT under the tuned retriever, on-policy pairs from the SFT adapter,
    # GPO from it, saved as one adapter on the base holding both updates (rank 4 + 4)
    assert read_bporag_config(out / "generator-sft")["retriever"] == os.path.realpath(out / "retriever-rpo")
    assert json.loads((out / "gpo-pairs" / "stats.json").read_text())["config"]["generator"] == str(
        out / "generator-sft")
    stacked = json.loads((out / "generator-gpo" / "adapter_config.json").read_text())
    assert stacked["r"] == 8 and stacked["base_model_name_or_path"] == tiny_generator_dir
    assert all(s["peak_rss_gib"] > 0 for s in results["stages"]) and results["peak_rss_gib"] > 0
    curve = json.loads((out / "generator-gpo" / "train_curve.json").read_text())
    assert curve["steps"] >= 1 and math.isfinite(curve["train_loss"]) and curve["train_pairs"] >= 1
    stamp = (out / "generator-gpo" / "adapter_model.safetensors").stat().st_mtime_ns
    bporag.main(args, settings)  # the rerun reuses every artifact
    assert (out / "generator-gpo" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    # a rerun with other flags reuses nothing silently: the first stage made with other settings is named
    with pytest.raises(ValueError, match=r"rpo-pairs: was made with other settings .*k: made with 3, asked for 2"):
        bporag.main(args, RAGSettings(k=2, max_new_tokens=6))
    changed = dataclasses.replace(args, gpo_beta=0.1)
    with pytest.raises(ValueError, match=r"generator-gpo: was made with other settings .*beta: made with 0\.5, "
                                         r"asked for 0\.1.*--overwrite"):
        bporag.main(changed, settings)
    assert (out / "generator-gpo" / "adapter_model.safetensors").stat().st_mtime_ns == stamp

    # the ablation: the +GPO row's generator aligned under the base retriever, a second adapter
    args.gpo_ablation = "separate"
    rows = {r["row"]: r for r in bporag.main(args, settings)["rows"]}
    ablation = out / "generator-gpo-base-retriever"
    assert rows["+GPO"]["generator"] == str(ablation)
    assert rows["BPO-RAG"]["generator"] == str(out / "generator-gpo")
    # the generator aligned under the tuned retriever is shown beside it, under the base retriever
    assert list(rows) == ["vanilla", "+RPO", "+GPO", bporag.SHARED_GPO_ROW, "BPO-RAG"]
    assert rows[bporag.SHARED_GPO_ROW]["generator"] == str(out / "generator-gpo")
    assert rows[bporag.SHARED_GPO_ROW]["recall@5"] == rows["vanilla"]["recall@5"]
    assert read_bporag_config(ablation)["retriever"] == os.path.realpath(tiny_retriever_dir)
    assert (out / "gpo-pairs-base-retriever" / "stats.json").is_file()
    assert (out / "generator-gpo" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_bporag_push_to_hub_sends_every_artifact_and_the_evaluated_card(tmp_path, tiny_retriever_dir,
                                                                         tiny_generator_dir, monkeypatch, fake_hub):
    """--push_to_hub: the RPO pairs, the retriever, the GPO pairs and the adapter each go to their own repo (the
    ablation's to repos of their own, never over the BPO-RAG adapter), and the adapter's card on the Hub ends with the
    evaluation table, which only exists after the adapter was pushed."""
    import functools

    from conftest import write_beir
    from trl_bporag.scripts import bporag
    from trl_bporag.settings import RAGSettings

    monkeypatch.setattr(bporag.build_gpo_pairs, "GenerationPreferenceBuilder",
                        functools.partial(GenerationPreferenceBuilder, judge=word_judge))
    corpus = make_corpus(40)
    write_beir(tmp_path / "qa", corpus, make_split(), "train")
    write_beir(tmp_path / "qa_test", corpus, make_split(4), "test")
    args = bporag.BPORAGArguments(
        dataset=str(tmp_path / "qa"), eval_datasets=f"{tmp_path / 'qa_test'}:test", output_dir=str(tmp_path / "run"),
        retriever=tiny_retriever_dir, generator=tiny_generator_dir, rpo_queries=6, rpo_top_n=10,
        rpo_num_perturbations=3, rpo_batch_size=4, gpo_queries=6, num_samples=2, gpo_batch_size=2, lora_r=4,
        lora_alpha=8, max_length=256, eval_queries=4, dtype="float32", plot=False, gpo_ablation="separate",
        push_to_hub=True, hub_model_id="user/run", generator_recipe="gpo")  # the paper's GPO, from the base generator
    bporag.main(args, RAGSettings(k=3, max_new_tokens=4))
    assert not (tmp_path / "run" / "generator-sft").exists()
    assert json.loads((tmp_path / "run" / "generator-gpo" / "adapter_config.json").read_text())["r"] == 4
    for repo, repo_type, must in (("user/run-rpo-pairs", "dataset", "README.md"),
                                  ("user/run-retriever", "model", "modules.json"),
                                  ("user/run-gpo-pairs", "dataset", "README.md"),
                                  ("user/run-gpo-pairs-base-retriever", "dataset", "README.md"),
                                  ("user/run-generator", "model", "adapter_config.json"),
                                  ("user/run-generator-base-retriever", "model", "adapter_config.json")):
        assert must in fake_hub.files(repo, repo_type), (repo, fake_hub.files(repo, repo_type))
    hub_card = (fake_hub.repo_dir("user/run-generator") / "README.md").read_text()
    assert "## BPO-RAG evaluation" in hub_card and "| qa_test | BPO-RAG | 4 |" in hub_card
    assert hub_card == (tmp_path / "run" / "generator-gpo" / "README.md").read_text()
    pushed = json.loads((fake_hub.repo_dir("user/run-generator") / "bporag_config.json").read_text())
    assert pushed["retriever_hub_id"] == "user/run-retriever"
    ablation = json.loads((fake_hub.repo_dir("user/run-generator-base-retriever") / "bporag_config.json").read_text())
    assert ablation.get("retriever_hub_id") != "user/run-retriever" and "rpo" not in ablation["retriever"]


def test_bporag_table_and_chart_show_cis_and_leave_out_all_zero_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    from trl_bporag.metrics import paired_bootstrap_ci
    from trl_bporag.report import plot_results, results_markdown

    per = {"vanilla": {"recall@1": [0, 1, 0, 1] * 10, "exact_match": [0] * 40, "f1": [0.1] * 40},
           "+RPO": {"recall@1": [1, 1, 1, 1] * 10, "exact_match": [0] * 40, "f1": [0.1] * 39 + [0.2]}}
    rows = []
    for name, values in per.items():
        row = {"dataset": "toy", "row": name, "queries": 40, **{m: sum(v) / 40 for m, v in values.items()},
               "ci_of_mean": {m: [0.0, 1.0] for m in values}}
        if name != "vanilla":
            row["ci_vs_vanilla"] = {m: paired_bootstrap_ci(v, per["vanilla"][m]) for m, v in values.items()}
        rows.append(row)
    results = {"rows": rows}
    table = results_markdown(results)
    assert "| toy | +RPO | 40 | 1.000 (**+0.500 [+" in table  # recall@1: 20 of 40 queries gained, CI excludes 0
    assert "measurable differences from vanilla: +RPO recall@1 +0.500." in table
    assert "0.103 (+0.003 [+0.000, +0.008])" in table  # one query's F1 gain: within noise, not bold
    drawn = plot_results(results, tmp_path / "results.png")
    assert drawn == {"toy": ["recall@1", "f1"]} and (tmp_path / "results.png").stat().st_size > 0


def test_gpo_trainer_push_sends_adapter_card_and_bporag_config(tmp_path, tiny_generator_dir, fake_hub):
    """GPO adapter push: GPOTrainer (a DPOTrainer whose cards record the BPO-RAG settings) .push_to_hub sends the
    adapter, the card naming the retriever and k, and bporag_config.json; what was sent loads back as base +
    adapter."""
    from peft import LoraConfig
    from trl import DPOTrainer

    from trl_bporag.hub import snapshot
    from trl_bporag.trainers import GPOConfig, GPOTrainer

    model, tok = load_generator(tiny_generator_dir)
    rows = [{"prompt": [{"role": "user", "content": "what is the capital of france"}],
             "chosen": [{"role": "assistant", "content": "paris"}],
             "rejected": [{"role": "assistant", "content": "rome is the capital"}]}] * 4
    args = GPOConfig(output_dir=str(tmp_path / "gpo"), per_device_train_batch_size=2, max_steps=1,
                     learning_rate=1e-2, push_to_hub=True, hub_model_id="user/gpo-adapter")
    trainer = GPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                         bporag_config={"retriever": "user/retriever-rpo", "k": 5})
    assert isinstance(trainer, DPOTrainer)
    trainer.train()
    trainer.push_to_hub(dataset_name="user/gpo-pairs")
    files = set(fake_hub.files("user/gpo-adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "bporag_config.json"} <= files
    sent = snapshot("user/gpo-adapter")
    card = (sent / "README.md").read_text()
    assert "## BPO-RAG" in card and "`user/retriever-rpo`" in card and "| k | `5` |" in card
    assert json.loads((sent / "bporag_config.json").read_text()) == {"format_version": 1,
                                                                     "retriever": "user/retriever-rpo", "k": 5}
    loaded, _ = load_generator(str(sent))
    assert type(loaded).__name__.startswith("Peft")
    with pytest.raises(ValueError, match="retriever"):
        GPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                   bporag_config={"k": 5})


SCRIPT = '''
import sys
from trl_bporag import DenseIndex, Retriever, load_generator, load_rag_dataset
from trl_bporag.preferences import GenerationPreferenceBuilder
from trl_bporag.utils import distributed_state

def word_judge(prediction, answers):
    words = prediction.split()
    return sum("a" not in w for w in words) / max(len(words), 1)

data_dir, retriever_dir, generator_dir, out = sys.argv[1:5]
state = distributed_state()
data = load_rag_dataset(data_dir, "train")
r = Retriever(retriever_dir)
index = DenseIndex.from_corpus(r, data.corpus)
gen, tok = load_generator(generator_dir)
b = GenerationPreferenceBuilder(r, index, data.corpus, gen, tok, k=3, num_beams=2, num_samples=2, max_new_tokens=6,
                                judge=word_judge, batch_size=3, query_batch_size=2)
b.build(data.split, output_dir=out)
'''


def test_one_and_two_processes_give_the_same_gpo_pairs(tmp_path, tiny_retriever_dir, tiny_generator_dir):
    from conftest import run_two, write_beir

    write_beir(tmp_path / "data", make_corpus(), make_split(), "train")
    (tmp_path / "build.py").write_text(SCRIPT)
    args = [str(tmp_path / "build.py"), str(tmp_path / "data"), tiny_retriever_dir, tiny_generator_dir]
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRL_BPORAG_CPU_BF16": "0", "PATH": os.environ["PATH"]}
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_two(*args, str(tmp_path / "two"), outputs=[tmp_path / "two"], env=env)
    assert two.returncode == 0, two.rank_errors + two.stderr[-2000:]
    assert len(list((tmp_path / "two" / "shards").glob("rank*.jsonl"))) == 2  # both processes did work
    one_ds, two_ds = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "two"))
    assert one_ds.num_rows > 0 and one_ds.to_list() == two_ds.to_list()


def test_stable_seed_is_sha256_of_the_parts_and_fits_torch():
    import hashlib

    from trl_bporag.generation import _mix_seed
    from trl_bporag.utils import stable_seed

    expected = int.from_bytes(hashlib.sha256(b"0:q1").digest()[:8], "little")
    assert stable_seed(0, "q1") == expected and stable_seed(0, "q1") != stable_seed(1, "q1")
    assert _mix_seed(0, "q1") == expected & (2**63 - 1)
    torch.Generator().manual_seed(_mix_seed(0, "q1"))  # in range for torch


def test_generate_candidates_falls_back_to_generate_for_sliding_window_caches(tiny_generator_dir, monkeypatch):
    from transformers import MistralConfig, MistralForCausalLM

    import trl_bporag.generation as generation

    tiny = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=32)
    assert not generation._plain_kv_cache(MistralForCausalLM(MistralConfig(sliding_window=4, **tiny)))
    assert generation._plain_kv_cache(MistralForCausalLM(MistralConfig(sliding_window=None, **tiny)))

    gen, tok = load_generator(tiny_generator_dir)
    prompts = [build_prompt(tok, q, ["paris is the capital of france"]) for q in ("what is the capital", "where")]
    fast = generate_candidates(gen, tok, prompts, [1, 2], num_beams=2, num_samples=2, max_new_tokens=5)
    monkeypatch.setattr(generation, "_plain_kv_cache", lambda model: False)
    calls = []
    real_generate = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(k) or real_generate(*a, **k))
    assert generate_candidates(gen, tok, prompts, [1, 2], num_beams=2, num_samples=2, max_new_tokens=5) == fast
    assert len(calls) == 2 and calls[0]["num_beams"] == 2 and calls[1]["sample_seeds"] == [1, 2]


def test_generate_candidates_rejects_bad_input_naming_the_argument(tiny_generator_dir):
    gen, tok = load_generator(tiny_generator_dir)
    prompt = build_prompt(tok, "where", ["paris is the capital of france"])
    with pytest.raises(ValueError, match="prompts: expected a list"):
        generate_candidates(gen, tok, prompt, [1])
    with pytest.raises(ValueError, match=r"sample_seeds: expected one seed per prompt \(2\), got 1"):
        generate_candidates(gen, tok, [prompt, prompt], [1])
    with pytest.raises(ValueError, match="sample_seeds"):
        generate_candidates(gen, tok, [prompt])  # samples asked, no seeds
    with pytest.raises(ValueError, match="num_samples >= 0"):
        generate_candidates(gen, tok, [prompt], num_samples=-1)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        generate_candidates(gen, tok, ["paris"], [1])
    beams, samples = generate_candidates(gen, tok, [prompt], num_samples=0, max_new_tokens=3)  # no seeds needed
    assert len(beams) == 1 and samples == [[]]




@pytest.mark.parametrize("word", [0, 2])
def test_answers_end_at_the_stop_with_the_same_text_and_fewer_decoding_steps(tiny_generator_dir, word):
    """With ``stop`` (the answer prefix's closing quote in use) a row ends as soon as the text it generated holds the
    stop: the cleaned answers equal the full completions cut at the stop (greedy and seeded samples, generate and
    generate_candidates), and an answer that stops early costs fewer decoding steps. ``word=0``: the stop is the
    answer's first word, which the prompt's last token (a space away in the decoded whole) must not complete."""
    from trl_bporag.generation import clean_answer

    gen, tok = load_generator(tiny_generator_dir)
    prompts = [build_prompt(tok, q, ["paris is the capital of france"]) for q in ("what is the capital", "where", "who")]
    raw = generate(gen, tok, prompts[:1], max_new_tokens=12, clean=False)
    words = raw[0].split()
    stop = (" " if word else "") + words[word]  # a word the first answer writes early on
    steps = []
    hook = gen.model.register_forward_pre_hook(lambda module, args, kwargs: steps.append(1), with_kwargs=True)
    assert generate(gen, tok, prompts[:1], max_new_tokens=12, stop=stop) == [clean_answer(raw[0], stop)]
    hook.remove()
    assert len(steps) == word + 1  # one forward pass per token up to the stop, not 12
    kw = dict(max_new_tokens=12, do_sample=True, top_p=0.9, num_return_sequences=2, sample_seeds=[1, 2, 3])
    raw_samples = generate(gen, tok, prompts, clean=False, **kw)
    assert generate(gen, tok, prompts, stop=stop, **kw) == [[clean_answer(s, stop) for s in r] for r in raw_samples]
    raw_greedy = generate(gen, tok, prompts, max_new_tokens=12, clean=False)
    beams, samples = generate_candidates(gen, tok, prompts, [1, 2, 3], num_samples=2, max_new_tokens=12, top_p=0.9,
                                         stop=stop)
    assert beams == [clean_answer(t, stop) for t in raw_greedy]
    assert samples == [[clean_answer(s, stop) for s in r] for r in raw_samples]
