"""Which compute dtype a device runs fast, asked of the hardware; and what to print beside every timing.

bf16 is only a speed-up where the hardware computes it: a CUDA device with bf16 support, or a CPU with AVX512-BF16 or
AMX (measured here: bf16 2.4x faster than float32). A CPU with AVX2 only emulates it in software, and the same bf16
work runs 5-7x *slower* than float32 (measured: ``F.linear`` 512x384 by 1536x384, one thread). So every default of
the library asks :func:`compute_dtype` instead of assuming bf16:

* :func:`compute_dtype` - ``"bfloat16"`` where it is native for the device, else ``"float32"``;
* :func:`resolve_dtype` - what a ``dtype`` argument means: ``"auto"`` (or None) asks :func:`compute_dtype`; an explicit
  ``"bfloat16"`` on a CPU without native bf16 is honoured, with one warning saying how much slower it is expected to
  be;
* :func:`hardware_summary` / :func:`describe_hardware` - the CPU model, torch's CPU capability, whether bf16 is
  native and the thread count, for benchmarks and logs;
* :func:`bound_onednn_primitive_cache` - a small oneDNN primitive cache, set when the package is imported, so that
  bf16 training and generation on a CPU do not grow with every new tensor shape.

How a CPU is asked: on x86 Linux the CPU's flags (``/proc/cpuinfo``: ``avx512_bf16`` or ``amx_bf16``), together with
what torch dispatches to (``torch.backends.cpu.get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``) and
oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``); elsewhere a short measured probe (bf16 against float32 matrix products,
about 0.1 s once per process). ``TRL_BPORAG_CPU_BF16=1`` / ``0`` overrides the answer.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
import time
import warnings

logger = logging.getLogger(__name__)

#: The values a ``dtype`` argument of the library takes.
DTYPE_CHOICES = ("auto", "bfloat16", "float32")
#: Measured slowdown of bf16 against float32 on an AVX2-only CPU (docs/benchmarks.md, "dtype by capability").
EMULATED_BF16_SLOWDOWN = "5-7x"
# oneDNN ISA names, lowest first; bf16 compute is native from avx512_core_bf16 on
_ONEDNN_ISAS = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
                "avx512_core_bf16", "avx10_1_512", "avx512_core_fp16", "avx512_core_amx", "avx512_core_amx_fp16",
                "avx10_2_512", "avx10_2_512_amx_2")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: oneDNN primitives kept per process (oneDNN's own default is 1024); see :func:`bound_onednn_primitive_cache`.
ONEDNN_PRIMITIVE_CACHE_CAPACITY = 16


def bound_onednn_primitive_cache(capacity: int = ONEDNN_PRIMITIVE_CACHE_CAPACITY) -> bool:
    """Keep at most ``capacity`` oneDNN primitives (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) unless the variable is set.

    On a CPU, torch runs bf16 matrix products through oneDNN, which builds one primitive per tensor shape and keeps
    up to 1,024 of them, each with its own buffers: in RPO training every batch has other sequence lengths, and the
    process grew by ~14 MiB a step, about 1 GiB over the README's Stage-1 epoch (measured: 200 bf16 linear layers
    of distinct shapes, forward and backward, grow the process by 3.7 GiB with the default and by 0.4-0.65 GiB with 16;
    docs/benchmarks.md). A primitive that fell out of the cache is rebuilt in well under a millisecond; the steps were
    not slower. torch reads the variable when it is imported, so this is called first thing when ``trl_bporag`` is
    imported; imported after torch, the cap only partly applies. A value you set yourself is kept.

    Returns True when the variable was set here, before torch was imported (the cap fully applies)."""
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(int(capacity))
    return "torch" not in sys.modules


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 Linux), else None (unknown)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_capability() -> str:
    """The vector ISA torch dispatches its CPU kernels to (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old torch or an unusual platform
        return "unknown"


def _onednn_allows_bf16() -> bool:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().lower()
    if not cap or cap == "all" or cap not in _ONEDNN_ISAS:
        return True
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index("avx512_core_bf16")


def _probe_bf16_speedup(size: int = 512, repeats: int = 3) -> float:
    """float32 time / bf16 time of ``size``-square matrix products on one thread (> 1: bf16 is faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = {}
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.randn(size, size).to(dtype)
            b = torch.randn(size, size).to(dtype)
            a @ b  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                a @ b
            timings[dtype] = time.perf_counter() - t0
        return timings[torch.float32] / max(timings[torch.bfloat16], 1e-9)
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch will use it in this process."""
    override = os.environ.get("TRL_BPORAG_CPU_BF16", "").strip().lower()
    if override in {"1", "true", "yes", "on"}:
        return True
    if override in {"0", "false", "no", "off"}:
        return False
    flags = cpu_flags()
    machine = platform.machine().lower()
    if flags is not None and machine in {"x86_64", "amd64", "i686", "x86"}:
        has_bf16 = any(flag in flags for flag in _BF16_FLAGS)
        return has_bf16 and cpu_capability().startswith("AVX512") and _onednn_allows_bf16()
    speedup = _probe_bf16_speedup()
    logger.info("bf16 probe on %s: %.2fx the float32 speed", cpu_model(), speedup)
    return speedup > 1.1


def _device_type(device) -> str:
    if device is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(getattr(device, "type", device)).split(":")[0]


def bf16_native(device=None) -> bool:
    """Whether ``device`` (``"cpu"``, ``"cuda"``, a ``torch.device``; default: CUDA when present, else the CPU)
    computes bf16 natively."""
    kind = _device_type(device)
    if kind == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return cpu_bf16_native()
    return False  # mps, xpu, ...: float32 unless asked


def compute_dtype(device=None) -> str:
    """``"bfloat16"`` where ``device`` computes it natively, else ``"float32"``: the library's default everywhere."""
    return "bfloat16" if bf16_native(device) else "float32"


@functools.cache
def _warn_emulated_bf16(where: str) -> None:
    why = ("TRL_BPORAG_CPU_BF16=0" if os.environ.get("TRL_BPORAG_CPU_BF16") else
           f"torch CPU capability {cpu_capability()}, no AVX512-BF16/AMX in use")
    warnings.warn(
        f"{where}: bf16 was asked for on a CPU without native bf16 ({cpu_model()}, {why}): it runs in software "
        f"emulation, measured {EMULATED_BF16_SLOWDOWN} "
        "slower than float32 on such CPUs. Use dtype 'auto' (or 'float32') unless you need bf16 numerics.",
        UserWarning,
        stacklevel=3,
    )


def resolve_dtype(dtype=None, device=None, where: str = "dtype") -> str:
    """The dtype name a ``dtype`` argument stands for on ``device``.

    ``None`` or ``"auto"``: :func:`compute_dtype`. ``"bfloat16"`` / ``"float32"`` / ``"float16"`` (or the torch
    dtypes) are returned as names; bf16 on a CPU without native bf16 is honoured with one warning per ``where``.
    Anything else is a ``ValueError`` naming ``where``."""
    import torch

    if dtype is None or dtype == "auto":
        return compute_dtype(device)
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    names = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16", "half": "float16", "float": "float32"}
    name = names.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if name not in ("bfloat16", "float32", "float16"):
        raise ValueError(f"{where}: expected one of {DTYPE_CHOICES} (or 'float16'), got {dtype!r}")
    if name == "bfloat16" and _device_type(device) == "cpu" and not cpu_bf16_native():
        _warn_emulated_bf16(where)
    return name


def hardware_summary() -> dict:
    """What a published timing is measured on: CPU model, torch's CPU capability, whether bf16 is native (CPU and, when
    present, CUDA), torch threads, CPU count and torch version."""
    import torch

    summary = {"cpu": cpu_model(), "torch_cpu_capability": cpu_capability(), "cpu_bf16_native": cpu_bf16_native(),
               "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__}
    caps = {key: os.environ[key] for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
            if key in os.environ}
    if caps:
        summary["dispatch_caps"] = caps
    if torch.cuda.is_available():
        summary["cuda"] = torch.cuda.get_device_name(0)
        summary["cuda_bf16"] = bool(torch.cuda.is_bf16_supported())
    return summary


def describe_hardware() -> str:
    """:func:`hardware_summary` on one line, e.g. ``AMD EPYC | torch CPU capability AVX512 | bf16 native | 2 torch
    threads of 2 CPUs``."""
    s = hardware_summary()
    parts = [s["cpu"], f"torch CPU capability {s['torch_cpu_capability']}",
             "bf16 native" if s["cpu_bf16_native"] else "bf16 emulated (fp32 default)",
             f"{s['torch_threads']} torch threads of {s['cpus']} CPUs"]
    if "dispatch_caps" in s:
        parts.append(" ".join(f"{k}={v}" for k, v in s["dispatch_caps"].items()))
    if "cuda" in s:
        parts.append(f"CUDA {s['cuda']} (bf16 {'yes' if s['cuda_bf16'] else 'no'})")
    return " | ".join(parts)
