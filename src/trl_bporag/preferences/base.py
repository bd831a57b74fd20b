"""What the RPO and GPO pair builders share: a resumable, multi-process build loop over the queries of a split.

A subclass implements ``_process(split, positions) -> [(position, rows, stats_delta)]`` (the rows and per-query
counts of a batch of queries) and ``describe() -> {"config": ..., "stats": ...}``. The loop:

* splits the queries across processes (``accelerate launch``; query ``i`` goes to rank ``i % num_processes``);
* appends each batch's results to ``output_dir/shards/rank<r>.jsonl`` (fsync'ed), so an interrupted run resumes from
  what was written, and refuses to resume shards written with another configuration;
* merges the results in query order, so the output does not depend on the number of processes or on resuming;
* returns a :class:`datasets.Dataset` and writes it with ``save_to_disk`` plus ``stats.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..data import QASplit
from ..utils import distributed_state

logger = logging.getLogger(__name__)


class ShardedPreferenceBuilder:
    """Base class of :class:`RetrievalPreferenceBuilder` and :class:`GenerationPreferenceBuilder`."""

    #: what the pushed data set card calls the pairs ("rpo", "gpo")
    kind: str = ""

    #: columns of an empty output data set
    row_columns: tuple[str, ...] = ()
    #: counters that are per process (work done), not per query; they are not resumed from shards
    local_stat_keys: tuple[str, ...] = ()
    #: counters reported by ``describe()``
    stat_keys: tuple[str, ...] = ()
    #: label of the progress bar
    progress_desc: str = "pairs"

    stats: Counter
    query_batch_size: int

    def _process(self, split: QASplit, positions: Sequence[int]) -> list[tuple[int, list[dict], dict]]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def _check_split(self, split: QASplit) -> None:
        if not len(split):
            raise ValueError("split: no queries to build pairs for")
        for i, ans in enumerate(split.answers):
            if not isinstance(ans, (list, tuple)) or not ans:
                raise ValueError(f"split.answers[{i}] (query {split.ids[i]!r}): expected a non-empty list of answers, "
                                 f"got {ans!r}")

    def build(self, split: QASplit, output_dir: str | os.PathLike | None = None, resume: bool = True,
              max_queries: int | None = None, push_to_hub: str | None = None):
        """Build the pairs for ``split`` and return them as a :class:`datasets.Dataset`.

        With ``output_dir``: progress is appended to ``output_dir/shards/rank<r>.jsonl`` after each query batch, an
        interrupted run resumes from what was written (``resume=True``), and the final data set is written with
        ``save_to_disk(output_dir)`` plus ``stats.json``. Under ``accelerate launch`` the queries are split across
        processes and the main process writes the merged result (identical to a single-process run).
        ``push_to_hub``: a Hub data set repo id the main process pushes the pairs to, with a dataset card and
        ``stats.json`` (:func:`trl_bporag.hub.push_pairs_to_hub`).
        """
        from datasets import Dataset

        state = distributed_state()
        full_split, split = split, split.head(max_queries)
        self._check_split(split)
        done: dict[int, tuple[list[dict], dict]] = {}
        shard_dir = Path(output_dir) / "shards" if output_dir is not None else None
        if shard_dir is not None:
            # the data the shards come from: the whole split (so that resuming with more queries is allowed) and corpus
            data_config = {"split": full_split.name, "split_fingerprint": full_split.fingerprint(),
                           "corpus_fingerprint": self.corpus.fingerprint(self.with_title)}
            config = {"builder": self.describe()["config"], "data": data_config}
            config_path = shard_dir / "config.json"
            if state.is_main_process:
                shard_dir.mkdir(parents=True, exist_ok=True)
                if resume and config_path.is_file():
                    self._check_resume(shard_dir, config_path, config)
                if not resume:
                    stale = list(shard_dir.glob("rank*.jsonl"))
                    if stale:
                        logger.warning("Starting afresh in %s (resume=False): %d shard files of an earlier build "
                                       "removed", shard_dir, len(stale))
                    for f in stale:
                        f.unlink()
                config_path.write_text(json.dumps(config, sort_keys=True))
            state.wait_for_everyone()
            done = self._read_shards(shard_dir, split)
            if done and state.is_main_process:
                logger.warning("Resuming: %d of %d queries already built in %s", len(done), len(split), shard_dir)
        todo = [i for i in range(len(split)) if i % state.num_processes == state.process_index and i not in done]
        shard = shard_dir / f"rank{state.process_index}.jsonl" if shard_dir is not None else None
        if shard is not None:
            end_shard_line(shard)
        mine: list[tuple[int, list[dict], dict]] = []
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=self.progress_desc, unit="query", disable=not state.is_main_process)
        for start in range(0, len(todo), self.query_batch_size):
            results = self._process(split, todo[start : start + self.query_batch_size])
            bar.update(len(results))
            if shard is not None:
                with shard.open("a", encoding="utf-8") as fh:
                    for pos, rows_q, delta in results:
                        fh.write(json.dumps({"query_id": split.ids[pos], "position": pos, "rows": rows_q,
                                             "stats": delta}) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            mine.extend(results)
        bar.close()
        if shard_dir is not None:
            state.wait_for_everyone()
            done = self._read_shards(shard_dir, split)
        else:
            done = {pos: (rows_q, delta) for pos, rows_q, delta in self._gather(mine, state)}
        missing = [i for i in range(len(split)) if i not in done]
        if missing:
            raise RuntimeError(f"{len(missing)} queries have no result (first: {split.ids[missing[0]]!r})")
        rows = [row for i in range(len(split)) for row in done[i][0]]
        stats = Counter()
        for i in range(len(split)):
            stats.update(done[i][1])
        stats.update({key: self.stats[key] for key in self.local_stat_keys})
        self.stats = stats
        dataset = Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in self.row_columns})
        if not rows:
            logger.warning("No preference pair was built from %d queries (%s)", len(split),
                           ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
        if state.is_main_process:
            if output_dir is not None:
                # an empty data set needs one (empty) shard file, or load_from_disk cannot read it back
                dataset.save_to_disk(str(output_dir), num_shards=1 if not rows else None)
                (Path(output_dir) / "stats.json").write_text(json.dumps(self.describe(), indent=2))
            if push_to_hub:  # parquet rows + dataset card + stats.json (trl_bporag.hub.push_pairs_to_hub)
                from ..hub import push_pairs_to_hub

                logger.info(push_pairs_to_hub(dataset, push_to_hub, description=self.describe(), kind=self.kind))
        state.wait_for_everyone()
        return dataset

    @staticmethod
    def _check_resume(shard_dir: Path, config_path: Path, config: dict) -> None:
        """Refuse to resume shards made from other data (split or corpus changed) or another configuration."""
        try:
            old = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or "data" not in old:  # unreadable, or written before data was recorded
            old = {"builder": old, "data": None}
        problems = []
        if old["data"] != config["data"]:
            was = old["data"] or {}
            changed = [key for key in config["data"] if was.get(key) != config["data"][key]] or ["data"]
            problems.append("other data (" + ", ".join(f"{key} differs" for key in changed) + ")")
        if json.dumps(old["builder"], sort_keys=True) != json.dumps(config["builder"], sort_keys=True):
            problems.append("another builder configuration")
        if problems:
            raise ValueError(f"{shard_dir}: holds a partial build made from {' and '.join(problems)}; resuming "
                             f"would mix stale pairs into this build. Use another output folder, or pass "
                             f"resume=False (--no_resume / --overwrite) to start afresh")

    @staticmethod
    def _gather(mine, state):
        if state.num_processes == 1:
            return mine
        from accelerate.utils import gather_object

        return gather_object(mine)

    @staticmethod
    def _read_shards(shard_dir: Path, split: QASplit) -> dict[int, tuple[list[dict], dict]]:
        done = {}
        for rec in read_shard_records(shard_dir):
            pos = rec["position"]
            if pos < len(split) and split.ids[pos] == rec["query_id"]:
                done[pos] = (rec["rows"], rec["stats"])
        return done


def read_shard_records(shard_dir: str | os.PathLike):
    """Yield the complete records (``query_id``, ``position``, ``rows``, ``stats``) of every ``rank*.jsonl`` shard in
    ``shard_dir``, in (rank, line) order; a line cut by an interruption is skipped (that query is rebuilt)."""
    for path in sorted(Path(shard_dir).glob("rank*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def end_shard_line(shard: str | os.PathLike) -> None:
    """End a non-empty shard with a newline, so that a line cut by an interruption does not swallow the next record
    appended to it."""
    shard = Path(shard)
    if shard.exists() and shard.stat().st_size:
        with shard.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def load_pairs(name: str | os.PathLike, config: str | None = None, train_split: str = "train",
               test_split: str = "test", need_eval: bool = False, eval_fraction: float = 0.05):
    """Preference pairs for a training script: a ``save_to_disk`` folder (as the builders write) or a Hub data set id,
    returned as a :class:`datasets.DatasetDict`. A single split is split into ``train_split`` / ``test_split``
    (``eval_fraction`` held out, seed 0) when ``need_eval``."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    name = str(name)
    if os.path.isdir(name) and (os.path.isfile(os.path.join(name, "dataset_info.json"))
                                or os.path.isfile(os.path.join(name, "dataset_dict.json"))):
        data = load_from_disk(name)
    else:
        data = load_dataset(name, name=config)
    empty = [split for split, part in (data.items() if isinstance(data, DatasetDict) else [(None, data)])
             if len(part) == 0]
    if empty:
        from ..artifacts import read_pairs_stats

        stats = read_pairs_stats(name) if os.path.isdir(name) else None
        hint = f"; the builder's counts (stats.json): {stats.get('stats')}" if stats else ""
        where = f"{name}" + (f" (split {empty[0]!r})" if empty[0] is not None else "")
        raise ValueError(f"{where}: holds no preference pairs, nothing to train on{hint}. Build more pairs (more "
                         f"queries, more perturbations or samples) before training")
    if isinstance(data, Dataset):
        if need_eval:
            import math

            if len(data) - math.ceil(eval_fraction * len(data)) < 1:  # datasets rounds the held-out part up
                raise ValueError(f"{name}: {len(data)} preference pair(s) with --eval_fraction {eval_fraction} leave "
                                 "no pair to train on; build more pairs, or pass --eval_fraction 0 (hold none out)")
            parts = data.train_test_split(test_size=eval_fraction, seed=0)
            data = DatasetDict({train_split: parts["train"], test_split: parts["test"]})
        else:
            data = DatasetDict({train_split: data})
    return data

