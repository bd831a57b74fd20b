"""The files a stage writes for the next one to read, in one place: one writer and one (validated) reader each.

* ``bporag_config.json`` beside a GPO adapter: the retriever and the :class:`~trl_bporag.settings.RAGSettings` the
  generator was aligned under. :meth:`~trl_bporag.RAGPipeline.from_pretrained` reads it to rebuild the pipeline. The
  retriever is recorded by what resolves anywhere: its Hub id (``retriever_hub_id``) where it was pushed, and a local
  folder **relative to the adapter folder** (``"retriever": "../retriever-rpo"``), so the two folders can move
  together (``retriever_absolute`` is the fallback when only the adapter moved). Never by the working directory.
* ``bporag_config.json`` in a retriever folder written by :class:`~trl_bporag.SetDPOTrainer`: its ``k`` and ``score``,
  the defaults of :meth:`~trl_bporag.RAGPipeline.from_pretrained`.
* ``stats.json`` beside a pairs folder (written by the builders, pushed with the pairs): ``{"config": {...},
  "stats": {...}}``; :func:`read_stage_config` reads it from a folder or a Hub repo alike.

Every reader checks its file like user data (:mod:`trl_bporag.stage_files`): an empty, unparsable or hand-edited file
with a wrong type is a ``ValueError`` naming the file, the key, what was found and what was expected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .settings import RAGSettings
from .stage_files import BPORAG_CONFIG, PAIRS_CONFIG, PAIRS_STATS, check_schema, read_stage_file

logger = logging.getLogger(__name__)

BPORAG_CONFIG_NAME = "bporag_config.json"
PAIRS_STATS_NAME = "stats.json"
FORMAT_VERSION = 1
#: The prompt settings a stage records and the next stage reuses (the fields of RAGSettings).
PROMPT_SETTINGS = RAGSettings.names()


def write_bporag_config(output_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``bporag_config.json`` into ``output_dir``; a local ``retriever`` folder is stored relative to it."""
    import json

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, **config}
    retriever = config.get("retriever")
    if isinstance(retriever, (str, os.PathLike)) and not config.get("retriever_hub_id"):
        hub_id = retriever_hub_id(retriever)  # the id a trained retriever folder records it was pushed to
        if hub_id:
            config["retriever_hub_id"] = hub_id
    if isinstance(retriever, (str, os.PathLike)) and os.path.isdir(retriever):
        config["retriever"] = os.path.relpath(os.path.abspath(retriever), os.path.abspath(out))
        config["retriever_relative_to"] = "adapter folder"
        config["retriever_absolute"] = os.path.abspath(retriever)
    check_schema(out / BPORAG_CONFIG_NAME, config, BPORAG_CONFIG, "the BPO-RAG settings of a stage",
                 refuse_unknown=True)
    path = out / BPORAG_CONFIG_NAME
    path.write_text(json.dumps(config, indent=2))
    return path


def retriever_hub_id(retriever: str | os.PathLike | None) -> str | None:
    """The Hub id a trained retriever folder records it was pushed to (``retriever_hub_id`` in its
    ``bporag_config.json``); None for a folder without one, and for anything that is not a folder (a Hub id is
    already what resolves anywhere)."""
    if retriever is None or not os.path.isdir(retriever):
        return None
    file = Path(retriever) / BPORAG_CONFIG_NAME
    if not file.is_file():
        return None
    return read_stage_file(file, BPORAG_CONFIG, "the BPO-RAG settings of a stage").get("retriever_hub_id")


def _resolve_retriever(path: Path, file: Path, config: dict) -> dict:
    """A retriever recorded relative to the folder, resolved from ``path``; else the absolute path, else the Hub id."""
    if not config.pop("retriever_relative_to", None) or not config.get("retriever"):
        return config
    local = (path / config["retriever"]).resolve()
    absolute = config.pop("retriever_absolute", None)
    if local.is_dir():
        config["retriever"] = str(local)
    elif absolute and os.path.isdir(absolute):  # the adapter moved without the retriever
        config["retriever"] = absolute
    elif config.get("retriever_hub_id"):
        config["retriever"] = config["retriever_hub_id"]
    else:
        raise ValueError(f"{file}: the retriever was recorded as {config['retriever']!r} relative to the adapter "
                         f"folder, i.e. {local}, which does not exist, and no retriever_hub_id names where it was "
                         "pushed. Move the retriever folder along with the adapter, or pass retriever= explicitly.")
    return config


def read_bporag_config(path: str | os.PathLike) -> dict | None:
    """The BPO-RAG settings of a GPO adapter or retriever folder (``bporag_config.json``) or of a pairs folder
    (``stats.json``'s ``config``), checked; None when the folder has neither.

    A retriever recorded relative to the adapter folder is returned as a path resolved from ``path``; when that
    folder does not exist, the recorded absolute path, then ``retriever_hub_id``, are tried; otherwise a
    ``ValueError`` names the folder that was expected (it is not a Hub id)."""
    path = Path(path)
    file = path / BPORAG_CONFIG_NAME
    if file.exists():
        config = dict(read_stage_file(file, BPORAG_CONFIG, "the BPO-RAG settings of a stage"))
        return _resolve_retriever(path, file, config)
    file = path / PAIRS_STATS_NAME
    if file.exists():
        data = read_stage_file(file, PAIRS_STATS, "a pair builder's configuration and counts")
        config = dict(check_schema(file, data["config"], PAIRS_CONFIG, "the pair builder's configuration",
                                   warn_unknown=False))
        return _resolve_retriever(path, file, config)
    return None


def read_pairs_stats(path: str | os.PathLike) -> dict | None:
    """``stats.json`` of a pairs folder (``{"config", "stats"}``), checked; None when there is none."""
    file = Path(path) / PAIRS_STATS_NAME
    return dict(read_stage_file(file, PAIRS_STATS, "a pair builder's configuration and counts")) if file.exists() \
        else None


def stage_settings(config: dict | None, where: str, defaults: RAGSettings | None = None) -> RAGSettings:
    """The :class:`~trl_bporag.settings.RAGSettings` a stage recorded (``config`` from :func:`read_bporag_config`);
    the settings it does not record keep ``defaults``. ``where`` names the file in errors."""
    return RAGSettings.from_dict(config or {}, where=f"{where}: ", defaults=defaults)


def read_stage_config(name_or_path: str | os.PathLike, repo_type: str = "dataset") -> dict | None:
    """:func:`read_bporag_config` of a local folder, or of a Hub repo (only its ``bporag_config.json`` /
    ``stats.json`` are downloaded); None when neither holds one, or when the Hub cannot be reached (logged)."""
    if os.path.isdir(name_or_path):
        return read_bporag_config(name_or_path)
    from .hub import snapshot

    try:
        folder = snapshot(str(name_or_path), repo_type=repo_type,
                          allow_patterns=[BPORAG_CONFIG_NAME, PAIRS_STATS_NAME])
    except ValueError as err:
        logger.warning("No BPO-RAG settings read from %s: %s", name_or_path, err)
        return None
    return read_bporag_config(folder)
