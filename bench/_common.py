"""Helpers shared by the speed benchmarks: shared data paths, medians; the peak-memory probe is the library's
(:class:`trl_bporag.monitor.PeakRSS`)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trl_bporag.monitor import PeakRSS, rss_bytes  # noqa: E402, F401  (re-exported for the benches)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def median(values):
    return statistics.median(values) if values else float("nan")


def mb(n: int) -> float:
    return round(n / 2**20, 1)
