from .encoder import Retriever, set_scores
from .index import DenseIndex

__all__ = ["Retriever", "DenseIndex", "set_scores"]
