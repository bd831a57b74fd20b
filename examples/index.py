"""Index a corpus with a retriever: a FAISS folder (``index.faiss`` + ``metadata.json``) that the other scripts reuse.

The same as `trl-bporag index`: the code is `trl_bporag/scripts/index.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.index import cli

if __name__ == "__main__":
    cli()
