"""CPU loss-step benchmark of the C++ backend against the eager reference and torch.compile of it.

    python bench/bench_cpu.py                                  # B in {128, 1024, 4096} x K in {10, 100, 1000}
    python bench/bench_cpu.py --threads 1 2 --dtypes fp32 bf16 --rounds 40

The step is the shared harness's (bench/harness.py: ops 1-3 forward + backward, draws included).
Unlike ``run_bench.py`` this script is made for a small shared CPU machine: the variants are timed
interleaved, call by call, and the statistic is the minimum (other processes only ever add time)
with the median next to it; the compiled reference is compiled per shape (static shapes), and the
thread count is a parameter. Writes JSON and a Markdown table under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import harness

VARIANTS = ("cpu", "reference", harness.COMPILED)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_interleaved(steps: dict, rounds: int) -> dict:
    for step in steps.values():  # warm-up (and compile)
        for _ in range(3):
            step.run()
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step.run()
            samples[name].append(time.perf_counter() - t0)
    return {name: (min(s), statistics.median(s)) for name, s in samples.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", nargs="*", type=int, default=[128, 1024, 4096])
    ap.add_argument("--classes", nargs="*", type=int, default=[10, 100, 1000])
    ap.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=list(harness.DTYPES))
    ap.add_argument("--threads", nargs="*", type=int, default=[torch.get_num_threads()])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per shape
    torch._dynamo.config.cache_size_limit = 256
    variants = [v for v in VARIANTS if not (args.no_compile and v == harness.COMPILED)]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype_name in args.dtypes:
            for b in args.batches:
                for k in args.classes:
                    steps = {v: harness.make_step(v, b, k, harness.DTYPES[dtype_name], "cpu") for v in variants}
                    times = time_interleaved(steps, args.rounds)
                    ref, comp = times["reference"][0], times.get(harness.COMPILED, (float("nan"),))[0]
                    for name, (best, median) in times.items():
                        rows.append(dict(variant=name, threads=threads, dtype=dtype_name, batch=b, classes=k,
                                         min_ms=best * 1e3, median_ms=median * 1e3, speedup_vs_reference=ref / best,
                                         speedup_vs_compiled=comp / best))
                    cpu = times["cpu"][0]
                    print(f"threads={threads} {dtype_name} B={b:5d} K={k:5d}  cpu {cpu * 1e3:8.3f} ms  "
                          f"x{ref / cpu:5.1f} vs eager  x{comp / cpu:5.1f} vs compiled", flush=True)

    now = datetime.datetime.now(datetime.UTC)
    command = "python bench/bench_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    result = dict(machine=machine, date=now.isoformat(timespec="seconds"), command=command, torch=torch.__version__,
                  statistic="min over interleaved rounds (median also given)", mix_dim=harness.MIX_DIM, rows=rows)
    out = pathlib.Path(args.out) if args.out else (pathlib.Path(__file__).resolve().parent / "results" /
                                                   f"cpu_{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    lines = ["# CPU loss step: C++ backend vs eager reference vs torch.compile(reference)", "",
             f"- machine: {machine}", f"- date: {result['date']}", f"- command: `{command}`",
             f"- torch {torch.__version__}; statistic: {result['statistic']}; one step = weights_and_sample "
             f"(with draws) + mix of x [B, {harness.MIX_DIM}] + mixed loss forward/backward (second_reweight)", "",
             "| threads | dtype | B | K | cpu ms | eager ms | compiled ms | x eager | x compiled |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_key = {}
    for r in rows:
        by_key.setdefault((r["threads"], r["dtype"], r["batch"], r["classes"]), {})[r["variant"]] = r
    for (t, d, b, k), cell in by_key.items():
        c, e, p = cell["cpu"], cell["reference"], cell.get(harness.COMPILED)
        comp = f"{p['min_ms']:.3f}" if p else "-"
        lines.append(f"| {t} | {d} | {b} | {k} | {c['min_ms']:.3f} | {e['min_ms']:.3f} | {comp} | "
                     f"{c['speedup_vs_reference']:.1f} | {c['speedup_vs_compiled']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"saved {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
