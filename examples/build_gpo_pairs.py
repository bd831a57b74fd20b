"""Build GPO preference pairs: the frozen (RPO-tuned) retriever's top-k -> one prompt -> the greedy answer and

The same as `trl-bporag build-gpo-pairs`: the code is `trl_bporag/scripts/build_gpo_pairs.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.build_gpo_pairs import cli

if __name__ == "__main__":
    cli()
