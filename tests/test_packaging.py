"""The install's metadata: FAISS is an extra (cpu or gpu, never both), and a missing FAISS is a clear error."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _requirements(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_faiss_is_an_extra_and_the_gpu_install_holds_no_faiss_cpu():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    base = _requirements(cfg["options"]["install_requires"])
    extras = {name: _requirements(value) for name, value in cfg["options.extras_require"].items()}
    assert not [r for r in base if r.startswith("faiss")]
    assert [r for r in extras["gpu"] if r.startswith("faiss")] == ["faiss-gpu>=1.9"]
    assert [r for r in extras["cpu"] if r.startswith("faiss")] == ["faiss-cpu>=1.9"]
    assert "faiss-cpu>=1.9" in extras["dev"]  # the test install


def test_a_missing_faiss_names_both_extras(monkeypatch):
    from trl_bporag.retrieval import index

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    with pytest.raises(ImportError, match=r"trl-bporag\[cpu\]' \(faiss-cpu\) or 'trl-bporag\[gpu\]' \(faiss-gpu\)"):
        index.load_faiss()
