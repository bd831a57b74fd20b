"""The Hub side of :class:`~trl_bporag.retrieval.DenseIndex`: its card, ``push_to_hub`` and ``from_pretrained``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from .storage import INDEX_FILE, META_FILE, VECTORS_FILE


class IndexHubMixin:
    """Hub methods of :class:`~trl_bporag.retrieval.DenseIndex` (they call its ``save`` / ``load``)."""

    def card(self, repo_id: str | None = None) -> str:
        """The ``README.md`` pushed with the index (:func:`trl_bporag.hub.index_card`)."""
        from trl_bporag.hub import index_card

        return index_card(self, repo_id)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        repo_type: str = "dataset",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Upload the index to a Hub repo (a dataset repo by default): ``index.faiss``, ``metadata.json`` (as
        :meth:`save` writes them) and a ``README.md`` card. Returns the commit URL. Read it back with
        :meth:`from_pretrained`."""
        import tempfile

        from trl_bporag.hub import push_folder_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            (Path(tmp) / "README.md").write_text(self.card(repo_id))
            return push_folder_to_hub(
                tmp, repo_id, repo_type=repo_type, private=private, token=token, revision=revision,
                commit_message=commit_message or f"Upload a {self.index_type} index of {len(self)} passages",
            )

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        *,
        repo_type: str = "dataset",
        revision: str | None = None,
        token: str | None = None,
        **load_kwargs,
    ) -> Self:
        """Load an index from a local folder or a Hub repo id (downloaded with ``huggingface_hub.snapshot_download``).

        ``load_kwargs`` go to :meth:`load` (``retriever=``, ``corpus=``, ``use_gpu=``, ...), so the same checks apply:
        a corrupt file, or an index built for another retriever or corpus, is refused.
        """
        from trl_bporag.hub import snapshot

        folder = snapshot(repo_id_or_path, repo_type=repo_type, revision=revision, token=token,
                          allow_patterns=[INDEX_FILE, META_FILE, VECTORS_FILE, "README.md"])
        return cls.load(folder, **load_kwargs)
