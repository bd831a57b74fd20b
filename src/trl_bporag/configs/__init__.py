"""The shipped configurations: one YAML per stage holding the recommended recipe at full scale (the README's step-by-
step commands), read by ``--config``, and accelerate configurations for several GPUs (DDP, DeepSpeed ZeRO-2, FSDP).

    trl-bporag rpo --config rpo.yaml                  # a shipped name resolves here when no such file exists
    CFG=$(python -c 'import trl_bporag.configs as c; print(c.path("accelerate/ddp.yaml"))')
    accelerate launch --config_file "$CFG" -m trl_bporag.scripts.rpo --config rpo.yaml
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped files, relative to this folder (``rpo.yaml``, ``accelerate/ddp.yaml``, ...)."""
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.yaml"))


def path(name: str) -> str:
    """The path of the shipped file ``name`` (``.yaml`` may be left out); a ``ValueError`` lists the names."""
    for candidate in (name, f"{name}.yaml"):
        if candidate in names():
            return str(ROOT / candidate)
    raise ValueError(f"{name!r}: not a shipped configuration; expected one of {names()}")
