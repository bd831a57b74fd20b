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


KNOWN_HARMLESS_WARNINGS = (
    # transformers' rename of gradient checkpointing, raised by TRL's and PEFT's own calls on our path
    (FutureWarning, r"`(is_)?gradient_checkpointing` is deprecated"),
    # PEFT looks the base model's config up on the Hub when saving an adapter, to see whether the vocabulary was
    # resized; GPO never resizes it, and offline the look-up can only fail
    (UserWarning, r"Could not find a config file in .* will assume that the vocabulary was not modified"),
    (UserWarning, r"Unable to fetch remote file due to the following error"),
)


def quiet_known_warnings() -> None:
    """Silence the dependency warnings listed in :data:`KNOWN_HARMLESS_WARNINGS` (for the example scripts)."""
    import warnings

    for category, pattern in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
