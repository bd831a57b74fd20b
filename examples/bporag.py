"""BPO-RAG end to end on one data set: RPO pairs -> RPO -> GPO pairs -> GPO -> evaluate the paper's four rows.

The same as `trl-bporag bporag`: the code is `trl_bporag/scripts/bporag.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.bporag import cli

if __name__ == "__main__":
    cli()
