"""Print a table of the full loss-step time per backend and save it as JSON under bench/results/.

    python bench/run_bench.py                      # device default cases, fp32 and bf16
    python bench/run_bench.py --cases 128x10 1024x1000 --dtypes bf16 --variants triton reference

Columns: time per step (median), speed-up against the eager reference and against
``torch.compile`` of the reference (same run), and achieved bandwidth (minimal bytes / time) as a
fraction of the measured copy bandwidth, and on a GPU the device operations per step (profiler).
Without a GPU the Triton backend runs in its interpreter
(TRITON_INTERPRET=1): that checks the harness, the timings are not meaningful.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import harness


def parse_case(text: str) -> tuple[int, int]:
    b, k = text.lower().split("x")
    return int(b), int(k)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=harness.default_device())
    ap.add_argument("--cases", nargs="*", type=parse_case, help="BxK, e.g. 128x10 (default: the device's set)")
    ap.add_argument("--dtypes", nargs="*", default=list(harness.DTYPES), choices=list(harness.DTYPES))
    ap.add_argument("--variants", nargs="*", help="backends to time (default: all available + reference+compile)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds of timed calls per cell")
    ap.add_argument("--compile-dynamic", action="store_true",
                    help="compile the reference once with dynamic shapes instead of once per case")
    ap.add_argument("--out", default=None, help="JSON path (default: bench/results/<device>-<utc time>.json)")
    args = ap.parse_args(argv)

    device = args.device
    cases = args.cases or harness.default_cases(device)
    names = args.variants or harness.variants(device)
    copy_bw = harness.copy_bandwidth(device)
    rows = []
    for dtype_name in args.dtypes:
        dtype = harness.DTYPES[dtype_name]
        for b, k in cases:
            times, launches = {}, {}
            for name in names:
                try:
                    step = harness.make_step(name, b, k, dtype, device, dynamic=args.compile_dynamic)
                    times[name] = harness.time_step(step, min_time=args.min_time)
                    launches[name] = harness.device_launches(step)
                except Exception as exc:  # one failing variant must not hide the others
                    print(f"  {name} B={b} K={k} {dtype_name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            nbytes = harness.minimal_bytes(b, k, dtype)
            for name, sec in times.items():
                rows.append(dict(variant=name, batch=b, classes=k, dtype=dtype_name, seconds=sec,
                                 speedup_vs_reference=times.get("reference", float("nan")) / sec,
                                 speedup_vs_compiled=times.get(harness.COMPILED, float("nan")) / sec,
                                 minimal_bytes=nbytes, achieved_gb_s=nbytes / sec / 1e9,
                                 fraction_of_copy_bw=nbytes / sec / copy_bw, device_launches=launches.get(name)))

    now = datetime.datetime.now(datetime.UTC)
    result = dict(device=harness.device_name(device), date=now.isoformat(timespec="seconds"),
                  command="python bench/run_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  torch=torch.__version__, triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
                  copy_bandwidth=copy_bw, mix_dim=harness.MIX_DIM, rows=rows)
    table = markdown(result)
    print(table)
    out = pathlib.Path(args.out) if args.out else (pathlib.Path(__file__).resolve().parent / "results" /
                                                   f"{device}-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table)
    print(f"saved {out} and {out.with_suffix('.md')}")
    return result


def markdown(result: dict) -> str:
    """The result as a Markdown table with its device, date and command."""
    lines = ["# MentorMix loss step: every backend beside the eager reference and torch.compile of it", "",
             f"- device: {result['device']}; measured copy bandwidth {result['copy_bandwidth'] / 1e9:.1f} GB/s",
             f"- date: {result['date']}", f"- command: `{result['command']}`",
             f"- torch {result['torch']}; one step = plan (draws included) + mix of x [B, {result['mix_dim']}] + "
             "mixed loss forward and backward (second reweighting); minimal bytes = 4 B K s + 2 B D s", "",
             "| variant | dtype | B | K | ms/step | x eager | x compiled | GB/s | % copy bw | launches |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        launches = "-" if r["device_launches"] is None else r["device_launches"]
        lines.append(f"| {r['variant']} | {r['dtype']} | {r['batch']} | {r['classes']} | {r['seconds'] * 1e3:.3f} | "
                     f"{r['speedup_vs_reference']:.2f} | {r['speedup_vs_compiled']:.2f} | {r['achieved_gb_s']:.1f} | "
                     f"{100 * r['fraction_of_copy_bw']:.1f} | {launches} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
