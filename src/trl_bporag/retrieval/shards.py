"""Streaming, sharded, resumable passage encoding.

:func:`encode_shards` reads a corpus lazily (:mod:`~trl_bporag.retrieval.passages`), encodes it ``shard_size``
passages at a time and writes each shard to a folder as ``shard-00000.npy`` (float32 ``[m, d]``) and
``shard-00000.ids.npy`` (the passage ids), then records it in ``shards.json``. Files are written under temporary names
and renamed; the record is written after its files. A killed run therefore resumes at the first shard not recorded,
and a finished run encodes nothing: each recorded shard keeps the sha256 of the ids and texts it was encoded from, so
an edited corpus re-encodes from its first changed shard (with a warning) and never mixes old vectors with new text.

Encoding can be spread over several processes or devices with sentence-transformers' own multi-process pool
(``devices=["cpu", "cpu"]`` or ``["cuda:0", "cuda:1", ...]``): one code path, the pool started only when a shard
needs encoding. Memory holds one shard's texts and vectors, never the corpus.

:class:`ShardSet` reads a finished folder back: vectors chunk by chunk (memory-mapped), rows gathered for exact
re-scoring, and the ids as a lazy sequence.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..data import CorpusHash
from .passages import block_hash, describe, iter_blocks
from .storage import folder_lock, replaced

logger = logging.getLogger(__name__)

MANIFEST = "shards.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 100_000
IDENTITY = ("model_fingerprint", "score", "encode_dtype", "with_title", "shard_size")


def _shard_files(folder: Path, j: int) -> tuple[Path, Path]:
    return folder / f"shard-{j:05d}.npy", folder / f"shard-{j:05d}.ids.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with replaced(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)


def _write_manifest(folder: Path, manifest: dict) -> None:
    with replaced(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))


def _read_manifest(folder: Path) -> dict | str | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{path} does not parse ({err})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return f"{path} holds no shard list"
    return manifest


def _shard_ok(folder: Path, j: int, record: dict, dim: int) -> bool:
    vec_path, ids_path = _shard_files(folder, j)
    try:
        vectors = np.load(vec_path, mmap_mode="r")
        ids = np.load(ids_path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return vectors.shape == (record.get("n"), dim) and vectors.dtype == np.float32 and ids.shape == (record["n"],)


def encode_shards(
    retriever,
    corpus,
    folder: str | os.PathLike,
    shard_size: int = DEFAULT_SHARD_SIZE,
    with_title: bool = True,
    devices: Sequence[str] | None = None,
    overwrite: bool = False,
    on_shard: Callable[[int], None] | None = None,
) -> ShardSet:
    """Encode ``corpus`` (a Corpus, a corpus.jsonl / BEIR folder, an Arrow folder or a Dataset) into ``folder``.

    Args:
        retriever: the :class:`~trl_bporag.retrieval.Retriever` (its ``encode_passages``).
        corpus: the passages, read lazily in order.
        folder: where the shards and ``shards.json`` go; a folder of another retriever / shard size / title setting
            is refused (``ValueError``) unless ``overwrite``.
        shard_size: passages per shard (the unit of resumption and of memory).
        with_title: passage text = title + " " + text.
        devices: encode with a sentence-transformers multi-process pool on these devices (e.g. ``["cpu", "cpu"]``,
            ``["cuda:0", "cuda:1"]``); None: in this process (with the retriever's bf16 autocast where it has one;
            pool workers encode in float32, and the record says so).
        on_shard: called with the shard number after each newly encoded shard is recorded.
    Returns:
        the finished :class:`ShardSet`; ``.encoded`` / ``.reused`` count this run's new and reused shards.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size: expected a positive number of passages per shard, got {shard_size!r}")
    if devices is not None and (isinstance(devices, str) or not devices):
        raise ValueError(f"encode_devices: expected a list of devices such as ['cpu', 'cpu'] or ['cuda:0', 'cuda:1'], "
                         f"got {devices!r}")
    folder = Path(folder)
    identity = {
        "model_fingerprint": retriever.passage_fingerprint(),
        "score": retriever.score,
        "encode_dtype": None if devices else getattr(retriever, "dtype", None),
        "with_title": with_title,
        "shard_size": shard_size,
    }
    with folder_lock(folder):
        manifest = _read_manifest(folder)
        if isinstance(manifest, str):
            logger.warning("%s: the shard record is damaged (%s); encoding every shard again", folder, manifest)
            manifest = None
        if manifest is not None and any(manifest.get(key) != value for key, value in identity.items()):
            differs = [key for key, value in identity.items() if manifest.get(key) != value]
            if not overwrite:
                raise ValueError(f"{folder}: holds shards of another retriever or setting ({', '.join(differs)} "
                                 f"differ); refusing to overwrite them. Pass another folder or overwrite=True "
                                 f"(--overwrite)")
            logger.warning("%s: shards of another %s: encoding them again", folder, "/".join(differs))
            manifest = None
        dim = retriever.dim
        if manifest is None:
            manifest = {"format_version": FORMAT_VERSION, "model_id": retriever.model_id, **identity, "dim": dim,
                        "shards": [], "complete": False}
        records = manifest["shards"]
        fingerprint, pool, encoded, reused, seconds, streamed = CorpusHash(), None, 0, 0, 0.0, 0
        try:
            for j, (ids, texts) in enumerate(iter_blocks(corpus, shard_size, with_title)):
                streamed = j + 1
                fingerprint.update(ids, texts)
                digest = block_hash(ids, texts)
                if j < len(records) and records[j]["sha256"] == digest and _shard_ok(folder, j, records[j], dim):
                    reused += 1
                    continue
                if j < len(records):
                    logger.warning("%s: shard %d no longer matches the corpus (edited, or a damaged file): encoding "
                                   "it and every later shard again", folder, j)
                    del records[j:]
                    manifest["complete"] = False
                if devices and pool is None:
                    pool = retriever.model.start_multi_process_pool(list(devices))
                start = time.perf_counter()
                vectors = retriever.encode_passages(texts, pool=pool) if pool else retriever.encode_passages(texts)
                seconds += time.perf_counter() - start
                vec_path, ids_path = _shard_files(folder, j)
                _save_npy(vec_path, np.ascontiguousarray(vectors, dtype=np.float32))
                _save_npy(ids_path, np.array([pid.encode() for pid in ids]))
                records.append({"n": len(ids), "sha256": digest})
                _write_manifest(folder, manifest)  # after the shard's files: a record always vouches for whole files
                encoded += 1
                if on_shard is not None:
                    on_shard(j)
        finally:
            if pool is not None:
                retriever.model.stop_multi_process_pool(pool)
        if streamed == 0:
            raise ValueError(f"corpus {describe(corpus)}: holds no passages")
        del records[streamed:]  # the corpus shrank: drop the shards past its end
        for path in folder.glob("shard-*.npy"):
            if int(path.name[6:11]) >= len(records):
                path.unlink()
        manifest.update(complete=True, num_passages=sum(r["n"] for r in records),
                        corpus_fingerprint=fingerprint.hexdigest(), encode_seconds=round(seconds, 3))
        _write_manifest(folder, manifest)
    shards = ShardSet(folder)
    shards.encoded, shards.reused = encoded, reused
    logger.info("%s: %d shards encoded, %d reused", folder, encoded, reused)
    return shards


class ShardIds(Sequence):
    """The passage ids of a :class:`ShardSet`, read from the memory-mapped id files on demand."""

    def __init__(self, shard_set: ShardSet):
        self._set = shard_set

    def __len__(self) -> int:
        return len(self._set)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = bisect.bisect_right(self._set.offsets, i) - 1
        return bytes(self._set.id_array(j)[i - self._set.offsets[j]]).decode()

    def __iter__(self):
        for j in range(len(self._set.records)):
            for raw in self._set.id_array(j):
                yield bytes(raw).decode()


class ShardSet:
    """A finished folder of shards (see :func:`encode_shards`): ``len``, ``dim``, ``ids`` (lazy), ``chunks()``
    (vectors shard by shard, memory-mapped), ``vectors(rows)`` (a gather for re-scoring), ``fingerprint``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        if not isinstance(manifest, dict):
            raise ValueError(f"{self.folder}: no readable {MANIFEST} ({manifest or 'missing'}); not a shard folder")
        if not manifest.get("complete"):
            raise ValueError(f"{self.folder}: the encoding was interrupted ({len(manifest['shards'])} shards "
                             f"recorded); run it again to finish")
        self.manifest = manifest
        self.records = manifest["shards"]
        self.dim = int(manifest["dim"])
        self.offsets = [0]
        for j, record in enumerate(self.records):
            if not _shard_ok(self.folder, j, record, self.dim):
                raise ValueError(f"{_shard_files(self.folder, j)[0]}: missing, truncated or not {record['n']} x "
                                 f"{self.dim} float32 as {MANIFEST} says")
            self.offsets.append(self.offsets[-1] + record["n"])
        self.ids = ShardIds(self)
        self.encoded = self.reused = 0
        self._maps: dict = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def fingerprint(self) -> str:
        """Identifies these shards: the retriever, the corpus and the shard layout they were encoded with."""
        m = self.manifest
        return block_hash([m["model_fingerprint"], str(m["shard_size"]), str(m["encode_dtype"])],
                          [m["corpus_fingerprint"], str(len(self)), str(m["with_title"])])

    def id_array(self, j: int) -> np.ndarray:
        if j not in self._maps:
            self._maps[j] = np.load(_shard_files(self.folder, j)[1], mmap_mode="r")
        return self._maps[j]

    def chunks(self):
        """Yield each shard's ``[m, d]`` vectors in row order, one shard in memory at a time."""
        for j in range(len(self.records)):
            yield np.load(_shard_files(self.folder, j)[0])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The float32 vectors of ``rows`` (sorted, unique), gathered from the shard files. Each shard is mapped only
        for the gather, so the pages read do not stay in this process's resident memory."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for j in np.unique(shard):
            mask = shard == j
            mapped = np.load(_shard_files(self.folder, int(j))[0], mmap_mode="r")
            out[mask] = mapped[rows[mask] - self.offsets[j]]
            del mapped
        return out
