"""Retrieval evaluation during training: a sentence-transformers ``InformationRetrievalEvaluator`` over one of our data
sets, for :class:`~trl_bporag.SetDPOTrainer`'s ``evaluator`` (or ``SentenceTransformerTrainer``'s).

The evaluator encodes queries and passages with the model's ``encode_query`` / ``encode_document`` (its prompts), the
way :class:`~trl_bporag.Retriever` serves them, and scores them with the model's similarity function (what
``SetDPOTrainer`` saves for its ``score``). With one gold passage per question (squad-dev, hotpotqa's two count as
two), its ``accuracy@k`` is our Recall@k (:func:`~trl_bporag.metrics.retrieval_metrics`: a gold passage in the top k).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

from .data import RAGDataset, load_rag_dataset


def retrieval_evaluator(
    data: RAGDataset | str | os.PathLike,
    split: str = "dev",
    max_queries: int | None = None,
    ks: Sequence[int] = (1, 5, 10),
    name: str | None = None,
    with_title: bool = True,
    batch_size: int = 64,
):
    """An ``InformationRetrievalEvaluator`` of ``split``'s questions against the whole corpus of ``data``.

    Args:
        data: a :class:`~trl_bporag.data.RAGDataset`, or a folder / Hub id for :func:`~trl_bporag.load_rag_dataset`.
        split: the split to read when ``data`` is a path (default ``"dev"``: keep the test split for the final
            comparison; a data set without one raises the loader's error naming the split).
        max_queries: the first n questions (all by default).
        ks: cut-offs of accuracy (= Recall@k for one gold passage), precision/recall, MRR and NDCG.
        name: the evaluator's name, the middle of its metric names (``eval_<name>_cosine_accuracy@1``); default: the
            data set's folder name and the split.
        with_title: passages as the index holds them (``title: text``), as :class:`~trl_bporag.DenseIndex` does.
        batch_size: encoding batch size.

    Raises:
        ValueError: when the split has no gold passage ids (qrels) to score retrieval against.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if not isinstance(data, RAGDataset):
        source = str(data)
        data = load_rag_dataset(source, split)
        name = name or f"{os.path.basename(source.rstrip('/'))}-{split}"
    questions = data.split.head(max_queries)
    if not questions.has_gold_passages:
        raise ValueError(f"split {questions.name or split!r}: no gold passage ids (qrels), so retrieval cannot be "
                         "scored; use a split with qrels")
    if not ks or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) for k in ks):
        raise ValueError(f"ks: expected a non-empty list of integers, got {ks!r}")
    ks = sorted({int(k) for k in ks})
    n = len(data.corpus.ids)
    if ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"ks={ks}: every cut-off must lie in [1, {n}] (the corpus holds {n} passages; accuracy@k "
                         "beyond it is 1.0 by construction)")
    return InformationRetrievalEvaluator(
        queries={qid: q for qid, q, golds in zip(questions.ids, questions.questions, questions.gold_ids) if golds},
        corpus={pid: data.corpus.passage(i, with_title) for i, pid in enumerate(data.corpus.ids)},
        relevant_docs={qid: set(golds) for qid, golds in zip(questions.ids, questions.gold_ids) if golds},
        accuracy_at_k=ks, precision_recall_at_k=ks, mrr_at_k=[max(ks)], ndcg_at_k=[max(ks)], map_at_k=[max(ks)],
        batch_size=batch_size, name=name or "retrieval", write_csv=False,
    )


__all__ = ["retrieval_evaluator"]
