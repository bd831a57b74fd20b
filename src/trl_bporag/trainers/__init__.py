"""Trainers: set-level DPO for dense retrievers (the RPO step of BPO-RAG)."""

from .set_dpo_config import SUPPORTED_LOSS_TYPES, SetDPOConfig
from .set_dpo_trainer import DataCollatorForSetPreference, SetDPOTrainer, set_dpo_loss

__all__ = ["SUPPORTED_LOSS_TYPES", "DataCollatorForSetPreference", "SetDPOConfig", "SetDPOTrainer", "set_dpo_loss"]
