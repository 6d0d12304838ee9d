"""The trainer's command line: ``python -m mentormix_fast.train`` (``mentormix-train``)."""

from __future__ import annotations

import argparse
import os
import sys

from . import world
from .data import DATASETS
from .models import ARCHITECTURES
from .noise import NOISE_KINDS
from .presets import PRESETS
from .trainer import Trainer

DESCRIPTION = """\
Train a student with MentorMix on noisy labels: the release's CIFAR program (SPEC §3).

  python -m mentormix_fast.train --out-dir runs/digits --max-steps 2000          # offline, any CPU
  python -m mentormix_fast.train --preset cifar10-0.4 --data-dir ~/data --out-dir runs/c10-04
  torchrun --nproc_per_node 8 -m mentormix_fast.train --preset cifar100-0.8 ... [--global-percentile]
  python -m mentormix_fast.train --out-dir runs/c10-04 --resume                   # continue exactly"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mentormix-train", description=DESCRIPTION.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="one of the release's eight (dataset, noise) settings; explicit flags still win")
    g = p.add_argument_group("data and noise")
    g.add_argument("--dataset", choices=DATASETS, default="digits")
    g.add_argument("--data-dir", default="data", help="CIFAR folders live here; noisy labels go to noisy_labels/")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-dir")
    g.add_argument("--noise-rate", type=float, default=0.4)
    g.add_argument("--noise-kind", choices=NOISE_KINDS, default="symmetric")
    g.add_argument("--noise-seed", type=int, default=0)
    g = p.add_argument_group("student and optimisation")
    g.add_argument("--model", choices=["auto", *ARCHITECTURES], default="auto",
                   help="auto: wide-resnet32 for CIFAR, resnet32 for digits")
    g.add_argument("--batch-size", type=int, default=128, help="per rank")
    g.add_argument("--max-steps", type=int, default=200_000)
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--lr-decay-factor", type=float, default=0.9)
    g.add_argument("--num-epochs-per-decay", type=float, default=30.0)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=2e-4, help="on conv/FC kernels")
    g.add_argument("--decay-with-second-reweight", action="store_true",
                   help="keep weight decay when --second-reweight (the release has none then)")
    g.add_argument("--ema-decay", type=float, default=0.9999)
    g.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast both passes")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convs on GPU)")
    g = p.add_argument_group("MentorMix")
    g.add_argument("--mixup-alpha", type=float, default=8.0)
    g.add_argument("--percentile", type=float, default=0.7)
    g.add_argument("--second-reweight", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--burn-in-epoch", type=int, default=10)
    g.add_argument("--weighting", choices=["mentornet_pd", "threshold"], default="mentornet_pd")
    g.add_argument("--loss-ma-decay", type=float, default=0.5)
    g.add_argument("--backend", default="auto")
    g.add_argument("--global-percentile", action="store_true",
                   help="under torchrun: percentile over the all-gathered global batch (reference backend)")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default="runs/mentormix")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in --out-dir (or from the given file)")
    g.add_argument("--checkpoint-every", type=int, default=5000)
    g.add_argument("--keep-checkpoints", type=int, default=3, help="0 keeps all")
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--eval-every", type=int, default=5000, help="0: only at the end")
    g.add_argument("--eval-batch-size", type=int, default=500)
    g.add_argument("--stop-at-step", type=int, default=None,
                   help="checkpoint and exit once this many steps are done (simulates an interruption)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bar")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse twice: once to find ``--preset``, then with the preset's values as defaults."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.preset:
        parser.set_defaults(**PRESETS[first.preset])
    args = parser.parse_args(argv)
    if args.model == "auto":
        args.model = "resnet32" if args.dataset == "digits" else "wide-resnet32"
    if args.global_percentile and args.backend == "auto":
        args.backend = "reference"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    info = world.setup(args.device)
    try:
        Trainer(args, info).run()
    finally:
        world.teardown()
    if info.enabled:
        # A torchrun worker can still abort in C++ static destructors at interpreter exit ("terminate
        # called without an active exception", seen ~1 in 10 runs with gloo on CPU, after a clean
        # destroy_process_group). Everything is written and flushed by now, so leave without them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
