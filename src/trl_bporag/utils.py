"""Small shared helpers."""

from __future__ import annotations

import hashlib


def distributed_state():
    """accelerate's ``PartialState``; on a machine without CUDA, processes started by ``accelerate launch
    --multi_gpu --num_processes N`` (or torchrun) form a multi-CPU (gloo) group instead of N single processes."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def stable_seed(*parts) -> int:
    """A 64-bit seed from ``parts`` that is the same on every run, machine and process (unlike ``hash``): the first 8
    bytes (little-endian) of sha256 over the parts joined by ``:``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def check_positive_ints(args, names, optional: bool = False) -> None:
    """Parse-time check for script arguments: each of ``names`` on ``args`` must be an integer >= 1 (or None when
    ``optional``). Raises a ``ValueError`` naming the flag (``--name``) and the value."""
    for name in names:
        value = getattr(args, name)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            unset = " or unset (all)" if optional else ""
            raise ValueError(f"--{name}: expected an integer >= 1{unset}, got {value!r}")
