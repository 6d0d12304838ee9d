"""Images/s of a whole training step: MentorMix against plain cross-entropy on the same network.

    python bench/bench_train_step.py                      # wide ResNet-32, B = 128, bf16, channels_last
    python bench/bench_train_step.py --model resnet8 --batch 16 --steps 3 --warmup 1   # a quick CPU check

One MentorMix step is the release's: a forward without gradient (BatchNorm statistics frozen),
plan, input mix, forward and backward on the mixed batch, SGD. The plain step is one forward and
backward with ``F.cross_entropy`` and SGD. MentorMix needs one more forward than CE, so about
4/3 ~ 1.33 is the floor of the time ratio. CIFAR-sized random inputs (3 x 32 x 32) and labels.
Prints one JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

import mentormix_fast as mf
from mentormix_fast.train.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step: ``steps`` back-to-back steps between two synchronisations, after warm-up."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="wide-resnet32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(args.model, 10, 3).to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    mentormix = mf.MentorMix(total_steps=10**6, burn_in_epoch=0, backend=args.backend, validate=False,
                             generator=torch.Generator(device=device).manual_seed(0)).to(device)

    def ce_step():
        with torch.autocast(**amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def mentormix_step():
        with torch.autocast(**amp):
            loss = mentormix(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ce = measure(ce_step, args.steps, args.warmup, device)
    mm = measure(mentormix_step, args.steps, args.warmup, device)
    backend = mf.dispatch.choose(args.backend, device, torch.bfloat16 if args.amp == "bf16" else torch.float32)
    result = dict(model=args.model, batch=args.batch, amp=args.amp, channels_last=args.channels_last,
                  device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", backend=backend.name,
                  ce_images_per_s=args.batch / ce, mentormix_images_per_s=args.batch / mm, ratio=mm / ce,
                  steps=args.steps, command="python bench/bench_train_step.py " + " ".join(sys.argv[1:]
                                                                                            if argv is None else argv))
    print(json.dumps(result, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
