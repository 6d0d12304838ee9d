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
                    step = harness.make_step(name, b, k, dtype, device)
                    times[name] = harness.time_step(step, min_time=args.min_time)
                    launches[name] = harness.device_launches(step)
                except Exception as exc:  # one failing variant must not hide the others
                    print(f"  {name} B={b} K={k} {dtype_name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            nbytes = harness.minimal_bytes(b, k, dtype)
            for name, sec in times.items():
                rows.append(dict(variant=name, batch=b, classes=k, dtype=dtype_name, seconds=sec,
                                 speedup_vs_reference=times.get("reference", float("nan")) / sec,
                                 speedup_vs_compiled=times.get(harness.COMPILED, float("nan")) / sec,
                                 minimal_bytes=nbytes, fraction_of_copy_bw=nbytes / sec / copy_bw,
                                 device_launches=launches.get(name)))

    header = (f"{'variant':<20}{'dtype':<6}{'B':>8}{'K':>8}{'ms/step':>11}{'x ref':>8}{'x comp':>8}{'% copy bw':>11}"
              f"{'launches':>10}")
    print(f"device: {harness.device_name(device)}; copy bandwidth {copy_bw / 1e9:.1f} GB/s")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<20}{r['dtype']:<6}{r['batch']:>8}{r['classes']:>8}{r['seconds'] * 1e3:>11.3f}"
              f"{r['speedup_vs_reference']:>8.2f}{r['speedup_vs_compiled']:>8.2f}"
              f"{100 * r['fraction_of_copy_bw']:>10.1f}%"
              f"{'-' if r['device_launches'] is None else r['device_launches']:>10}")

    now = datetime.datetime.now(datetime.UTC)
    result = dict(device=harness.device_name(device), date=now.isoformat(timespec="seconds"),
                  command="python bench/run_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  torch=torch.__version__, triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
                  copy_bandwidth=copy_bw, mix_dim=harness.MIX_DIM, rows=rows)
    out = pathlib.Path(args.out) if args.out else (pathlib.Path(__file__).resolve().parent / "results" /
                                                   f"{device}-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    main()
