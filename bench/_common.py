"""Helpers shared by the speed benchmarks: shared data paths, medians, the machine line printed beside every figure
(:func:`trl_bporag.hardware.describe_hardware`); the peak-memory probe is the library's
(:class:`trl_bporag.monitor.PeakRSS`)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trl_bporag.hardware import describe_hardware, hardware_summary  # noqa: E402, F401  (re-exported)
from trl_bporag.monitor import PeakRSS, peak_rss_bytes, rss_bytes  # noqa: E402, F401  (re-exported for the benches)


def print_machine() -> None:
    """The line every bench prints beside its figures: CPU model, torch's CPU capability, whether bf16 is native."""
    print(f"machine: {describe_hardware()}", flush=True)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def median(values):
    return statistics.median(values) if values else float("nan")


def mb(n: int) -> float:
    return round(n / 2**20, 1)
