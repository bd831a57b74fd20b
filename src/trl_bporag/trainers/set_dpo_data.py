"""RPO rows for :class:`~trl_bporag.SetDPOTrainer`: their columns, their checks and their collator.

Pairwise rows: ``{"prompt": query, "chosen": [passages of P+], "rejected": [passages of P-]}``; listwise rows:
``{"prompt", "lists": [[passages] * L], "list_scores": [L judge scores]}``. Optional precomputed reference columns:
``ref_chosen_score`` / ``ref_rejected_score`` or ``ref_list_scores``. Passages stay texts until ``compute_loss``,
which encodes each unique passage of a batch once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

REF_CHOSEN_COLUMN = "ref_chosen_score"
REF_REJECTED_COLUMN = "ref_rejected_score"
REF_LIST_COLUMN = "ref_list_scores"
LISTS_COLUMN = "lists"
LIST_SCORES_COLUMN = "list_scores"
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
LISTWISE_COLUMNS = ("prompt", LISTS_COLUMN, LIST_SCORES_COLUMN)
#: Every column the collator reads.
COLLATED_COLUMNS = (*REQUIRED_COLUMNS, REF_CHOSEN_COLUMN, REF_REJECTED_COLUMN, LISTS_COLUMN, LIST_SCORES_COLUMN,
                    REF_LIST_COLUMN)


def _check_window(passages, k: int, name: str, prompt) -> list[str]:
    """The first k passages of one list, checked: enough of them, all strings, none repeated."""
    if isinstance(passages, str) or len(passages) < k:
        n = 1 if isinstance(passages, str) else len(passages)
        raise ValueError(f"Field {name!r} of an example has {n} passage(s), fewer than k={k} (query: {prompt!r}).")
    window = list(passages[:k])
    if not all(isinstance(p, str) for p in window):
        bad = next(p for p in window if not isinstance(p, str))
        raise ValueError(f"Field {name!r} of an example holds a {type(bad).__name__}, not a passage text (query: "
                         f"{prompt!r}).")
    if len(set(window)) < len(window):
        dup = next(p for i, p in enumerate(window) if p in window[:i])
        raise ValueError(f"Field {name!r} of an example repeats the passage {dup[:60]!r} in its first k={k} "
                         f"(query: {prompt!r}); a list holds distinct passages.")
    return window


def _check_listwise_row(example, k: int, where: str) -> tuple[list[list[str]], list[float]]:
    """The windows and judge scores of one listwise row, checked: every window as :func:`_check_window`, one finite
    score per window, at least two windows. ``where`` names the row in the error."""
    windows = [_check_window(w, k, LISTS_COLUMN, example["prompt"]) for w in example[LISTS_COLUMN]]
    scores = [float(v) for v in example[LIST_SCORES_COLUMN]]
    if len(scores) != len(windows) or len(windows) < 2:
        raise ValueError(f"{where}: {len(scores)} {LIST_SCORES_COLUMN} for {len(windows)} lists; a listwise row needs "
                         "one score per list and >= 2 lists.")
    if not all(math.isfinite(v) for v in scores):
        raise ValueError(f"{where}: {LIST_SCORES_COLUMN} {scores} are not all finite.")
    ref = example.get(REF_LIST_COLUMN)
    if ref is not None:
        ref = [float(v) for v in ref]
        if len(ref) != len(windows):
            raise ValueError(f"{where}: {len(ref)} {REF_LIST_COLUMN} for {len(windows)} lists; precomputed reference "
                             "scores need one score per list (recompute them, or drop the column).")
        if not all(math.isfinite(v) for v in ref):
            raise ValueError(f"{where}: {REF_LIST_COLUMN} {ref} are not all finite (a NaN reference score would make "
                             "the loss and every weight NaN).")
    return windows, scores


@dataclass
class DataCollatorForSetPreference:
    """Batch RPO rows as raw texts: tokenisation happens in ``compute_loss`` so that each unique passage of a batch is
    encoded once.

    Pairwise rows give ``{"prompt": [str], "chosen": [[str] * k], "rejected": [[str] * k]}`` and, when every row has
    them, the float tensors ``ref_chosen_score`` / ``ref_rejected_score``. Listwise rows (``lists``, ``list_scores``)
    give ``{"prompt", "lists": [[[str] * k] * L_b], "list_scores": [B, L], "list_mask": [B, L]}`` (L the longest
    row; padding lists repeat the row's first list and are masked) and ``ref_list_scores`` [B, L] when present.
    """

    k: int
    with_ref_scores: bool = True

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = []
        for example in examples:
            if not isinstance(example["prompt"], str):
                raise ValueError(f"The 'prompt' field must be a query string, got {type(example['prompt']).__name__}.")
            prompts.append(example["prompt"])
        if LISTS_COLUMN in examples[0]:
            return self._listwise(examples, prompts)
        batch: dict[str, Any] = {"prompt": prompts, "chosen": [], "rejected": []}
        for example, prompt in zip(examples, prompts):
            for name in ("chosen", "rejected"):
                batch[name].append(_check_window(example[name], self.k, name, prompt))
        if self.with_ref_scores and all(
            REF_CHOSEN_COLUMN in ex and REF_REJECTED_COLUMN in ex and ex[REF_CHOSEN_COLUMN] is not None
            for ex in examples
        ):
            batch[REF_CHOSEN_COLUMN] = torch.tensor([float(ex[REF_CHOSEN_COLUMN]) for ex in examples])
            batch[REF_REJECTED_COLUMN] = torch.tensor([float(ex[REF_REJECTED_COLUMN]) for ex in examples])
            for column in (REF_CHOSEN_COLUMN, REF_REJECTED_COLUMN):
                if not torch.isfinite(batch[column]).all():
                    raise ValueError(f"Field {column!r} holds NaN or inf in a batch (query: {batch['prompt'][0]!r}).")
        return batch

    def _listwise(self, examples, prompts) -> dict[str, Any]:
        width = max(len(ex[LISTS_COLUMN]) for ex in examples)
        lists, scores, mask, refs = [], [], [], []
        for example, prompt in zip(examples, prompts):
            windows, judged = _check_listwise_row(example, self.k, f"An example (query: {prompt!r})")
            pad = width - len(windows)
            lists.append(windows + [windows[0]] * pad)
            scores.append(judged + [0.0] * pad)
            mask.append([True] * len(windows) + [False] * pad)
            ref = example.get(REF_LIST_COLUMN)
            refs.append(None if ref is None else [float(v) for v in ref] + [0.0] * pad)
        batch = {"prompt": prompts, LISTS_COLUMN: lists, LIST_SCORES_COLUMN: torch.tensor(scores),
                 "list_mask": torch.tensor(mask)}
        if self.with_ref_scores and all(r is not None for r in refs):
            batch[REF_LIST_COLUMN] = torch.tensor(refs)
        return batch


def has_ref_columns(dataset) -> bool:
    names = getattr(dataset, "column_names", None) or []
    return (REF_CHOSEN_COLUMN in names and REF_REJECTED_COLUMN in names) or REF_LIST_COLUMN in names


def is_listwise(dataset) -> bool:
    return LISTS_COLUMN in (getattr(dataset, "column_names", None) or [])


def infer_k(dataset) -> int:
    """The ``k`` a data set was built for: the length of its shortest list (the builders write lists of exactly k
    passages). A listwise or pairwise ``Dataset``; an ``IterableDataset`` is read from its first row."""
    if isinstance(dataset, IterableDataset):
        first = next(iter(dataset))
        lists = first[LISTS_COLUMN] if LISTS_COLUMN in first else [first["chosen"], first["rejected"]]
        return min(len(w) for w in lists)
    if len(dataset) == 0:
        raise ValueError("The RPO dataset has no rows; k cannot be read from it (build pairs first, or check the "
                         "split).")
    if is_listwise(dataset):
        lengths = [(row, min(len(w) for w in lists), max(len(w) for w in lists))
                   for row, lists in enumerate(dataset[LISTS_COLUMN])]
    else:
        chosen, rejected = _list_lengths(dataset, "chosen"), _list_lengths(dataset, "rejected")
        lengths = [(row, min(c, r), max(c, r)) for row, (c, r) in enumerate(zip(chosen, rejected))]
    shortest = min(lengths, key=lambda t: t[1])
    longest = max(t[2] for t in lengths)
    if shortest[1] != longest:
        raise ValueError(f"Row {shortest[0]} of the RPO dataset holds a list of {shortest[1]} passage(s), others "
                         f"hold up to {longest}: k cannot be read from lists of unequal length (it would silently "
                         f"become {shortest[1]} for every row). Set k explicitly (SetDPOConfig(k=...), --k).")
    return shortest[1]


def validate_rpo_dataset(dataset, k: int, name: str):
    """Check RPO rows before training and return the data set unchanged (no tokenisation: passages are encoded per
    batch). Raises a ``ValueError`` naming the data set, the row and the field for a missing column, a list shorter
    than k, a passage repeated within a list, or a non-finite score. An ``IterableDataset`` is checked on its first
    row here and on every row by the collator."""
    if isinstance(dataset, IterableDataset):
        first = next(iter(dataset))
        columns = list(first.keys())
    else:
        columns = list(dataset.column_names)
        first = dataset[0] if len(dataset) else {}
    listwise = LISTS_COLUMN in columns
    needed = LISTWISE_COLUMNS if listwise else REQUIRED_COLUMNS
    for column in needed:
        if column not in columns:
            what = ("'prompt', 'lists' (lists of passage texts) and 'list_scores' (one judge score per list)"
                    if listwise else "'prompt' (query string), 'chosen' and 'rejected' (lists of passage texts)")
            raise ValueError(f"The {name} dataset has no {column!r} column (columns: {columns}). RPO rows need {what}.")
    if not first:
        raise ValueError(f"The {name} dataset is empty.")
    if not isinstance(first["prompt"], str):
        raise ValueError(f"The 'prompt' column of the {name} dataset must hold query strings, got "
                         f"{type(first['prompt']).__name__}.")
    if listwise:
        conflicts = []
        for row, example in enumerate(dataset if isinstance(dataset, Dataset) else [first]):
            windows, scores = _check_listwise_row(example, k, f"Row {row} of the {name} dataset")
            seen: dict[frozenset, float] = {}
            for window, score in zip(windows, scores):
                if seen.setdefault(frozenset(window), score) != score:
                    conflicts.append(row)
                    break
        _warn_rows(conflicts, name, "hold the same passages (a duplicate or permuted window) twice with different "
                   "judge scores; their set scores are equal, so those pairs push against each other")
        return dataset
    for field in ("chosen", "rejected"):
        if isinstance(first[field], str) or not isinstance(first[field], Sequence):
            raise ValueError(f"The {field!r} column of the {name} dataset must hold lists of passage texts, got "
                             f"{type(first[field]).__name__}.")
    if not isinstance(dataset, Dataset):
        return dataset
    texts = {field: dataset[field] for field in ("chosen", "rejected")}  # read once: the checks below share them
    for field in ("chosen", "rejected"):
        for row, n in enumerate(_list_lengths(dataset, field)):
            if n < k:
                raise ValueError(f"Row {row} of the {name} dataset: field {field!r} has {n} passage(s), fewer than "
                                 f"k={k}. Every chosen/rejected list needs at least k passages.")
        for row, passages in enumerate(texts[field]):
            window = passages[:k]
            if len(set(window)) < len(window):
                dup = next(p for i, p in enumerate(window) if p in window[:i])
                raise ValueError(f"Row {row} of the {name} dataset: field {field!r} repeats the passage "
                                 f"{str(dup)[:60]!r} in its first k={k}. A list holds distinct passages (a repeated "
                                 "one would count twice in the set score).")
    same = [row for row, (c, r) in enumerate(zip(texts["chosen"], texts["rejected"]))
            if set(c[:k]) == set(r[:k])]
    _warn_rows(same, name, f"have chosen and rejected lists that hold the same first k={k} passages (equal set "
               "scores: the pair teaches nothing)")
    for column in (REF_CHOSEN_COLUMN, REF_REJECTED_COLUMN, "chosen_score", "rejected_score"):
        if column in columns:
            for row, value in enumerate(dataset[column]):
                if value is not None and not math.isfinite(float(value)):
                    raise ValueError(f"Row {row} of the {name} dataset: field {column!r} is {value!r}; scores must "
                                     "be finite numbers.")
    return dataset


def _warn_rows(rows: list[int], name: str, what: str) -> None:
    if rows:
        logger.warning("%d row(s) of the %s dataset %s (first: row %d). They are trained on as given; check the "
                       "builder or judge that wrote them.", len(rows), name, what, rows[0])


def _list_lengths(dataset: Dataset, column: str) -> list[int]:
    try:  # fast path: arrow list lengths, no Python materialisation of the texts
        import pyarrow.compute as pc

        lengths = pc.list_value_length(dataset.with_format("arrow")[:][column])
        return [0 if n is None else int(n) for n in lengths.to_pylist()]
    except Exception:
        return [len(v) for v in dataset[column]]


__all__ = ["DataCollatorForSetPreference", "infer_k", "validate_rpo_dataset"]
