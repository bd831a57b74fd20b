"""trl-bporag: BPO-RAG (bi-level preference optimisation for retrieval-augmented generation) on top of TRL."""

# ruff: noqa: E402  (the oneDNN cache bound below must be set before the imports that import torch)

__version__ = "0.1.0"

from .hardware import bound_onednn_primitive_cache

bound_onednn_primitive_cache()  # before anything imports torch (see its docstring)

from .data import Corpus, QASplit, RAGDataset, load_beir, load_hf, load_qa_dataset, load_rag_dataset
from .evaluation import retrieval_evaluator
from .losses import ContrastiveSetLoss, ListwiseSetDPOLoss, SetDPOLoss
from .metrics import (
    answer_hit_at_k,
    answer_metrics,
    exact_match_score,
    f1_score,
    load_metric,
    qa_exact_match,
    qa_f1,
    recall_at_k,
    retrieval_metrics,
)
from .models import DEFAULT_GENERATOR, DEFAULT_RETRIEVER, load_generator, load_retriever
from .passage_listwise_loss import PlackettLucePassageLoss
from .pipeline import RAGPipeline
from .preferences import GenerationPreferenceBuilder, RetrievalPreferenceBuilder
from .retrieval import DenseIndex, Retriever, set_scores
from .trainers import GPOConfig, GPOTrainer, NonFiniteTrainingError, SetDPOConfig, SetDPOTrainer

__all__ = [
    "retrieval_evaluator",
    "ContrastiveSetLoss",
    "ListwiseSetDPOLoss",
    "SetDPOLoss",
    "PlackettLucePassageLoss",
    "Corpus",
    "QASplit",
    "RAGDataset",
    "load_beir",
    "load_hf",
    "load_qa_dataset",
    "load_rag_dataset",
    "answer_hit_at_k",
    "answer_metrics",
    "exact_match_score",
    "f1_score",
    "load_metric",
    "qa_exact_match",
    "qa_f1",
    "recall_at_k",
    "retrieval_metrics",
    "DEFAULT_GENERATOR",
    "DEFAULT_RETRIEVER",
    "load_generator",
    "load_retriever",
    "RAGPipeline",
    "GenerationPreferenceBuilder",
    "RetrievalPreferenceBuilder",
    "DenseIndex",
    "Retriever",
    "set_scores",
    "SetDPOConfig",
    "SetDPOTrainer",
    "GPOConfig",
    "GPOTrainer",
    "NonFiniteTrainingError",
    "bound_onednn_primitive_cache",
]
