"""TRL's fused LM head, projecting only the labelled positions on a CPU too.

TRL's SFT and DPO trainers compute each token's log-probability with a fused LM head
(``trl.trainer.utils.add_fused_lm_head``): the hidden states are projected onto the vocabulary in tiles, without
materialising the full logits. On a Triton device (CUDA, XPU) it projects only the positions whose label is not
``-100``; everywhere else it projects **every** position, so that the number of rows stays fixed (a guard against
recompilation on devices such as Neuron). A CPU runs eagerly and has nothing to recompile, but pays the full
projection: GPO's and SFT's rows are ~600-token prompts with answers of ~10 tokens and the loss on the answer only, so
~98 % of the LM head's work (the forward tiles, the recomputed tiles of the backward and their gradient GEMMs over
SmolLM2's 49,152-token vocabulary) is thrown away by the mask. Measured on 2 CPU cores (``bench/lm_head.py``): an SFT
step of SmolLM2-135M 2.1x faster, the same losses and gradients.

:func:`project_labelled_positions_only` makes the CPU take TRL's own compact path (the one CUDA always takes): the same
kernel, the same arithmetic for each scored position, fewer rows. :class:`~trl_bporag.trainers.GPOTrainer` and
``trl-bporag sft`` turn it on; with stock ``DPOTrainer`` / ``SFTTrainer`` call it once before building the trainer.

There is no public switch for this in TRL (1.16): the function replaces the device test that
``add_fused_lm_head``'s forward reads (``trl.trainer.utils._use_triton``) with one that also answers yes for a CPU; the
tiles themselves still run TRL's torch fallback on a CPU (the kernel module keeps its own test). Where that name is
missing (another TRL), nothing is changed and the function returns ``False``: training is then as fast as TRL makes it,
never different in value.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_MARK = "_trl_bporag_cpu_compact"


def project_labelled_positions_only() -> bool:
    """Let TRL's fused LM head project only the labelled positions on a CPU (as it does on CUDA). Process-wide and
    idempotent; it changes speed only: every value the head returns (log-probabilities, entropies, the loss, their
    gradients) is that of the full projection at the labelled positions, and zero elsewhere, as before.

    Returns:
        ``True`` if the compact path is on for CPU tensors (now or already), ``False`` where this TRL has no such
        test to extend (nothing changed).
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - TRL is a dependency
        return False
    device_test = getattr(trl_utils, "_use_triton", None)
    if device_test is None or not callable(device_test):
        logger.debug("trl.trainer.utils has no _use_triton: TRL's fused LM head is left as it is")
        return False
    if getattr(device_test, _MARK, False):
        return True

    def compact_on_cpu(device) -> bool:
        return getattr(device, "type", None) == "cpu" or device_test(device)

    setattr(compact_on_cpu, _MARK, True)
    compact_on_cpu.__wrapped__ = device_test
    trl_utils._use_triton = compact_on_cpu
    return True
