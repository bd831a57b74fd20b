"""RPO: train a retriever with set-level DPO on pairs from build_rpo_pairs.py.

The same as `trl-bporag rpo`: the code is `trl_bporag/scripts/rpo.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.rpo import cli

if __name__ == "__main__":
    cli()
