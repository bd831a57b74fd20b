"""SFT: fine-tune the generator on the gold answers under the frozen retriever's top-k (TRL's SFTTrainer + LoRA).

The same as `trl-bporag sft`: the code is `trl_bporag/scripts/sft.py`
(its docstring lists the flags and examples).
"""

from trl_bporag.scripts.sft import cli

if __name__ == "__main__":
    cli()
