"""Saving and loading a :class:`~trl_bporag.retrieval.DenseIndex`: ``index.faiss`` + ``metadata.json`` (and
``vectors.npy`` for re-scoring, or the ``shards/`` the index was built from), every file checked on load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Self

import numpy as np

from .factory import is_factory, load_faiss
from .shards import ShardSet
from .storage import INDEX_FILE, META_FILE, VECTORS_FILE, check_meta, read_meta, replaced, sha256, temp_name

FORMAT_VERSION = 1


class IndexFilesMixin:
    """``save`` / ``load`` of :class:`~trl_bporag.retrieval.DenseIndex`."""

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, index_dir: str | os.PathLike) -> Path:
        faiss = load_faiss()
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
            }
            shards = self._shards
            if shards is not None and (out / "shards").resolve() == shards.folder.resolve():
                meta["shards_fingerprint"] = shards.fingerprint  # the ids and vectors stay in the shards
            else:
                meta["ids"] = list(self.ids)
                if self.params["rescore"]:
                    self._save_vectors(out)
            tmp_meta.write_text(json.dumps(meta))
            # index first, then the metadata that vouches for it: a reader between the two sees a sha mismatch
            # (rebuilt by from_corpus), never a wrong index accepted
            os.replace(tmp_index, out / INDEX_FILE)
            os.replace(tmp_meta, out / META_FILE)
        finally:
            for tmp in (tmp_index, tmp_meta):
                tmp.unlink(missing_ok=True)
        return out

    def _save_vectors(self, out: Path) -> None:
        """Write the float32 vectors used for re-scoring to ``out/vectors.npy``, chunk by chunk."""
        with replaced(out / VECTORS_FILE) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(self), self.dim))
            for start in range(0, len(self), 65_536):
                rows = np.arange(start, min(start + 65_536, len(self)))
                array[rows] = self._vectors(rows)
            array.flush()
            del array

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike,
        retriever=None,
        corpus=None,
        with_title: bool | None = None,
        use_gpu: bool | None = None,
        verify: bool = True,
    ) -> Self:
        """Load a saved index. With ``retriever`` / ``corpus``, refuse one built for another model, dimension or corpus.

        ``verify`` checks the FAISS file's sha256 against the metadata (a truncated or corrupt file is refused).
        """
        faiss = load_faiss()
        root = Path(index_dir)
        meta_path, index_path = root / META_FILE, root / INDEX_FILE
        if not meta_path.is_file() or not index_path.is_file():
            raise ValueError(f"{root}: not a saved DenseIndex (expected {INDEX_FILE} and {META_FILE})")
        meta = read_meta(root)
        if not isinstance(meta, dict):  # the schema's message names the file; the others say what is wrong
            raise ValueError(meta if str(meta_path) in meta else f"{meta_path}: corrupt metadata ({meta})")
        if verify and meta.get("index_sha256") and sha256(index_path) != meta["index_sha256"]:
            raise ValueError(f"{index_path}: the file does not match the sha256 in {META_FILE} (truncated or corrupt)")
        check_meta(root, meta, retriever, corpus, with_title)
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as err:
            raise ValueError(f"{index_path}: cannot read the FAISS index ({str(err).splitlines()[0][:200]})") from None
        kind = "hnsw" if hasattr(index, "hnsw") else "ivf" if hasattr(index, "nlist") else "flat"
        if not is_factory(meta["index_type"]) and kind != meta["index_type"]:
            raise ValueError(f"{index_path}: holds a {kind} index, but {META_FILE} says index_type "
                             f"{meta['index_type']!r}")
        shards, vectors, ids = None, None, meta.get("ids")
        if meta.get("shards_fingerprint"):
            shards = ShardSet(root / "shards")
            if shards.fingerprint != meta["shards_fingerprint"]:
                raise ValueError(f"{root / 'shards'}: these shards are not the ones the index was built from "
                                 f"(another corpus, retriever or shard size); rebuild the index")
            ids, vectors = shards.ids, shards.vectors
        elif (root / VECTORS_FILE).is_file():
            stored = np.load(root / VECTORS_FILE, mmap_mode="r")
            if stored.shape != (index.ntotal, index.d) or stored.dtype != np.float32:
                raise ValueError(f"{root / VECTORS_FILE}: holds {stored.shape} {stored.dtype}, expected "
                                 f"({index.ntotal}, {index.d}) float32 (truncated or from another index)")
            vectors = stored.__getitem__
        if ids is None:
            raise ValueError(f"{meta_path}: holds no passage ids and no shards_fingerprint")
        if index.ntotal != len(ids) or index.d != meta["dim"]:
            raise ValueError(
                f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, metadata says {len(ids)} of "
                f"dim {meta['dim']}"
            )
        params = meta["params"]
        extra = {k: v for k, v in meta.items() if k not in {"ids", "params", "index_type", "dim", "format_version",
                                                            "num_passages", "index_sha256", "shards_fingerprint"}}
        return cls(
            shards,
            ids,
            index_type=meta["index_type"],
            hnsw_m=params.get("hnsw_m", 32),
            ef_construction=params.get("ef_construction", 200),
            ef_search=params.get("ef_search", 128),
            nlist=params.get("nlist"),
            nprobe=params.get("nprobe", 16),
            train_sample=params.get("train_sample"),
            rescore=params.get("rescore"),
            use_gpu=use_gpu,
            metadata=extra,
            _index=index,
            _vectors=vectors,
        )
