"""Files of a saved index: temporary names, the per-folder lock, metadata reading and checksums. Writes go to a
unique temporary file renamed into place; processes building into one folder take turns (``filelock``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from ..stage_files import INDEX_METADATA, check_schema

INDEX_FILE = "index.faiss"
META_FILE = "metadata.json"
VECTORS_FILE = "vectors.npy"


def temp_name(folder: Path, name: str) -> Path:
    """A fresh temporary file name next to ``folder/name`` (unique per process and call)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def replaced(path: Path):
    """Write ``path`` whole or not at all: yields a fresh temporary file next to it, renamed onto ``path`` when the
    block ends without an error (a reader never sees a half-written file); removed otherwise."""
    tmp = temp_name(path.parent, path.name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def folder_lock(folder: Path):
    """An inter-process lock on ``folder`` (``folder/.lock``); a no-op where the folder cannot be written."""
    from filelock import FileLock

    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock_path = folder / ".lock"
        lock_path.touch(exist_ok=True)
    except OSError:
        return contextlib.nullcontext()
    return FileLock(str(lock_path))


def read_meta(folder: Path) -> dict | str | None:
    """The metadata of a saved index in ``folder``: None when there is none, the dict when it reads, and a string
    saying what is wrong when it is damaged."""
    meta_path, index_path = folder / META_FILE, folder / INDEX_FILE
    if not meta_path.exists() and not index_path.exists():
        return None
    if not meta_path.is_file():
        return f"{META_FILE} is missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{META_FILE} does not parse ({err})"
    if not isinstance(meta, dict):
        return f"{META_FILE} holds a {type(meta).__name__}, not an object"
    try:
        check_schema(meta_path, meta, INDEX_METADATA, "index metadata")
    except ValueError as err:
        return str(err)
    return meta


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_meta(where, meta: dict, retriever=None, corpus=None, with_title: bool | None = None,
               num_passages: int | None = None) -> None:
    """Raise a ``ValueError`` naming ``where`` unless the index described by ``meta`` serves ``retriever`` (same
    dimension, score and weights) over ``corpus`` (a Corpus: same size, ids and texts; a lazily read corpus: same
    texts, by fingerprint)."""
    if retriever is not None:
        dim = retriever.dim
        if meta.get("dim") is not None and dim != meta["dim"]:
            raise ValueError(
                f"{where}: index dim {meta['dim']} (model {meta.get('model_id')!r}) does not match the retriever's "
                f"dim {dim} (model {retriever.model_id!r})"
            )
        if meta.get("score") and meta["score"] != retriever.score:
            raise ValueError(f"{where}: index built for score {meta['score']!r}, retriever uses "
                             f"{retriever.score!r}")
        if meta.get("model_fingerprint") and meta["model_fingerprint"] != retriever.passage_fingerprint():
            raise ValueError(
                f"{where}: index built with model {meta.get('model_id')!r} (fingerprint "
                f"{meta['model_fingerprint'][:12]}), not with this retriever {retriever.model_id!r} (fingerprint "
                f"{retriever.passage_fingerprint()[:12]}); rebuild it with DenseIndex.from_corpus"
            )
    if corpus is None:
        return
    from .passages import is_corpus, passage_fingerprint

    wt = meta.get("with_title", True) if with_title is None else with_title
    if not is_corpus(corpus):
        if meta.get("corpus_fingerprint") and meta["corpus_fingerprint"] != passage_fingerprint(corpus, wt):
            raise ValueError(f"{where}: index built for another corpus (corpus fingerprint differs); rebuild it")
        return
    n = num_passages if num_passages is not None else meta.get("num_passages", len(meta.get("ids", ())))
    if n != len(corpus):
        raise ValueError(f"{where}: index built for another corpus: index holds {n} passages but the corpus "
                         f"has {len(corpus)}")
    ids = meta.get("ids")
    if ids is not None and list(ids) != list(corpus.ids):
        row = next(i for i, (a, b) in enumerate(zip(ids, corpus.ids)) if a != b)
        raise ValueError(
            f"{where}: index passage ids differ from the corpus ids (row {row}: index {ids[row]!r}, corpus "
            f"{corpus.ids[row]!r}); the index must be built from this corpus, in this order"
        )
    if meta.get("corpus_fingerprint") and meta["corpus_fingerprint"] != corpus.fingerprint(wt):
        raise ValueError(f"{where}: index built for another corpus (corpus fingerprint differs); rebuild it")
