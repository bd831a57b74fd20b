"""DenseIndex: FAISS inner-product search (flat / HNSW / IVF) with save/load and checked metadata.

A saved index is a folder with ``index.faiss`` and ``metadata.json`` (model id and fingerprint, dimension, score,
corpus fingerprint, passage ids, index parameters, sha256 of the FAISS file). :meth:`DenseIndex.from_corpus` with an
``index_dir`` reuses a saved index whose model and corpus fingerprints match, so an unchanged corpus is never encoded
twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .storage import INDEX_FILE, META_FILE, folder_lock, read_meta, sha256, temp_name

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivf")
FORMAT_VERSION = 1


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("DenseIndex needs FAISS, which comes in one of two builds: pip install 'trl-bporag[cpu]' "
                          "(faiss-cpu) or 'trl-bporag[gpu]' (faiss-gpu), not both (they ship the same module)") from err
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_index_dir(retriever, corpus, index_type: str = "flat", with_title: bool = True) -> Path:
    """The cache folder for an index of ``corpus`` under ``retriever``: ``<cache>/indexes/<corpus>-<model>-<type>``."""
    from trl_bporag.models import cache_dir

    precision = f"-{retriever.dtype}" if getattr(retriever, "dtype", None) else ""
    return cache_dir() / "indexes" / (
        f"{corpus.fingerprint(with_title)[:12]}-{retriever.passage_fingerprint()[:12]}-{index_type}{precision}"
    )


class DenseIndex:
    """Inner-product search over passage embeddings.

    Args:
        embeddings: ``[n, d]`` float32 passage embeddings (normalised for cosine retrieval).
        ids: the ``n`` passage ids, in row order.
        index_type: ``"flat"`` (exact, default), ``"hnsw"`` or ``"ivf"``.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW beam width while building.
        ef_search: HNSW beam width while searching.
        nlist: IVF lists (default ``4*sqrt(n)``, at most ``n/39``).
        nprobe: IVF lists probed per query.
        use_gpu: move a flat / IVF index to the GPU (default: when faiss-gpu sees a GPU). HNSW stays on the CPU.
        metadata: extra fields stored in ``metadata.json`` (model id, fingerprints, ...).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int = 16,
        use_gpu: bool | None = None,
        metadata: dict | None = None,
        _index=None,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type: expected one of {INDEX_TYPES}, got {index_type!r}")
        faiss = _faiss()
        self.ids = list(ids)
        self.index_type = index_type
        self.params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search, "nprobe": nprobe}
        self.metadata = dict(metadata or {})
        if _index is None:
            emb = np.ascontiguousarray(embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(self.ids):
                raise ValueError(f"embeddings: expected shape [{len(self.ids)}, d] (one row per id), got {emb.shape}")
            if len(set(self.ids)) != len(self.ids):
                raise ValueError("ids: passage ids must be unique")
            if not np.isfinite(emb).all():
                raise ValueError("embeddings: contain NaN or inf")
            n, d = emb.shape
            if index_type == "flat":
                index = faiss.IndexFlatIP(d)
            elif index_type == "hnsw":
                index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = ef_construction
            else:
                nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
                if n < nlist:
                    raise ValueError(f"index_type='ivf': training {nlist} IVF lists needs at least {nlist} passages, "
                                     f"got {n}; use index_type='flat' for a corpus this small (or a smaller nlist)")
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(emb)
            index.add(emb)
            self.params["nlist"] = nlist if index_type == "ivf" else None
        else:
            index = _index
            self.params["nlist"] = getattr(index, "nlist", None)
        self._apply_search_params(index)
        self.dim = index.d
        self._cpu_index = index
        self._index = index
        self.on_gpu = False
        if (use_gpu or (use_gpu is None and gpu_available())) and index_type != "hnsw":
            if not gpu_available():
                raise ValueError("use_gpu=True but FAISS sees no GPU (install faiss-gpu on a machine with a GPU)")
            self._gpu_res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
            self.on_gpu = True

    def _apply_search_params(self, index) -> None:
        if self.index_type == "hnsw":
            index.hnsw.efSearch = self.params["ef_search"]
        elif self.index_type == "ivf":
            index.nprobe = self.params["nprobe"]

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
        """
        corpus_fp = corpus.fingerprint(with_title)
        expect = {
            "model_fingerprint": retriever.passage_fingerprint(),
            "corpus_fingerprint": corpus_fp,
            "index_type": index_type,
            "score": retriever.score,
            "encode_dtype": getattr(retriever, "dtype", None),
        }
        if index_dir is None:
            return cls._build(retriever, corpus, expect, with_title, index_type, **kwargs)
        with folder_lock(Path(index_dir)):  # one process builds; the others wait, then load what it saved
            meta = read_meta(Path(index_dir))
            if isinstance(meta, dict) and all(meta.get(key) == value for key, value in expect.items()):
                try:
                    index = cls.load(index_dir, retriever=retriever, corpus=corpus, with_title=with_title,
                                     use_gpu=kwargs.get("use_gpu"))
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
            index = cls._build(retriever, corpus, expect, with_title, index_type, **kwargs)
            try:
                index.save(index_dir)
            except OSError as err:  # read-only or full disk: the index is still right, only not kept
                logger.warning("Cannot save the index to %s (%s); continuing without saving it (it will be encoded "
                               "again next time)", index_dir, err.strerror or err)
            return index

    @classmethod
    def _build(cls, retriever, corpus, expect: dict, with_title: bool, index_type: str, **kwargs) -> DenseIndex:
        start = time.perf_counter()
        emb = retriever.encode_passages(corpus.passages(with_title))
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
        return cls(emb, corpus.ids, index_type=index_type, metadata=metadata, **kwargs)

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
        scores, rows = self._index.search(q, k_eff)
        return scores, rows

    def search_ids(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` passage ids per query (and their scores)."""
        scores, rows = self.search(query_embeddings, k)
        return scores, [[self.ids[r] for r in row if r >= 0] for row in rows]

    def embeddings(self) -> np.ndarray:
        """The stored passage vectors ``[n, d]`` (reconstructed from the FAISS index)."""
        index = self._cpu_index
        if self.index_type == "ivf":
            index.make_direct_map()
        return index.reconstruct_n(0, index.ntotal)

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, index_dir: str | os.PathLike) -> Path:
        faiss = _faiss()
        out = Path(index_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp_index = temp_name(out, INDEX_FILE)
        tmp_meta = temp_name(out, META_FILE)
        try:
            faiss.write_index(self._cpu_index, str(tmp_index))
            sha = sha256(tmp_index)
            meta = {
                **self.metadata,
                "format_version": FORMAT_VERSION,
                "index_type": self.index_type,
                "params": self.params,
                "dim": self.dim,
                "num_passages": len(self.ids),
                "index_sha256": sha,
                "ids": self.ids,
            }
            tmp_meta.write_text(json.dumps(meta))
            # index first, then the metadata that vouches for it: a reader between the two sees a sha mismatch
            # (rebuilt by from_corpus), never a wrong index accepted
            os.replace(tmp_index, out / INDEX_FILE)
            os.replace(tmp_meta, out / META_FILE)
        finally:
            for tmp in (tmp_index, tmp_meta):
                tmp.unlink(missing_ok=True)
        return out

    # -- compatibility --------------------------------------------------------------------------------------------
    @staticmethod
    def _check_meta(where, meta: dict, retriever=None, corpus=None, with_title: bool | None = None,
                    num_passages: int | None = None) -> None:
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
        if corpus is not None:
            n = num_passages if num_passages is not None else len(meta.get("ids", ()))
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
            wt = meta.get("with_title", True) if with_title is None else with_title
            if meta.get("corpus_fingerprint") and meta["corpus_fingerprint"] != corpus.fingerprint(wt):
                raise ValueError(f"{where}: index built for another corpus (corpus fingerprint differs); rebuild it")

    def check_compatible(self, retriever=None, corpus=None, with_title: bool | None = None) -> None:
        """Raise ``ValueError`` unless this index can serve ``retriever`` over ``corpus``: same number of passages and
        passage ids in the same order, and, where the metadata records them (indexes from :meth:`from_corpus`), the
        same embedding dimension, score, retriever weights (fingerprint) and corpus texts (fingerprint)."""
        meta = {**self.metadata, "dim": self.dim, "ids": self.ids}
        self._check_meta("index", meta, retriever, corpus, with_title, num_passages=len(self))

    def card(self, repo_id: str | None = None) -> str:
        """The ``README.md`` pushed with the index (:func:`trl_bporag.hub.index_card`)."""
        from trl_bporag.hub import index_card

        return index_card(self, repo_id)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        repo_type: str = "dataset",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Upload the index to a Hub repo (a dataset repo by default): ``index.faiss``, ``metadata.json`` (as
        :meth:`save` writes them) and a ``README.md`` card. Returns the commit URL. Read it back with
        :meth:`from_pretrained`."""
        import tempfile

        from trl_bporag.hub import push_folder_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            (Path(tmp) / "README.md").write_text(self.card(repo_id))
            return push_folder_to_hub(
                tmp, repo_id, repo_type=repo_type, private=private, token=token, revision=revision,
                commit_message=commit_message or f"Upload a {self.index_type} index of {len(self)} passages",
            )

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        *,
        repo_type: str = "dataset",
        revision: str | None = None,
        token: str | None = None,
        **load_kwargs,
    ) -> DenseIndex:
        """Load an index from a local folder or a Hub repo id (downloaded with ``huggingface_hub.snapshot_download``).

        ``load_kwargs`` go to :meth:`load` (``retriever=``, ``corpus=``, ``use_gpu=``, ...), so the same checks apply:
        a corrupt file, or an index built for another retriever or corpus, is refused.
        """
        from trl_bporag.hub import snapshot

        folder = snapshot(repo_id_or_path, repo_type=repo_type, revision=revision, token=token,
                          allow_patterns=[INDEX_FILE, META_FILE, "README.md"])
        return cls.load(folder, **load_kwargs)

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike,
        retriever=None,
        corpus=None,
        with_title: bool | None = None,
        use_gpu: bool | None = None,
        verify: bool = True,
    ) -> DenseIndex:
        """Load a saved index. With ``retriever`` / ``corpus``, refuse one built for another model, dimension or corpus.

        ``verify`` checks the FAISS file's sha256 against the metadata (a truncated or corrupt file is refused).
        """
        faiss = _faiss()
        root = Path(index_dir)
        meta_path, index_path = root / META_FILE, root / INDEX_FILE
        if not meta_path.is_file() or not index_path.is_file():
            raise ValueError(f"{root}: not a saved DenseIndex (expected {INDEX_FILE} and {META_FILE})")
        meta = read_meta(root)
        if not isinstance(meta, dict):  # the schema's message names the file; the others say what is wrong
            raise ValueError(meta if str(meta_path) in meta else f"{meta_path}: corrupt metadata ({meta})")
        if verify and meta.get("index_sha256") and sha256(index_path) != meta["index_sha256"]:
            raise ValueError(f"{index_path}: the file does not match the sha256 in {META_FILE} (truncated or corrupt)")
        cls._check_meta(root, meta, retriever, corpus, with_title)
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as err:
            raise ValueError(f"{index_path}: cannot read the FAISS index ({str(err).splitlines()[0][:200]})") from None
        kind = "hnsw" if hasattr(index, "hnsw") else "ivf" if hasattr(index, "nlist") else "flat"
        if kind != meta["index_type"]:
            raise ValueError(f"{index_path}: holds a {kind} index, but {META_FILE} says index_type "
                             f"{meta['index_type']!r}")
        if index.ntotal != len(meta["ids"]) or index.d != meta["dim"]:
            raise ValueError(
                f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, metadata says {len(meta['ids'])} of "
                f"dim {meta['dim']}"
            )
        params = meta["params"]
        extra = {k: v for k, v in meta.items() if k not in {"ids", "params", "index_type", "dim", "format_version",
                                                            "num_passages", "index_sha256"}}
        return cls(
            None,
            meta["ids"],
            index_type=meta["index_type"],
            hnsw_m=params.get("hnsw_m", 32),
            ef_construction=params.get("ef_construction", 200),
            ef_search=params.get("ef_search", 128),
            nlist=params.get("nlist"),
            nprobe=params.get("nprobe", 16),
            use_gpu=use_gpu,
            metadata=extra,
            _index=index,
        )
