"""The retriever: a dual encoder with f(q, p) = <e(q), e(p)> and the set score s(q, P) = sum_{i<=k} w_i f(q, P_i)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ..hardware import resolve_dtype

logger = logging.getLogger(__name__)

SCORES = ("cos", "dot")


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    return score


def set_scores(
    query_emb: torch.Tensor,
    list_emb: torch.Tensor,
    k: int,
    weights: Sequence[float] | torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Set scores s(q, P) = sum_{i<=k} w_i <e(q), e(P_i)> for a batch.

    Args:
        query_emb: ``[B, d]`` query embeddings (already normalised for the cosine score).
        list_emb: ``[B, L, d]`` embeddings of each query's ordered list (L >= k).
        k: how many leading entries count.
        weights: optional position weights ``w_1..w_k`` (default all ones: the paper's sum score).
        mask: optional ``[B, L]`` bool, False where a list is padded (a padded slot contributes 0).
    Returns:
        ``[B]`` set scores.
    """
    if query_emb.dim() != 2 or list_emb.dim() != 3 or list_emb.shape[0] != query_emb.shape[0]:
        raise ValueError(
            f"set_scores: expected query_emb [B, d] and list_emb [B, L, d], got {tuple(query_emb.shape)} and "
            f"{tuple(list_emb.shape)}"
        )
    if k < 1 or list_emb.shape[1] < k:
        raise ValueError(f"k: expected 1 <= k <= list length {list_emb.shape[1]}, got {k}")
    f = torch.einsum("bd,bld->bl", query_emb, list_emb[:, :k])
    if mask is not None:
        f = f * mask[:, :k].to(f.dtype)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=f.dtype, device=f.device)
        if w.dim() != 1 or w.numel() < k:
            raise ValueError(f"position weights: expected at least k={k} values, got {w.numel()}")
        f = f * w[:k]
    return f.sum(dim=1)


class Retriever:
    """Dense retriever over a :class:`sentence_transformers.SentenceTransformer`.

    Args:
        model: a SentenceTransformer, or an id / path loaded with :func:`trl_bporag.models.load_retriever`.
        score: ``"cos"`` (dot product of L2-normalised embeddings) or ``"dot"`` (raw dot product). Default: the
            model's own similarity function (``similarity_fn_name``, which :class:`~trl_bporag.SetDPOTrainer` saves
            for its ``score``): ``"dot"`` for a dot-product model, else ``"cos"``.
        batch_size: encoding batch size.
        cache_size: keep up to this many text embeddings in memory (0 = off). Only for a frozen model: call
            :meth:`clear_cache` after changing its weights.
        query_prompt: optional string prepended to queries (e.g. E5's ``"query: "``) instead of the model's own query
            prompt. Default: the model's (``encode_query``), as in training.
        passage_prompt: the same for passages (e.g. E5's ``"passage: "``; default: ``encode_document``'s).
        device: device of a model loaded from an id / path (default: sentence-transformers' choice).
        show_progress_bar: show encoding progress bars (default: sentence-transformers' choice).
        dtype: ``"auto"`` (default): bf16 autocast where the model's device computes bf16 natively (a CPU with
            AVX512-BF16 / AMX, a CUDA device with bf16), else float32 (:func:`trl_bporag.hardware.compute_dtype`).
            ``"bfloat16"`` encodes under bf16 autocast (about 2.4x faster for all-MiniLM-L6-v2 on a CPU with native
            bf16, with squad-dev test Recall@1/5 within 0.001 of float32; docs/benchmarks.md; 5-7x *slower* on an
            AVX2-only CPU, which warns); ``"float32"`` or None: float32. Indexes record it, so float32 and bf16
            indexes of one model are kept apart.
    """

    def __init__(
        self,
        model="sentence-transformers/all-MiniLM-L6-v2",
        score: str | None = None,
        batch_size: int = 64,
        cache_size: int = 0,
        query_prompt: str | None = None,
        passage_prompt: str | None = None,
        device: str | None = None,
        show_progress_bar: bool | None = None,
        dtype: str | None = "auto",
    ):
        if dtype not in (None, "auto", "float32", "bfloat16"):
            raise ValueError(f"dtype: expected 'auto', 'float32', 'bfloat16' or None, got {dtype!r}")
        for name, value in (("query_prompt", query_prompt), ("passage_prompt", passage_prompt)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}: expected a string prepended to each text (e.g. 'query: ') or None, got "
                                 f"{type(value).__name__} {value!r:.40}")
        if isinstance(model, str):
            from trl_bporag.models import load_retriever

            model = load_retriever(model, device=device)
        self.model = model
        if dtype is not None:
            dtype = resolve_dtype(dtype, getattr(model, "device", None) or "cpu", where="Retriever(dtype=)")
        self.dtype = None if dtype in (None, "float32") else dtype
        if score is None:
            score = "dot" if getattr(model, "similarity_fn_name", None) == "dot" else "cos"
        self.score = _check_score(score)
        self.batch_size = batch_size
        self.query_prompt = query_prompt
        self.passage_prompt = passage_prompt
        self.show_progress_bar = show_progress_bar
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.num_encoded = 0  # texts actually run through the encoder (cache misses), for benchmarks and tests
        self._fingerprints: dict | None = None  # {query prompt: fingerprint}

    # -- identity -----------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        mid = getattr(self.model, "bporag_model_id", None)
        if mid:
            return mid
        card = getattr(self.model, "model_card_data", None)
        if getattr(card, "base_model", None):
            return card.base_model
        try:
            return self.model[0].auto_model.config._name_or_path or "unknown"
        except (AttributeError, IndexError, TypeError, KeyError):
            return "unknown"

    @property
    def dim(self) -> int:
        dim = self._model_dim()
        if dim is None:
            dim = int(self.encode(["dimension probe"]).shape[1])
        return int(dim)

    def _model_dim(self) -> int | None:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return getter()

    @property
    def normalize(self) -> bool:
        return self.score == "cos"

    def fingerprint(self) -> str:
        """sha256 over the model's parameters and prompts (both of this retriever's and the model's saved ones):
        changes when the weights or any prompt change."""
        return self._hash(self.query_prompt)

    def passage_fingerprint(self) -> str:
        """:meth:`fingerprint` without this retriever's *query* prompt: what an index of passages depends on, so
        retrievers that differ only in ``query_prompt`` share one index. Equal to :meth:`fingerprint` when
        ``query_prompt`` is None."""
        return self._hash(None)

    def _hash(self, query_prompt) -> str:
        if self._fingerprints is None:
            self._fingerprints = {}
        if query_prompt not in self._fingerprints:  # the same hash as before passage_fingerprint existed
            prompts = json.dumps(getattr(self.model, "prompts", None) or {}, sort_keys=True)
            h = hashlib.sha256(f"{query_prompt}|{self.passage_prompt}|{prompts}".encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprints[query_prompt] = h.hexdigest()
        return self._fingerprints[query_prompt]

    # -- encoding -----------------------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        self._cache.clear()
        self._fingerprints = None

    def _autocast(self):
        import contextlib

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=getattr(torch, self.dtype))

    def encode(self, texts: Sequence[str], batch_size: int | None = None, show_progress_bar: bool | None = None,
               prompt: str | None = None, kind: str | None = None, pool: dict | None = None) -> np.ndarray:
        """Embeddings ``[n, d]`` (float32; L2-normalised for ``score="cos"``). Each distinct text is encoded once.

        ``kind`` ``"query"`` / ``"document"`` encodes through the model's own ``encode_query`` / ``encode_document``
        (its saved ``prompts`` and, for a Router model, its query / document route), as training does; ``prompt``,
        when given, replaces the model's prompt. ``kind=None``: plain ``model.encode``. ``pool``: a
        sentence-transformers multi-process pool (``model.start_multi_process_pool``) to encode with; its workers
        encode in float32."""
        if isinstance(texts, str):
            raise ValueError("texts: expected a list of strings, got a single string")
        if kind not in (None, "query", "document"):
            raise ValueError(f"kind: expected None, 'query' or 'document', got {kind!r}")
        keys = [(kind, prompt, t) for t in texts]
        unique = list(dict.fromkeys(keys))
        missing = [key for key in unique if key not in self._cache] if self.cache_size else unique
        new = {}
        if missing:
            show = self.show_progress_bar if show_progress_bar is None else show_progress_bar
            if show is None:
                show = len(missing) > 2000
            encode = {None: self.model.encode, "query": self.model.encode_query,
                      "document": self.model.encode_document}[kind]
            with self._autocast():
                emb = encode(
                    [t for _, _, t in missing],
                    prompt=prompt,
                    batch_size=batch_size or self.batch_size,
                    show_progress_bar=show,
                    convert_to_numpy=True,
                    normalize_embeddings=self.normalize,
                    **({"pool": pool} if pool is not None else {}),
                ).astype(np.float32, copy=False)
            self.num_encoded += len(missing)
            new = dict(zip(missing, emb))
            if self.cache_size:
                self._cache.update(new)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        lookup = {**{key: self._cache[key] for key in unique if key in self._cache and key not in new}, **new}
        if not texts:
            return np.zeros((0, self._model_dim() or 0), dtype=np.float32)
        return np.stack([lookup[key] for key in keys])

    def encode_queries(self, queries: Sequence[str], **kwargs) -> np.ndarray:
        """Query embeddings through the model's ``encode_query`` (``query_prompt``, if set, replaces its prompt)."""
        return self.encode(queries, prompt=self.query_prompt, kind="query", **kwargs)

    def encode_passages(self, passages: Sequence[str], **kwargs) -> np.ndarray:
        """Passage embeddings through the model's ``encode_document`` (``passage_prompt``, if set, replaces its
        prompt)."""
        return self.encode(passages, prompt=self.passage_prompt, kind="document", **kwargs)

    # -- scores -------------------------------------------------------------------------------------------------
    @staticmethod
    def similarity(query_emb, passage_emb) -> np.ndarray:
        """f(q, p) for all pairs: ``[n_q, n_p]`` inner products of the (already normalised) embeddings."""
        return np.asarray(query_emb, dtype=np.float32) @ np.asarray(passage_emb, dtype=np.float32).T

    def f(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """f(q_i, p_i) for aligned pairs of texts: ``[n]``."""
        if len(queries) != len(passages):
            raise ValueError(f"f: {len(queries)} queries but {len(passages)} passages")
        q, p = self.encode_queries(queries), self.encode_passages(passages)
        return (q * p).sum(axis=1)

    def set_score(self, queries: Sequence[str], lists: Sequence[Sequence[str]], k: int,
                  weights: Sequence[float] | None = None) -> np.ndarray:
        """s(q, P) for each query and its ordered passage list (first ``k`` entries count): ``[n]``."""
        if len(queries) != len(lists):
            raise ValueError(f"set_score: {len(queries)} queries but {len(lists)} lists")
        for i, lst in enumerate(lists):
            if len(lst) < k:
                raise ValueError(f"lists[{i}]: has {len(lst)} passages, fewer than k={k}")
        q = torch.from_numpy(self.encode_queries(queries))
        flat = [p for lst in lists for p in lst[:k]]
        p = torch.from_numpy(self.encode_passages(flat)).view(len(lists), k, -1)
        return set_scores(q, p, k, weights).numpy()
