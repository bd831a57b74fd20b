"""Trainers: set-level DPO for dense retrievers (the RPO step of BPO-RAG), and helpers around stock DPO for GPO."""

from .gpo import add_bporag_card, gpo_defaults, write_bporag_config
from .set_dpo_config import SUPPORTED_LOSS_TYPES, SetDPOConfig
from .set_dpo_trainer import DataCollatorForSetPreference, SetDPOTrainer, set_dpo_loss

__all__ = [
    "SUPPORTED_LOSS_TYPES",
    "DataCollatorForSetPreference",
    "SetDPOConfig",
    "SetDPOTrainer",
    "add_bporag_card",
    "gpo_defaults",
    "set_dpo_loss",
    "write_bporag_config",
]
