"""RAGPipeline: retrieve the top-k passages with the retriever, answer greedily with the generator (Eq. 8-9)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from .data import Corpus, QASplit
from .generation import DEFAULT_SYSTEM_PROMPT, answer_stop, build_prompt, generate
from .metrics import answer_metrics, per_query_metrics, retrieval_metrics
from .retrieval import DenseIndex, Retriever

logger = logging.getLogger(__name__)


class RAGPipeline:
    """Retrieve-then-generate.

    Args:
        retriever: a :class:`~trl_bporag.retrieval.Retriever` (or a SentenceTransformer / id, wrapped in one).
        index: the :class:`~trl_bporag.retrieval.DenseIndex` over ``corpus``.
        corpus: the :class:`~trl_bporag.data.Corpus` whose passage texts the generator reads.
        generator: a causal LM (optional: without it the pipeline only retrieves).
        tokenizer: the generator's tokenizer (required with ``generator``).
        k: passages given to the generator.
        with_title: the generator reads ``title + " " + text`` (as the retriever does by default).
        max_new_tokens: answer length limit.
        batch_size: generation batch size.
        max_passage_tokens: each passage is cut to this many tokens in the prompt.
        system_prompt: the system message (:func:`~trl_bporag.generation.build_prompt`).
        answer_prefix: text the generator's reply starts with; the answer is what it writes after it, up to
            :func:`~trl_bporag.generation.answer_stop`.
    """

    def __init__(
        self,
        retriever,
        index: DenseIndex,
        corpus: Corpus,
        generator=None,
        tokenizer=None,
        k: int = 5,
        with_title: bool = True,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        max_passage_tokens: int | None = 192,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        answer_prefix: str | None = None,
    ):
        if not isinstance(retriever, Retriever):
            retriever = Retriever(retriever)
        index.check_compatible(retriever, corpus, with_title)  # same passages; where recorded, same model and texts
        if (generator is None) != (tokenizer is None):
            raise ValueError("generator and tokenizer go together: pass both or neither")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        if k > len(corpus):
            raise ValueError(f"k: {k} passages per question, but the corpus holds only {len(corpus)}")
        self.retriever, self.index, self.corpus = retriever, index, corpus
        self.generator, self.tokenizer = generator, tokenizer
        self.k, self.with_title = k, with_title
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.max_passage_tokens, self.system_prompt = max_passage_tokens, system_prompt
        self.answer_prefix = answer_prefix

    @classmethod
    def from_pretrained(
        cls,
        retriever: str | None = None,
        generator: str | None = "HuggingFaceTB/SmolLM2-135M-Instruct",
        corpus: Corpus | None = None,
        index_dir: str | None = None,
        cache_index: bool = True,
        index_type: str = "flat",
        k: int | None = None,
        score: str | None = None,
        generator_dtype="bfloat16",
        **kwargs,
    ) -> RAGPipeline:
        """Build from ids/folders: a retriever (e.g. an RPO-tuned sentence-transformers folder) and a generator (a
        model id or folder, or a PEFT adapter folder, loaded on top of its base). The corpus is indexed and the
        index saved in ``index_dir`` (default with ``cache_index``: :func:`~trl_bporag.retrieval.index.default_index_dir`);
        a saved index is reused when model and corpus are unchanged.

        A GPO adapter folder holds ``bporag_config.json`` (the retriever and k it was aligned under): with
        ``retriever=None`` / ``k=None`` those are used, so ``from_pretrained(generator="runs/gpo", corpus=...)``
        rebuilds the BPO-RAG pipeline (Eq. 8-9). Otherwise k comes from the retriever folder's ``bporag_config.json``
        (written by :class:`~trl_bporag.SetDPOTrainer`), else 5; the retriever defaults to all-MiniLM-L6-v2. ``score``
        defaults to the retriever's own similarity function (what the trainer saved; cosine for most models).

        ``generator_dtype`` defaults to bfloat16, as in the example scripts (about 2x faster than float32 on a CPU;
        answers can differ from float32 in rare near-ties); pass ``"float32"`` or None for the model's own dtype."""
        import os

        from .artifacts import BPORAG_CONFIG_NAME, PROMPT_SETTINGS, read_bporag_config
        from .models import DEFAULT_RETRIEVER, load_generator

        if corpus is None:
            raise ValueError("corpus: a Corpus to retrieve from is required")
        aligned = {}
        if generator and os.path.isfile(os.path.join(str(generator), BPORAG_CONFIG_NAME)):
            aligned = read_bporag_config(generator) or {}
        if retriever is None:
            retriever = aligned.get("retriever") or DEFAULT_RETRIEVER
        elif aligned.get("retriever") and str(retriever) != aligned["retriever"]:
            logger.warning("The generator %s was aligned under retriever %s; pairing it with %s", generator,
                           aligned["retriever"], retriever)
        if k is None:
            trained = read_bporag_config(retriever) if isinstance(retriever, str) and os.path.isdir(retriever) else None
            k = int(aligned.get("k") or (trained or {}).get("k") or 5)
        for key in PROMPT_SETTINGS:
            if key in aligned and key not in kwargs:
                kwargs[key] = aligned[key]
        ret = Retriever(retriever, score=score)
        with_title = kwargs.get("with_title", True)
        build = DenseIndex.cached if cache_index else DenseIndex.from_corpus
        index = build(ret, corpus, index_dir=index_dir, index_type=index_type, with_title=with_title)
        gen, tok = load_generator(generator, torch_dtype=generator_dtype) if generator else (None, None)
        return cls(ret, index, corpus, gen, tok, k=k, **kwargs)

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
        return [
            build_prompt(self.tokenizer, q, self.passages(ids[: self.k]), self.max_passage_tokens, self.system_prompt,
                         self.answer_prefix)
            for q, ids in zip(questions, passage_ids)
        ]

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
                           max_new_tokens=self.max_new_tokens, progress=progress,
                           stop=answer_stop(self.answer_prefix))
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
        metrics = retrieval_metrics(ids, gold, passages, split.answers, ks)
        metrics["retrieval_seconds"] = time.perf_counter() - t0
        predictions = None
        if generate_answers and self.generator is not None:
            t1 = time.perf_counter()
            predictions = self.answer(split.questions, ids, progress=progress, cache=answer_cache)
            metrics.update(answer_metrics(predictions, split.answers))
            metrics["generation_seconds"] = time.perf_counter() - t1
        per_query = per_query_metrics(ids, gold, passages, split.answers, predictions, ks)
        result = {"num_queries": len(split), "k": self.k, "metrics": metrics, "per_query": per_query}
        if return_predictions:
            result["predictions"] = [
                {"id": qid, "question": q, "answers": a, "retrieved": pids[: depth], "prediction": pred}
                for qid, q, a, pids, pred in zip(split.ids, split.questions, split.answers, ids,
                                                 predictions or [None] * len(split))
            ]
        return result
