"""Files of a saved index: temporary names, the per-folder lock, metadata reading and checksums. Writes go to a
unique temporary file renamed into place; processes building into one folder take turns (``filelock``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..stage_files import INDEX_METADATA, check_schema

INDEX_FILE = "index.faiss"
META_FILE = "metadata.json"


def temp_name(folder: Path, name: str) -> Path:
    """A fresh temporary file name next to ``folder/name`` (unique per process and call)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp)


def folder_lock(folder: Path):
    """An inter-process lock on ``folder`` (``folder/.lock``); a no-op where the folder cannot be written."""
    import contextlib

    from filelock import FileLock

    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock_path = folder / ".lock"
        lock_path.touch(exist_ok=True)
    except OSError:
        return contextlib.nullcontext()
    return FileLock(str(lock_path))


def read_meta(folder: Path) -> dict | str | None:
    """The metadata of a saved index in ``folder``: None when there is none, the dict when it reads, and a string
    saying what is wrong when it is damaged."""
    meta_path, index_path = folder / META_FILE, folder / INDEX_FILE
    if not meta_path.exists() and not index_path.exists():
        return None
    if not meta_path.is_file():
        return f"{META_FILE} is missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{META_FILE} does not parse ({err})"
    if not isinstance(meta, dict):
        return f"{META_FILE} holds a {type(meta).__name__}, not an object"
    try:
        check_schema(meta_path, meta, INDEX_METADATA, "index metadata")
    except ValueError as err:
        return str(err)
    return meta


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
