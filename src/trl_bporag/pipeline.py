"""RAGPipeline: retrieve the top-k passages with the retriever, answer greedily with the generator (Eq. 8-9)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from .data import Corpus, QASplit
from .generation import generate, rag_prompt
from .metrics import answer_metrics, per_query_metrics, retrieval_metrics
from .retrieval import DenseIndex, Retriever
from .settings import RAGSettings, UsesRAGSettings, resolve_settings

logger = logging.getLogger(__name__)


class RAGPipeline(UsesRAGSettings):
    """Retrieve-then-generate.

    Args:
        retriever: a :class:`~trl_bporag.retrieval.Retriever` (or a SentenceTransformer / id, wrapped in one).
        index: the :class:`~trl_bporag.retrieval.DenseIndex` over ``corpus``.
        corpus: the :class:`~trl_bporag.data.Corpus` whose passage texts the generator reads.
        generator: a causal LM (optional: without it the pipeline only retrieves).
        tokenizer: the generator's tokenizer (required with ``generator``).
        settings: what the generator reads and how it answers (:class:`~trl_bporag.settings.RAGSettings`: k, the
            passage token budget, system prompt, answer prefix, titles, max new tokens); default
            :data:`~trl_bporag.settings.DEFAULTS`.
        batch_size: generation batch size.
        **overrides: any of the settings by name (``k=3``, ``answer_prefix=None``, ...), applied on ``settings``.

    The settings are also readable as attributes (``pipe.k``, ``pipe.answer_prefix``, ...); to change one,
    ``pipe.settings = pipe.settings.replace(k=3)``.
    """

    def __init__(self, retriever, index: DenseIndex, corpus: Corpus, generator=None, tokenizer=None,
                 settings: RAGSettings | None = None, batch_size: int = 8, **overrides):
        if not isinstance(retriever, Retriever):
            retriever = Retriever(retriever)
        settings = resolve_settings(settings, **overrides)
        index.check_compatible(retriever, corpus, settings.with_title)  # same passages; where recorded, same model
        if (generator is None) != (tokenizer is None):
            raise ValueError("generator and tokenizer go together: pass both or neither")
        if settings.k > len(corpus):
            raise ValueError(f"k: {settings.k} passages per question, but the corpus holds only {len(corpus)}")
        self.retriever, self.index, self.corpus = retriever, index, corpus
        self.generator, self.tokenizer = generator, tokenizer
        self.settings, self.batch_size = settings, batch_size

    @classmethod
    def from_pretrained(
        cls,
        retriever: str | None = None,
        generator: str | None = "HuggingFaceTB/SmolLM2-135M-Instruct",
        corpus: Corpus | None = None,
        index_dir: str | None = None,
        cache_index: bool = True,
        index_type: str = "flat",
        score: str | None = None,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        generator_dtype="auto",
        settings: RAGSettings | None = None,
        batch_size: int = 8,
        overwrite_index: bool | None = None,
        index_options: dict | None = None,
        **overrides,
    ) -> RAGPipeline:
        """Build from ids/folders: a retriever (e.g. an RPO-tuned sentence-transformers folder) and a generator (a
        model id or folder, or a PEFT adapter folder or Hub repo, loaded on top of its base). The corpus is indexed
        and the index saved in ``index_dir`` (default with ``cache_index``:
        :func:`~trl_bporag.retrieval.index.default_index_dir`); a saved index is reused when model and corpus are
        unchanged.

        A GPO adapter (a folder or a Hub id) holds ``bporag_config.json`` (the retriever and the settings it was
        aligned under): with ``retriever=None`` that retriever is used (by its Hub id when the adapter came from the
        Hub), and its settings (k, prompt, answer prefix, passage budget) are the defaults, so
        ``from_pretrained(generator="runs/gpo", corpus=...)`` rebuilds the BPO-RAG pipeline (Eq. 8-9). An explicit
        ``retriever=`` wins, with a warning when it is not the aligned one. Otherwise k comes from the retriever
        folder's ``bporag_config.json`` (written by :class:`~trl_bporag.SetDPOTrainer`). ``settings`` and the
        setting keywords (``k=3``, ...) override what was recorded. ``score`` defaults to the retriever's own
        similarity function (what the trainer saved; cosine for most models). ``query_prompt`` / ``document_prompt``
        replace the retriever's own prompts (e5: ``"query: "`` / ``"passage: "``; default: the ones saved with it,
        which is what training used); the index cache tells indexes of other prompts apart.

        ``generator_dtype`` defaults to ``"auto"``: bf16 where the device computes it natively (about 2x faster than
        float32 on a CPU with AVX512-BF16 / AMX; answers can differ from float32 in rare near-ties), else float32
        (:func:`trl_bporag.hardware.compute_dtype`); pass ``"bfloat16"`` / ``"float32"`` to choose, or None for the
        model's own dtype. The retriever encodes the same way (``Retriever(dtype="auto")``). ``overwrite_index``
        replaces an index of another model in ``index_dir`` (see :meth:`~trl_bporag.retrieval.DenseIndex.cached`).
        ``index_type`` may be a FAISS ``index_factory`` string (``"IVF4096,PQ48"``); ``index_options`` go to
        :meth:`~trl_bporag.retrieval.DenseIndex.from_corpus` (``rescore``, ``nprobe``, ``ef_search``,
        ``train_sample``, ``shard_size``, ``encode_devices``)."""
        import os

        from .artifacts import read_bporag_config, stage_settings
        from .models import DEFAULT_RETRIEVER, load_generator, load_retriever, resolve_model

        if corpus is None:
            raise ValueError("corpus: a Corpus to retrieve from is required")
        # Every model is resolved once, here, to a checked local folder; the rest reads that folder.
        gen_source = resolve_model(generator, "generator") if generator else None
        aligned = read_bporag_config(gen_source.path) if gen_source and not gen_source.packaged else None
        if retriever is None:
            retriever = (aligned or {}).get("retriever") or DEFAULT_RETRIEVER
        elif aligned and aligned.get("retriever") and str(retriever) not in (aligned["retriever"],
                                                                             aligned.get("retriever_hub_id")):
            logger.warning("The generator %s was aligned under retriever %s; pairing it with %s", generator,
                           aligned["retriever"], retriever)
        if isinstance(retriever, (str, os.PathLike)):
            ret_source = resolve_model(retriever, "retriever")
            trained = read_bporag_config(ret_source.path) if not ret_source.packaged else None
            retriever = load_retriever(ret_source)
        else:
            trained = None
        base = settings
        if aligned is None and base is None:
            # a trained retriever records the k it was trained for
            base = stage_settings({"k": trained["k"]} if trained and "k" in trained else None, "the retriever")
        elif aligned is not None and base is None:
            base = stage_settings(aligned, f"{generator} (bporag_config.json)")
        ret = Retriever(retriever, score=score, query_prompt=query_prompt, passage_prompt=document_prompt)
        resolved = resolve_settings(base, **overrides)
        build = DenseIndex.cached if cache_index else DenseIndex.from_corpus
        extra = {**(index_options or {}), **({} if overwrite_index is None else {"overwrite": overwrite_index})}
        index = build(ret, corpus, index_dir=index_dir, index_type=index_type, with_title=resolved.with_title, **extra)
        gen, tok = load_generator(gen_source, torch_dtype=generator_dtype) if gen_source else (None, None)
        return cls(ret, index, corpus, gen, tok, settings=resolved, batch_size=batch_size)

    def retrieve(self, questions: Sequence[str], k: int | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Top-k passage ids per question (k defaults to the pipeline's k) and their scores."""
        q = self.retriever.encode_queries(list(questions))
        scores, ids = self.index.search_ids(q, k or self.k)
        return ids, scores

    def passages(self, ids: Sequence[str]) -> list[str]:
        return [self.corpus.passage(self.corpus.index_of(pid), self.with_title) for pid in ids]

    def prompts(self, questions: Sequence[str], passage_ids: Sequence[Sequence[str]]) -> list[str]:
        if self.tokenizer is None:
            raise ValueError("this pipeline has no generator: pass generator= and tokenizer=")
        return [rag_prompt(self.tokenizer, self.settings, q, self.passages(ids[: self.k]))
                for q, ids in zip(questions, passage_ids)]

    def answer(self, questions: Sequence[str], passage_ids: Sequence[Sequence[str]], progress: str | None = None,
               cache: dict[str, str] | None = None) -> list[str]:
        """Greedy answers of the generator reading the first k passages of each list.

        ``progress``: a description for a progress bar (None: none). ``cache``: a dict from prompt text to answer,
        shared between calls *with the same generator* (e.g. the rows of an ablation that differ only in the
        retriever): prompts already in it are not generated again, new answers are added to it."""
        prompts = self.prompts(questions, passage_ids)
        cache = {} if cache is None else cache
        todo = list(dict.fromkeys(p for p in prompts if p not in cache))
        if todo:
            new = generate(self.generator, self.tokenizer, todo, batch_size=self.batch_size,
                           max_new_tokens=self.max_new_tokens, progress=progress, stop=self.settings.stop)
            cache.update(zip(todo, new))
        return [cache[p] for p in prompts]

    def __call__(self, questions: Sequence[str] | str) -> list[dict] | dict:
        single = isinstance(questions, str)
        qs = [questions] if single else list(questions)
        ids, scores = self.retrieve(qs)
        answers = self.answer(qs, ids) if self.generator is not None else [None] * len(qs)
        out = [
            {"question": q, "answer": a, "passage_ids": pids, "passages": self.passages(pids), "scores": s.tolist()}
            for q, a, pids, s in zip(qs, answers, ids, scores)
        ]
        return out[0] if single else out

    def evaluate(self, split: QASplit, ks: Sequence[int] = (1, 5, 10), generate_answers: bool = True,
                 return_predictions: bool = False, progress: str | None = "answering",
                 answer_cache: dict[str, str] | None = None) -> dict:
        """Recall@k (when gold passages are known), answer-hit@k, and with a generator EM / F1 on ``split``.

        Returns ``{"num_queries", "k", "metrics", "per_query"}``: ``metrics`` holds the means, ``per_query`` one value
        per query and metric (what :func:`~trl_bporag.metrics.paired_bootstrap_ci` compares between two systems).
        ``progress`` names the progress bar of the generation (None: no bar); ``answer_cache`` is passed to
        :meth:`answer`."""
        too_deep = [x for x in ks if x > len(self.corpus)]
        if too_deep:
            raise ValueError(f"ks: cut-offs {too_deep} exceed the corpus size ({len(self.corpus)} passages); every "
                             f"query would count as retrieved in full")
        t0 = time.perf_counter()
        depth = max(max(ks), self.k)
        ids, _ = self.retrieve(split.questions, k=depth)
        passages = [self.passages(p) for p in ids]
        gold = split.gold_ids if split.has_gold_passages else None
        answers = split.answers if split.has_answers else None  # a BEIR set with qrels only: no answer metrics
        if answers is None and generate_answers and self.generator is not None:
            raise ValueError(f"split {split.name!r}: some questions have no gold answers, so EM / F1 cannot be "
                             "scored; evaluate retrieval only (generate_answers=False, --retrieval_only)")
        metrics = retrieval_metrics(ids, gold, passages, answers, ks)
        metrics["retrieval_seconds"] = time.perf_counter() - t0
        predictions = None
        if generate_answers and self.generator is not None:
            t1 = time.perf_counter()
            predictions = self.answer(split.questions, ids, progress=progress, cache=answer_cache)
            metrics.update(answer_metrics(predictions, split.answers))
            metrics["generation_seconds"] = time.perf_counter() - t1
        per_query = per_query_metrics(ids, gold, passages, answers, predictions, ks)
        result = {"num_queries": len(split), "k": self.k, "metrics": metrics, "per_query": per_query}
        if return_predictions:
            result["predictions"] = [
                {"id": qid, "question": q, "answers": a, "retrieved": pids[: depth], "prediction": pred}
                for qid, q, a, pids, pred in zip(split.ids, split.questions, split.answers, ids,
                                                 predictions or [None] * len(split))
            ]
        return result
