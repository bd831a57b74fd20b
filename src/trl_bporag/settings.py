"""What the generator reads and how it answers, in one object with one default for each setting.

:class:`RAGSettings` is used by every stage that builds a prompt or answers: the RPO builder's generator judges, the
GPO builder, :class:`~trl_bporag.RAGPipeline`, evaluation and every example script (whose flags are generated from
its fields: it is a dataclass that ``TrlParser`` reads). A stage artifact records it
(:func:`trl_bporag.artifacts.write_bporag_config`, the builders' ``stats.json``) and the next stage reads it back
(:func:`trl_bporag.artifacts.stage_settings`), so an adapter is served with the prompt it was trained on.

The defaults are the measured best for the embedded default (docs/benchmarks.md): k = 5, passages cut to 96 tokens
(what fits GPO's 640-token training rows), the default system prompt, the reply started with ``The answer is "``
(SmolLM2-135M then answers with a short quoted span: F1 0.129 against 0.078 with the plain prompt), 24 new tokens.

:class:`RPOPairSettings` holds the defaults of the RPO pair builder that the scripts share: the measured best recipe
(answer containment judge, 8 minimal edits per query, listwise rows).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using the given passages. Reply with the answer only: a few words, no full sentence."
)
#: An answer prefix that makes small instruction models answer with a short span: the reply starts with it, the
#: generator writes the answer and closes the quote (chosen on squad-dev *dev*, ``bench/prompt_choice.py``).
QUOTED_ANSWER_PREFIX = 'The answer is "'

_CLOSING = {'"': '"', "\u201c": "\u201d", "(": ")", "[": "]"}


def answer_stop(answer_prefix: str | None) -> str | None:
    """Where an answer written after ``answer_prefix`` ends: the closing mark of an opening quote or bracket the prefix
    ends with (``'The answer is "'`` -> ``'"'``), else None (the first line is the answer)."""
    if not answer_prefix:
        return None
    return _CLOSING.get(answer_prefix.rstrip(" ")[-1:])


def finite(value, name: str, positive: bool = False, minimum: float | None = None) -> float:
    """``value`` as a finite float; a ``ValueError`` naming ``name`` otherwise (and for ``positive``: > 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def _check_int(where: str, name: str, value, minimum: int = 1, optional: bool = False):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}{name}: expected an integer >= {minimum}{' or null (no limit)' if optional else ''}, "
                         f"got {value!r}")


def _check_text(where: str, name: str, value):
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}{name}: expected a string (or null / \"\" for none), got {type(value).__name__} "
                         f"{value!r}")


def _check_bool(where: str, name: str, value):
    if not isinstance(value, bool):
        raise ValueError(f"{where}{name}: expected true or false, got {type(value).__name__} {value!r}")


@dataclass
class RAGSettings:
    """What the generator reads and how it answers.

    Args:
        k: passages the generator reads (the retriever's top k).
        max_passage_tokens: each passage the generator reads is cut to this many tokens of its tokenizer (None:
            passages whole).
        system_prompt: the system message of the generator's prompt (None or ``""``: none).
        answer_prefix: text the generator's reply starts with; the answer is what it writes after it, up to
            :func:`~trl_bporag.generation.answer_stop` (None or ``""``: none).
        with_title: the generator reads ``title + " " + text`` (as the retriever encodes by default).
        max_new_tokens: the answer's length limit in tokens.
    """

    k: int = field(default=5, metadata={"help": "passages the generator reads (the retriever's top k)"})
    max_passage_tokens: int | None = field(default=96, metadata={
        "help": "each passage the generator reads is cut to this many tokens (the same in GPO pairs, GPO training "
                "and evaluation)"})
    system_prompt: str | None = field(default=DEFAULT_SYSTEM_PROMPT, metadata={
        "help": "system message of the generator's prompt (\"\": none)"})
    answer_prefix: str | None = field(default=QUOTED_ANSWER_PREFIX, metadata={
        "help": "text the generator's reply starts with, in every stage and row (\"\": none); the default makes "
                "SmolLM2 answer with a short quoted span (bench/prompt_choice.py)"})
    with_title: bool = field(default=True, metadata={"help": "the generator reads title + ' ' + text"})
    max_new_tokens: int = field(default=24, metadata={"help": "answer length limit in tokens"})

    def __post_init__(self):
        self.system_prompt = self.system_prompt or None  # "" (a flag's way to say none) means none
        self.answer_prefix = self.answer_prefix or None
        self.check()

    def check(self, where: str = "") -> RAGSettings:
        """Raise a ``ValueError`` naming the setting (``where`` before it: a file, or ``--`` for flags)."""
        _check_int(where, "k", self.k)
        _check_int(where, "max_passage_tokens", self.max_passage_tokens, optional=True)
        _check_int(where, "max_new_tokens", self.max_new_tokens)
        _check_text(where, "system_prompt", self.system_prompt)
        _check_text(where, "answer_prefix", self.answer_prefix)
        _check_bool(where, "with_title", self.with_title)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stop(self) -> str | None:
        """Where an answer written after ``answer_prefix`` ends (:func:`answer_stop`)."""
        return answer_stop(self.answer_prefix)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: dict, where: str = "", defaults: RAGSettings | None = None) -> RAGSettings:
        """The settings a stage file recorded (its other keys ignored); a setting it does not record keeps
        ``defaults`` (default: :class:`RAGSettings`'s). Types and ranges are checked strictly (no ``"64"`` for 64,
        no ``"no"`` for false): a ``ValueError`` names ``where``, the key, what was found and what was expected."""
        base = asdict(defaults or cls())
        values = {name: data[name] for name in cls.names() if name in data}
        settings = cls.__new__(cls)
        settings.__dict__.update({**base, **values})
        for name in ("system_prompt", "answer_prefix"):
            _check_text(where, name, settings.__dict__[name])
        settings.system_prompt = settings.system_prompt or None
        settings.answer_prefix = settings.answer_prefix or None
        return settings.check(where)

    def replace(self, **overrides) -> RAGSettings:
        """A copy with ``overrides`` (setting names only; None is a value: no prefix, no system prompt, whole
        passages)."""
        unknown = set(overrides) - set(self.names())
        if unknown:
            raise TypeError(f"unknown RAG setting(s) {sorted(unknown)}; the settings are {list(self.names())}")
        return type(self)(**{**asdict(self), **overrides})


#: The one default of every RAG setting.
DEFAULTS = RAGSettings()


class UsesRAGSettings:
    """The settings of an object holding ``self.settings`` (a :class:`RAGSettings`), readable as its attributes:
    ``obj.k``, ``obj.answer_prefix``, ... (to change one: ``obj.settings = obj.settings.replace(k=3)``)."""

    settings: RAGSettings


for _name in RAGSettings.names():
    setattr(UsesRAGSettings, _name, property(lambda self, _n=_name: getattr(self.settings, _n),
                                             doc=f"``settings.{_name}``"))
del _name


def resolve_settings(settings: RAGSettings | None = None, **overrides) -> RAGSettings:
    """``settings`` (default :data:`DEFAULTS`) with keyword ``overrides`` applied: what a class that takes
    ``settings=`` plus the individual setting keywords (for compatibility) stores."""
    if settings is not None and not isinstance(settings, RAGSettings):
        raise TypeError(f"settings: expected a RAGSettings, got {type(settings).__name__}")
    return (settings or DEFAULTS).replace(**overrides)


#: The RPO builder's built-in judges, and those of them that need the generator.
JUDGES = ("generator_f1", "answer_likelihood", "answer_hit", "qrels")
GENERATOR_JUDGES = ("generator_f1", "answer_likelihood")
#: Judges that read the gold passages (qrels) instead of the gold answers.
PASSAGE_JUDGES = ("qrels",)
#: How the RPO builder turns a query's judged windows into rows.
PAIRINGS = ("vs_original", "best_worst", "listwise")


@dataclass
class RPOPairSettings:
    """The RPO pair builder's recipe (the measured best: docs/benchmarks.md, "RPO against the label-free anchors").

    Args:
        judge: ``answer_hit`` (the answer-containment of the window's passages: no generator), ``answer_likelihood``
            (the generator's mean log-probability of the best gold answer), ``generator_f1`` (the paper: the
            generator's answer F1) or ``qrels`` (nDCG@k of the window against the gold passages: a BEIR set with
            qrels and no answers).
        perturbations: ``minimal`` (swap or drop one passage of the window), ``paper``, ``mixed`` or names.
        num_perturbations: perturbed lists per query.
        pairing: ``listwise`` (one row per query with all its judged windows), ``vs_original`` or ``best_worst``.
        top_n: depth of the base retriever's list.
    """

    judge: str = field(default="answer_hit", metadata={
        "help": "answer_hit (fast, no generator) | answer_likelihood (graded, generator forward passes) | "
                "generator_f1 (the paper) | qrels (the gold passages: no answers needed)"})
    perturbations: str = field(default="minimal", metadata={"help": "minimal | paper | mixed | comma-separated names"})
    num_perturbations: int = field(default=8, metadata={"help": "perturbed lists per query"})
    pairing: str = field(default="listwise", metadata={
        "help": "listwise (one row per query, Plackett-Luce: the measured best) | vs_original | best_worst"})
    top_n: int = field(default=50, metadata={"help": "depth of the base retriever's list"})

    def __post_init__(self):
        _check_int("--", "num_perturbations", self.num_perturbations)
        _check_int("--", "top_n", self.top_n)
        if self.judge not in JUDGES:
            raise ValueError(f"--judge: expected one of {JUDGES}, got {self.judge!r}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"--pairing: expected one of {PAIRINGS}, got {self.pairing!r}")


#: The RPO builder's defaults.
RPO_DEFAULTS = RPOPairSettings()


@dataclass
class GPOPairSettings:
    """The GPO pair builder's recipe (docs/benchmarks.md, "GPO against the best prompt"): per question the greedy
    answer and ``num_samples`` seeded samples, the best against the worst by F1.

    Args:
        num_beams: beams of the beam-search candidate (1: greedy).
        num_samples: sampled candidates per question.
        temperature: sampling temperature.
        top_p: nucleus sampling.
        pairing: ``best_worst`` (one pair per question) or ``beam_vs_sample``.
        max_length: the ``DPOConfig.max_length`` the pairs are trained with: the prompts are fitted to it.
    """

    num_beams: int = field(default=1, metadata={"help": "beams of the beam-search candidate (1: greedy)"})
    num_samples: int = field(default=7, metadata={"help": "sampled candidates per question (best vs worst of all)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling"})
    pairing: str = field(default="best_worst", metadata={"help": "best_worst | beam_vs_sample"})
    max_length: int = field(default=640, metadata={
        "help": "the DPOConfig.max_length the pairs are trained with (prompts + answers are fitted to it)"})

    def __post_init__(self):
        for name in ("num_beams", "num_samples", "max_length"):
            _check_int("--", name, getattr(self, name))
        finite(self.temperature, "--temperature", positive=True)
        finite(self.top_p, "--top_p", positive=True)
        if self.top_p > 1:
            raise ValueError(f"--top_p: expected a value in (0, 1], got {self.top_p!r}")
        if self.pairing not in ("best_worst", "beam_vs_sample"):
            raise ValueError(f"--pairing: expected one of ('best_worst', 'beam_vs_sample'), got {self.pairing!r}")


#: The GPO builder's defaults.
GPO_DEFAULTS = GPOPairSettings()


def _overrides_class():
    """:class:`RAGSettings`' fields as optional flags (default None: "what the stage's artifacts recorded, else the
    default"), for scripts that read settings back from an adapter (``examples/evaluate.py``)."""
    import typing
    from dataclasses import make_dataclass

    hints = typing.get_type_hints(RAGSettings)
    specs = []
    for f in fields(RAGSettings):
        help_text = f"{f.metadata.get('help', '')} (default: what the adapter or retriever recorded, else " \
                    f"{f.default!r})"
        specs.append((f.name, hints[f.name] | None, field(default=None, metadata={"help": help_text})))
    cls = make_dataclass("RAGSettingsOverrides", specs)
    cls.__doc__ = "RAGSettings as optional overrides: only the flags given replace what a stage recorded."
    cls.overrides = lambda self: {k: v for k, v in asdict(self).items() if v is not None}
    return cls


#: Optional flags for every RAG setting (None: not given).
RAGSettingsOverrides = _overrides_class()


def apply_retriever_prompts(model, query_prompt: str | None = None, document_prompt: str | None = None):
    """Set a sentence-transformers model's own query / document prompts (e5: ``"query: "`` / ``"passage: "``; bge:
    an instruction before queries) and return it. They are saved with the model (``config_sentence_transformers.json``)
    and read by every encode path, training (:class:`~trl_bporag.trainers.SetScorer`) and serving
    (``encode_query`` / ``encode_document``) alike; None keeps the model's own."""
    for name, value in (("query_prompt", query_prompt), ("document_prompt", document_prompt)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"--{name}: expected a string, got {type(value).__name__}")
    prompts = dict(getattr(model, "prompts", None) or {})
    if query_prompt is not None:
        prompts["query"] = query_prompt
    if document_prompt is not None:
        prompts["document"] = document_prompt
    model.prompts = prompts
    return model


QUERY_PROMPT_HELP = "prompt before every query (e5: 'query: '); default: the retriever's own, saved with it"
INDEX_TYPE_HELP = ("flat (exact), hnsw, ivf, or a FAISS index_factory string for a compressed index ('IVF4096,PQ48', "
                   "'HNSW32,SQ8'); an --index_dir built with another type is refused")
RESCORE_HELP = "re-score the index's top-N candidates exactly with the stored float32 vectors (a compressed index)"
DOCUMENT_PROMPT_HELP = "prompt before every passage (e5: 'passage: '); default: the retriever's own, saved with it"
