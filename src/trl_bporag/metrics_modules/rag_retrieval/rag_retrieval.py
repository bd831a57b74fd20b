"""Recall@k of retrieved passage ids against gold passage ids, as an `evaluate` module."""

import datasets
import evaluate

from trl_bporag.metrics import recall_at_k

_DESCRIPTION = "Recall@k: mean over queries of the fraction of gold passages among the first k retrieved."
_KWARGS = """
Args:
    predictions: list of ranked lists of retrieved passage ids.
    references: list of lists of gold passage ids.
    ks: the cut-offs (default (1, 5, 10)).
Returns:
    recall@k for each k.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RagRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        return {f"recall@{k}": recall_at_k(predictions, references, k) for k in ks}
