"""Wall time and peak resident memory of a block of work: what ``examples/bporag.py`` reports for each stage and
``bench/`` for each measured run.

:class:`PeakRSS` (benchmarks): on Linux the kernel's high-water mark of the process (``VmHWM``) is reset through
``/proc/self/clear_refs`` when a block starts, so that each block's peak is its own; elsewhere the process-lifetime
peak (``ru_maxrss``) is reported and ``resettable`` is False. :class:`StageLog` (``examples/bporag.py``) samples
instead and leaves the high-water mark alone. Peaks cover this process only (not child processes, e.g.
``accelerate launch`` workers).
"""

from __future__ import annotations

import contextlib
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


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (the kernel's high-water mark, else ``ru_maxrss``)."""
    return _status("VmHWM") or _lifetime_peak()


def rss_bytes() -> int:
    """Resident memory of this process now (the lifetime peak where /proc is missing)."""
    value = _status("VmRSS")
    return value if value is not None else _lifetime_peak()


def return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere): pages freed in the middle
    of the heap stay resident otherwise, and a long training run's resident size creeps up with them."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def large_allocations_to_os(threshold: int = 8 << 20) -> bool:
    """Serve heap allocations of at least ``threshold`` bytes (default 8 MiB: activations, logits, gradient buffers)
    from their own memory maps, which go back to the OS as soon as they are freed.

    glibc's default raises this threshold (up to 32 MiB) each time a mapped block is freed, after which blocks of
    that size come from the heap, and a long process keeps the heap's high-water mark of its earlier work: in
    ``examples/bporag.py`` the training stages started ~0.5 GiB above a fresh process. Setting it fixes the threshold.
    Measured on the main command, for the whole process: peak 3.37 GiB instead of 3.89 GiB, with ~10 % more time
    (docs/benchmarks.md); :func:`large_allocations_returned` applies it to a block. Returns False where it cannot be
    set (not glibc)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def large_allocations_returned(threshold: int = 8 << 20, after: int = 32 << 20):
    """:func:`large_allocations_to_os` for a block (e.g. a training stage), then a fixed ``after`` (32 MiB, where
    glibc's own threshold ends up in a long torch process) so that the stages outside it keep their speed."""
    large_allocations_to_os(threshold)
    try:
        yield
    finally:
        large_allocations_to_os(after)


class PeakRSS:
    """Peak resident memory and wall time over a ``with`` block, for benchmarks that measure one block at a time.

    It resets the kernel's high-water mark on entry: a ``/usr/bin/time -v`` around the process then reports only the
    peak since the last reset. :class:`StageLog` does not reset it.

    Attributes after the block: ``peak`` (bytes), ``start`` (resident bytes at entry), ``delta`` (peak - start),
    ``seconds``, ``resettable`` (False: ``peak`` is the process-lifetime peak)."""

    def __enter__(self):
        return_freed_memory()
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
        return_freed_memory()
        self.start = rss_bytes()
        self.hwm_start = peak_rss_bytes()
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
        hwm = peak_rss_bytes()
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
        return round(peak_rss_bytes() / 2**30, 2)

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
