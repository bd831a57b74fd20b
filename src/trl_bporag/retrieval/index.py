"""DenseIndex: FAISS inner-product search (flat / HNSW / IVF) with save/load and checked metadata.

A saved index is a folder with ``index.faiss`` and ``metadata.json`` (model id and fingerprint, dimension, score,
corpus fingerprint, passage ids, index parameters, sha256 of the FAISS file). :meth:`DenseIndex.from_corpus` with an
``index_dir`` reuses a saved index whose model and corpus fingerprints match, so an unchanged corpus is never encoded
twice.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .factory import (
    BUILTIN_TYPES,
    array_chunks,
    build_index,
    check_train_sample,
    is_factory,
    ivf_lists,
    load_faiss,
    new_index,
    rescore,
    set_search_params,
)
from .index_files import IndexFilesMixin
from .index_hub import IndexHubMixin
from .passages import is_corpus, passage_fingerprint
from .shards import DEFAULT_SHARD_SIZE, ShardIds, ShardSet, encode_shards
from .storage import check_meta, folder_lock, read_meta

logger = logging.getLogger(__name__)

INDEX_TYPES = BUILTIN_TYPES
RESCORE_ROWS = 100_000  # candidate vectors gathered at once when re-scoring


def gpu_available() -> bool:
    faiss = load_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_index_dir(retriever, corpus, index_type: str = "flat", with_title: bool = True) -> Path:
    """The cache folder for an index of ``corpus`` under ``retriever``: ``<cache>/indexes/<corpus>-<model>-<type>``."""
    from trl_bporag.models import cache_dir

    precision = f"-{retriever.dtype}" if getattr(retriever, "dtype", None) else ""
    kind = re.sub(r"[^A-Za-z0-9]+", "_", index_type)  # "IVF4096,PQ48" -> "IVF4096_PQ48"
    return cache_dir() / "indexes" / (
        f"{passage_fingerprint(corpus, with_title)[:12]}-{retriever.passage_fingerprint()[:12]}-{kind}{precision}"
    )


class DenseIndex(IndexFilesMixin, IndexHubMixin):
    """Inner-product search over passage embeddings.

    Args:
        embeddings: ``[n, d]`` float32 passage embeddings (normalised for cosine retrieval), or a
            :class:`~trl_bporag.retrieval.shards.ShardSet` (vectors memory-mapped on disk, added shard by shard).
        ids: the ``n`` passage ids, in row order (default for a ShardSet: its ids).
        index_type: ``"flat"`` (exact, default), ``"hnsw"``, ``"ivf"``, or any FAISS ``index_factory`` string
            (``"IVF4096,PQ48"``, ``"OPQ48,IVF16384,PQ48"``, ``"HNSW32,SQ8"``...) for a compressed index.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW beam width while building.
        ef_search: HNSW beam width while searching (also inside a factory index).
        nlist: IVF lists (default ``4*sqrt(n)``, at most ``n/39``; a factory string names its own).
        nprobe: IVF lists probed per query (also inside a factory index).
        train_sample: vectors a trained index learns from (default: all of them for ``"ivf"``; for a factory
            string, max(100,000, 64 per IVF list) or the corpus if smaller); more than the corpus is a ``ValueError``.
        rescore: re-score the compressed index's top-``rescore`` candidates exactly with the stored float32 vectors
            (kept in memory for an array, memory-mapped for shards / a saved ``vectors.npy``) and return the best k.
        use_gpu: move the index to the GPU (default: when faiss-gpu sees a GPU). HNSW stays on the CPU.
        metadata: extra fields stored in ``metadata.json`` (model id, fingerprints, ...).
    """

    def __init__(
        self,
        embeddings,
        ids: Sequence[str] | None = None,
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int = 16,
        train_sample: int | None = None,
        rescore: int | None = None,
        use_gpu: bool | None = None,
        metadata: dict | None = None,
        _index=None,
        _vectors=None,
    ):
        faiss = load_faiss()
        if not isinstance(index_type, str) or not index_type.strip():
            raise ValueError(f"index_type: expected one of {INDEX_TYPES} or a FAISS index_factory string, got "
                             f"{index_type!r}")
        shards = embeddings if isinstance(embeddings, ShardSet) else None
        if ids is None:
            if shards is None:
                raise ValueError("ids: the passage ids are required (one per row of embeddings)")
            ids = shards.ids
        self.ids = ids if isinstance(ids, ShardIds) else list(ids)
        self.index_type = index_type
        self.params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search, "nprobe": nprobe,
                       "train_sample": None, "rescore": None}
        self.metadata = dict(metadata or {})
        self._shards = shards
        self._vectors = _vectors  # rows -> their float32 vectors (for exact re-scoring)
        if _index is None:
            if shards is not None:
                n, d, chunks, self._vectors = len(shards), shards.dim, shards.chunks, shards.vectors
                if len(self.ids) != n:
                    raise ValueError(f"ids: {len(self.ids)} ids for {n} vectors in {shards.folder}")
            else:
                emb = np.ascontiguousarray(embeddings, dtype=np.float32)
                if emb.ndim != 2 or emb.shape[0] != len(self.ids):
                    raise ValueError(f"embeddings: expected shape [{len(self.ids)}, d] (one row per id), got "
                                     f"{emb.shape}")
                if not np.isfinite(emb).all():
                    raise ValueError("embeddings: contain NaN or inf")
                n, d, chunks = *emb.shape, array_chunks(emb)
                if rescore:
                    self._vectors = emb.__getitem__
            if not isinstance(self.ids, ShardIds) and len(set(self.ids)) != len(self.ids):
                raise ValueError("ids: passage ids must be unique")
            index, trained_on, nlist = build_index(index_type, d, chunks, n, hnsw_m, ef_construction, nlist,
                                                   train_sample, use_gpu=use_gpu is not False and gpu_available())
            self.params.update(nlist=nlist, train_sample=trained_on or None)
        else:
            index = _index
            self.params["nlist"] = ivf_lists(index)
            self.params["train_sample"] = train_sample
        self.dim = index.d
        self._cpu_index = index
        self._index = index
        self.configure(rescore=rescore)
        self.on_gpu = False
        if (use_gpu or (use_gpu is None and gpu_available())) and "hnsw" not in type(index).__name__.lower():
            if not gpu_available():
                raise ValueError("use_gpu=True but FAISS sees no GPU (install faiss-gpu on a machine with a GPU)")
            self._gpu_res = faiss.StandardGpuResources()
            try:
                self._index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
                self.on_gpu = True
            except RuntimeError as err:  # a factory index FAISS has no GPU version of: search it on the CPU
                if use_gpu:
                    raise ValueError(f"use_gpu=True: FAISS cannot move {index_type!r} to the GPU "
                                     f"({str(err).splitlines()[0][:160]})") from None
                logger.warning("FAISS cannot move %r to the GPU; searching it on the CPU", index_type)

    def configure(self, nprobe: int | None = None, ef_search: int | None = None, rescore: int | None = None) -> None:
        """Set the search parameters: IVF lists probed, HNSW beam width, exact re-scoring depth (0 turns it off)."""
        for name, value, least in (("nprobe", nprobe, 1), ("ef_search", ef_search, 1), ("rescore", rescore, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} (--{name}): expected an integer >= {least}, got {value!r}")
        if rescore is not None:
            if rescore and self._vectors is None:
                raise ValueError("rescore: this index keeps no float32 vectors to re-score with (build it with "
                                 "rescore=..., or from shards)")
            self.params["rescore"] = rescore or None
        self.params.update({k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None})
        index = self._cpu_index
        if self.index_type == "hnsw":
            index.hnsw.efSearch = self.params["ef_search"]
        elif self.index_type == "ivf":
            index.nprobe = self.params["nprobe"]
        elif is_factory(self.index_type):
            set_search_params(index, self.params["nprobe"], self.params["ef_search"])
        if getattr(self, "on_gpu", False) and self.params.get("nlist"):
            self._index.nprobe = self.params["nprobe"]

    def __len__(self) -> int:
        return self._index.ntotal

    # -- building -----------------------------------------------------------------------------------------------
    @classmethod
    def from_corpus(
        cls,
        retriever,
        corpus,
        index_dir: str | os.PathLike | None = None,
        with_title: bool = True,
        index_type: str = "flat",
        overwrite: bool = False,
        **kwargs,
    ) -> DenseIndex:
        """Encode a :class:`~trl_bporag.data.Corpus` with ``retriever`` and index it.

        With ``index_dir``: a saved index there whose model fingerprint, corpus fingerprint and index type match is
        loaded instead (0 passages encoded); otherwise the new index is saved there. A damaged saved index (truncated
        or altered file, unreadable metadata) is rebuilt with a warning naming the folder. A folder holding the index
        of *another* model, corpus or index type is refused with a ``ValueError`` (the user's data is not
        overwritten) unless ``overwrite=True``. Processes building into the same folder take turns (a file lock): the
        first builds and saves, the others load its result.

        ``corpus`` may also be read lazily (a ``corpus.jsonl`` / BEIR folder, an Arrow folder or a ``Dataset``), and
        ``shard_size`` / ``encode_devices`` ask for the streaming encoder: the passages are then encoded shard by shard
        into ``index_dir/shards`` (resumable; :func:`~trl_bporag.retrieval.shards.encode_shards`, with a
        sentence-transformers multi-process pool on ``encode_devices``) and the index filled from the memory-mapped
        shards, which also serve ``rescore``. The search parameters ``nprobe`` / ``ef_search`` / ``rescore`` given
        here apply to a reused index too.
        """
        shard_size, devices = kwargs.pop("shard_size", None), kwargs.pop("encode_devices", None)
        if not is_corpus(corpus) and index_dir is None:
            raise ValueError("index_dir: a corpus read lazily is encoded in shards on disk; pass the folder to keep "
                             "them and the index in (--output_dir)")
        expect = {
            "model_fingerprint": retriever.passage_fingerprint(),
            "corpus_fingerprint": passage_fingerprint(corpus, with_title),
            "index_type": index_type,
            "score": retriever.score,
            "encode_dtype": None if devices else getattr(retriever, "dtype", None),
        }
        sharded = index_dir is not None and (shard_size is not None or devices is not None or not is_corpus(corpus))
        shard_args = {"shard_size": shard_size or DEFAULT_SHARD_SIZE, "devices": devices, "overwrite": overwrite,
                      "folder": Path(index_dir or ".") / "shards"} if sharded else None
        search = {key: kwargs[key] for key in ("nprobe", "ef_search", "rescore") if key in kwargs}
        if is_factory(index_type):  # a bad string or sample is refused before any passage is encoded
            empty = new_index(index_type, retriever.dim)
            if is_corpus(corpus):
                check_train_sample(empty, index_type, len(corpus), kwargs.get("train_sample"))
        if index_dir is None:
            return cls._build(retriever, corpus, expect, with_title, index_type, shard_args, **kwargs)
        with folder_lock(Path(index_dir)):  # one process builds; the others wait, then load what it saved
            meta = read_meta(Path(index_dir))
            if isinstance(meta, dict) and all(meta.get(key) == value for key, value in expect.items()):
                try:
                    # a corpus read lazily matched by fingerprint just above: not hashed a second time by load
                    index = cls.load(index_dir, retriever=retriever, corpus=corpus if is_corpus(corpus) else None,
                                     with_title=with_title, use_gpu=kwargs.get("use_gpu"))
                    index.configure(**search)
                    logger.info("Reusing the index in %s (model and corpus unchanged)", index_dir)
                    return index
                except ValueError as err:
                    logger.warning("The saved index in %s is damaged (%s): rebuilding it", index_dir, err)
            elif isinstance(meta, str):
                logger.warning("The saved index in %s is damaged (%s): rebuilding it", index_dir, meta)
            elif isinstance(meta, dict):
                differs = {key: (meta.get(key), value) for key, value in expect.items() if meta.get(key) != value}
                if not overwrite:
                    detail = "; ".join(f"{key}: folder has {old!r:.24}, this run {new!r:.24}"
                                       for key, (old, new) in differs.items())
                    raise ValueError(f"{index_dir}: holds an index of another model/corpus/type ({detail}); refusing "
                                     f"to overwrite it. Pass another folder, or overwrite=True (--overwrite_index) "
                                     f"to replace it")
                logger.warning("The index in %s was built for another %s: replacing it", index_dir,
                               "/".join(k.split("_")[0] for k in differs))
            index = cls._build(retriever, corpus, expect, with_title, index_type, shard_args, **kwargs)
            try:
                index.save(index_dir)
            except OSError as err:  # read-only or full disk: the index is still right, only not kept
                logger.warning("Cannot save the index to %s (%s); continuing without saving it (it will be encoded "
                               "again next time)", index_dir, err.strerror or err)
            return index

    @classmethod
    def _build(cls, retriever, corpus, expect: dict, with_title: bool, index_type: str, shard_args: dict | None,
               **kwargs) -> DenseIndex:
        start = time.perf_counter()
        if shard_args is not None:
            emb = encode_shards(retriever, corpus, with_title=with_title, **shard_args)
            ids = emb.ids
        else:
            emb, ids = retriever.encode_passages(corpus.passages(with_title)), corpus.ids
        metadata = {
            "model_id": retriever.model_id,
            "model_fingerprint": expect["model_fingerprint"],
            "score": retriever.score,
            "normalized": retriever.normalize,
            "corpus_fingerprint": expect["corpus_fingerprint"],
            "encode_dtype": expect["encode_dtype"],
            "with_title": with_title,
            "encode_seconds": round(time.perf_counter() - start, 3),
        }
        return cls(emb, ids, index_type=index_type, metadata=metadata, **kwargs)

    @classmethod
    def cached(
        cls,
        retriever,
        corpus,
        index_dir: str | os.PathLike | None = None,
        with_title: bool = True,
        index_type: str = "flat",
        **kwargs,
    ) -> DenseIndex:
        """:meth:`from_corpus` with the index kept in ``index_dir``, by default the shared cache folder
        :func:`default_index_dir` (the one every script and :meth:`~trl_bporag.RAGPipeline.from_pretrained` use), so
        that an unchanged retriever and corpus are encoded once. An entry of the cache folder built for another
        model or score is replaced; a folder you name is protected as in :meth:`from_corpus`."""
        ours = index_dir is None  # the cache folder is ours to replace; a folder the user names is not
        if ours:
            index_dir = default_index_dir(retriever, corpus, index_type, with_title)
        kwargs.setdefault("overwrite", ours)
        return cls.from_corpus(retriever, corpus, index_dir=str(index_dir), with_title=with_title,
                               index_type=index_type, **kwargs)

    # -- search -------------------------------------------------------------------------------------------------
    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(scores [n, k], rows [n, k])``; rows index :attr:`ids` (-1 = none)."""
        q = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query_embeddings: expected shape [n, {self.dim}], got {tuple(query_embeddings.shape)}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
        if bad.size:
            raise ValueError(f"query_embeddings: row(s) {bad[:5].tolist()} hold NaN or inf (an encoder that overflowed?"
                             "); no passage can be ranked for them")
        k_eff = min(k, len(self))
        if not self.params["rescore"]:
            return self._index.search(q, k_eff)
        # exact inner products of the compressed index's candidates, a batch of queries at a time so that the
        # gathered float32 vectors stay near RESCORE_ROWS rows (150 MB at 384 dimensions)
        depth = min(max(k_eff, self.params["rescore"]), len(self))
        step = max(1, RESCORE_ROWS // depth)
        parts = [rescore(q[i:i + step], self._index.search(q[i:i + step], depth)[1], self._vectors, k_eff)
                 for i in range(0, len(q), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def search_ids(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` passage ids per query (and their scores)."""
        scores, rows = self.search(query_embeddings, k)
        return scores, [[self.ids[r] for r in row if r >= 0] for row in rows]

    def embeddings(self) -> np.ndarray:
        """The stored passage vectors ``[n, d]`` (reconstructed from the FAISS index)."""
        if self._vectors is not None:
            return np.asarray(self._vectors(np.arange(len(self))), dtype=np.float32)
        index = self._cpu_index
        if ivf_lists(index):
            self._faiss_ivf().make_direct_map()
        return index.reconstruct_n(0, index.ntotal)

    def _faiss_ivf(self):
        return load_faiss().extract_index_ivf(self._cpu_index)

    # -- compatibility --------------------------------------------------------------------------------------------
    def check_compatible(self, retriever=None, corpus=None, with_title: bool | None = None) -> None:
        """Raise ``ValueError`` unless this index can serve ``retriever`` over ``corpus``: same number of passages and
        passage ids in the same order, and, where the metadata records them (indexes from :meth:`from_corpus`), the
        same embedding dimension, score, retriever weights (fingerprint) and corpus texts (fingerprint)."""
        meta = {**self.metadata, "dim": self.dim, "ids": self.ids}
        check_meta("index", meta, retriever, corpus, with_title, num_passages=len(self))
