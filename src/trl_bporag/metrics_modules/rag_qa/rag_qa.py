"""EM and token F1 (SQuAD v1.1 definitions, max over gold answers) as an `evaluate` module (values in 0..1)."""

import datasets
import evaluate

from trl_bporag.metrics import answer_metrics

_DESCRIPTION = "Exact match and token F1 of generated answers against a list of gold answers (SQuAD v1.1)."
_KWARGS = """
Args:
    predictions: list of answer strings.
    references: list of lists of gold answer strings.
Returns:
    exact_match, f1: means over questions, in 0..1.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RagQa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        return answer_metrics(predictions, references)
