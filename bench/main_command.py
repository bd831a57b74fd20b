"""The README's main command as a newcomer meets it: ``examples/bporag.py`` in a fresh process, with empty output and
cache folders, timed stage by stage.

    python bench/main_command.py                                   # the embedded default
    python bench/main_command.py --baseline_seconds 815 --baseline_peak_gib 12.0   # against earlier figures
    python bench/main_command.py --baseline_json runs/bench-main-old/bench.json    # against an earlier run of this
    python bench/main_command.py --emulate_avx2      # as on an AVX2-only CPU (torch, oneDNN, MKL capped at AVX2)

Prints the machine the job ran on (CPU model, torch's CPU capability, whether bf16 is native, the compute dtype the
job chose), each stage's wall time and peak RSS (from the run's results.json), the job's wall time and the peak RSS of
the whole process (``ru_maxrss`` of the child, as ``/usr/bin/time -v`` reports it), writes them to
``<output_dir>/bench.json``, and last the ratios baseline / now of job time and peak memory. The baseline figures are
inputs (a JSON written by an earlier run of this script, or numbers you measured), never constants in this file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", default="runs/bench-main")
    p.add_argument("--keep_cache", action="store_true", help="reuse the index / converted-model cache (not fresh)")
    p.add_argument("--baseline_json", default=None, help="bench.json of an earlier run to compare with")
    p.add_argument("--baseline_seconds", type=float, default=None, help="earlier job time (s) to compare with")
    p.add_argument("--baseline_peak_gib", type=float, default=None, help="earlier peak RSS (GiB) to compare with")
    p.add_argument("--emulate_avx2", action="store_true", help="run the job as on an AVX2-only CPU: torch dispatches "
                   "AVX2 kernels (ATEN_CPU_CAPABILITY=avx2), oneDNN and MKL use no AVX512 (ONEDNN_MAX_CPU_ISA=AVX2, "
                   "MKL_ENABLE_INSTRUCTIONS=AVX2), so bf16 is emulated and --dtype auto picks float32")
    p.add_argument("extra", nargs="*", help="flags passed on to examples/bporag.py (after --)")
    args = p.parse_args()
    out = Path(args.output_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not args.keep_cache:
        env["TRL_BPORAG_CACHE"] = str(out / "cache")
    if args.emulate_avx2:
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    cmd = [sys.executable, str(REPO / "examples" / "bporag.py"), "--output_dir", str(out / "run"), *args.extra]
    t0 = time.perf_counter()
    with (out / "stderr.log").open("w") as err:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if proc.returncode != 0:
        sys.exit(f"examples/bporag.py failed with exit code {proc.returncode}; see {out / 'stderr.log'}")
    results = json.loads((out / "run" / "results.json").read_text())
    report = {"command": " ".join(cmd[1:]), "job_seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2),
              "stages": results["stages"], "hardware": results.get("hardware")}
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(proc.stdout)
    for s in results["stages"]:
        print(f"{s['stage']:<40} {s['seconds']:>7.1f} s   peak {s['peak_rss_gib']:.2f} GiB")
    print(f"{'whole job (fresh process)':<40} {seconds:>7.1f} s   peak {peak / 2**30:.2f} GiB")
    hw = results.get("hardware") or {}
    print(f"machine (as the job saw it): {hw.get('cpu')} | torch CPU capability {hw.get('torch_cpu_capability')} | "
          f"bf16 {'native' if hw.get('cpu_bf16_native') else 'emulated'} | compute dtype {hw.get('dtype')} | "
          f"{hw.get('torch_threads')} threads{' | ' + str(hw['dispatch_caps']) if hw.get('dispatch_caps') else ''}")
    base_s, base_gib = args.baseline_seconds, args.baseline_peak_gib
    if args.baseline_json:
        base = json.loads(Path(args.baseline_json).read_text())
        base_s, base_gib = base["job_seconds"], base["peak_rss_gib"]
    if base_s and base_gib:
        print(f"baseline / now: job time {base_s / seconds:.2f}x ({base_s:.0f} -> {seconds:.0f} s), "
              f"peak memory {base_gib / (peak / 2**30):.2f}x ({base_gib:.1f} -> {peak / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
