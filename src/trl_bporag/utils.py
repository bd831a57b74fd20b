"""Small shared helpers."""

from __future__ import annotations


def distributed_state():
    """accelerate's ``PartialState``; on a machine without CUDA, processes started by ``accelerate launch
    --multi_gpu --num_processes N`` (or torchrun) form a multi-CPU (gloo) group instead of N single processes."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
