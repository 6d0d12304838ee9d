"""The trainer's command line: ``python -m mentormix_fast.train`` (``mentormix-train``).

Every numeric flag's range is checked by the parser (exit code 2 and a message naming the flag);
``--help`` shows each flag's default and accepted range, and the presets' table.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import torch

from . import argtypes, backbones, world
from .batches import default_workers
from .data import DATASETS
from .errors import DataError
from .models import ARCHITECTURES
from .noise import NOISE_KINDS
from .presets import PRESETS, RELEASE_PRESETS, REPORTED_TOP1
from .trainer import Trainer

DESCRIPTION = """\
Train a student with MentorMix on noisy labels: the release's CIFAR program (SPEC §3).

  python -m mentormix_fast.train --out-dir runs/digits --max-steps 2000          # offline, any CPU
  python -m mentormix_fast.train --preset cifar10-0.4 --data-dir ~/data --out-dir runs/c10-04
  torchrun --nproc_per_node 8 -m mentormix_fast.train --preset cifar100-0.8 ... [--global-percentile]
  python -m mentormix_fast.train --out-dir runs/c10-04 --resume                   # continue exactly"""

# The presets' table: (header, flag key or None, how a value is shown).
_PRESET_COLUMNS = (
    ("dataset", "dataset", str),
    ("noise", None, None),
    ("alpha", "mixup_alpha", lambda v: f"{v:g}"),
    ("percentile", "percentile", lambda v: f"{v:g}"),
    ("2nd reweight", "second_reweight", lambda v: "yes" if v else "no"),
)


# --model auto: the student each dataset gets.
AUTO_MODEL = {"digits": "resnet32", "cifar10": "wide-resnet32", "cifar100": "wide-resnet32",
              "filelist": "resnet50", "imagefolder": "resnet50"}


def model_name(text: str) -> str:
    """``--model``: auto, a release ResNet, a torchvision classification model or ``timm:<name>``."""
    if text == "auto" or text in ARCHITECTURES:
        return text
    try:
        return backbones.check_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


model_name.accepts = f"auto, {', '.join(ARCHITECTURES)}, a torchvision classification model or timm:<name>"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def presets_table() -> str:
    """The epilog: one row per preset, the flags every release preset sets to the same value, and what each
    other preset sets besides."""
    shown = {"dataset", "noise_rate", "noise_kind", "mixup_alpha", "percentile", "second_reweight"}
    release = [PRESETS[name] for name in RELEASE_PRESETS]
    keys = sorted({k for values in release for k in values} - shown)
    first = release[0]
    common = [k for k in keys if all(values.get(k) == first.get(k) for values in release)]
    varying = [k for k in keys if k not in common]
    header = ["name", *(h for h, _, _ in _PRESET_COLUMNS), *(_flag(k) for k in varying), "reported top-1"]
    rows = [header]
    for name, values in PRESETS.items():
        row = [name]
        for _, key, fmt in _PRESET_COLUMNS:
            row.append(f"{values['noise_rate']:g} {values['noise_kind']}" if key is None else fmt(values[key]))
        row += [str(values.get(k)) for k in varying]
        row.append(f"{REPORTED_TOP1[name]:.3f}" if name in REPORTED_TOP1 else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]

    def flags(values: dict, keys) -> str:
        return " ".join(f"{_flag(k)} {values[k]:g}" if isinstance(values[k], float) else f"{_flag(k)} {values[k]}"
                        for k in keys)

    also = flags(first, common)
    others = [textwrap.fill(f"{name} sets instead: "
                            + flags(values, [k for k in values if k not in shown and values[k] != first.get(k)]),
                            width=100, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False)
              for name, values in PRESETS.items() if name not in RELEASE_PRESETS]
    return "\n".join([
        "presets (--preset NAME makes these the defaults; flags given explicitly still win):",
        "",
        *lines,
        "",
        *textwrap.wrap(f"alpha: --mixup-alpha, noise: --noise-rate --noise-kind, 2nd reweight: --second-reweight; "
                       f"reported top-1: the release's accuracy (EMA weights). Every cifar preset also sets: {also}",
                       width=100, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False),
        *others,
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mentormix-train", description=DESCRIPTION, epilog=presets_table(),
                                formatter_class=argtypes.HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, metavar="NAME",
                   help="one of the release's eight (dataset, noise) settings, or webvision-mini: the table below "
                        "(default: none)")

    g = p.add_argument_group("data and noise")
    g.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits: scikit-learn's, offline; cifar10/cifar100: the 'python version' folders in "
                        "--data-dir; filelist: --train-list/--test-list of 'path label' lines; imagefolder: "
                        "--data-dir/train/<class>/... and --data-dir/val/<class>/...")
    g.add_argument("--data-dir", default="data",
                   help="CIFAR folders, or the root of the image paths, live here; noisy labels go to noisy_labels/")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-dir")
    g.add_argument("--train-list", default=None, metavar="FILE",
                   help="filelist: the training images, lines 'relative/path label' (paths under --data-dir) "
                        "(default: none)")
    g.add_argument("--test-list", default=None, metavar="FILE",
                   help="filelist: the test images, in the same format (default: none)")
    g.add_argument("--num-classes", type=argtypes.positive_int, default=None,
                   help="filelist: the number of classes (default: the largest label of both lists + 1)")
    g.add_argument("--image-size", type=argtypes.positive_int, default=224,
                   help="filelist/imagefolder: side of the square crops the student sees")
    g.add_argument("--workers", type=argtypes.nonnegative_int, default=default_workers(),
                   help="filelist/imagefolder: DataLoader processes decoding images; 0: in the training process")
    g.add_argument("--noisy-labels", default=None, metavar="FILE",
                   help="train on these labels instead of the dataset's: a 'path label' list, a 'path,label' CSV "
                        "or a CIFAR-N .pt file (see docs/TRAINING.md) (default: none)")
    g.add_argument("--noisy-labels-key", default=None,
                   help="the array of a CIFAR-N .pt file (default: worse_label for cifar10, noisy_label for "
                        "cifar100)")
    g.add_argument("--noise-rate", type=argtypes.unit_interval, default=None,
                   help="probability that a training label is hit by synthetic noise (default: 0.4, or 0 with "
                        "--noisy-labels)")
    g.add_argument("--noise-kind", choices=NOISE_KINDS, default="symmetric",
                   help="symmetric: a uniform class (may be the true one); symmetric_exclusive: a uniform other "
                        "class; pairflip: y -> y + 1 mod K; asymmetric: CIFAR's class maps")
    g.add_argument("--noise-seed", type=argtypes.nonnegative_int, default=0,
                   help="seed of the label noise (the noisy labels are stored per seed)")

    g = p.add_argument_group("student and optimisation")
    g.add_argument("--model", type=model_name, default="auto",
                   help="auto: wide-resnet32 for CIFAR, resnet32 for digits, resnet50 for filelist/imagefolder; "
                        "torchvision models by name (resnet18, resnet50, inception_v3, ...), timm's as timm:<name>")
    g.add_argument("--pretrained", default=None, metavar="FILE|torchvision|timm",
                   help="initial weights of all but the classifier head: a state_dict file, or the library's default "
                        "weights from its local cache (fetched with --download); not re-read on --resume "
                        "(default: none, random init)")
    g.add_argument("--backbone-lr-mult", type=argtypes.nonnegative_float, default=1.0,
                   help="learning rate of every parameter but the classifier head, as a multiple of --lr; "
                        "0 freezes them")
    g.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm layers stay in eval mode while training: running statistics used and never "
                        "updated; their scale and shift still train")
    g.add_argument("--batch-size", type=argtypes.positive_int, default=128, help="examples per step, per rank")
    g.add_argument("--max-steps", type=argtypes.positive_int, default=200_000,
                   help="optimizer steps of the whole run (MentorMix's epoch feature runs over them)")
    g.add_argument("--lr", type=argtypes.positive_float, default=0.1, help="learning rate at step 0")
    g.add_argument("--lr-decay-factor", type=argtypes.finite_float(0.0, 1.0, lo_inclusive=False), default=0.9,
                   help="the learning rate is multiplied by this every --num-epochs-per-decay epochs")
    g.add_argument("--num-epochs-per-decay", type=argtypes.positive_float, default=30.0,
                   help="epochs between learning-rate decays (staircase)")
    g.add_argument("--momentum", type=argtypes.finite_float(0.0, 1.0, hi_inclusive=False), default=0.9,
                   help="SGD momentum")
    g.add_argument("--weight-decay", type=argtypes.nonnegative_float, default=2e-4, help="on conv/FC kernels")
    g.add_argument("--decay-with-second-reweight", action="store_true",
                   help="keep weight decay when --second-reweight (the release has none then)")
    g.add_argument("--ema-decay", type=argtypes.finite_float(0.0, 1.0, hi_inclusive=False), default=0.9999,
                   help="largest decay of the weight EMA: d_t = min(this, (1 + t) / (10 + t))")
    g.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16 autocast of both training passes (a speed option; the release trains in fp32; "
                        "evaluation is always fp32)")
    g.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                   help="TF32 tensor cores for fp32 matmuls and convolutions on GPUs that have them (a speed "
                        "option; off: fp32 as the release)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convs on GPU)")

    g = p.add_argument_group("MentorMix")
    g.add_argument("--mixup-alpha", type=argtypes.nonnegative_float, default=8.0,
                   help="Beta(alpha, alpha) of the mixing factor; 0 turns mixing off")
    g.add_argument("--percentile", type=argtypes.unit_interval, default=0.7,
                   help="p of the loss percentile that the moving averages track")
    g.add_argument("--second-reweight", action=argparse.BooleanOptionalAction, default=True,
                   help="weight the mixed losses a second time (the release does for noise >= 0.6)")
    g.add_argument("--burn-in-epoch", type=argtypes.nonnegative_int, default=10,
                   help="every weight is 1 while the epoch feature is below this minus 1")
    g.add_argument("--weighting", choices=["mentornet_pd", "threshold"], default="mentornet_pd",
                   help="mentornet_pd: the package's MentorNet-PD; threshold: v = 1 when the loss is below "
                        "its moving average")
    g.add_argument("--loss-ma-decay", type=argtypes.unit_interval, default=0.5,
                   help="d of the moving average ma = d * ma + (1 - d) * percentile")
    g.add_argument("--backend", default="auto", choices=["auto", "cuda", "triton", "cpu", "reference"],
                   help="MentorMix backend (mentormix_fast.backends() says which this machine has)")
    g.add_argument("--global-percentile", action="store_true",
                   help="under torchrun: the loss percentiles over the all-gathered global batch (B losses per "
                        "rank, one collective), on any backend")

    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default="runs/mentormix", help="checkpoints, logs and summary.json go here")
    g.add_argument("--seed", type=argtypes.nonnegative_int, default=0,
                   help="seed of the initial weights, the data order, the augmentation and MentorMix's draws")
    g.add_argument("--device", type=argtypes.device, default="auto",
                   help="auto: CUDA when available, else the CPU; cuda under torchrun: each rank's local GPU")
    g.add_argument("--threads", type=argtypes.nonnegative_int, default=0,
                   help="torch's intra-op CPU threads; 0: automatic (1 for a model under 5M parameters on the "
                        "CPU, else torch's default)")
    g.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in --out-dir (or from the given file) "
                        "(default: start from step 0)")
    g.add_argument("--checkpoint-every", type=argtypes.nonnegative_int, default=5000,
                   help="steps between checkpoints; 0: only at the end (or at --stop-at-step)")
    g.add_argument("--keep-checkpoints", type=argtypes.nonnegative_int, default=3,
                   help="how many of the newest checkpoints to keep; 0 keeps all")
    g.add_argument("--log-every", type=argtypes.positive_int, default=100,
                   help="steps between rows of train_log.csv and weights.csv")
    g.add_argument("--eval-every", type=argtypes.nonnegative_int, default=5000,
                   help="steps between test evaluations; 0: only at the end")
    g.add_argument("--eval-batch-size", type=argtypes.positive_int, default=500, help="images per test forward")
    g.add_argument("--stop-at-step", type=argtypes.nonnegative_int, default=None,
                   help="checkpoint and exit once this many steps are done (simulates an interruption) "
                        "(default: run to --max-steps)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard logs in <out-dir>/tb (needs the tensorboard package)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")
    return p


def _check_local_gpu(parser: argparse.ArgumentParser, device: str) -> None:
    """Under torchrun, ``cuda`` (or ``auto`` on a GPU machine) gives rank r the GPU cuda:LOCAL_RANK."""
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return
    local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= count:
        parser.error(f"argument --device: {device} gives local rank {local_rank} the GPU cuda:{local_rank}, but this "
                     f"machine has {count} CUDA device(s); start at most {count} processes per node")


def _check_pretrained(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--pretrained``: the library named must be the model's; a file must exist (unless resuming)."""
    source = args.pretrained
    if source is None:
        return
    if source == "timm" and not backbones.is_timm(args.model):
        parser.error(f"argument --pretrained: timm's weights need a --model timm:<name>, got {args.model}")
    if source == "torchvision" and (backbones.is_timm(args.model) or args.model in ARCHITECTURES):
        parser.error(f"argument --pretrained: torchvision's weights need a torchvision --model, got {args.model}")
    if source not in backbones.LIBRARY_WEIGHTS and args.resume is None and not os.path.isfile(source):
        parser.error(f"argument --pretrained: no such file {source!r} (give a state_dict file, torchvision or timm)")


def _check_data(parser: argparse.ArgumentParser, args: argparse.Namespace, explicit_rate: bool) -> None:
    """The data flags that only make sense together; resolves ``--noise-rate``'s default (0 with
    ``--noisy-labels``, whose labels are already noisy, unless given explicitly; else 0.4 or the preset's)."""
    if args.noisy_labels is not None and not explicit_rate:
        args.noise_rate = 0.0
    elif args.noise_rate is None:
        args.noise_rate = 0.4
    if args.dataset == "filelist" and (args.train_list is None or args.test_list is None):
        parser.error("argument --dataset: filelist needs --train-list FILE and --test-list FILE")
    if args.dataset != "filelist":
        for flag in ("train_list", "test_list", "num_classes"):
            if getattr(args, flag) is not None:
                parser.error(f"argument --{flag.replace('_', '-')}: only for --dataset filelist")
    if args.noisy_labels_key is not None and args.noisy_labels is None:
        parser.error("argument --noisy-labels-key: needs --noisy-labels (a CIFAR-N .pt file)")
    if args.noise_kind == "asymmetric" and args.dataset not in ("cifar10", "cifar100"):
        parser.error(f"argument --noise-kind: asymmetric is defined for cifar10 and cifar100 only (their class "
                     f"maps), not --dataset {args.dataset}")


def parse_args(argv=None) -> argparse.Namespace:
    """Parse twice: once to find ``--preset``, then with the preset's values as defaults."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.preset:
        parser.set_defaults(**PRESETS[first.preset])
    args = parser.parse_args(argv)
    _check_local_gpu(parser, args.device)
    _check_data(parser, args, explicit_rate=first.noise_rate is not None)
    if args.model == "auto":
        args.model = AUTO_MODEL.get(args.dataset, "wide-resnet32")
    _check_pretrained(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()  # the Trainer may set its own; an in-process caller gets this back
    info = world.setup(args.device)
    try:
        Trainer(args, info).run()
    except DataError as err:
        # A DataLoader worker's error arrives with the worker's traceback in its message: keep the cause.
        message = str(err).strip().splitlines()[-1]
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        message = message[len(prefix):] if message.startswith(prefix) else message
        print(f"mentormix-train: error: {message}", file=sys.stderr)
        return 2
    finally:
        world.teardown()
        torch.set_num_threads(threads)
    if info.enabled:
        # A torchrun worker can still abort in C++ static destructors at interpreter exit ("terminate
        # called without an active exception", seen ~1 in 10 runs with gloo on CPU, after a clean
        # destroy_process_group). Everything is written and flushed by now, so leave without them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
