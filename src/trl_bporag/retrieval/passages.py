"""Passages read lazily, in order, from a :class:`~trl_bporag.data.Corpus`, a BEIR ``corpus.jsonl`` file (or a BEIR
folder holding one), or a ``datasets`` Arrow folder / :class:`datasets.Dataset` with ``_id`` (or ``id``), ``text`` and
optional ``title`` columns. Only one block of passages is in memory at a time, so a corpus of any size can be
encoded; :func:`passage_fingerprint` hashes a source exactly as :meth:`Corpus.fingerprint` does, so a streamed corpus
and the same corpus loaded in memory share one index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..data import Corpus, CorpusHash, _read_jsonl, first_duplicate, passage_text


def is_corpus(source) -> bool:
    return isinstance(source, Corpus)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    for line_no, row in _read_jsonl(path, ("_id", "text")):
        yield _checked(row, f"{path}:{line_no}")


def _checked(row: dict, where: str) -> tuple[str, str, str]:
    pid = row.get("_id", row.get("id"))
    if not isinstance(pid, str) or not pid:
        raise ValueError(f"{where}: field '_id' must be a non-empty string, got {pid!r:.40}")
    text, title = row.get("text"), row.get("title") or ""
    if not isinstance(text, str):
        raise ValueError(f"{where}: field 'text' of passage {pid!r} must be a string, got {type(text).__name__}")
    if not isinstance(title, str):
        raise ValueError(f"{where}: field 'title' of passage {pid!r} must be a string, got {type(title).__name__}")
    return pid, title, text


def _dataset_rows(dataset, where: str, batch: int = 10_000) -> Iterator[tuple[str, str, str]]:
    columns = set(dataset.column_names)
    if "text" not in columns or not columns & {"_id", "id"}:
        raise ValueError(f"{where}: expected columns '_id' (or 'id'), 'text' and optional 'title', got "
                         f"{sorted(columns)}")
    for start in range(0, len(dataset), batch):
        block = dataset[start:start + batch]  # Arrow slices: memory-mapped, one block at a time
        ids = block.get("_id", block.get("id"))
        titles = block.get("title") or [""] * len(ids)
        for offset, (pid, title, text) in enumerate(zip(ids, titles, block["text"])):
            yield _checked({"_id": pid, "title": title, "text": text}, f"{where}: row {start + offset}")


def describe(source) -> str:
    """A short name of a passage source for messages and metadata."""
    if is_corpus(source):
        return f"Corpus of {len(source)} passages"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"{type(source).__name__} of {len(source)} rows"


def iter_passages(source, with_title: bool = True) -> Iterator[tuple[str, str]]:
    """``(passage id, passage text)`` in corpus order, read lazily from ``source`` (see the module docstring)."""
    if is_corpus(source):
        for i, pid in enumerate(source.ids):
            yield pid, source.passage(i, with_title)
        return
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir() and (path / "corpus.jsonl").is_file():
            path = path / "corpus.jsonl"
        if path.is_file():
            rows = _jsonl_rows(path)
        elif path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
            import datasets

            rows = _dataset_rows(datasets.load_from_disk(str(path)), str(path))
        else:
            raise ValueError(f"corpus: {path} is neither a corpus.jsonl file, a BEIR folder holding one, nor a "
                             f"datasets Arrow folder (save_to_disk)")
    elif hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        rows = _dataset_rows(source, "corpus dataset")
    else:
        raise ValueError(f"corpus: expected a Corpus, a corpus.jsonl path, an Arrow folder or a datasets.Dataset, got "
                         f"{type(source).__name__}")
    for pid, title, text in rows:
        yield pid, passage_text(title, text, with_title)


def iter_blocks(source, size: int, with_title: bool = True) -> Iterator[tuple[list[str], list[str]]]:
    """``(ids, texts)`` blocks of ``size`` passages (the last may be shorter); a passage id repeated inside a block is
    a ``ValueError`` (across blocks, the index's id lookup would need every id in memory)."""
    def checked(ids, texts):
        dup = first_duplicate(ids)
        if dup is not None:
            raise ValueError(f"corpus {describe(source)}: duplicate passage id {dup!r} in field '_id'")
        return ids, texts

    ids, texts = [], []
    for pid, text in iter_passages(source, with_title):
        ids.append(pid)
        texts.append(text)
        if len(ids) == size:
            yield checked(ids, texts)
            ids, texts = [], []
    if ids:
        yield checked(ids, texts)


def block_hash(ids, texts) -> str:
    """sha256 of one block's ids and texts (what a shard was encoded from)."""
    fp = CorpusHash()
    fp.update(ids, texts)
    return fp.hexdigest()


def passage_fingerprint(source, with_title: bool = True) -> str:
    """The corpus fingerprint of ``source``: equal to ``Corpus.fingerprint(with_title)`` of the same passages."""
    if is_corpus(source):
        return source.fingerprint(with_title)
    fp = CorpusHash()
    for ids, texts in iter_blocks(source, 10_000, with_title):
        fp.update(ids, texts)
    return fp.hexdigest()
