"""FAISS indexes named by an ``index_factory`` string (``"IVF4096,PQ48"``, ``"OPQ48,IVF16384,PQ48"``,
``"HNSW32,SQ8"``, ``"Flat"``...), trained on a sample and filled chunk by chunk, so that the vectors of a corpus never
have to be in memory at once: only the index itself and one chunk are.

The vectors come from a *chunk source*: a callable that yields ``[m, d]`` float32 blocks in row order each time it is
called (an in-memory array cut in blocks, or the shards of :mod:`trl_bporag.retrieval.shards`). Training reads the
sample rows from it in one pass; filling reads it once more.
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
        reason = str(err).split(" failed: ", 1)[-1].split(" at /", 1)[0].strip() or "unknown"
        raise ValueError(f"{flag}: FAISS cannot build the index_factory string {spec!r} for {dim}-dimensional "
                         f"vectors ({reason[:160]}); see {FACTORY_DOCS}") from None


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


def build(spec: str, dim: int, chunks: ChunkSource, n: int, train_sample: int | None = None, seed: int = 0,
          use_gpu: bool = False, flag: str = "index_type (--index_type)"):
    """Create, train (on ``train_sample`` rows, see :func:`check_train_sample`) and fill an index chunk by chunk.

    Returns ``(index, rows_trained_on)``. With ``use_gpu`` the training of an IVF index's coarse quantizer runs on the
    GPU (FAISS's ``index_cpu_to_gpu`` / ``index_gpu_to_cpu``); the returned index is a CPU index."""
    faiss = load_faiss()
    index = new_index(spec, dim, flag)
    sample = check_train_sample(index, spec, n, train_sample)
    trained_on = 0
    if not index.is_trained:
        train = sample_rows(chunks, n, sample, seed)
        logger.info("Training %s on %d of %d vectors", spec, len(train), n)
        try:
            if use_gpu:
                gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
                gpu.train(train)
                index = faiss.index_gpu_to_cpu(gpu)
            else:
                index.train(train)
        except RuntimeError as err:  # e.g. PQ codes of 8 bits need 256 training vectors
            reason = str(err).split(" failed: ", 1)[-1].split(" at /", 1)[0].strip()
            raise ValueError(f"train_sample (--train_sample): FAISS cannot train {spec!r} on {len(train)} vectors "
                             f"({reason[:200]}); use a larger sample or corpus, or a smaller index") from None
        trained_on = len(train)
        del train
    added = 0
    for block in chunks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
        added += len(block)
    if added != n:
        raise ValueError(f"the vector source gave {added} vectors, expected {n}")
    return index, trained_on


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set ``nprobe`` (IVF) and ``efSearch`` (HNSW) wherever they sit inside a factory-built index."""
    space = load_faiss().ParameterSpace()
    if nprobe is not None and ivf_lists(index):
        space.set_index_parameter(index, "nprobe", int(nprobe))
    if ef_search is not None and "HNSW" in type(load_faiss().downcast_index(index)).__name__:
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


def build_index(index_type: str, dim: int, chunks: ChunkSource, n: int, hnsw_m: int = 32, ef_construction: int = 200,
                nlist: int | None = None, train_sample: int | None = None, use_gpu: bool = False):
    """One of :data:`BUILTIN_TYPES` or a factory string, filled chunk by chunk. Returns ``(index, rows trained on,
    nlist)``. The built-in ``"ivf"`` trains on every vector unless ``train_sample`` says otherwise."""
    faiss = load_faiss()
    if is_factory(index_type):
        index, trained_on = build(index_type, dim, chunks, n, train_sample, use_gpu=use_gpu)
        return index, trained_on, ivf_lists(index)
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        if n < nlist:
            raise ValueError(f"index_type='ivf': training {nlist} IVF lists needs at least {nlist} passages, "
                             f"got {n}; use index_type='flat' for a corpus this small (or a smaller nlist)")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    trained_on = 0
    if not index.is_trained:
        size = n if train_sample is None else check_train_sample(index, "ivf", n, train_sample)
        train = sample_rows(chunks, n, size)
        index.train(train)
        trained_on = len(train)
    for block in chunks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index, trained_on, nlist if index_type == "ivf" else None
