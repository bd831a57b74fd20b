"""The tables of ``bench/gpo_table.py`` from its per-question files (``bench/results/gpo/*.json``), recomputed.

For every data set: each row's mean F1 and EM (a trained row: each seed, and the seeds pooled: each question's value
averaged over the seeds), each seed's difference from ``vanilla`` with its paired bootstrap 95% CI, the pooled
difference with its CI and the relative change; then the comparisons the issue asks for (``gpo`` against
``sft-gold``, ``bporag`` against ``simple``, ...) on the pooled values, and how much of the oracle's gain the tuned
retriever captures. 1,000 resamples, seed 0, as every table of docs/benchmarks.md.

Greedy answers in bf16 depend on the CPU that computes them (the vanilla row's answers differ on 15 of 100 squad-dev
questions between an Intel Xeon with AMX and an AMD EPYC with AVX512-BF16). A row evaluated on a CPU that has its own
``vanilla`` file is compared with that one, and a row measured on more than one CPU is shown once per CPU; a
comparison between rows of different CPUs says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from trl_bporag.metrics import paired_bootstrap_ci

ROW_ORDER = ("vanilla", "oracle", "rpo", "mnrl", "sft-gold", "gpo-only", "gpo", "gpo+rpo", "bporag", "simple")
COMPARISONS = (("gpo", "sft-gold"), ("gpo", "gpo-only"), ("gpo-only", "sft-gold"), ("gpo+rpo", "gpo"),
               ("bporag", "simple"), ("gpo", "simple"),
               ("bporag", "rpo"), ("bporag", "gpo"), ("bporag", "gpo+rpo"), ("bporag", "sft-gold"), ("simple", "sft-gold"),
               ("rpo", "vanilla"), ("rpo", "mnrl"), ("oracle", "vanilla"))


def cpu(entry: dict) -> str:
    """The CPU model a per-question file was computed on ("" for files that do not record it)."""
    return (entry.get("hardware") or {}).get("cpu", "")


def row_cpus(seeds: dict) -> set:
    """The CPUs a row's seeds were computed on."""
    return {cpu(e) for e in seeds.values()}


def load(results: Path) -> dict:
    """{dataset: {row: {seed: file}}}, checking that every file of a data set has the same questions in order.

    A row measured on more than one CPU becomes one row per CPU, named ``<row> (<cpu>)`` except on the CPU of the
    data set's first ``vanilla`` file (name order), which keeps the plain name."""
    files: dict = defaultdict(list)
    ids: dict = {}
    for path in sorted(Path(results).glob("*.json")):
        entry = json.loads(path.read_text())
        dataset = entry["dataset"]
        if ids.setdefault(dataset, entry["ids"]) != entry["ids"]:
            raise ValueError(f"{path}: its questions differ from the other files of {dataset}")
        files[dataset].append(entry)
    out: dict = defaultdict(lambda: defaultdict(dict))
    for dataset, entries in files.items():
        home = next((cpu(e) for e in entries if e["row"] == "vanilla"), "")
        cpus = defaultdict(set)
        for entry in entries:
            cpus[entry["row"]].add(cpu(entry))
        for entry in entries:
            row = entry["row"]
            if len(cpus[row]) > 1 and cpu(entry) != home:
                row = f"{row} ({cpu(entry)})"
            if entry["seed"] in out[dataset][row]:
                raise ValueError(f"{dataset}: two files for row {row!r} seed {entry['seed']}")
            out[dataset][row][entry["seed"]] = entry
    return out


def base_row(row: str, rows: dict) -> str:
    """The ``vanilla`` a row is compared with: the one computed on the row's CPU where there is one."""
    for name in rows:
        if (name == "vanilla" or name.startswith("vanilla (")) and row_cpus(rows[name]) == row_cpus(rows[row]):
            return name
    return "vanilla"


def pooled(seeds: dict, metric: str) -> np.ndarray:
    """Each question's value averaged over the seeds."""
    return np.mean([np.asarray(entry[metric], dtype=float) for entry in seeds.values()], axis=0)


def _ci(a, b) -> str:
    ci = paired_bootstrap_ci(a, b, n_resamples=1000, seed=0)
    text = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
    return f"**{text}**" if ci["significant"] else text


def _rel(a, b) -> str:
    base = float(np.mean(b))
    return f"{(float(np.mean(a)) / base - 1) * 100:+.0f} %" if base else "-"


def dataset_table(dataset: str, rows: dict) -> str:
    lines = [f"### {dataset} ({len(next(iter(next(iter(rows.values())).values()))['ids'])} questions)", "",
             "| row | seeds | F1 | EM | F1 vs vanilla [95% CI] | relative F1 | EM vs vanilla [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for row in _ordered(rows):
        seeds = rows[row]
        base = base_row(row, rows)
        vanilla = {m: pooled(rows[base], m) for m in ("f1", "em")} if base in rows else None
        entries = [(s, e) for s, e in sorted(seeds.items(), key=lambda x: (x[0] is not None, x[0]))]
        cells = []
        for seed, entry in entries if len(entries) > 1 else []:
            f1, em = np.asarray(entry["f1"]), np.asarray(entry["em"])
            cells.append((f"{row} (seed {seed})", "1", f1, em))
        label = f"{row} (pooled)" if len(entries) > 1 else row
        cells.append((f"**{label}**" if len(entries) > 1 else label, str(len(entries)), pooled(seeds, "f1"),
                      pooled(seeds, "em")))
        for name, n, f1, em in cells:
            diff = ("", "", "") if vanilla is None or row == base else (
                _ci(f1, vanilla["f1"]), _rel(f1, vanilla["f1"]), _ci(em, vanilla["em"]))
            lines.append(f"| {name} | {n} | {f1.mean():.3f} | {em.mean():.3f} | {diff[0]} | {diff[1]} | {diff[2]} |")
    lines += ["", "| comparison (pooled over seeds) | F1 difference [95% CI] | EM difference [95% CI] |",
              "|---|---|---|"]
    for a, b in COMPARISONS:
        if a in rows and b in rows:
            mixed = row_cpus(rows[a]) != row_cpus(rows[b])
            lines.append(f"| {a} − {b}{' (different CPUs)' if mixed else ''} | "
                         f"{_ci(pooled(rows[a], 'f1'), pooled(rows[b], 'f1'))} | "
                         f"{_ci(pooled(rows[a], 'em'), pooled(rows[b], 'em'))} |")
    cpus = {row: sorted(row_cpus(rows[row])) for row in _ordered(rows)}
    if len({c for names in cpus.values() for c in names}) > 1:
        lines += ["", "Evaluated on: " + "; ".join(f"{row}: {', '.join(names) or '?'}" for row, names in cpus.items())
                  + ". Each row is compared with the vanilla of its own CPU where there is one."]
    if {"oracle", "vanilla", "rpo"} <= set(rows):
        oracle, vanilla_f1 = pooled(rows["oracle"], "f1"), pooled(rows["vanilla"], "f1")
        ceiling = paired_bootstrap_ci(oracle, vanilla_f1, n_resamples=1000, seed=0)
        gain, got = ceiling["diff"], float(pooled(rows["rpo"], "f1").mean() - vanilla_f1.mean())
        text = (f"Oracle ceiling: retrieval alone can raise this generator's F1 by {_ci(oracle, vanilla_f1)}; the "
                f"tuned retriever (rpo) changes it by {got:+.3f}")
        # a share of a ceiling that is not measurably above 0 means nothing: say so instead of dividing by noise
        text += (f", {got / gain * 100:.0f} % of it." if ceiling["significant"] and gain > 0 else
                 "; the ceiling itself is not measurably above 0, so no share of it is stated.")
        lines += ["", text]
    return "\n".join(lines)


def _ordered(rows: dict) -> list:
    """The rows in ROW_ORDER, a row's other-CPU variants right after it, then any other rows by name."""
    out = []
    for name in ROW_ORDER:
        out += [name] if name in rows else []
        out += sorted(r for r in rows if r.startswith(f"{name} ("))
    return out + sorted(set(rows) - set(out))


def tables(results: Path) -> str:
    data = load(results)
    return "\n\n".join(dataset_table(dataset, rows) for dataset, rows in sorted(data.items())) + "\n"
