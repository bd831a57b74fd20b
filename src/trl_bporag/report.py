"""The ablation table and chart of ``examples/bporag.py``: rows (vanilla, +RPO, +GPO, BPO-RAG) with each metric's value
and, for every row but vanilla, the paired bootstrap 95% CI of its difference from vanilla
(:func:`~trl_bporag.metrics.paired_bootstrap_ci`).

``results`` is ``{"rows": [...]}``, each row a dict with ``dataset``, ``row``, ``queries``, the metric values,
``ci_vs_vanilla`` (metric -> the CI dict; absent for vanilla) and ``ci_of_mean`` (metric -> [low, high]).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

TABLE_METRICS = ("recall@1", "recall@5", "recall@10", "answer_hit@5", "exact_match", "f1")


def row_entry(base: dict, metrics: dict, per_query: dict, vanilla: dict | None, n_resamples: int = 1000,
              seed: int = 0) -> dict:
    """One row of ``results["rows"]``: ``base`` (dataset, row, retriever, ...), the metric means (``*_seconds``
    left out), for a row that is not vanilla the paired bootstrap CI of each per-query metric's difference from
    ``vanilla`` (its ``per_query``), and each mean's own bootstrap CI."""
    from .metrics import paired_bootstrap_ci

    def rounded(ci: dict) -> dict:
        return {key: round(v, 4) if isinstance(v, float) else v for key, v in ci.items()}

    entry = {**base, **{key: round(v, 4) for key, v in metrics.items() if not key.endswith("_seconds")}}
    if vanilla is not None:
        entry["ci_vs_vanilla"] = {m: rounded(paired_bootstrap_ci(per_query[m], vanilla[m], n_resamples=n_resamples,
                                                                 seed=seed)) for m in per_query}
    entry["ci_of_mean"] = {m: [round(paired_bootstrap_ci(v, [0.0] * len(v), n_resamples=n_resamples, seed=seed)[b], 4)
                               for b in ("low", "high")] for m, v in per_query.items()}
    return entry


def _cell(r: dict, metric: str) -> str:
    if metric not in r:
        return "-"
    ci = r.get("ci_vs_vanilla", {}).get(metric)
    if ci is None:
        return f"{r[metric]:.3f}"
    star = "**" if ci["significant"] else ""
    return f"{r[metric]:.3f} ({star}{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]{star})"


def results_markdown(results: dict) -> str:
    """The table (each non-vanilla cell: value (difference from vanilla [95% CI])) and, in words, which differences
    are measurable."""
    cols = [c for c in TABLE_METRICS if any(c in r for r in results["rows"])]
    lines = ["| dataset | row | queries | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for r in results["rows"]:
        lines.append(f"| {r['dataset']} | {r['row']} | {r['queries']} | "
                     + " | ".join(_cell(r, c) for c in cols) + " |")
    lines.append("")
    lines.append("Cells of the rows other than vanilla: value (difference from vanilla [paired bootstrap 95% CI]); "
                 "**bold**: the CI excludes 0.")
    for name in dict.fromkeys(r["dataset"] for r in results["rows"]):
        measurable = [f"{r['row']} {m} {ci['diff']:+.3f}" for r in results["rows"] if r["dataset"] == name
                      for m, ci in r.get("ci_vs_vanilla", {}).items() if m in cols and ci["significant"]]
        if measurable:
            lines.append(f"- {name}: measurable differences from vanilla: {'; '.join(measurable)}. Every other "
                         f"difference is within noise (no measurable change).")
        else:
            lines.append(f"- {name}: every difference from vanilla is within noise (no measurable change).")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path) -> dict | None:
    """Bars with their values and 95% bootstrap error bars; a metric that is 0 in every row is left out (and named
    in the title). Returns the metrics drawn per data set (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install matplotlib): no results.png")
        return None
    datasets = list(dict.fromkeys(r["dataset"] for r in results["rows"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(8 * len(datasets), 4.5), squeeze=False)
    drawn = {}
    for ax, name in zip(axes[0], datasets):
        rows = [r for r in results["rows"] if r["dataset"] == name]
        shown = [m for m in TABLE_METRICS if any(r.get(m, 0.0) for r in rows)]
        zero = [m for m in TABLE_METRICS if m not in shown and all(m in r for r in rows)]
        drawn[name] = shown
        width = 0.8 / len(rows)
        for j, r in enumerate(rows):
            xs = [i + j * width for i in range(len(shown))]
            values = [r[m] for m in shown]
            err = [[v - r["ci_of_mean"][m][0] for m, v in zip(shown, values)],
                   [r["ci_of_mean"][m][1] - v for m, v in zip(shown, values)]]
            bars = ax.bar(xs, values, width, yerr=err, capsize=2, label=r["row"])
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shown))], shown)
        ax.set_ylim(0, 1.05)
        title = f"{name} ({rows[0]['queries']} queries; error bars: 95% bootstrap CI)"
        if zero:
            title += f"\nnot shown, 0 in every row: {', '.join(zero)}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn
