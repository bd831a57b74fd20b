"""Trainers: set-level DPO for dense retrievers (the RPO step of BPO-RAG), and helpers around stock DPO for GPO."""

from .callbacks import NonFiniteTrainingError, StopOnNonFiniteGradients
from .gpo import GPO_MAX_LENGTH, GPOConfig, GPOTrainer, gpo_lora_config, write_bporag_card
from .lm_head import project_labelled_positions_only
from .set_dpo_config import SUPPORTED_LOSS_TYPES, SetDPOConfig
from .set_dpo_data import infer_k, validate_rpo_dataset
from .set_dpo_trainer import DataCollatorForSetPreference, SetDPOTrainer
from .set_scores import SetScorer

__all__ = [
    "SUPPORTED_LOSS_TYPES",
    "NonFiniteTrainingError",
    "StopOnNonFiniteGradients",
    "DataCollatorForSetPreference",
    "SetDPOConfig",
    "SetDPOTrainer",
    "SetScorer",
    "infer_k",
    "validate_rpo_dataset",
    "GPOConfig",
    "GPOTrainer",
    "GPO_MAX_LENGTH",
    "gpo_lora_config",
    "write_bporag_card",
    "project_labelled_positions_only",
]
