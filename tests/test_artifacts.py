"""Stage artifacts: bporag_config.json records the retriever relative to the adapter folder and resolves it there."""

import ast
import json
import shutil
from pathlib import Path

import pytest

from trl_bporag.artifacts import BPORAG_CONFIG_NAME, read_bporag_config, write_bporag_config


def test_retriever_folder_is_recorded_relative_to_the_adapter_and_survives_a_move(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "bporag"
    (run / "retriever-rpo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the way bporag.py passes it: relative to the working directory
    write_bporag_config(run / "generator-gpo", {"retriever": "runs/bporag/retriever-rpo", "k": 5})
    saved = json.loads((run / "generator-gpo" / BPORAG_CONFIG_NAME).read_text())
    assert saved["retriever"] == "../retriever-rpo" and saved["k"] == 5
    assert saved["retriever_absolute"] == str((run / "retriever-rpo").resolve())
    moved = tmp_path / "elsewhere"
    shutil.move(str(run), str(moved))
    monkeypatch.chdir(moved.parent.parent)  # another working directory
    config = read_bporag_config(moved / "generator-gpo")
    assert Path(config["retriever"]) == (moved / "retriever-rpo").resolve() and "retriever_relative_to" not in config
    # only the adapter moves: the absolute path recorded at write time is the fallback
    shutil.copytree(moved / "retriever-rpo", run / "retriever-rpo")
    alone = tmp_path / "adapter-alone"
    shutil.copytree(moved / "generator-gpo", alone)
    assert Path(read_bporag_config(alone)["retriever"]) == (run / "retriever-rpo").resolve()
    # the retriever folder left behind and gone: the error names the folder that was expected, not the Hub
    shutil.rmtree(moved / "retriever-rpo")
    shutil.rmtree(run / "retriever-rpo")
    with pytest.raises(ValueError, match="retriever-rpo.*does not exist"):
        read_bporag_config(moved / "generator-gpo")
    # ... unless the Hub id it was pushed to is recorded
    data = json.loads((moved / "generator-gpo" / BPORAG_CONFIG_NAME).read_text())
    data["retriever_hub_id"] = "me/retriever-rpo"
    (moved / "generator-gpo" / BPORAG_CONFIG_NAME).write_text(json.dumps(data))
    assert read_bporag_config(moved / "generator-gpo")["retriever"] == "me/retriever-rpo"


def test_hub_ids_are_kept_as_they_are(tmp_path):
    write_bporag_config(tmp_path / "gen", {"retriever": "sentence-transformers/all-MiniLM-L6-v2", "k": 3})
    assert read_bporag_config(tmp_path / "gen")["retriever"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert read_bporag_config(tmp_path / "nothing-here") is None


def test_the_pipeline_imports_no_training_data_builder():
    src = Path(__file__).resolve().parents[1] / "src" / "trl_bporag" / "pipeline.py"
    modules = [node.module or "" for node in ast.walk(ast.parse(src.read_text())) if isinstance(node, ast.ImportFrom)]
    assert modules and not [m for m in modules if "preferences" in m or "trainers" in m]


def test_what_a_stage_writes_it_reads_back_without_a_warning(tmp_path, caplog):
    # the GPO-after-SFT card records its start adapter: that key is part of the schema, so reading it warns nothing
    write_bporag_config(tmp_path / "gpo", {"stage": "gpo", "retriever": "sentence-transformers/all-MiniLM-L6-v2",
                                           "k": 5, "start_adapter": "runs/x/generator-sft"})
    with caplog.at_level("WARNING"):
        assert read_bporag_config(tmp_path / "gpo")["start_adapter"] == "runs/x/generator-sft"
    assert "unknown key" not in caplog.text
    # a key no reader knows is refused at write time, naming the key, instead of warning every later reader
    with pytest.raises(ValueError, match=r"\['new_setting'\] are not in the schema"):
        write_bporag_config(tmp_path / "other", {"k": 5, "new_setting": 1})
    assert not (tmp_path / "other" / BPORAG_CONFIG_NAME).exists()
