"""GenerationPreferenceBuilder: preference pairs of answers for GPO (stage 2 of BPO-RAG).

For each training query: the frozen (tuned) retriever's top-k passages, one prompt, and several answers of the
generator under that identical prompt: a beam-search answer (``num_beams``) and ``num_samples`` sampled answers
(temperature / top-p, seeded per query). Each answer is judged by token F1 against the gold answers; the best and the
worst answer form a pair when their F1 differ (equal F1: a tie, counted and skipped).

Rows are standard TRL preference rows that stock :class:`trl.DPOTrainer` consumes unchanged; conversational when the
generator has a chat template::

    {"prompt": [{"role": "system", ...}, {"role": "user", "content": passages + question}],
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [{"role": "assistant", "content": "..."}],
     "chosen_f1": float, "rejected_f1": float, "chosen_source": "beam", "rejected_source": "sample_0",
     "query_id": str, "passage_ids": [k ids]}

and ``{"prompt": str, "chosen": str, "rejected": str, ...}`` (plain text) otherwise. The extra columns are ignored by
``DPOTrainer``.

Prompts keep the answer: passages (never the question or the completion) are cut so that the prompt plus the
longest possible answer (``max_new_tokens``) fits in ``max_length`` tokens, the ``DPOConfig.max_length`` you train
with. See :func:`check_dpo_lengths` for data built elsewhere.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from ..artifacts import retriever_hub_id
from ..data import Corpus
from ..generation import (
    _mix_seed,
    build_messages,
    build_prompt,
    generate_candidates,
    has_chat_template,
    truncate_passage,
)
from ..metrics import qa_f1
from ..monitor import large_allocations_returned
from ..settings import GPO_DEFAULTS, RAGSettings, UsesRAGSettings, resolve_settings
from .base import ShardedPreferenceBuilder

logger = logging.getLogger(__name__)

GPO_PAIRINGS = ("best_worst", "beam_vs_sample")
GPO_STAT_KEYS = ("queries", "pairs", "ties", "identical", "chosen_beam", "generations", "shortened_prompts")
GPO_ROW_COLUMNS = ("prompt", "chosen", "rejected", "chosen_f1", "rejected_f1", "chosen_source", "rejected_source",
                   "query_id", "passage_ids")


class GenerationPreferenceBuilder(UsesRAGSettings, ShardedPreferenceBuilder):
    """Build GPO preference pairs (see the module docstring).

    Args:
        retriever: the frozen (RPO-tuned) :class:`~trl_bporag.retrieval.Retriever`.
        index: its :class:`~trl_bporag.retrieval.DenseIndex` over ``corpus``.
        corpus: the :class:`~trl_bporag.data.Corpus` the prompts' passages come from.
        generator: the generator to align (the base model for GPO).
        tokenizer: its tokenizer.
        num_beams: beams of the beam-search answer (1: greedy).
        num_samples: sampled answers per query (temperature ``temperature``, nucleus ``top_p``, ``top_k``).
        pairing: ``"best_worst"`` (one pair per query: the best against the worst of all answers; with one sample this
            is the paper's beam-vs-sample pair) or ``"beam_vs_sample"`` (the beam answer against each sample whose F1
            differs: up to ``num_samples`` pairs per query).
        judge: ``(prediction, gold_answers) -> float``; default SQuAD token F1 (max over the gold answers).
        max_length: the ``DPOConfig.max_length`` the pairs will be trained with; passages are cut so that prompt +
            ``max_new_tokens`` + 1 fits (None: only ``max_passage_tokens`` applies).
        conversational: rows in TRL's conversational format (default: when the tokenizer has a chat template and there
            is no answer prefix).
        seed: sampling seed; each query's samples come from their own stream (seed, query id), so the pairs do not
            depend on batch sizes, the number of processes or resuming.
        batch_size: generation batch size.
        query_batch_size: queries per step of the build loop.
        settings: the :class:`~trl_bporag.settings.RAGSettings` of the prompts and answers (k, passage budget,
            system prompt, answer prefix, titles, max new tokens); default :data:`~trl_bporag.settings.DEFAULTS`.
            With an answer prefix (the default's ``The answer is "``) it ends the prompt, the candidates are what the
            generator writes after it up to :func:`~trl_bporag.generation.answer_stop`, and the rows' answers end
            with that stop (the generator learns to close its answer). TRL's conversational rows cannot end in a
            started reply, so these rows are plain text (the chat template already applied).
        **overrides: any of the settings by name (``k=3``, ``answer_prefix=None``, ...).

    The defaults of ``num_beams``, ``num_samples``, ``temperature``, ``top_p``, ``pairing`` and ``max_length`` are the
    measured recipe (:data:`trl_bporag.settings.GPO_DEFAULTS`).

    :meth:`build` runs it over a split (resumable, ``accelerate launch``-aware) and returns a
    :class:`datasets.Dataset`.
    """

    row_columns = GPO_ROW_COLUMNS
    kind = "gpo"
    progress_desc = "GPO pairs"
    local_stat_keys = ("generations",)
    stat_keys = GPO_STAT_KEYS

    def __init__(
        self,
        retriever,
        index,
        corpus: Corpus,
        generator,
        tokenizer,
        num_beams: int = GPO_DEFAULTS.num_beams,
        num_samples: int = GPO_DEFAULTS.num_samples,
        temperature: float = GPO_DEFAULTS.temperature,
        top_p: float | None = GPO_DEFAULTS.top_p,
        top_k: int | None = None,
        pairing: str = GPO_DEFAULTS.pairing,
        judge: Callable[[str, list[str]], float] | None = None,
        seed: int = 0,
        batch_size: int = 8,
        max_length: int | None = GPO_DEFAULTS.max_length,
        conversational: bool | None = None,
        query_batch_size: int = 32,
        settings: RAGSettings | None = None,
        **overrides,
    ):
        settings = resolve_settings(settings, **overrides)
        k, with_title, max_new_tokens, answer_prefix = (settings.k, settings.with_title, settings.max_new_tokens,
                                                        settings.answer_prefix)
        if generator is None or tokenizer is None:
            raise ValueError("generator and tokenizer: both are required to build GPO pairs")
        if k < 1 or k > len(corpus):
            raise ValueError(f"k: expected 1 <= k <= corpus size {len(corpus)}, got {k}")
        # same passages in the same order; where recorded, the same retriever weights and corpus texts
        index.check_compatible(retriever, corpus, with_title)
        if num_beams < 1:
            raise ValueError(f"num_beams: expected >= 1, got {num_beams}")
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        if pairing not in GPO_PAIRINGS:
            raise ValueError(f"pairing: expected one of {GPO_PAIRINGS}, got {pairing!r}")
        if temperature <= 0:
            raise ValueError(f"temperature: expected a positive value, got {temperature}")
        if max_length is not None and max_length <= max_new_tokens + 1:
            raise ValueError(f"max_length: {max_length} leaves no room for a prompt with max_new_tokens="
                             f"{max_new_tokens}")
        if conversational is None:
            conversational = has_chat_template(tokenizer) and not answer_prefix
        elif conversational and not has_chat_template(tokenizer):
            raise ValueError("conversational=True needs a tokenizer with a chat template")
        elif conversational and answer_prefix:
            raise ValueError("answer_prefix: TRL's conversational rows cannot end in a started reply; pass "
                             "conversational=False (plain-text rows, the chat template applied) or no answer_prefix")
        self.retriever, self.index, self.corpus = retriever, index, corpus
        self.generator, self.tokenizer = generator, tokenizer
        self.settings, self.num_beams, self.num_samples = settings, num_beams, num_samples
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.pairing, self.judge = pairing, judge or qa_f1
        self.seed, self.batch_size, self.max_length = seed, batch_size, max_length
        self.conversational = conversational
        self.query_batch_size = query_batch_size
        self.stats: Counter = Counter()

    @property
    def stop(self) -> str | None:
        """Where a candidate written after ``answer_prefix`` ends (:func:`~trl_bporag.generation.answer_stop`)."""
        return self.settings.stop

    # -- prompts ------------------------------------------------------------------------------------------------
    def _render(self, question: str, passages: Sequence[str]):
        """(TRL prompt: messages or text, the text the generator reads)."""
        if self.conversational:
            messages = build_messages(question, passages, self.system_prompt)
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return messages, text
        text = build_prompt(self.tokenizer, question, passages, None, self.system_prompt, self.answer_prefix)
        return text, text

    def fit_prompt(self, question: str, passages: Sequence[str]):
        """The prompt for ``question`` and ``passages``, passages cut to ``max_passage_tokens`` and then shorter until
        prompt + ``max_new_tokens`` + 1 tokens fit in ``max_length``. Returns (TRL prompt, text, shortened)."""
        budget = self.max_passage_tokens
        cut = [truncate_passage(p, self.tokenizer, budget) for p in passages]
        prompt, text = self._render(question, cut)
        if self.max_length is None:
            return prompt, text, False
        limit = self.max_length - self.max_new_tokens - 1
        n_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_tokens <= limit:
            return prompt, text, False
        longest = max((len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in cut), default=0)
        budget = longest
        while n_tokens > limit and budget > 0:
            budget = max(0, min(budget - 1, int(budget * limit / n_tokens)))
            cut = [truncate_passage(p, self.tokenizer, budget) for p in passages]
            prompt, text = self._render(question, cut)
            n_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_tokens > limit:
            raise ValueError(f"max_length: {self.max_length} tokens cannot hold the question {question[:60]!r} plus "
                             f"{self.max_new_tokens} answer tokens even without passages")
        return prompt, text, True

    # -- answers ------------------------------------------------------------------------------------------------
    def answers(self, texts: Sequence[str], query_ids: Sequence[str]) -> list[list[tuple[str, str]]]:
        """Candidate answers per prompt: [("beam", a), ("sample_0", a), ...]."""
        seeds = [_mix_seed(self.seed, qid) for qid in query_ids]
        kwargs = dict(num_beams=self.num_beams, num_samples=self.num_samples, max_new_tokens=self.max_new_tokens,
                      temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, stop=self.stop)
        beams, samples = self.candidate_answers(list(texts), seeds, **kwargs)
        self.stats["generations"] += len(texts) * (1 + self.num_samples)
        return [[("beam", b)] + [(f"sample_{j}", a) for j, a in enumerate(ss)] for b, ss in zip(beams, samples)]

    def candidate_answers(self, texts: list[str], seeds: list[int], **kwargs) -> tuple[list[str], list[list[str]]]:
        """The beam answer and the seeded samples of each prompt, batched; each prompt is read once for all of them
        (:func:`~trl_bporag.generation.generate_candidates`).

        The KV caches of a batch (~13 MiB a layer for 8 prompts x 7 samples) are allocated and freed at every step;
        from the heap they fragment it, and the resident size grows with the number of questions (64 questions:
        4.2 GiB instead of 2.3 on a 2-core Intel Xeon, docs/benchmarks.md), so blocks that large are memory-mapped
        (:func:`~trl_bporag.monitor.large_allocations_returned`) while the batch is generated."""
        with large_allocations_returned():
            return generate_candidates(self.generator, self.tokenizer, texts, seeds, batch_size=self.batch_size,
                                       **kwargs)

    # -- pairing ------------------------------------------------------------------------------------------------
    def pairs_for_query(self, query_id, prompt, candidates, gold, passage_ids) -> list[dict]:
        scores = [float(self.judge(a, gold)) for _, a in candidates]
        if self.pairing == "best_worst":
            best = max(range(len(candidates)), key=lambda j: (scores[j], -j))
            worst = min(range(len(candidates)), key=lambda j: (scores[j], -j))
            options = [(best, worst)]
        else:
            options = [(0, j) for j in range(1, len(candidates))]
        rows, seen = [], set()
        for a, b in options:
            if candidates[a][1].strip() == candidates[b][1].strip():
                self.stats["identical"] += 1
                continue
            if scores[a] == scores[b]:
                self.stats["ties"] += 1
                continue
            c, r = (a, b) if scores[a] > scores[b] else (b, a)
            if (candidates[c][1], candidates[r][1]) in seen:
                continue
            seen.add((candidates[c][1], candidates[r][1]))
            self.stats["chosen_beam"] += int(candidates[c][0] == "beam")
            chosen, rejected = self.completion(candidates[c][1]), self.completion(candidates[r][1])
            rows.append({
                "prompt": prompt, "chosen": chosen, "rejected": rejected,
                "chosen_f1": scores[c], "rejected_f1": scores[r],
                "chosen_source": candidates[c][0], "rejected_source": candidates[r][0],
                "query_id": query_id, "passage_ids": list(passage_ids),
            })
        self.stats["pairs"] += len(rows)
        return rows

    def completion(self, answer: str):
        """An answer as a TRL completion of the prompts: an assistant message (conversational rows), the answer closed
        by its stop after an answer prefix, or the answer after a space."""
        if self.conversational:
            return [{"role": "assistant", "content": answer}]
        if self.answer_prefix:  # the prompt ends in the prefix; the answer ends with its stop
            return answer + (self.stop or "")
        return " " + answer

    def prompts(self, questions: Sequence[str]) -> tuple[list, list[str], list[list[str]], list[bool]]:
        """The retriever's top-k of each question as a fitted prompt: (TRL prompts, texts, passage ids, shortened)."""
        _, rows = self.index.search(self.retriever.encode_queries(list(questions)), self.k)
        prompts, texts, pids, shortened = [], [], [], []
        for q, ranked in zip(questions, rows):
            window = [int(r) for r in ranked if r >= 0][: self.k]
            prompt, text, cut = self.fit_prompt(q, [self.corpus.passage(r, self.with_title) for r in window])
            prompts.append(prompt)
            texts.append(text)
            pids.append([self.corpus.ids[r] for r in window])
            shortened.append(cut)
        return prompts, texts, pids, shortened

    def sft_rows(self, split, max_queries: int | None = None):
        """Supervised rows for SFT on the gold answers (:mod:`trl_bporag.trainers.sft`): the prompt each query's GPO
        pairs get, completed by its first gold answer (as :meth:`completion` writes answers), as a
        :class:`datasets.Dataset` of TRL prompt-completion rows with ``query_id`` and ``passage_ids``. Nothing is
        generated. A query without a gold answer is a ``ValueError`` naming it."""
        from datasets import Dataset

        split = split.head(max_queries)
        self._check_split(split)
        prompts, _, pids, _ = self.prompts(split.questions)
        for qid, answers in zip(split.ids, split.answers):
            if not answers or not str(answers[0]).strip():
                raise ValueError(f"answers: query {qid!r} has no gold answer to fine-tune on")
        return Dataset.from_dict({"prompt": prompts, "completion": [self.completion(a[0]) for a in split.answers],
                                  "query_id": list(split.ids), "passage_ids": pids})

    def _process(self, split, positions):
        prompts, texts, pids, shortened = self.prompts([split.questions[i] for i in positions])
        candidates = self.answers(texts, [split.ids[i] for i in positions])
        out = []
        for n, pos in enumerate(positions):
            before = Counter(self.stats)
            self.stats["queries"] += 1
            self.stats["shortened_prompts"] += int(shortened[n])
            rows_q = self.pairs_for_query(split.ids[pos], prompts[n], candidates[n], split.answers[pos], pids[n])
            delta = {key: self.stats[key] - before.get(key, 0) for key in GPO_STAT_KEYS if key != "generations"}
            out.append((pos, rows_q, delta))
        return out

    def describe(self) -> dict:
        """The builder's configuration (also written next to the pairs, read by examples/gpo.py) and its counts."""
        judge = "f1" if self.judge is qa_f1 else getattr(self.judge, "__name__", "callable")
        stats = {key: int(self.stats.get(key, 0)) for key in GPO_STAT_KEYS}
        return {
            "config": {
                "retriever": getattr(self.retriever, "model_id", None), **self.settings.to_dict(),
                "retriever_hub_id": retriever_hub_id(getattr(self.retriever, "model_id", None)),
                "num_beams": self.num_beams, "num_samples": self.num_samples, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "pairing": self.pairing, "judge": judge, "seed": self.seed,
                "max_length": self.max_length, "conversational": self.conversational,
                "generator": getattr(self.generator, "name_or_path", None),
            },
            "stats": stats,
        }


def _token_count(tokenizer, prompt, completion=None) -> int:
    if isinstance(prompt, list):  # conversational
        messages = prompt + (completion or [])
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=completion is None)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return n
    text = prompt + (completion or "")
    return len(tokenizer(text)["input_ids"]) + (1 if completion is not None else 0)  # + the eos TRL appends


def check_dpo_lengths(dataset, tokenizer, max_length: int | None, drop: bool = True):
    """Check preference rows against ``DPOConfig.max_length`` before training.

    TRL keeps the first ``max_length`` tokens of prompt + completion: rows whose prompt alone fills ``max_length`` are
    dropped by ``DPOTrainer`` without a word, and rows whose prompt + chosen or rejected answer is longer have their
    answer cut. Both are counted and logged as a warning; with ``drop=True`` such rows are removed here (the warning
    says how many), so that no answer is trained cut. Returns ``(dataset, counts)``.
    """
    for column in ("prompt", "chosen", "rejected"):
        if column not in dataset.column_names:
            raise ValueError(f"dataset: missing column {column!r} (expected TRL preference rows: prompt, chosen, "
                             f"rejected); has {dataset.column_names}")
    first = dataset[0] if len(dataset) else None
    if "chosen_ids" in dataset.column_names or (
        first is not None and isinstance(first["chosen"], list) and all(isinstance(x, str) for x in first["chosen"])
    ):
        raise ValueError("dataset: these are RPO (retriever) pairs: 'chosen' and 'rejected' are lists of passages. "
                         "They train a retriever with SetDPOTrainer (examples/rpo.py); the generator needs GPO pairs "
                         "(examples/build_gpo_pairs.py), whose 'chosen'/'rejected' are answers")
    counts = {"rows": len(dataset), "prompt_too_long": 0, "completion_cut": 0}
    if max_length is None or not len(dataset):
        return dataset, counts
    bad = []
    for i, row in enumerate(dataset):
        n_prompt = _token_count(tokenizer, row["prompt"])
        n_full = max(_token_count(tokenizer, row["prompt"], row["chosen"]),
                     _token_count(tokenizer, row["prompt"], row["rejected"]))
        if n_prompt >= max_length:
            counts["prompt_too_long"] += 1
            bad.append(i)
        elif n_full > max_length:
            counts["completion_cut"] += 1
            bad.append(i)
    if bad:
        action = "dropping them" if drop else "TRL will drop the first kind and cut the answers of the second"
        logger.warning(
            "%d of %d preference rows do not fit max_length=%d: %d prompts fill it, %d answers would be cut; %s. "
            "Build the pairs with the same max_length (GenerationPreferenceBuilder cuts passages instead).",
            len(bad), len(dataset), max_length, counts["prompt_too_long"], counts["completion_cut"], action,
        )
        if drop:
            keep = sorted(set(range(len(dataset))) - set(bad))
            dataset = dataset.select(keep)
    return dataset, counts
