"""RetrievalPreferenceBuilder: preference pairs of evidence lists for RPO (stage 1 of BPO-RAG).

For each training query: the base retriever's top-``top_n`` list (the *original*), ``num_perturbations`` perturbed
lists, a judge score for the first ``k`` passages (the evidence window) of each list, and preference pairs between
lists whose judge scores differ and whose windows differ. Output rows follow TRL's preference format::

    {"prompt": query, "chosen": [k passage texts], "rejected": [k passage texts],
     "chosen_ids": [...], "rejected_ids": [...], "chosen_score": float, "rejected_score": float,
     "perturbation": "swap_one/original", "query_id": str}

Perturbations act on the ordered list of row indices:

* coarse (the paper's): ``drop`` (remove each entry with ``drop_rate``; lower ones move up), ``shuffle`` (permute the
  whole list), ``noise`` (insert random corpus passages from outside the list at rate ``noise_rate``), ``hard_noise``
  (insert passages ranked ``top_n+1 .. hard_negative_depth``);
* minimal edits: ``swap_one`` (exchange one passage inside the window with one from ranks ``k+1..top_n``) and
  ``drop_one`` (remove one passage inside the window; rank k+1 moves in). A pair built from them differs in one
  passage, so it isolates one judgement (shared passages cancel in the set-score difference).

Everything is seeded per query (``seed`` and the query id), so the pairs do not depend on batch sizes, on the number
of processes (``accelerate launch``) or on resuming an interrupted run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from ..artifacts import retriever_hub_id
from ..data import Corpus, QASplit
from ..generation import generate_candidates, rag_prompt
from ..likelihood import answer_log_likelihood
from ..metrics import qa_f1
from ..settings import PAIRINGS, RPO_DEFAULTS, RAGSettings, UsesRAGSettings, resolve_settings
from ..utils import stable_seed
from .base import ShardedPreferenceBuilder
from .judges import GENERATOR_JUDGES, PASSAGE_JUDGES, get_judge, qrels_judge

logger = logging.getLogger(__name__)

PERTURBATIONS = ("drop", "shuffle", "noise", "hard_noise", "swap_one", "drop_one")
RECIPES = {
    "paper": ("drop", "shuffle", "noise"),
    "minimal": ("swap_one", "drop_one"),
    "mixed": ("swap_one", "drop_one", "drop", "shuffle", "noise"),
}
STAT_KEYS = ("queries", "lists", "windows_judged", "generations", "pairs", "ties", "degenerate", "duplicates",
             "short_lists")
LISTWISE_ROW_COLUMNS = ("prompt", "lists", "list_ids", "list_scores", "perturbations", "query_id")
ROW_COLUMNS = ("prompt", "chosen", "rejected", "chosen_ids", "rejected_ids", "chosen_score", "rejected_score",
               "perturbation", "query_id")


def _query_seed(seed: int, query_id: str) -> np.random.Generator:
    return np.random.default_rng(stable_seed(seed, query_id))


class RetrievalPreferenceBuilder(UsesRAGSettings, ShardedPreferenceBuilder):
    """Build RPO preference pairs (see the module docstring).

    Args:
        retriever: the base :class:`~trl_bporag.retrieval.Retriever`.
        index: its :class:`~trl_bporag.retrieval.DenseIndex` over ``corpus``.
        corpus: the :class:`~trl_bporag.data.Corpus`.
        generator: the base generator (needed by the ``generator_f1`` judge).
        tokenizer: its tokenizer.
        judge: ``"answer_hit"`` (default: the answer containment of the window's passages, no generator),
            ``"generator_f1"`` (the paper), ``"answer_likelihood"`` (the generator's mean log-probability of the best
            gold answer given the window: graded, no decoding) or a callable ``(questions, answers, windows) ->
            scores``. The defaults of ``judge``, ``perturbations``, ``num_perturbations``, ``pairing`` and ``top_n``
            are the measured best recipe (:data:`trl_bporag.settings.RPO_DEFAULTS`).
        top_n: depth of the original list.
        perturbations: a recipe name (``"paper"``, ``"minimal"``, ``"mixed"``) or a list of perturbation names; the
            perturbed lists cycle through them.
        num_perturbations: perturbed lists per query.
        pairing: ``"listwise"`` (default), ``"vs_original"`` (each perturbed list against the original: several
            pairs per query) or ``"best_worst"`` (one pair per query: best against worst window, the paper's choice);
            ``"listwise"``
            (one row per query with all its distinct windows and their judge scores, ``{"prompt", "lists",
            "list_ids", "list_scores", "perturbations", "query_id"}``, for the Plackett–Luce loss; a query whose
            windows all tie gives no row and counts its lists as ties).
        max_pairs_per_query: keep at most this many pairs per query (None: all; pairwise rows only).
        order_matters: windows with the same passages in another order are distinct (use with a position-aware set
            score); by default they are degenerate (no gradient under the sum score) and are not emitted.
        seed: the perturbations' seed (per query: the pairs do not depend on batches or processes).
        batch_size: generation batch size of the generator judges.
        query_batch_size: queries per step of the build loop.
        settings: the :class:`~trl_bporag.settings.RAGSettings`: k (the window the generator reads), and, for the
            generator judges, the prompt the generator will answer with (passage budget, system prompt, answer
            prefix, max new tokens); default :data:`~trl_bporag.settings.DEFAULTS`.
        **overrides: any of the settings by name (``k=3``, ``answer_prefix=None``, ...).

    :meth:`build` (from :class:`~trl_bporag.preferences.base.ShardedPreferenceBuilder`) runs it over a split:
    resumable, ``accelerate launch``-aware, returns a :class:`datasets.Dataset`.
    """

    row_columns = ROW_COLUMNS
    kind = "rpo"
    progress_desc = "RPO pairs"
    local_stat_keys = ("windows_judged", "generations", "short_lists")
    stat_keys = STAT_KEYS

    def __init__(
        self,
        retriever,
        index,
        corpus: Corpus,
        generator=None,
        tokenizer=None,
        judge: str | Callable = RPO_DEFAULTS.judge,
        top_n: int = RPO_DEFAULTS.top_n,
        perturbations: str | Sequence[str] = RPO_DEFAULTS.perturbations,
        num_perturbations: int = RPO_DEFAULTS.num_perturbations,
        pairing: str = RPO_DEFAULTS.pairing,
        max_pairs_per_query: int | None = None,
        drop_rate: float = 0.3,
        noise_rate: float = 0.3,
        hard_negative_depth: int = 200,
        order_matters: bool = False,
        seed: int = 0,
        batch_size: int = 8,
        query_batch_size: int = 32,
        settings: RAGSettings | None = None,
        **overrides,
    ):
        settings = resolve_settings(settings, **overrides)
        k = settings.k
        if isinstance(perturbations, str) and "," in perturbations:
            perturbations = [p.strip() for p in perturbations.split(",") if p.strip()]
        if isinstance(perturbations, str):
            if perturbations not in RECIPES:
                raise ValueError(f"perturbations: expected a recipe {sorted(RECIPES)} or a list of {PERTURBATIONS}, "
                                 f"got {perturbations!r}")
            perturbations = RECIPES[perturbations]
        unknown = [p for p in perturbations if p not in PERTURBATIONS]
        if unknown or not perturbations:
            raise ValueError(f"perturbations: unknown {unknown}; expected names from {PERTURBATIONS}")
        if not 1 <= k < top_n:
            raise ValueError(f"k: expected 1 <= k < top_n={top_n}, got {k}")
        if top_n > len(corpus):
            raise ValueError(f"top_n: {top_n} exceeds the corpus size {len(corpus)}")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing: expected one of {PAIRINGS}, got {pairing!r}")
        if num_perturbations < 1:
            raise ValueError(f"num_perturbations: expected >= 1, got {num_perturbations}")
        for name, rate in (("drop_rate", drop_rate), ("noise_rate", noise_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1), got {rate}")
        self.judge = get_judge(judge)
        if self.judge in GENERATOR_JUDGES and (generator is None or tokenizer is None):
            raise ValueError(f"judge {self.judge!r} needs generator= and tokenizer= (or use judge='answer_hit')")
        if pairing == "listwise":
            self.row_columns = LISTWISE_ROW_COLUMNS
        # same passages in the same order; where recorded, the same retriever weights and corpus texts
        index.check_compatible(retriever, corpus)
        self.retriever, self.index, self.corpus = retriever, index, corpus
        self.generator, self.tokenizer = generator, tokenizer
        self.settings, self.top_n = settings, top_n
        self.perturbations = tuple(perturbations)
        self.num_perturbations, self.pairing = num_perturbations, pairing
        if pairing == "listwise" and max_pairs_per_query is not None:
            raise ValueError("max_pairs_per_query: a listwise row holds all the windows of its query (one row per "
                             "query); the limit applies to pairwise rows only (pairing 'vs_original' / 'best_worst')")
        self.max_pairs_per_query = max_pairs_per_query
        self.drop_rate, self.noise_rate = drop_rate, noise_rate
        self.hard_negative_depth = max(hard_negative_depth, top_n + 1)
        self.order_matters, self.seed = order_matters, seed
        self.batch_size = batch_size
        self.query_batch_size = query_batch_size
        self.stats: Counter = Counter()

    # -- perturbations ------------------------------------------------------------------------------------------
    def perturb(self, name: str, ranked: list[int], rng: np.random.Generator, extra: list[int]) -> list[int]:
        """Apply one perturbation to the ordered list of corpus rows ``ranked`` (the top-n). ``extra`` holds the
        rows ranked top_n+1..hard_negative_depth (for ``hard_noise``)."""
        k, lst = self.k, list(ranked)
        if name == "drop":
            keep = rng.random(len(lst)) >= self.drop_rate
            if keep.sum() < k:  # keep the list usable: at least k entries survive
                keep[np.sort(rng.choice(len(lst), k, replace=False))] = True
            return [r for r, flag in zip(lst, keep) if flag]
        if name == "shuffle":
            return [lst[i] for i in rng.permutation(len(lst))]
        if name in ("noise", "hard_noise"):
            n_insert = max(1, int(round(self.noise_rate * len(lst))))
            if name == "noise":
                taken = set(lst)
                pool = np.setdiff1d(np.arange(len(self.corpus)), np.fromiter(taken, dtype=np.int64))
            else:
                pool = np.asarray(extra, dtype=np.int64)
            if len(pool) == 0:
                return lst
            new = rng.choice(pool, size=min(n_insert, len(pool)), replace=False).tolist()
            for row in new:
                lst.insert(int(rng.integers(0, len(lst) + 1)), int(row))
            return lst
        if name == "swap_one":
            i, j = int(rng.integers(0, k)), int(rng.integers(k, len(lst)))
            lst[i], lst[j] = lst[j], lst[i]
            return lst
        if name == "drop_one":
            del lst[int(rng.integers(0, k))]
            return lst
        raise ValueError(f"perturbation {name!r}: expected one of {PERTURBATIONS}")

    def candidate_lists(self, query_id: str, ranked: list[int], extra: list[int]) -> list[tuple[str, list[int]]]:
        """The original list and the seeded perturbed lists of one query."""
        rng = _query_seed(self.seed, query_id)
        lists = [("original", list(ranked))]
        for j in range(self.num_perturbations):
            name = self.perturbations[j % len(self.perturbations)]
            lists.append((name, self.perturb(name, ranked, rng, extra)))
        return lists

    # -- judging ------------------------------------------------------------------------------------------------
    def _texts(self, rows: Sequence[int]) -> list[str]:
        return [self.corpus.passage(r, self.with_title) for r in rows]

    def _check_split(self, split) -> None:
        if self.judge not in PASSAGE_JUDGES:
            return super()._check_split(split)
        if not len(split):
            raise ValueError("split: no queries to build pairs for")
        missing = [qid for qid, golds in zip(split.ids, split.gold_ids) if not golds]
        if missing:
            raise ValueError(f"judge 'qrels': {len(missing)} queries have no gold passage (e.g. {missing[0]!r}); the "
                             "qrels judge scores windows by the split's qrels")

    def judge_windows(self, questions, answers, windows: Sequence[Sequence[int]], keys=None,
                      golds: Sequence[Sequence[str]] | None = None) -> list[float]:
        """Judge scores of evidence windows (rows). ``keys`` (hashable per window) de-duplicate the work; ``golds``:
        the gold passage ids of each window's query (the ``qrels`` judge)."""
        keys = list(keys) if keys is not None else [(q, tuple(w)) for q, w in zip(questions, windows)]
        unique: dict = {}
        for i, key in enumerate(keys):
            unique.setdefault(key, []).append(i)
        order = list(unique)  # identical (query, window) pairs are judged once
        first = [unique[key][0] for key in order]
        texts = [self._texts(windows[i]) for i in first]
        qs = [questions[i] for i in first]
        ans = [answers[i] for i in first]
        self.stats["windows_judged"] += len(first)
        if self.judge == "generator_f1":
            prompts = [rag_prompt(self.tokenizer, self.settings, q, t) for q, t in zip(qs, texts)]
            outputs = self.generate_answers(prompts, self.settings.stop)
            self.stats["generations"] += len(prompts)
            scores = [qa_f1(o, a) for o, a in zip(outputs, ans)]
        elif self.judge == "qrels":
            if golds is None:
                raise ValueError("judge 'qrels': judge_windows needs golds= (the gold passage ids of each query)")
            scores = qrels_judge([golds[i] for i in first],
                                 [[self.corpus.ids[r] for r in windows[i]] for i in first])
        elif self.judge == "answer_likelihood":
            scores = answer_log_likelihood(self.generator, self.tokenizer, qs, texts, ans, self.max_passage_tokens,
                                           self.system_prompt, answer_prefix=self.answer_prefix,
                                           progress=len(texts) > 1)  # a bar per window, with its time estimate
            self.stats["generations"] += len(texts)
        else:
            scores = [float(s) for s in self.judge(qs, ans, texts)]
            if len(scores) != len(texts) or not all(np.isfinite(scores)):
                raise ValueError(f"judge returned {len(scores)} scores for {len(texts)} windows, or non-finite values")
        out = [0.0] * len(keys)
        for key, score in zip(order, scores):
            for i in unique[key]:
                out[i] = score
        return out

    def generate_answers(self, prompts: Sequence[str], stop: str | None) -> list[str]:
        """Greedy answers of the generator judge, batched; each prompt is read once (the lists of a query share their
        first passages)."""
        outputs, _ = generate_candidates(self.generator, self.tokenizer, list(prompts), num_samples=0,
                                         batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, stop=stop)
        return outputs

    # -- pairing ------------------------------------------------------------------------------------------------
    def _window_key(self, window: Sequence[int]):
        return tuple(window) if self.order_matters else frozenset(window)

    def pairs_for_query(self, query_id, question, lists, scores) -> list[dict]:
        """Preference rows of one query from its candidate lists (name, rows) and their window scores."""
        k = self.k
        if self.pairing == "listwise":
            return self._listwise_row(query_id, question, lists, scores)
        if self.pairing == "vs_original":
            candidates = [(0, j) for j in range(1, len(lists))]
        else:
            best = max(range(len(lists)), key=lambda j: (scores[j], -j))
            worst = min(range(len(lists)), key=lambda j: (scores[j], -j))
            candidates = [(best, worst)]
        rows, seen = [], set()
        for a, b in candidates:
            wa, wb = lists[a][1][:k], lists[b][1][:k]
            if self._window_key(wa) == self._window_key(wb):
                self.stats["degenerate"] += 1
                continue
            if scores[a] == scores[b]:
                self.stats["ties"] += 1
                continue
            (c, wc), (r, wr) = ((a, wa), (b, wb)) if scores[a] > scores[b] else ((b, wb), (a, wa))
            key = (self._window_key(wc), self._window_key(wr))
            if key in seen:
                self.stats["duplicates"] += 1
                continue
            seen.add(key)
            rows.append({
                "prompt": question,
                "chosen": self._texts(wc),
                "rejected": self._texts(wr),
                "chosen_ids": [self.corpus.ids[x] for x in wc],
                "rejected_ids": [self.corpus.ids[x] for x in wr],
                "chosen_score": float(scores[c]),
                "rejected_score": float(scores[r]),
                "perturbation": f"{lists[c][0]}/{lists[r][0]}",
                "query_id": query_id,
            })
        if self.max_pairs_per_query is not None:
            rows = rows[: self.max_pairs_per_query]
        self.stats["pairs"] += len(rows)
        return rows

    def _listwise_row(self, query_id, question, lists, scores) -> list[dict]:
        """One row with all distinct windows of a query and their judge scores (none when they all tie)."""
        kept, seen = [], set()
        for (name, rows), score in zip(lists, scores):
            key = self._window_key(rows[: self.k])
            if key in seen:
                self.stats["degenerate"] += 1
                continue
            seen.add(key)
            kept.append((name, rows[: self.k], float(score)))
        if len({score for _, _, score in kept}) < 2:
            self.stats["ties"] += len(kept)
            return []
        self.stats["pairs"] += 1
        return [{
            "prompt": question,
            "lists": [self._texts(w) for _, w, _ in kept],
            "list_ids": [[self.corpus.ids[x] for x in w] for _, w, _ in kept],
            "list_scores": [score for _, _, score in kept],
            "perturbations": [name for name, _, _ in kept],
            "query_id": query_id,
        }]

    # -- the whole build ----------------------------------------------------------------------------------------
    def _process(self, split: QASplit, positions: Sequence[int]) -> list[tuple[int, list[dict], dict]]:
        """Rows for the queries at ``positions`` of ``split``: [(position, rows, stats)]."""
        questions = [split.questions[i] for i in positions]
        depth = self.hard_negative_depth if "hard_noise" in self.perturbations else self.top_n
        _, rows = self.index.search(self.retriever.encode_queries(questions), depth)
        per_query, flat_q, flat_a, flat_w, flat_keys, flat_g = [], [], [], [], [], []
        for pos, ranked_all in zip(positions, rows):
            ranked = [int(r) for r in ranked_all[: self.top_n] if r >= 0]
            extra = [int(r) for r in ranked_all[self.top_n :] if r >= 0]
            lists = self.candidate_lists(split.ids[pos], ranked, extra)
            usable = [(n, lst) for n, lst in lists if len(lst) >= self.k]
            self.stats["short_lists"] += len(lists) - len(usable)
            per_query.append((pos, usable))
            for _, lst in usable:
                flat_q.append(split.questions[pos])
                flat_a.append(split.answers[pos])
                flat_w.append(lst[: self.k])
                flat_keys.append((pos, tuple(lst[: self.k])))
                flat_g.append(split.gold_ids[pos])
        scores = self.judge_windows(flat_q, flat_a, flat_w, flat_keys, golds=flat_g)
        out, cursor = [], 0
        for pos, usable in per_query:
            before = Counter(self.stats)
            query_scores = scores[cursor : cursor + len(usable)]
            cursor += len(usable)
            self.stats["queries"] += 1
            self.stats["lists"] += len(usable)
            rows_q = self.pairs_for_query(split.ids[pos], split.questions[pos], usable, query_scores)
            delta = {key: self.stats[key] - before.get(key, 0) for key in ("queries", "lists", "pairs", "ties",
                                                                            "degenerate", "duplicates")}
            out.append((pos, rows_q, delta))
        return out

    def describe(self) -> dict:
        """The builder's configuration and the counts of the last build (stats.json)."""
        judge = self.judge if isinstance(self.judge, str) else getattr(self.judge, "__name__", "callable")
        return {
            "config": {
                "judge": judge, "k": self.k, "top_n": self.top_n, "perturbations": list(self.perturbations),
                "num_perturbations": self.num_perturbations, "pairing": self.pairing,
                "max_pairs_per_query": self.max_pairs_per_query, "drop_rate": self.drop_rate,
                "noise_rate": self.noise_rate, "hard_negative_depth": self.hard_negative_depth,
                "order_matters": self.order_matters, "seed": self.seed, **self.settings.to_dict(),
                "retriever": getattr(self.retriever, "model_id", None),
                "retriever_hub_id": retriever_hub_id(getattr(self.retriever, "model_id", None)),
            },
            "stats": {key: int(self.stats.get(key, 0)) for key in STAT_KEYS},
        }
