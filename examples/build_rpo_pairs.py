"""Build RPO preference rows (base retriever top-n -> perturbed lists -> judge -> judged windows).

The same as `trl-bporag build-rpo-pairs`: the code is `trl_bporag/scripts/build_rpo_pairs.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.build_rpo_pairs import cli

if __name__ == "__main__":
    cli()
