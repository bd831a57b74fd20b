"""Wall time and peak resident memory of a block of work: what ``examples/bporag.py`` reports for each stage and
``bench/`` for each measured run.

:class:`PeakRSS` (benchmarks): on Linux the kernel's high-water mark of the process (``VmHWM``) is reset through
``/proc/self/clear_refs`` when a block starts, so that each block's peak is its own; elsewhere the process-lifetime
peak (``ru_maxrss``) is reported and ``resettable`` is False. :class:`StageLog` (``examples/bporag.py``) samples
instead and leaves the high-water mark alone. Peaks cover this process only (not child processes, e.g.
``accelerate launch`` workers).
"""

from __future__ import annotations

import gc
import resource
import sys
import time


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _lifetime_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _peak_so_far() -> int:
    """The process's peak resident memory so far (the kernel's high-water mark, else ``ru_maxrss``)."""
    return _status("VmHWM") or _lifetime_peak()


def rss_bytes() -> int:
    """Resident memory of this process now (the lifetime peak where /proc is missing)."""
    value = _status("VmRSS")
    return value if value is not None else _lifetime_peak()


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that the next block starts from a tight resident size."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory and wall time over a ``with`` block, for benchmarks that measure one block at a time.

    It resets the kernel's high-water mark on entry: a ``/usr/bin/time -v`` around the process then reports only the
    peak since the last reset. :class:`StageLog` does not reset it.

    Attributes after the block: ``peak`` (bytes), ``start`` (resident bytes at entry), ``delta`` (peak - start),
    ``seconds``, ``resettable`` (False: ``peak`` is the process-lifetime peak)."""

    def __enter__(self):
        _trim()
        self.resettable = True
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.resettable = False
        self.start = rss_bytes()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        hwm = _status("VmHWM") if self.resettable else None
        self.peak = hwm if hwm is not None else _lifetime_peak()
        self.delta = max(0, self.peak - self.start)
        return False


class _Sampler:
    """Peak resident memory of a block without resetting the kernel's high-water mark: RSS sampled every ``interval``
    seconds on a thread, plus the lifetime peak (``VmHWM``) when the block raised it (then that is exact)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval

    def __enter__(self):
        import threading

        gc.collect()
        _trim()
        self.start = rss_bytes()
        self.hwm_start = _peak_so_far()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        hwm = _peak_so_far()
        self.peak = max(self.peak, rss_bytes(), hwm if hwm > self.hwm_start else 0)
        return False


class StageLog:
    """Announce stages on stderr as they start and end, with wall time and peak memory, and keep the figures.

    Unlike :class:`PeakRSS` it leaves the kernel's high-water mark alone, so ``/usr/bin/time -v`` around the whole
    process still reports the true peak; a stage's peak is exact when the stage set the process's peak so far, and
    sampled (every 50 ms) otherwise.

    Example::

        log = StageLog("bporag")
        with log.stage("RPO pairs"):
            ...
        log.stages  # [{"stage": "RPO pairs", "seconds": 61.2, "peak_rss_gib": 1.8, "start_rss_gib": 0.6}]
        log.peak_gib()  # the process's peak so far
    """

    def __init__(self, prefix: str = "bporag", stream=None):
        self.prefix, self.stream = prefix, stream
        self.stages: list[dict] = []

    def __call__(self, message: str) -> None:
        print(f"[{self.prefix} {time.strftime('%H:%M:%S')}] {message}", file=self.stream or sys.stderr, flush=True)

    @staticmethod
    def peak_gib() -> float:
        """Peak resident memory of this process so far, in GiB."""
        return round(_peak_so_far() / 2**30, 2)

    def stage(self, name: str) -> _Stage:
        """A ``with`` block announced as stage ``name``; on success its figures are appended to :attr:`stages`."""
        return _Stage(self, name)


class _Stage(_Sampler):
    def __init__(self, log: StageLog, name: str):
        super().__init__()
        self.log, self.name = log, name

    def __enter__(self):
        self.log(f"{self.name}: starting")
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if exc[0] is None:
            entry = {"stage": self.name, "seconds": round(self.seconds, 1), "peak_rss_gib": round(self.peak / 2**30, 2),
                     "start_rss_gib": round(self.start / 2**30, 2)}
            self.log.stages.append(entry)
            self.log(f"{self.name}: done in {self.seconds:.0f} s, peak memory {entry['peak_rss_gib']:.2f} GiB")
        return False
