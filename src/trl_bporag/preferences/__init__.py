from .base import ShardedPreferenceBuilder, load_pairs
from .gpo import GPO_PAIRINGS, GenerationPreferenceBuilder, check_dpo_lengths
from .judges import GENERATOR_JUDGES, JUDGES, answer_hit_judge, get_judge, qrels_judge
from .rpo import PERTURBATIONS, RECIPES, RetrievalPreferenceBuilder

__all__ = [
    "GPO_PAIRINGS",
    "GENERATOR_JUDGES",
    "JUDGES",
    "PERTURBATIONS",
    "RECIPES",
    "GenerationPreferenceBuilder",
    "RetrievalPreferenceBuilder",
    "ShardedPreferenceBuilder",
    "answer_hit_judge",
    "check_dpo_lengths",
    "get_judge",
    "qrels_judge",
    "load_pairs",
]
