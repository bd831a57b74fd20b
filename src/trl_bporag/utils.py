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
