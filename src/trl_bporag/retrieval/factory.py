"""FAISS indexes named by an ``index_factory`` string (``"IVF4096,PQ48"``, ``"OPQ48,IVF16384,PQ48"``,
``"HNSW32,SQ8"``, ``"Flat"``...), trained on a sample and filled chunk by chunk, so that the vectors of a corpus never
have to be in memory at once: only the index itself and one chunk are.

The vectors come from a *chunk source*: a callable that yields ``[m, d]`` float32 blocks in row order each time it is
called (an in-memory array cut in blocks, or the shards of :mod:`trl_bporag.retrieval.shards`). Training reads the
sample rows from it in one pass; filling reads it once more. :func:`build_index` does both for every kind of index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)

#: The three built-in kinds of :class:`~trl_bporag.retrieval.DenseIndex`; any other ``index_type`` is a factory string.
BUILTIN_TYPES = ("flat", "hnsw", "ivf")

#: Training rows by default: at least this many (when the corpus has them), and 64 per IVF list.
MIN_TRAIN_SAMPLE = 100_000
TRAIN_PER_LIST = 64

FACTORY_DOCS = "https://github.com/facebookresearch/faiss/wiki/The-index-factory"

ChunkSource = Callable[[], Iterator[np.ndarray]]


def load_faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("DenseIndex needs FAISS, which comes in one of two builds: pip install 'trl-bporag[cpu]' "
                          "(faiss-cpu) or 'trl-bporag[gpu]' (faiss-gpu), not both (they ship the same module)") from err
    return faiss


def is_factory(index_type: str) -> bool:
    """Whether ``index_type`` names a FAISS ``index_factory`` string rather than one of :data:`BUILTIN_TYPES`."""
    return index_type not in BUILTIN_TYPES


def new_index(spec: str, dim: int, flag: str = "index_type (--index_type)"):
    """An empty inner-product FAISS index from a factory string; a ``ValueError`` naming ``flag`` when FAISS cannot
    parse it."""
    faiss = load_faiss()
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{flag}: expected 'flat', 'hnsw', 'ivf' or a FAISS index_factory string such as "
                         f"'IVF4096,PQ48', got {spec!r}")
    try:
        return faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"{flag}: FAISS cannot build the index_factory string {spec!r} for {dim}-dimensional "
                         f"vectors ({_faiss_reason(err)[:160]}); see {FACTORY_DOCS}") from None


def ivf_lists(index) -> int | None:
    """The number of IVF lists inside a (possibly wrapped) index, or None when it has none."""
    try:
        return int(load_faiss().extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def default_train_sample(index, n: int) -> int:
    """Rows to train on when the user names none: all of a small corpus, else max(100,000, 64 per IVF list)."""
    nlist = ivf_lists(index) or 0
    return min(n, max(MIN_TRAIN_SAMPLE, TRAIN_PER_LIST * nlist))


def check_train_sample(index, spec: str, n: int, train_sample: int | None,
                       flag: str = "train_sample (--train_sample)") -> int:
    """The number of training rows to use; a ``ValueError`` naming ``flag`` for a sample larger than the corpus, or
    too small for the IVF lists of ``spec``."""
    if train_sample is None:
        sample = default_train_sample(index, n)
    else:
        if isinstance(train_sample, bool) or not isinstance(train_sample, int) or train_sample < 1:
            raise ValueError(f"{flag}: expected a positive number of passages to train the index on, got "
                             f"{train_sample!r}")
        if train_sample > n:
            raise ValueError(f"{flag}: {train_sample} training passages asked for, but the corpus holds only {n}; "
                             f"pass at most {n}")
        sample = train_sample
    nlist = ivf_lists(index)
    if nlist and not index.is_trained and sample < nlist:
        raise ValueError(f"{flag}: {spec!r} has {nlist} IVF lists, which need at least {nlist} training passages "
                         f"(FAISS advises 39 per list), but {sample} are available; use fewer lists or a larger "
                         f"sample")
    return sample


def sample_rows(chunks: ChunkSource, n: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement from the ``n`` rows of ``chunks`` (one pass, in row order)."""
    if size >= n:
        wanted = np.arange(n)
    else:
        wanted = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    parts, start = [], 0
    for block in chunks():
        stop = start + len(block)
        lo, hi = np.searchsorted(wanted, [start, stop])
        if hi > lo:
            parts.append(np.asarray(block[wanted[lo:hi] - start], dtype=np.float32))
        start = stop
        if hi == len(wanted):
            break
    return np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, 0), np.float32)


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set ``nprobe`` (IVF) and ``efSearch`` (HNSW) wherever they sit inside a factory-built index."""
    faiss = load_faiss()
    space = faiss.ParameterSpace()
    if nprobe is not None and ivf_lists(index):
        space.set_index_parameter(index, "nprobe", int(nprobe))
    if ef_search is not None and "HNSW" in type(faiss.downcast_index(index)).__name__:
        space.set_index_parameter(index, "efSearch", int(ef_search))


def array_chunks(array: np.ndarray, chunk: int = 65_536) -> ChunkSource:
    """A chunk source over an in-memory (or memory-mapped) ``[n, d]`` array."""
    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(array), chunk):
            yield array[start:start + chunk]
    return chunks


def rescore(query: np.ndarray, candidates: np.ndarray, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate rows (``-1`` = none), best ``k`` first.

    ``vectors(rows)`` returns the stored float32 vectors of the given sorted unique rows (a memory-mapped gather)."""
    flat = candidates[candidates >= 0]
    rows = np.unique(flat)
    table = np.asarray(vectors(rows), dtype=np.float32)
    where = np.searchsorted(rows, np.where(candidates >= 0, candidates, rows[0] if rows.size else 0))
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    for i in range(len(candidates)):
        valid = candidates[i] >= 0
        if valid.any():
            scores[i, valid] = table[where[i, valid]] @ query[i]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_rows = np.take_along_axis(candidates, order, axis=1)
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_rows[~np.isfinite(top_scores)] = -1
    return top_scores, top_rows


def _faiss_reason(err: RuntimeError) -> str:
    """The human part of a FAISS error ("could not parse code description PQ7x"), without its C++ location."""
    return str(err).split(" failed: ", 1)[-1].split(" at /", 1)[0].strip() or "unknown"


def _empty_index(index_type: str, dim: int, n: int, hnsw_m: int, ef_construction: int, nlist: int | None):
    """A new inner-product index of one of :data:`BUILTIN_TYPES` or a factory string, and its IVF lists (or None)."""
    if is_factory(index_type):
        index = new_index(index_type, dim)
        return index, ivf_lists(index)
    faiss = load_faiss()
    if index_type == "flat":
        return faiss.IndexFlatIP(dim), None
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        return index, None
    nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
    if n < nlist:
        raise ValueError(f"index_type='ivf': training {nlist} IVF lists needs at least {nlist} passages, "
                         f"got {n}; use index_type='flat' for a corpus this small (or a smaller nlist)")
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT), nlist


def build_index(index_type: str, dim: int, chunks: ChunkSource, n: int, hnsw_m: int = 32, ef_construction: int = 200,
                nlist: int | None = None, train_sample: int | None = None, use_gpu: bool = False, seed: int = 0):
    """One of :data:`BUILTIN_TYPES` or a factory string, trained on a sample (see :func:`check_train_sample`; the
    built-in ``"ivf"`` trains on every vector unless ``train_sample`` says otherwise) and filled chunk by chunk.

    Returns ``(index, rows trained on, nlist)``. With ``use_gpu`` a factory index trains on the GPU (FAISS's
    ``index_cpu_to_gpu`` / ``index_gpu_to_cpu``); the returned index is a CPU index."""
    faiss = load_faiss()
    index, nlist = _empty_index(index_type, dim, n, hnsw_m, ef_construction, nlist)
    trained_on = 0
    if is_factory(index_type) or not index.is_trained:
        size = n if index_type == "ivf" and train_sample is None else check_train_sample(index, index_type, n,
                                                                                         train_sample)
    if not index.is_trained:
        train = sample_rows(chunks, n, size, seed)
        logger.info("Training %s on %d of %d vectors", index_type, len(train), n)
        try:
            if use_gpu and is_factory(index_type):
                gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
                gpu.train(train)
                index = faiss.index_gpu_to_cpu(gpu)
            else:
                index.train(train)
        except RuntimeError as err:  # e.g. PQ codes of 8 bits need 256 training vectors
            raise ValueError(f"train_sample (--train_sample): FAISS cannot train {index_type!r} on {len(train)} "
                             f"vectors ({_faiss_reason(err)[:200]}); use a larger sample or corpus, or a smaller "
                             f"index") from None
        trained_on = len(train)
        del train
    added = 0
    for block in chunks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
        added += len(block)
    if added != n:
        raise ValueError(f"the vector source gave {added} vectors, expected {n}")
    return index, trained_on, nlist
