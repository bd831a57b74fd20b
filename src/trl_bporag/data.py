"""Corpus + QA loading: the BEIR layout with gold answers (``../shared/data``) and Hugging Face ``datasets``.

A data set is a :class:`Corpus` of passages plus a :class:`QASplit`: questions, their gold answers and (optionally)
their gold passage ids. Everything is validated on load; bad input raises a ``ValueError`` naming the file, line and
field.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "Corpus",
    "QASplit",
    "RAGDataset",
    "load_beir",
    "load_hf",
    "load_qa_dataset",
    "load_rag_dataset",
    "passage_id",
]


def passage_id(title: str, text: str) -> str:
    """A stable 16-hex id for a passage (same scheme as the shared data sets)."""
    return hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]


def passage_text(title: str, text: str, with_title: bool = True) -> str:
    """What the retriever encodes for one passage: ``title + " " + text`` (``text`` alone without a title or with
    ``with_title=False``)."""
    return f"{title} {text}" if with_title and title else text


class CorpusHash:
    """The corpus fingerprint, fed block by block: sha256 over ids and passage texts, order included. Equal digests
    mean equal embedding inputs (:meth:`Corpus.fingerprint`; a corpus read lazily is hashed the same way)."""

    def __init__(self):
        self._h = hashlib.sha256()

    def update(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        for pid, text in zip(ids, texts):
            self._h.update(pid.encode())
            self._h.update(b"\0")
            self._h.update(text.encode())
            self._h.update(b"\1")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def first_duplicate(ids: Sequence[str]) -> str | None:
    """The first id that repeats an earlier one, or None."""
    seen: set[str] = set()
    return next((pid for pid in ids if pid in seen or seen.add(pid)), None)


@dataclass
class Corpus:
    """Passages with stable ids. ``passages()`` is what the retriever encodes: ``title + " " + text`` by default."""

    ids: list[str]
    texts: list[str]
    titles: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.titles:
            self.titles = [""] * len(self.ids)
        if not (len(self.ids) == len(self.texts) == len(self.titles)):
            raise ValueError(
                f"Corpus: ids ({len(self.ids)}), texts ({len(self.texts)}) and titles ({len(self.titles)}) "
                "must have the same length"
            )
        for fname, values in (("text", self.texts), ("title", self.titles)):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    raise ValueError(f"Corpus: field '{fname}' of passage {self.ids[i]!r} must be a string, got "
                                     f"{type(value).__name__}")
                if not value.isascii():
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError as err:
                        raise ValueError(f"Corpus: field '{fname}' of passage {self.ids[i]!r} holds a character that "
                                         f"is not valid Unicode text ({err.reason} at position {err.start}, e.g. a "
                                         f"lone surrogate from a '\\ud800' escape)") from None
        self._index = {pid: i for i, pid in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError(f"Corpus: duplicate passage id {first_duplicate(self.ids)!r} in field '_id'")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, pid: str) -> bool:
        return pid in self._index

    def index_of(self, pid: str) -> int:
        try:
            return self._index[pid]
        except KeyError:
            raise ValueError(f"Unknown passage id {pid!r}: not in the corpus ({len(self)} passages)") from None

    def passage(self, i: int, with_title: bool = True) -> str:
        return passage_text(self.titles[i], self.texts[i], with_title)

    def passages(self, with_title: bool = True) -> list[str]:
        return [self.passage(i, with_title) for i in range(len(self))]

    def fingerprint(self, with_title: bool = True) -> str:
        """sha256 over ids and passage texts, order included: equal fingerprints mean equal embeddings inputs."""
        h = CorpusHash()
        h.update(self.ids, (self.passage(i, with_title) for i in range(len(self))))
        return h.hexdigest()


@dataclass
class QASplit:
    """Questions of one split with gold answers and (when known) gold passage ids."""

    ids: list[str]
    questions: list[str]
    answers: list[list[str]]
    gold_ids: list[list[str]] = field(default_factory=list)
    name: str = "test"

    def __post_init__(self):
        if not self.gold_ids:
            self.gold_ids = [[] for _ in self.ids]
        n = len(self.ids)
        for fname in ("questions", "answers", "gold_ids"):
            if len(getattr(self, fname)) != n:
                raise ValueError(f"QASplit: field '{fname}' has {len(getattr(self, fname))} rows, expected {n}")
        for i, (question, answers, golds) in enumerate(zip(self.questions, self.answers, self.gold_ids)):
            if not isinstance(question, str):
                raise ValueError(f"QASplit: field 'questions' row {i} must be a string, got {type(question).__name__}")
            for fname, value in (("answers", answers), ("gold_ids", golds)):
                if isinstance(value, str) or not isinstance(value, Sequence):
                    raise ValueError(
                        f"QASplit: field '{fname}' row {i} (query {self.ids[i]!r}) must be a list of strings, got "
                        f"{type(value).__name__} {value!r:.60}"
                    )
                if not all(isinstance(x, str) for x in value):
                    raise ValueError(f"QASplit: field '{fname}' row {i} (query {self.ids[i]!r}) must hold strings, "
                                     f"got {value!r:.80}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_answers(self) -> bool:
        """Whether every question has at least one gold answer (EM, F1 and the answer judges need them)."""
        return all(self.answers)

    def head(self, n: int | None) -> QASplit:
        """The first ``n`` queries (None: all). ``n`` must be a positive integer."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"max_queries: expected a positive integer or None (all queries), got {n!r}")
        if n is None or n >= len(self):
            return self
        return QASplit(self.ids[:n], self.questions[:n], self.answers[:n], self.gold_ids[:n], self.name)

    def slice(self, start: int = 0, stop: int | None = None) -> QASplit:
        """The queries ``start:stop`` (e.g. questions the RPO pairs did not use, for the GPO pairs)."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"query_offset: expected an integer >= 0, got {start!r}")
        if start >= len(self):
            raise ValueError(f"query_offset: {start} is past the split's {len(self)} queries")
        if start == 0 and stop is None:
            return self
        return QASplit(self.ids[start:stop], self.questions[start:stop], self.answers[start:stop],
                       self.gold_ids[start:stop], self.name)

    def fingerprint(self) -> str:
        """sha256 over ids, questions, answers and gold passage ids, order included."""
        h = hashlib.sha256()
        for row in zip(self.ids, self.questions, self.answers, self.gold_ids):
            h.update(json.dumps(row, ensure_ascii=True).encode())
            h.update(b"\n")
        return h.hexdigest()

    @property
    def has_gold_passages(self) -> bool:
        return any(self.gold_ids)


@dataclass
class RAGDataset:
    corpus: Corpus
    split: QASplit
    name: str = ""


def _check_answers(value, where: str, dropped: list | None = None) -> list[str]:
    """The gold answers of one query, validated. Answers that normalise to nothing (".", "the") are left out and
    recorded in ``dropped``; a query with no answer left is an error."""
    if isinstance(value, Mapping) and "text" in value:  # SQuAD's {"text": [...], "answer_start": [...]}
        value = value["text"]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{where}: field 'answers' must be a non-empty list of strings, got {type(value).__name__}")
    answers = list(value)
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: field 'answers' must be a non-empty list of non-empty strings, got {answers!r}")
    from .metrics import normalize_answer

    kept = [a for a in answers if normalize_answer(a)]
    if not kept:
        raise ValueError(f"{where}: field 'answers' {answers!r}: every answer is empty after SQuAD normalisation (only "
                         f"punctuation or articles), so EM would count an empty prediction as right and F1 would be 0")
    if dropped is not None and len(kept) < len(answers):
        dropped.append((where, [a for a in answers if not normalize_answer(a)]))
    return kept


def _warn_dropped(dropped: list, source) -> None:
    if dropped:
        where, values = dropped[0]
        logger.warning("%s: %d queries list answers that are empty after SQuAD normalisation (e.g. %s: %r); those "
                       "answers are ignored, the queries keep their other answers", source, len(dropped), where, values)


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1}); "
                         f"re-encode the file as UTF-8") from None


def _read_jsonl(path: Path, required: Sequence[str]):
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    hint = (" (a BEIR set without answers: load it with require_answers=False, e.g. for the 'qrels' "
                            "judge or --retrieval_only)") if key == "answers" else ""
                    raise ValueError(f"{path}:{lineno}: missing field '{key}'{hint}")
            if not isinstance(row["_id"], str) or not row["_id"]:
                raise ValueError(f"{path}:{lineno}: field '_id' must be a non-empty string, got {row['_id']!r}")
            yield lineno, row


def _load_beir_corpus(path: Path) -> Corpus:
    ids, titles, texts, seen = [], [], [], {}
    for lineno, row in _read_jsonl(path, ("_id", "text")):
        pid = row["_id"]
        if pid in seen:
            raise ValueError(f"{path}:{lineno}: duplicate passage id {pid!r} in field '_id' (first on line "
                             f"{seen[pid]})")
        if not isinstance(row["text"], str):
            raise ValueError(f"{path}:{lineno}: field 'text' must be a string")
        seen[pid] = lineno
        ids.append(pid)
        titles.append(row.get("title") or "")
        texts.append(row["text"])
    if not ids:
        raise ValueError(f"{path}: the corpus is empty")
    return Corpus(ids, texts, titles)


def _read_qrels(path: Path, query_ids: Mapping[str, int], corpus: Corpus) -> dict[str, list[str]]:
    if not path.is_file():
        splits = sorted(p.stem for p in path.parent.glob("*.tsv"))
        raise ValueError(f"{path}: no such qrels file; splits available: {splits}")
    qrels: dict[str, list[str]] = {}
    text_lines = [_decode(raw, path, n) for n, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1)]
    reader = csv.reader(text_lines, delimiter="\t")
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["query-id", "corpus-id"]:
        raise ValueError(f"{path}:1: expected the header 'query-id\\tcorpus-id\\tscore', got {header!r}")
    for lineno, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
        qid, pid = row[0], row[1]
        if len(row) > 2 and row[2].strip():
            try:
                score = float(row[2])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: field 'score' must be a number, got {row[2]!r}") from None
            if not math.isfinite(score):
                raise ValueError(f"{path}:{lineno}: field 'score' must be a finite number, got {row[2]!r}")
            if score <= 0:
                continue  # BEIR: a non-positive score is not a gold passage
        if qid not in query_ids:
            raise ValueError(f"{path}:{lineno}: field 'query-id' {qid!r} is not in queries.jsonl")
        if pid not in corpus:
            raise ValueError(f"{path}:{lineno}: field 'corpus-id' {pid!r} is not in corpus.jsonl")
        golds = qrels.setdefault(qid, [])
        if pid not in golds:
            golds.append(pid)
    return qrels


def load_beir(path: str | os.PathLike, split: str = "test", require_answers: bool = True) -> RAGDataset:
    """Load a folder in the BEIR layout with answers: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    The split is the set of queries listed in its qrels file, in file order. ``split=None`` takes every query (no
    gold passages). ``require_answers=False`` reads a standard BEIR set whose queries have no ``answers`` field
    (their answers are empty lists): retrieval evaluation and the ``qrels`` judge need only the gold passages.
    """
    root = Path(path)
    corpus = _load_beir_corpus(root / "corpus.jsonl")
    queries: dict[str, tuple[str, list[str]]] = {}
    lines: dict[str, int] = {}
    dropped: list = []
    qpath = root / "queries.jsonl"
    for lineno, row in _read_jsonl(qpath, ("_id", "text", "answers") if require_answers else ("_id", "text")):
        qid = row["_id"]
        if qid in lines:
            raise ValueError(f"{qpath}:{lineno}: duplicate query id {qid!r} in field '_id' (first on line "
                             f"{lines[qid]})")
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ValueError(f"{qpath}:{lineno}: field 'text' must be a non-empty string")
        lines[qid] = lineno
        queries[qid] = (row["text"], _check_answers(row["answers"], f"{qpath}:{lineno}", dropped)
                        if "answers" in row else [])
    _warn_dropped(dropped, qpath)
    if split is None:
        ids = list(queries)
        qrels: dict[str, list[str]] = {}
    else:
        qrels = _read_qrels(root / "qrels" / f"{split}.tsv", lines, corpus)
        ids = list(qrels)
        if not ids:
            raise ValueError(f"{root / 'qrels' / f'{split}.tsv'}: no query with a gold passage (header only, or only "
                             f"non-positive scores): the split {split!r} is empty")
    qa = QASplit(
        ids=ids,
        questions=[queries[q][0] for q in ids],
        answers=[queries[q][1] for q in ids],
        gold_ids=[qrels.get(q, []) for q in ids],
        name=split or "all",
    )
    return RAGDataset(corpus, qa, name=root.name)


def _as_dataset(obj, split: str | None):
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        if split not in obj:
            raise ValueError(f"split {split!r} not in the DatasetDict (has {list(obj)})")
        return obj[split]
    if isinstance(obj, datasets.Dataset):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        if os.path.isdir(obj) and (
            os.path.isfile(os.path.join(obj, "dataset_info.json"))
            or os.path.isfile(os.path.join(obj, "dataset_dict.json"))
        ):
            return _as_dataset(datasets.load_from_disk(str(obj)), split)
        return datasets.load_dataset(str(obj), split=split)
    raise ValueError(f"expected a datasets.Dataset, DatasetDict, folder or Hub id, got {type(obj).__name__}")


def _column(ds, name: str, role: str):
    if name not in ds.column_names:
        raise ValueError(f"{role}: column {name!r} not found (columns: {ds.column_names}); set the column name option")
    return ds[name]


def load_hf(
    corpus,
    queries,
    qrels=None,
    split: str = "test",
    *,
    corpus_id_column: str = "_id",
    title_column: str | None = "title",
    text_column: str = "text",
    query_id_column: str = "_id",
    question_column: str = "text",
    answers_column: str = "answers",
    qrels_query_column: str = "query-id",
    qrels_corpus_column: str = "corpus-id",
) -> RAGDataset:
    """The BEIR layout from Hugging Face ``datasets`` objects (or Hub ids / ``save_to_disk`` folders).

    ``qrels`` (optional) selects the split's queries and gives gold passages; without it every query is used.
    """
    cds = _as_dataset(corpus, "corpus" if isinstance(corpus, (str, os.PathLike)) else None)
    ids = [str(x) for x in _column(cds, corpus_id_column, "corpus")]
    texts = list(_column(cds, text_column, "corpus"))
    titles = list(cds[title_column]) if title_column and title_column in cds.column_names else None
    corpus_obj = Corpus(ids, texts, [t or "" for t in titles] if titles else [])
    qds = _as_dataset(queries, "queries" if isinstance(queries, (str, os.PathLike)) else None)
    qids = [str(x) for x in _column(qds, query_id_column, "queries")]
    questions = list(_column(qds, question_column, "queries"))
    dropped: list = []
    answers = [_check_answers(a, f"queries row {i}", dropped)
               for i, a in enumerate(_column(qds, answers_column, "queries"))]
    _warn_dropped(dropped, "queries")
    pos = {}
    for i, q in enumerate(qids):
        if q in pos:
            raise ValueError(f"queries row {i}: duplicate query id {q!r} in column {query_id_column!r}")
        pos[q] = i
    if qrels is None:
        order, gold = qids, {}
    else:
        rds = _as_dataset(qrels, split)
        gold: dict[str, list[str]] = {}
        rq = _column(rds, qrels_query_column, "qrels")
        rc = _column(rds, qrels_corpus_column, "qrels")
        for i, (q, p) in enumerate(zip(rq, rc)):
            q, p = str(q), str(p)
            if q not in pos:
                raise ValueError(f"qrels row {i}: column {qrels_query_column!r} value {q!r} is not a query id")
            if p not in corpus_obj:
                raise ValueError(f"qrels row {i}: column {qrels_corpus_column!r} value {p!r} is not a corpus id")
            gold.setdefault(q, [])
            if p not in gold[q]:
                gold[q].append(p)
        order = list(gold)
    qa = QASplit(
        ids=order,
        questions=[questions[pos[q]] for q in order],
        answers=[answers[pos[q]] for q in order],
        gold_ids=[gold.get(q, []) for q in order],
        name=split,
    )
    return RAGDataset(corpus_obj, qa)


def load_qa_dataset(
    dataset,
    split: str = "validation",
    *,
    question_column: str = "question",
    answers_column: str = "answers",
    context_column: str = "context",
    title_column: str | None = "title",
    id_column: str | None = "id",
) -> RAGDataset:
    """A SQuAD-style QA data set (one row per question with its context) as a corpus + split.

    Contexts are de-duplicated into the corpus (ids = :func:`passage_id`); each question's gold passage is its context.
    ``answers`` may be a list of strings or SQuAD's ``{"text": [...], ...}``.
    """
    ds = _as_dataset(dataset, split)
    contexts = _column(ds, context_column, "dataset")
    titles = ds[title_column] if title_column and title_column in ds.column_names else [""] * len(contexts)
    questions = _column(ds, question_column, "dataset")
    raw_answers = _column(ds, answers_column, "dataset")
    if id_column and id_column in ds.column_names:
        qids = [str(x) for x in ds[id_column]]
    else:
        qids = [str(i) for i in range(len(ds))]
    cids, ctexts, ctitles, seen = [], [], [], set()
    gold = []
    for title, ctx in zip(titles, contexts):
        pid = passage_id(title or "", ctx)
        gold.append([pid])
        if pid not in seen:
            seen.add(pid)
            cids.append(pid)
            ctexts.append(ctx)
            ctitles.append(title or "")
    dropped: list = []
    answers = [_check_answers(a, f"dataset row {i}", dropped) for i, a in enumerate(raw_answers)]
    _warn_dropped(dropped, "dataset")
    return RAGDataset(Corpus(cids, ctexts, ctitles), QASplit(qids, list(questions), answers, gold, name=split))


def load_rag_dataset(name_or_path: str | os.PathLike, split: str = "test", require_answers: bool = True,
                     **columns) -> RAGDataset:
    """Load a folder in the BEIR layout (has ``corpus.jsonl``), else a SQuAD-style HF data set (folder or Hub id).
    ``require_answers=False``: a BEIR set may have queries without answers (see :func:`load_beir`)."""
    if os.path.isfile(os.path.join(name_or_path, "corpus.jsonl")):
        if columns:
            raise ValueError(f"column options {sorted(columns)} apply to HF datasets, not to the BEIR folder "
                             f"{name_or_path}")
        return load_beir(name_or_path, split, require_answers=require_answers)
    if os.path.isdir(name_or_path) and not os.listdir(name_or_path):
        raise ValueError(f"{name_or_path}: empty folder; expected corpus.jsonl + queries.jsonl + qrels/ or a datasets "
                         "folder")
    beir_parts = [n for n in ("queries.jsonl", "qrels") if os.path.exists(os.path.join(name_or_path, n))]
    if os.path.isdir(name_or_path) and beir_parts:
        raise ValueError(f"{name_or_path}: has {' and '.join(beir_parts)} but no corpus.jsonl (the BEIR layout needs "
                         f"corpus.jsonl + queries.jsonl + qrels/<split>.tsv)")
    return load_qa_dataset(name_or_path, split, **columns)
