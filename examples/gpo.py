"""GPO: train the generator with TRL's DPOTrainer (+ LoRA) on pairs from build_gpo_pairs.py.

The same as `trl-bporag gpo`: the code is `trl_bporag/scripts/gpo.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.gpo import cli

if __name__ == "__main__":
    cli()
