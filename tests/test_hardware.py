"""The compute dtype is asked of the hardware: bf16 only where it is native, an explicit bf16 request on a CPU without
it honoured with one warning, and every default of the library going through that one choice."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from trl_bporag import hardware


@pytest.fixture
def cpu(monkeypatch):
    """Set what the CPU looks like (flags, torch capability, oneDNN cap) and clear the cached answer."""

    def make(flags=None, capability="AVX512", machine="x86_64", onednn=None, override=None, probe=None):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: None if flags is None else frozenset(flags))
        monkeypatch.setattr(hardware, "cpu_capability", lambda: capability)
        monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
        if probe is not None:
            monkeypatch.setattr(hardware, "_probe_bf16_speedup", lambda: probe)
        for key, value in (("ONEDNN_MAX_CPU_ISA", onednn), ("TRL_BPORAG_CPU_BF16", override)):
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        hardware.cpu_bf16_native.cache_clear()
        hardware._warn_emulated_bf16.cache_clear()

    yield make
    hardware.cpu_bf16_native.cache_clear()
    hardware._warn_emulated_bf16.cache_clear()


@pytest.mark.parametrize("flags, capability, onednn, native", [
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", None, True),  # Zen 4 / Cooper Lake
    ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "AVX512", None, True),  # Sapphire Rapids
    ({"avx2", "fma"}, "AVX2", None, False),  # AVX2 only (the EPYC)
    ({"avx2", "avx512f"}, "AVX512", None, False),  # Skylake-SP: AVX512 without bf16
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", None, False),  # ATEN_CPU_CAPABILITY=avx2: torch dispatches AVX2
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", "AVX2", False),  # oneDNN capped below bf16
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", "AVX512_CORE_BF16", True),
])
def test_x86_cpu_is_native_only_with_bf16_flags_and_uncapped_dispatch(cpu, flags, capability, onednn, native):
    cpu(flags=flags, capability=capability, onednn=onednn, probe=99.0)  # the probe must not be asked on x86 Linux
    assert hardware.cpu_bf16_native() is native
    assert hardware.compute_dtype("cpu") == ("bfloat16" if native else "float32")


def test_without_flags_a_measured_probe_decides_and_the_env_overrides(cpu):
    cpu(flags=None, machine="arm64", probe=2.4)
    assert hardware.cpu_bf16_native() is True
    cpu(flags=None, machine="arm64", probe=0.2)
    assert hardware.cpu_bf16_native() is False
    cpu(flags={"avx2"}, capability="AVX2", override="1")
    assert hardware.cpu_bf16_native() is True
    cpu(flags={"avx512_bf16"}, override="0")
    assert hardware.cpu_bf16_native() is False


def test_the_probe_measures_bf16_against_float32():
    speedup = hardware._probe_bf16_speedup(size=64, repeats=1)
    assert speedup > 0 and speedup == speedup  # a finite ratio of two timings


def test_resolve_dtype_auto_explicit_and_one_warning_for_emulated_bf16(cpu):
    cpu(flags={"avx2"}, capability="AVX2")
    assert hardware.resolve_dtype("auto", "cpu") == hardware.resolve_dtype(None, "cpu") == "float32"
    with pytest.warns(UserWarning, match=r"without native bf16 .*5-7x slower"):
        assert hardware.resolve_dtype("bfloat16", "cpu", where="x") == "bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second request of the same place does not warn again
        assert hardware.resolve_dtype(torch.bfloat16, "cpu", where="x") == "bfloat16"
        assert hardware.resolve_dtype("float32", "cpu") == "float32"
    with pytest.raises(ValueError, match=r"where: expected one of \('auto', 'bfloat16', 'float32'\)"):
        hardware.resolve_dtype("int8", where="where")
    cpu(flags={"avx512_bf16"}, capability="AVX512")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_dtype("auto", "cpu") == "bfloat16"
        assert hardware.resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_every_default_follows_the_hardware(cpu, tiny_st, tiny_generator_dir):
    """Retriever, load_generator, GPOConfig and SetDPOConfig choose bf16 on a native CPU and float32 on an AVX2
    one; explicit choices are kept."""
    from trl_bporag import Retriever, SetDPOConfig, load_generator
    from trl_bporag.trainers import GPOConfig

    for flags, capability, native in (({"avx512_bf16"}, "AVX512", True), ({"avx2"}, "AVX2", False)):
        cpu(flags=flags, capability=capability)
        assert Retriever(tiny_st).dtype == ("bfloat16" if native else None)
        assert Retriever(tiny_st, dtype="float32").dtype is None
        model, _ = load_generator(tiny_generator_dir)
        assert model.dtype == (torch.bfloat16 if native else torch.float32)
        assert load_generator(tiny_generator_dir, torch_dtype="float32")[0].dtype == torch.float32
        assert GPOConfig(output_dir="unused").bf16 is native
        config = SetDPOConfig(output_dir="unused")
        assert config.bf16 is native and (config.use_cpu or not native)  # bf16 autocast on a CPU needs use_cpu
    cpu(flags={"avx2"}, capability="AVX2")
    with pytest.warns(UserWarning, match="without native bf16"):
        config = SetDPOConfig(output_dir="unused", bf16=True)
    assert config.bf16 and config.use_cpu  # honoured


def test_hardware_summary_names_the_cpu_and_capability(cpu, monkeypatch):
    cpu(flags={"avx2"}, capability="AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    summary = hardware.hardware_summary()
    assert summary["torch_cpu_capability"] == "AVX2" and summary["cpu_bf16_native"] is False
    assert summary["dispatch_caps"] == {"ATEN_CPU_CAPABILITY": "avx2"} and summary["cpu"]
    line = hardware.describe_hardware()
    assert "AVX2" in line and "bf16 emulated" in line and "ATEN_CPU_CAPABILITY=avx2" in line


def _fresh_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    return {**env, **extra}


def test_importing_the_package_bounds_the_onednn_cache_before_torch_and_keeps_a_users_value():
    """The cap must be in the environment before torch is imported (torch reads it then): a fresh interpreter that
    imports trl_bporag first sees 16 and has torch loaded only afterwards; a value the user set is left alone."""
    code = ("import os, sys; import trl_bporag; "
            "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_fresh_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(hardware.ONEDNN_PRIMITIVE_CACHE_CAPACITY), "True"]
    mine = subprocess.run([sys.executable, "-c", code], env=_fresh_env(ONEDNN_PRIMITIVE_CACHE_CAPACITY="5"),
                          capture_output=True, text=True, check=True)
    assert mine.stdout.split() == ["5", "True"]


def test_bound_onednn_primitive_cache_says_whether_it_fully_applies(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    # torch is already imported in this process: the variable is set, but only partly applies
    assert hardware.bound_onednn_primitive_cache(7) is False
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"
    assert hardware.bound_onednn_primitive_cache(9) is False  # set already: kept
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.delitem(sys.modules, "torch")  # as before torch is imported
    assert hardware.bound_onednn_primitive_cache(7) is True
