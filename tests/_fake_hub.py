"""A local stand-in for the Hugging Face Hub (the real one is unreachable in the tests).

``FakeHub(root).install(monkeypatch)`` replaces the ``huggingface_hub`` calls that this package, ``transformers``'
``Trainer.push_to_hub`` and PEFT / ``PushToHubMixin`` make to *write* a repo (``HfApi.create_repo``,
``HfApi.upload_folder``, ``HfApi.upload_file``, ``HfApi.create_commit``) and the one that *reads* a whole repo
(``snapshot_download``). A repo is the folder ``root/<repo_type>s/<repo_id>``; every call is recorded in
``calls`` so a test can assert exactly which files (and which card text) would have been sent.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FakeHub:
    root: Path
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def repo_dir(self, repo_id: str, repo_type: str | None = None) -> Path:
        return Path(self.root) / f"{repo_type or 'model'}s" / repo_id

    def files(self, repo_id: str, repo_type: str | None = None) -> list[str]:
        """The files of a repo, relative paths, sorted."""
        base = self.repo_dir(repo_id, repo_type)
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def uploads(self, name: str = "upload_folder") -> list[dict]:
        return [kwargs for call, kwargs in self.calls if call == name]

    # -- writes -------------------------------------------------------------------------------------------------------
    def create_repo(self, api, repo_id, *, repo_type=None, exist_ok=False, private=None, token=None, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", {"repo_id": repo_id, "repo_type": repo_type, "private": private}))
        path = self.repo_dir(repo_id, repo_type)
        if path.exists() and not exist_ok:
            raise FileExistsError(f"fake hub: {repo_id} exists")
        path.mkdir(parents=True, exist_ok=True)
        prefix = "" if (repo_type or "model") == "model" else f"{repo_type}s/"
        return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

    def upload_folder(self, api, *, repo_id, folder_path, path_in_repo=None, repo_type=None, allow_patterns=None,
                      ignore_patterns=None, delete_patterns=None, commit_message=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        folder = Path(folder_path)
        ignore = list([ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns or [])
        ignore += [".git/*", ".cache/huggingface/*", "*/.cache/huggingface/*"]  # what huggingface_hub always skips
        relpaths = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        sent = list(filter_repo_objects(relpaths, allow_patterns=allow_patterns, ignore_patterns=ignore))
        target = self.repo_dir(repo_id, repo_type) / (path_in_repo or "")
        for rel in sent:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / rel, target / rel)
        self.calls.append(("upload_folder", {"repo_id": repo_id, "repo_type": repo_type, "files": sent,
                                             "commit_message": commit_message, "path_in_repo": path_in_repo}))
        return f"https://huggingface.co/{repo_id}/commit/fake"

    def upload_file(self, api, *, path_or_fileobj, path_in_repo, repo_id, repo_type=None, commit_message=None,
                    **kwargs):
        target = self.repo_dir(repo_id, repo_type) / path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_read(path_or_fileobj))
        self.calls.append(("upload_file", {"repo_id": repo_id, "repo_type": repo_type, "files": [path_in_repo]}))
        return f"https://huggingface.co/{repo_id}/blob/main/{path_in_repo}"

    def create_commit(self, api, repo_id, operations, *, commit_message=None, repo_type=None, **kwargs):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        base = self.repo_dir(repo_id, repo_type)
        sent = []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                (base / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
                (base / op.path_in_repo).write_bytes(_read(op.path_or_fileobj))
                sent.append(op.path_in_repo)
            elif isinstance(op, CommitOperationDelete):
                target = base / op.path_in_repo
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        self.calls.append(("create_commit", {"repo_id": repo_id, "repo_type": repo_type, "files": sorted(sent),
                                             "commit_message": commit_message}))
        return f"https://huggingface.co/{repo_id}/commit/fake"

    # -- reads --------------------------------------------------------------------------------------------------------
    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, allow_patterns=None, **kwargs):
        path = self.repo_dir(repo_id, repo_type)
        self.calls.append(("snapshot_download", {"repo_id": repo_id, "repo_type": repo_type}))
        if not path.is_dir():
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError(f"fake hub: no {repo_type or 'model'} repo {repo_id}")
        return str(path)

    def install(self, monkeypatch) -> FakeHub:
        import huggingface_hub
        from huggingface_hub import HfApi

        hub = self
        for name in ("create_repo", "upload_folder", "upload_file", "create_commit"):
            method = getattr(hub, name)
            monkeypatch.setattr(HfApi, name, lambda api, *a, _m=method, **kw: _m(api, *a, **kw))
        monkeypatch.setattr(HfApi, "snapshot_download", lambda api, *a, **kw: hub.snapshot_download(*a, **kw))
        monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
        return self


def _read(obj) -> bytes:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, (str, Path)):
        return Path(obj).read_bytes()
    if isinstance(obj, io.IOBase) or hasattr(obj, "read"):
        return obj.read()
    raise TypeError(f"fake hub: cannot read {type(obj).__name__}")
