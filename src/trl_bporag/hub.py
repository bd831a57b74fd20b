"""Pushing the artifacts of each stage to the Hugging Face Hub, and reading them back.

Every artifact is a folder in a standard format, so a push is one ``HfApi.upload_folder`` call:

* the RPO-tuned retriever: ``SetDPOTrainer.push_to_hub()`` (a sentence-transformers folder with its model card);
* a FAISS index: :meth:`trl_bporag.retrieval.DenseIndex.push_to_hub` /
  :meth:`~trl_bporag.retrieval.DenseIndex.from_pretrained`;
* preference pairs (RPO or GPO rows): :func:`push_pairs_to_hub`, read back with ``datasets.load_dataset(repo_id)``;
* any other saved folder, e.g. a PEFT adapter: :func:`push_folder_to_hub`.

:func:`snapshot` resolves "a local folder or a Hub repo id" to a local folder for the loaders.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["pairs_card", "push_folder_to_hub", "push_pairs_to_hub", "save_pairs_for_hub", "snapshot"]

REPO_TYPES = ("model", "dataset", "space")


def _check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1 or repo_id.startswith("/"):
        raise ValueError(f"repo_id: expected a Hub repo id such as 'user/name', got {repo_id!r}")
    return repo_id


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it in one commit; returns the commit URL.

    Use it for any saved artifact folder, e.g. a GPO PEFT adapter written by ``DPOTrainer.save_model`` (the adapter
    files plus its ``README.md`` card) when it was not pushed by the trainer itself.
    """
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type: expected one of {REPO_TYPES}, got {repo_type!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: {folder} is not a folder")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return str(
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name}",
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
        )
    )


def snapshot(
    repo_id_or_path: str | os.PathLike,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    token: str | None = None,
    ignore_patterns: Sequence[str] | None = None,
) -> Path:
    """A local folder for ``repo_id_or_path``: the path itself when it is a folder, else a Hub snapshot download."""
    if os.path.isdir(repo_id_or_path):
        return Path(repo_id_or_path)
    if os.path.exists(repo_id_or_path):
        raise ValueError(f"{repo_id_or_path}: expected a folder or a Hub repo id, got a file")
    repo_id = _check_repo_id(str(repo_id_or_path))
    import huggingface_hub

    try:
        path = huggingface_hub.snapshot_download(
            repo_id, repo_type=repo_type, revision=revision, token=token,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            **({"ignore_patterns": list(ignore_patterns)} if ignore_patterns else {}),
        )
    except Exception as err:  # noqa: BLE001 - offline, 404, auth: one clear message
        raise ValueError(
            f"{repo_id_or_path}: not a local folder, and the {repo_type} repo could not be downloaded from the Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
        ) from err
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# Preference pairs
# --------------------------------------------------------------------------------------------------------------------
def index_card(index, repo_id: str | None = None) -> str:
    """The ``README.md`` pushed with a :class:`~trl_bporag.DenseIndex`: YAML (tags, model, dimension, size,
    fingerprints) and usage."""
    import yaml

    meta = index.metadata
    info = {
        "model_id": meta.get("model_id"),
        "model_fingerprint": meta.get("model_fingerprint"),
        "score": meta.get("score"),
        "dim": index.dim,
        "num_passages": len(index),
        "index_type": index.index_type,
        "corpus_fingerprint": meta.get("corpus_fingerprint"),
        "with_title": meta.get("with_title"),
    }
    info = {key: value for key, value in info.items() if value is not None}
    header = {"tags": ["faiss", "retrieval-index", "trl", "bporag"], "bporag_index": info}
    rows = "\n".join(f"| {key} | {value} |" for key, value in info.items())
    name = repo_id or "INDEX_REPO"
    body = f"""# {name.split("/")[-1]}

A FAISS inner-product index ({index.index_type}) of {len(index)} passage embeddings, built with trl-bporag's
`DenseIndex`. `index.faiss` is the index; `metadata.json` holds the passage ids in row order, the index parameters,
the sha256 of `index.faiss`, and the fingerprints of the retriever and of the corpus it was built from.

| field | value |
|---|---|
{rows}

```python
from trl_bporag import DenseIndex, Retriever

retriever = Retriever("{info.get("model_id", "RETRIEVER")}")
index = DenseIndex.from_pretrained("{name}", retriever=retriever)  # refuses another retriever or a corrupt file
scores, ids = index.search_ids(retriever.encode_queries(["..."]), k=5)
```
"""
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n{body}"


def pairs_card(dataset, repo_id: str, description: Mapping | None = None, split: str = "train",
               kind: str = "rpo") -> str:
    """The dataset card (``README.md``) of a pairs repo: YAML with the ``configs`` entry that makes
    ``load_dataset(repo_id)`` read the parquet file, the builder's configuration and counts, and a short body."""
    import yaml

    config = dict((description or {}).get("config", {}))
    stats = dict((description or {}).get("stats", {}))
    header = {
        "tags": ["trl", "bporag", "preference", f"{kind}-pairs"],
        "configs": [{"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*.parquet"}]}],
    }
    if config:
        header["bporag_builder"] = config
    if stats:
        header["bporag_stats"] = stats
    columns = ", ".join(f"`{c}`" for c in dataset.column_names)
    what = {
        "rpo": "retriever (RPO) preference pairs: `chosen` / `rejected` are the first-k passage texts of two "
               "candidate lists of the same query, the chosen one judged better",
        "gpo": "generator (GPO) preference pairs for TRL's `DPOTrainer`",
    }.get(kind, "preference pairs")
    rows = "\n".join(f"| {key} | {value} |" for key, value in {**config, **stats}.items())
    table = f"\n| field | value |\n|---|---|\n{rows}\n" if rows else ""
    body = f"""# {repo_id.split("/")[-1]}

{len(dataset)} {what}, built with trl-bporag and stored in TRL's preference
format (columns: {columns}).

```python
from datasets import load_dataset

pairs = load_dataset("{repo_id}", split="{split}")
```
{table}"""
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n{body}"


def save_pairs_for_hub(dataset, folder: str | os.PathLike, repo_id: str, description: Mapping | None = None,
                       split: str = "train", kind: str = "rpo") -> list[str]:
    """Write the files of a pairs repo into ``folder`` and return their relative paths:
    ``data/<split>-00000-of-00001.parquet`` (the layout of ``Dataset.push_to_hub``), ``README.md`` and, with
    ``description`` (``builder.describe()``), ``stats.json``."""
    listwise = "lists" in dataset.column_names
    for column in ("prompt", "lists", "list_scores") if listwise else ("prompt", "chosen", "rejected"):
        if column not in dataset.column_names:
            raise ValueError(f"dataset: missing column {column!r} (columns: {dataset.column_names}); "
                             "pairs need 'prompt', 'chosen' and 'rejected' (listwise rows: 'prompt', 'lists' and "
                             "'list_scores')")
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    parquet = f"data/{split}-00000-of-00001.parquet"
    dataset.to_parquet(str(folder / parquet))
    (folder / "README.md").write_text(pairs_card(dataset, repo_id, description, split, kind))
    files = ["README.md", parquet]
    if description is not None:
        (folder / "stats.json").write_text(json.dumps(description, indent=2))
        files.append("stats.json")
    return sorted(files)


def push_pairs_to_hub(dataset, repo_id: str, *, description: Mapping | None = None, split: str = "train",
                      kind: str = "rpo", private: bool | None = None, token: str | None = None,
                      commit_message: str | None = None) -> str:
    """Push preference pairs (a ``datasets.Dataset``) as a Hub dataset repo; returns the commit URL.

    The repo holds the rows as parquet under ``data/`` (as ``Dataset.push_to_hub`` writes them), a dataset card and,
    with ``description`` (e.g. ``RetrievalPreferenceBuilder.describe()``), ``stats.json``.
    ``datasets.load_dataset(repo_id, split=split)`` reads it back.
    """
    with tempfile.TemporaryDirectory() as tmp:
        save_pairs_for_hub(dataset, tmp, repo_id, description, split, kind)
        return push_folder_to_hub(tmp, repo_id, repo_type="dataset", private=private, token=token,
                                  commit_message=commit_message or f"Upload {len(dataset)} {kind.upper()} pairs")
