from .judges import JUDGES, answer_hit_judge, get_judge
from .rpo import PERTURBATIONS, RECIPES, RetrievalPreferenceBuilder

__all__ = ["JUDGES", "PERTURBATIONS", "RECIPES", "RetrievalPreferenceBuilder", "answer_hit_judge", "get_judge"]
