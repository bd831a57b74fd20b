"""Helpers shared by the speed benchmarks: peak-memory probes, shared data paths, medians."""

from __future__ import annotations

import os
import resource
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    value = _status("VmRSS")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that the next block starts from a tight resident size."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory over a block. On Linux the kernel's high-water mark (VmHWM) is reset on entry through
    ``/proc/self/clear_refs`` so that each block is measured on its own; elsewhere ``ru_maxrss`` (process lifetime
    peak) is reported. ``delta`` = peak during the block minus the resident size at its start."""

    def __enter__(self):
        _trim()
        self.resettable = True
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.resettable = False
        self.start = rss_bytes()
        return self

    def __exit__(self, *exc):
        hwm = _status("VmHWM") if self.resettable else None
        self.peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta = max(0, self.peak - self.start)
        return False


def median(values):
    return statistics.median(values) if values else float("nan")


def mb(n: int) -> float:
    return round(n / 2**20, 1)
