"""The JSON files one stage writes and a later stage reads back, read like user data: one reader per file, a schema.

A stage file can be hand-edited, half-written or from another version of this package; reading it must not end in a
``TypeError`` deep inside generation, nor in a silently different system. :func:`read_json_object` refuses an empty,
unparsable or non-object file, and :func:`check_schema` every key of the file against the schema of its kind
(:data:`BPORAG_CONFIG`, :data:`PAIRS_STATS`, :data:`INDEX_METADATA`): a ``ValueError`` names the file, the key, what
was found and what was expected; a key the schema does not know (a newer version wrote it) gives one warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

Check = Callable[[object], bool]


class Key:
    """One key of a schema: a predicate on its value, what it expects in words, whether it must be there."""

    def __init__(self, check: Check, expected: str, required: bool = False, nullable: bool = False):
        self.check, self.expected, self.required, self.nullable = check, expected, required, nullable

    def ok(self, value) -> bool:
        return (value is None and self.nullable) or self.check(value)


def _is_int(minimum: int = 0) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(positive: bool = False) -> Check:
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and (v > 0 or not positive))


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _choice(*values) -> Check:
    return lambda v: v in values


def _list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _is_dict(v) -> bool:
    return isinstance(v, dict)


def integer(minimum: int = 0, required: bool = False, nullable: bool = False) -> Key:
    return Key(_is_int(minimum), f"an integer >= {minimum}" + (" or null" if nullable else ""), required, nullable)


def number(positive: bool = False, nullable: bool = True) -> Key:
    return Key(_is_number(positive), ("a finite number > 0" if positive else "a finite number")
               + (" or null" if nullable else ""), nullable=nullable)


def text(required: bool = False, nullable: bool = True) -> Key:
    return Key(_is_str, "a string" + (" or null" if nullable else ""), required, nullable)


def boolean(nullable: bool = False) -> Key:
    return Key(_is_bool, "true or false" + (" or null" if nullable else ""), nullable=nullable)


def choice(*values, required: bool = False, nullable: bool = False) -> Key:
    return Key(_choice(*values), f"one of {list(values)}" + (" or null" if nullable else ""), required, nullable)


def texts(nullable: bool = True) -> Key:
    return Key(lambda v: _is_str(v) or _list_of(_is_str)(v), "a string or a list of strings", nullable=nullable)


#: What the generator reads and how it answers (trl_bporag.settings.RAGSettings), as a stage file records it.
SETTINGS_KEYS = {
    "k": integer(1),
    "max_passage_tokens": integer(1, nullable=True),
    "system_prompt": text(),
    "answer_prefix": text(),
    "with_title": boolean(),
    "max_new_tokens": integer(1),
}

#: ``bporag_config.json`` of a trained retriever (stage "rpo"), an SFT adapter ("sft") or a GPO adapter ("gpo").
BPORAG_CONFIG = {
    **SETTINGS_KEYS,
    "stage": choice("rpo", "sft", "gpo"),
    "format_version": integer(1),
    "score": choice("cos", "dot"),
    "position_weights": Key(_list_of(_is_number()), "a list of finite numbers or null", nullable=True),
    "retriever": text(), "retriever_hub_id": text(), "retriever_relative_to": text(), "retriever_absolute": text(),
    "retriever_query_prompt": text(), "retriever_document_prompt": text(),
    "generator": text(), "start_adapter": text(), "pairs": text(), "pairs_hub_id": text(), "adapter_hub_id": text(),
    "beta": number(positive=True), "learning_rate": number(positive=True), "loss_type": texts(),
    "num_beams": integer(1, nullable=True), "num_samples": integer(1, nullable=True), "pairing": text(),
    "metrics": Key(_is_dict, "an object", nullable=True),
    # the GPO pair builder's configuration, which GPOTrainer's card usually carries
    # (GenerationPreferenceBuilder.describe)
    "temperature": number(), "top_p": number(), "top_k": integer(0, nullable=True), "judge": text(),
    "seed": integer(0, nullable=True), "max_length": integer(1, nullable=True),
    "conversational": boolean(nullable=True),
    # what an SFT adapter was trained on (scripts/sft.py)
    "dataset": text(), "split": text(), "query_offset": integer(0, nullable=True), "queries": integer(0, nullable=True),
}

#: ``stats.json`` beside a pairs folder: the builder's ``describe()``.
PAIRS_STATS = {
    "config": Key(_is_dict, "an object (the builder's configuration)", required=True),
    "stats": Key(lambda v: _is_dict(v) and all(_is_int(0)(x) for x in v.values()),
                 "an object of counts (integers >= 0)", required=True),
    "seconds": number(),
}

#: The builder configuration inside ``stats.json``: the keys a later stage reads are checked, the others kept.
PAIRS_CONFIG = {
    **SETTINGS_KEYS,
    "retriever": text(), "retriever_hub_id": text(), "generator": text(), "judge": text(), "pairing": text(),
    "num_beams": integer(1), "num_samples": integer(1), "num_perturbations": integer(1), "top_n": integer(1),
    "seed": integer(0), "conversational": boolean(), "max_length": integer(1, nullable=True),
}

#: ``metadata.json`` of a saved :class:`~trl_bporag.retrieval.DenseIndex`.
INDEX_METADATA = {
    "format_version": integer(1),
    "index_type": text(required=True, nullable=False),  # flat / hnsw / ivf, or a FAISS index_factory string
    "params": Key(lambda v: _is_dict(v) and all(x is None or _is_int(1)(x) for x in v.values()),
                  "an object of positive integers (hnsw_m, ef_construction, ef_search, nlist, nprobe, train_sample, "
                  "rescore)", required=True),
    "dim": integer(1, required=True),
    "num_passages": integer(0),
    "index_sha256": text(),
    "ids": Key(_list_of(_is_str), "a list of passage id strings"),  # absent when the ids stay in the shards
    "shards_fingerprint": text(),
    "model_id": text(), "model_fingerprint": text(), "corpus_fingerprint": text(),
    "score": choice("cos", "dot", nullable=True), "normalized": boolean(nullable=True),
    "encode_dtype": choice("bfloat16", "float32", nullable=True), "with_title": boolean(nullable=True),
    "encode_seconds": number(),
}


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path``; a ``ValueError`` naming the file when it is a folder, empty, not UTF-8 JSON, or
    not an object (``what`` says what the file should be)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; expected a JSON file ({what})")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: is not UTF-8 text (byte {err.start}); expected a JSON object ({what})") from None
    if not raw.strip():
        raise ValueError(f"{path}: is empty; expected a JSON object ({what})")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); expected a "
                         f"JSON object ({what})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}; expected a JSON object ({what})")
    return data


_warned: set = set()


def check_schema(path, data: dict, schema: dict[str, Key], what: str, warn_unknown: bool = True,
                 refuse_unknown: bool = False) -> dict:
    """``data`` (read from ``path``) checked against ``schema``; returns it unchanged. A missing required key or a
    value of the wrong type or range is a ``ValueError`` naming the file and the key; unknown keys (a newer version's)
    give one warning per file and kind, or a ``ValueError`` with ``refuse_unknown`` (a writer: what this version
    writes, this version must be able to read without a warning)."""
    for key, spec in schema.items():
        if key not in data:
            if spec.required:
                raise ValueError(f"{path}: the key {key!r} is missing; expected {spec.expected} ({what})")
            continue
        if not spec.ok(data[key]):
            found = json.dumps(data[key])[:80]
            raise ValueError(f"{path}: {key!r} is {found} ({type(data[key]).__name__}); expected {spec.expected} "
                             f"({what})")
    unknown = sorted(set(data) - set(schema))
    if unknown and refuse_unknown:
        raise ValueError(f"{path}: key(s) {unknown} are not in the schema of {what}; add them to "
                         f"trl_bporag.stage_files before writing them")
    if unknown and warn_unknown and (str(path), what) not in _warned:
        _warned.add((str(path), what))
        logger.warning("%s: unknown key(s) %s (written by a newer version?); they are ignored", path, unknown)
    return data


def read_stage_file(path: str | os.PathLike, schema: dict[str, Key], what: str, warn_unknown: bool = True) -> dict:
    """:func:`read_json_object` then :func:`check_schema`."""
    return check_schema(path, read_json_object(path, what), schema, what, warn_unknown)
