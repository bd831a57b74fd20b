"""bench/judge_progress.py: a judge's progress leaves the machine as ids and scores and resumes elsewhere."""

import gzip

import pytest

import test_rpo_builder
from test_rpo_builder import make_corpus
from trl_bporag.data import QASplit
from trl_bporag.preferences import RetrievalPreferenceBuilder

judge_progress = pytest.importorskip("judge_progress")  # bench/ is on sys.path (conftest.py)
setup = test_rpo_builder.setup  # the fixture: the tiny retriever, its index, corpus and split

@pytest.mark.parametrize("pairing", ["listwise", "vs_original"])
def test_export_then_restore_resumes_without_judging_again(setup, tmp_path, pairing):
    r, index, corpus, split = setup
    kw = dict(judge="answer_hit", k=3, top_n=20, num_perturbations=4, query_batch_size=1, pairing=pairing)
    full = RetrievalPreferenceBuilder(r, index, corpus, **kw).build(split, output_dir=tmp_path / "a")
    assert len(full) > 0
    path = tmp_path / "judged.jsonl.gz"
    assert judge_progress.export(tmp_path / "a", path) == 5
    first = path.read_bytes()
    assert judge_progress.export(tmp_path / "a", path) == 5 and path.read_bytes() == first  # the same bytes again
    text = gzip.decompress(first).decode()
    assert "capital of" not in text and "paris is" not in text  # no question or passage text leaves the machine
    assert "p00" in text and '"query_id": "q0"' in text

    assert judge_progress.restore(path, tmp_path / "b", split, corpus) == 5
    assert judge_progress.restore(path, tmp_path / "b", split, corpus) == 0  # held queries are never replaced
    again = RetrievalPreferenceBuilder(r, index, corpus, **kw)
    resumed = again.build(split, output_dir=tmp_path / "b")
    assert resumed.to_list() == full.to_list()  # texts rebuilt exactly, rows in the same order
    assert again.stats["windows_judged"] == 0  # nothing judged twice


def test_partial_progress_and_wrong_data(setup, tmp_path):
    r, index, corpus, split = setup
    kw = dict(judge="answer_hit", k=3, top_n=20, num_perturbations=4, query_batch_size=1, pairing="listwise")
    full = RetrievalPreferenceBuilder(r, index, corpus, **kw).build(split, output_dir=tmp_path / "a")
    shard = tmp_path / "a" / "shards" / "rank0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:2]) + lines[2][:20])  # killed during the third query
    path = tmp_path / "judged.jsonl.gz"
    assert judge_progress.export(tmp_path / "a", path) == 2
    assert judge_progress.restore(path, tmp_path / "b", split, corpus) == 2
    again = RetrievalPreferenceBuilder(r, index, corpus, **kw)
    assert again.build(split, output_dir=tmp_path / "b").to_list() == full.to_list()
    fresh = RetrievalPreferenceBuilder(r, index, corpus, **kw)
    fresh.build(split)
    assert 0 < again.stats["windows_judged"] < fresh.stats["windows_judged"]  # only the 3 missing queries

    other = QASplit(split.ids, [q.upper() for q in split.questions], split.answers, split.gold_ids)
    with pytest.raises(ValueError, match="split_fingerprint differs"):
        judge_progress.restore(path, tmp_path / "c", other, corpus)
    with pytest.raises(ValueError, match="corpus_fingerprint differs"):
        judge_progress.restore(path, tmp_path / "c", split, make_corpus(seed=1))
    with pytest.raises(ValueError, match="no shards/config.json"):
        judge_progress.export(tmp_path / "nothing", path)
