"""The files a stage writes for the next one to read, in one place.

* ``bporag_config.json`` beside a GPO adapter: the retriever, k and prompt settings the generator was aligned under.
  :meth:`~trl_bporag.RAGPipeline.from_pretrained` reads it to rebuild the pipeline. A local retriever folder is
  recorded **relative to the adapter folder** (``"retriever": "../retriever-rpo"``), so the two folders can move
  together (``retriever_absolute`` is the fallback when only the adapter moved); ``retriever_hub_id`` names where the
  retriever was pushed, for an adapter read from elsewhere.
* ``bporag_config.json`` in a retriever folder written by :class:`~trl_bporag.SetDPOTrainer`: its ``k`` and ``score``,
  the defaults of :meth:`~trl_bporag.RAGPipeline.from_pretrained`.
* ``stats.json`` beside a pairs folder (written by the builders, pushed with the pairs): ``{"config": {...},
  "stats": {...}}``; :func:`read_stage_config` reads it from a folder or a Hub data set alike.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BPORAG_CONFIG_NAME = "bporag_config.json"
PAIRS_STATS_NAME = "stats.json"
#: The prompt settings a GPO adapter records in bporag_config.json and RAGPipeline.from_pretrained reuses.
PROMPT_SETTINGS = ("system_prompt", "answer_prefix", "max_passage_tokens", "with_title")


def write_bporag_config(output_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``bporag_config.json`` into ``output_dir``; a local ``retriever`` folder is stored relative to it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    retriever = config.get("retriever")
    if isinstance(retriever, (str, os.PathLike)) and os.path.isdir(retriever):
        config["retriever"] = os.path.relpath(os.path.abspath(retriever), os.path.abspath(out))
        config["retriever_relative_to"] = "adapter folder"
        config["retriever_absolute"] = os.path.abspath(retriever)
    path = out / BPORAG_CONFIG_NAME
    path.write_text(json.dumps(config, indent=2))
    return path


def read_bporag_config(path: str | os.PathLike) -> dict | None:
    """The BPO-RAG settings of a GPO adapter folder (``bporag_config.json``) or a pairs folder (``stats.json``'s
    ``config``); None when the folder has neither.

    A retriever recorded relative to the adapter folder is returned as a path resolved from ``path``. When that folder
    does not exist, the recorded absolute path, then ``retriever_hub_id``, are tried; otherwise a ``ValueError`` names
    the folder that was expected (it is not a Hub id)."""
    path = Path(path)
    for name in (BPORAG_CONFIG_NAME, PAIRS_STATS_NAME):
        f = path / name
        if not f.is_file():
            continue
        data = json.loads(f.read_text())
        config = dict(data.get("config", data))
        if config.pop("retriever_relative_to", None) and config.get("retriever"):
            local = (path / config["retriever"]).resolve()
            absolute = config.pop("retriever_absolute", None)
            if local.is_dir():
                config["retriever"] = str(local)
            elif absolute and os.path.isdir(absolute):  # the adapter moved without the retriever
                config["retriever"] = absolute
            elif config.get("retriever_hub_id"):
                config["retriever"] = config["retriever_hub_id"]
            else:
                raise ValueError(
                    f"{f}: the retriever was recorded as {config['retriever']!r} relative to the adapter folder, i.e. "
                    f"{local}, which does not exist. Move the retriever folder along with the adapter, or pass "
                    "retriever= explicitly."
                )
        return config
    return None


def read_stage_config(name_or_path: str | os.PathLike, repo_type: str = "dataset") -> dict | None:
    """:func:`read_bporag_config` of a local folder, or of a Hub repo (only its ``bporag_config.json`` /
    ``stats.json`` are downloaded); None when neither holds one, or when the Hub cannot be reached (logged)."""
    if os.path.isdir(name_or_path):
        return read_bporag_config(name_or_path)
    from .hub import snapshot

    try:
        folder = snapshot(name_or_path, repo_type=repo_type, allow_patterns=[BPORAG_CONFIG_NAME, PAIRS_STATS_NAME])
    except ValueError as err:
        logger.warning("No BPO-RAG settings read from %s: %s", name_or_path, err)
        return None
    return read_bporag_config(folder)
