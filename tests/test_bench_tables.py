"""bench/gpo_tables.py: rows evaluated on another CPU are compared with the vanilla of that CPU."""

import json

import numpy as np
import pytest

gpo_tables = pytest.importorskip("gpo_tables")  # bench/ is on sys.path (conftest.py)


def _write(folder, name, row, seed, f1, cpu):
    entry = {"row": row, "seed": seed, "dataset": "toy:test", "ids": ["a", "b", "c", "d"], "f1": f1,
             "em": [0.0] * 4, "hardware": {"cpu": cpu}}
    (folder / f"{name}.json").write_text(json.dumps(entry))


def _lines(table: str) -> dict:
    """A markdown table's rows by their first cell (bold marks stripped)."""
    return {line.split(" | ")[0].strip("| *"): line for line in table.splitlines() if line.startswith("|")}


def _toy_lines(folder) -> dict:
    """The rows of the toy data set's table built from the per-question files in ``folder``."""
    return _lines(gpo_tables.dataset_table("toy:test", gpo_tables.load(folder)["toy:test"]))


def test_each_row_is_compared_with_the_vanilla_of_its_cpu(tmp_path):
    _write(tmp_path, "vanilla-toy", "vanilla", None, [0.0, 0.0, 0.0, 0.0], "Intel")
    _write(tmp_path, "vanilla@amd-toy", "vanilla", None, [0.5, 0.5, 0.5, 0.5], "AMD")
    _write(tmp_path, "gpo-s0-toy", "gpo", 0, [1.0, 1.0, 1.0, 1.0], "Intel")
    _write(tmp_path, "bporag-s0-toy", "bporag", 0, [1.0, 1.0, 1.0, 0.6], "AMD")
    _write(tmp_path, "bporag-s1-toy", "bporag", 1, [1.0, 1.0, 1.0, 1.0], "AMD")
    rows = gpo_tables.load(tmp_path)["toy:test"]
    assert set(rows) == {"vanilla", "vanilla (AMD)", "gpo", "bporag"}
    assert gpo_tables.base_row("bporag", rows) == "vanilla (AMD)"
    assert gpo_tables.base_row("gpo", rows) == "vanilla"
    np.testing.assert_allclose(gpo_tables.pooled(rows["bporag"], "f1"), [1.0, 1.0, 1.0, 0.8])
    table = gpo_tables.dataset_table("toy:test", rows)
    lines = _lines(table)
    # bporag pooled 0.95 against AMD's vanilla 0.5 (+0.450, +90 %), not against Intel's 0.0
    assert "+0.450" in lines["bporag (pooled)"] and "+90 %" in lines["bporag (pooled)"]
    assert "+1.000" in lines["gpo"]
    assert "bporag − gpo (different CPUs)" in lines
    assert lines["vanilla (AMD)"].endswith("|  |  |  |")  # a baseline is not compared with itself
    assert "Evaluated on:" in table


def test_two_files_for_one_row_and_seed_are_refused(tmp_path):
    _write(tmp_path, "gpo-s0-toy", "gpo", 0, [1.0] * 4, "Intel")
    _write(tmp_path, "gpo-s0-copy-toy", "gpo", 0, [1.0] * 4, "Intel")
    with pytest.raises(ValueError, match="two files for row 'gpo' seed 0"):
        gpo_tables.load(tmp_path)


def test_headroom_table_pairs_rows_by_question(tmp_path):
    """bench/headroom.py --table: each generator's three rows with the paired CIs of what retrieval gives, and the
    reader against SmolLM2 row by row."""
    headroom = pytest.importorskip("headroom")
    ids = [f"q{i}" for i in range(8)]
    f1 = {("smollm2", "closed-book"): [0.0] * 8, ("smollm2", "vanilla"): [0.0] * 7 + [1.0],
          ("smollm2", "oracle"): [0.0] * 6 + [1.0] * 2, ("reader", "closed-book"): [0.0] * 8,
          ("reader", "vanilla"): [1.0] * 6 + [0.0] * 2, ("reader", "oracle"): [1.0] * 8}
    for (tag, row), values in f1.items():
        (tmp_path / f"{row}@{tag}-squad-dev.json").write_text(json.dumps(
            {"row": row, "dataset": "squad-dev:test", "ids": ids, "f1": values, "em": values}))
    (tmp_path / "rpo@reader-squad-dev.json").write_text(json.dumps(
        {"row": "rpo", "dataset": "squad-dev:test", "ids": ids, "f1": [1.0] * 7 + [0.0], "em": [1.0] * 7 + [0.0],
         "retriever": "runs/tuned"}))
    (tmp_path / "rpo-f1@reader-squad-dev.json").write_text(json.dumps(  # a second tuned retriever, by --name
        {"row": "rpo", "dataset": "squad-dev:test", "ids": ids, "f1": [0.0] * 8, "em": [0.0] * 8,
         "retriever": "runs/f1"}))
    table = headroom.table(tmp_path)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    reader = next(line for line in lines if line.startswith("| Qwen2.5-Coder-0.5B-Instruct"))
    assert "| 0.000 / 0.000 | 0.750 / 0.750 | 1.000 / 1.000 |" in reader
    assert "**+0.750 [" in reader and "+0.250 [" in reader and "**+1.000 [+1.000, +1.000]**" in reader
    smol = next(line for line in lines if line.startswith("| SmolLM2-135M-Instruct"))
    assert "| 0.000 / 0.000 | 0.125 / 0.125 | 0.250 / 0.250 |" in smol
    assert next(line for line in lines if line.startswith("| reader − smollm2")).count("[") == 3
    assert "+RPO (runs/tuned's top 5), Qwen2.5-Coder-0.5B-Instruct: F1 0.875" in table
    assert "+RPO (runs/f1's top 5), Qwen2.5-Coder-0.5B-Instruct: F1 0.000" in table


def test_judge_agreement_counts_ordered_window_pairs():
    judges = pytest.importorskip("judge_agreement")
    # question 1: a orders (0>1, 0>2, 1=2 skipped); b agrees on 0>1, ties 0 vs 2. Question 2: a orders 1 pair, b reverses
    a = [[1.0, 0.0, 0.0], [0.2, 0.8]]
    b = [[0.5, 0.1, 0.5], [0.9, 0.3]]
    assert judges.agreement(a, b) == {"pairs": 3, "same": 0.333, "tie": 0.333, "reversed": 0.333}
    assert judges.agreement(a, a) == {"pairs": 3, "same": 1.0, "tie": 0.0, "reversed": 0.0}
    assert judges.agreement([[0.0, 0.0]], [[1.0, 0.0]])["pairs"] == 0  # all ties under a: nothing to compare


@pytest.mark.parametrize("argv", [["--row", "vanilla", "--name", "rpo-x"], ["--row", "rpo", "--name", "custom"]])
def test_headroom_refuses_a_name_its_table_would_not_read(monkeypatch, capsys, argv):
    headroom = pytest.importorskip("headroom")
    monkeypatch.setattr("sys.argv", ["headroom.py", *argv])
    with pytest.raises(SystemExit):
        headroom.main()
    assert "--name" in capsys.readouterr().err
    assert headroom.is_retriever_row("rpo-reader-f1") and not headroom.is_retriever_row("closed-book")


def test_large_index_bench_streams_the_exact_top_10_and_writes_readable_shards(tmp_path, monkeypatch):
    large_index = pytest.importorskip("large_index")
    from trl_bporag.retrieval.shards import ShardSet

    monkeypatch.setattr(large_index, "CHUNK", 700)
    large_index.write_synthetic_shards(tmp_path / "s", 2000)
    shards = ShardSet(tmp_path / "s")
    assert len(shards) == 2000 and shards.dim == 384 and shards.ids[1999] == "s1999"
    everything = np.concatenate(list(shards.chunks()))
    np.testing.assert_allclose(np.linalg.norm(everything, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(everything[700:1400], large_index.synthetic_block(700, 700))  # deterministic
    queries = large_index.synthetic_block(10**9, 20)
    expected = np.argsort(-(queries @ everything.T), axis=1)[:, :10]
    np.testing.assert_array_equal(large_index.exact_top(shards, queries), expected)
    assert large_index.recall_at(expected, expected) == 1.0
    assert large_index.recall_at(expected[:, ::-1][:, :5].repeat(2, axis=1), expected) == 0.5


def test_the_tuned_retriever_is_compared_with_the_mnrl_anchor(tmp_path):
    """Issue 35 item 4 on answer F1: the rpo row against MNRL-answers, paired by question."""
    _write(tmp_path, "vanilla-toy", "vanilla", None, [0.0, 0.0, 0.0, 0.0], "AMD")
    _write(tmp_path, "rpo-toy", "rpo", None, [1.0, 1.0, 0.0, 0.0], "AMD")
    _write(tmp_path, "mnrl-toy", "mnrl", None, [1.0, 0.0, 0.0, 0.0], "AMD")
    lines = _toy_lines(tmp_path)
    assert "+0.250" in lines["rpo − mnrl"]  # 0.5 − 0.25
    assert "+0.500" in lines["rpo − vanilla"]


def test_the_generator_recipe_is_compared_with_the_simple_anchor(tmp_path):
    """Issue 35 item 5: gpo against `simple` (MNRL-answers + SFT), pooled over each row's seeds, paired by question."""
    _write(tmp_path, "vanilla-toy", "vanilla", None, [0.0, 0.0, 0.0, 0.0], "AMD")
    _write(tmp_path, "gpo-s0-toy", "gpo", 0, [1.0, 1.0, 1.0, 0.0], "AMD")
    _write(tmp_path, "simple-s0-toy", "simple", 0, [1.0, 0.0, 0.0, 0.0], "AMD")
    _write(tmp_path, "simple-s1-toy", "simple", 1, [1.0, 1.0, 0.0, 0.0], "AMD")
    lines = _toy_lines(tmp_path)
    assert "+0.375" in lines["gpo − simple"]  # 0.75 − mean(0.25, 0.5)


def test_bporag_is_compared_with_each_single_stage(tmp_path):
    """Issue 35 item 5: BPO-RAG must be measurably above each single stage, +RPO (the untrained reader under the tuned
    retriever) as well as +GPO; both differences are in the table, paired by question."""
    _write(tmp_path, "vanilla-toy", "vanilla", None, [0.0, 0.0, 0.0, 0.0], "AMD")
    _write(tmp_path, "rpo-toy", "rpo", None, [1.0, 0.0, 0.0, 0.0], "AMD")
    _write(tmp_path, "gpo-s0-toy", "gpo", 0, [1.0, 1.0, 0.0, 0.0], "AMD")
    _write(tmp_path, "bporag-s0-toy", "bporag", 0, [1.0, 1.0, 1.0, 1.0], "AMD")
    lines = _toy_lines(tmp_path)
    assert "+0.750" in lines["bporag − rpo"]  # 1.0 − 0.25
    assert "+0.500" in lines["bporag − gpo"]  # 1.0 − 0.5
