"""Evaluate a retriever (Recall@k, answer-hit@k) and optionally a generator reading its top-k (EM, F1).

The same as `trl-bporag evaluate`: the code is `trl_bporag/scripts/evaluate.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.evaluate import cli

if __name__ == "__main__":
    cli()
