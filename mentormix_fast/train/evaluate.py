"""Evaluation: top-1 and top-5 on the clean test split (BatchNorm in eval mode, no augmentation), and the
command line that measures them for a training checkpoint, EMA and raw weights (SPEC §3).

    python -m mentormix_fast.train.evaluate RUN_DIR_OR_CHECKPOINT [--data-dir DIR] [--raw] [--output FILE]

A folder means its latest ``ckpt-*.pt``. The model, dataset and data folder come from the
checkpoint's training arguments (``--data-dir`` overrides the folder). Writes JSON (default:
``eval-<step>.json`` beside the checkpoint) and prints it: ``top1_ema``, ``top5_ema``, ``top1_raw``,
``top5_raw``, and ``top1``/``top5`` of the EMA weights (``--raw``: of the raw weights).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

from . import argtypes, batches
from . import checkpoint as ckpt
from .augment import to_signed_unit
from .data import Split, dataset_options, load_dataset
from .errors import DataError
from .models import build_model

TOPK = (1, 5)


def _batches(data, batch_size: int):
    """(x, y) batches of a :class:`Split` (``batch_size`` rows at a time) or of any iterable of (x, y)."""
    if isinstance(data, Split) or (hasattr(data, "images") and hasattr(data, "labels")):
        for start in range(0, len(data.labels), batch_size):
            yield data.images[start:start + batch_size], data.labels[start:start + batch_size]
    else:
        yield from data


@torch.no_grad()
def accuracies(models: dict[str, nn.Module], data, device, batch_size: int = 500, amp_dtype=None,
               topk: tuple[int, ...] = TOPK) -> dict[str, dict[str, float]]:
    """Top-k accuracies ``{name: {"top1": ..., "top5": ...}}`` of each model (in eval mode) on clean labels,
    in one pass over ``data`` (an image-file test set is decoded once for all of them).

    ``data``: a :class:`Split` (images [N, C, H, W], labels [N]) or any re-iterable of (x [B, C, H, W],
    y [B] int64) batches, e.g. a DataLoader. uint8 images are mapped to [-1, 1], float ones used as they
    are. An example counts for top-k when its label is among the k largest logits; with fewer than k
    classes that is every example (top-k = top-min(k, K), which is 1.0)."""
    modes = {name: m.training for name, m in models.items()}
    device = torch.device(device)
    correct = {name: dict.fromkeys(topk, 0) for name in models}
    total = 0
    try:
        for m in models.values():
            m.eval()
        for x, y in _batches(data, batch_size):
            x = to_signed_unit(x.to(device))
            y = y.to(device).view(-1, 1)
            for name, m in models.items():
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = m(x)
                ranked = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
                hits = ranked == y  # [B, k]: at most one True per row
                for k in topk:
                    correct[name][k] += int(hits[:, :k].any(dim=1).sum())
            total += len(y)
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {name: {f"top{k}": c[k] / max(total, 1) for k in topk} for name, c in correct.items()}


def accuracy(model: nn.Module, data, device, batch_size: int = 500, amp_dtype=None,
             topk: tuple[int, ...] = TOPK) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` of one model: :func:`accuracies`."""
    return accuracies({"model": model}, data, device, batch_size, amp_dtype, topk)["model"]


def top1_accuracy(model: nn.Module, data, device, batch_size: int = 500, amp_dtype=None) -> float:
    """The top-1 of :func:`accuracy`."""
    return accuracy(model, data, device, batch_size, amp_dtype, topk=(1,))["top1"]


def resolve_checkpoint(path) -> Path:
    """``path`` itself when it is a file, else the latest checkpoint in the folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint file or run folder")
    found = ckpt.latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no ckpt-*.pt checkpoint in this folder")
    return found


def evaluate_checkpoint(path, data_dir=None, use_ema: bool = True, device: str = "auto",
                        batch_size: int = 500) -> dict:
    """Load a checkpoint (verified, plain data only: :func:`checkpoint.load`), rebuild its model and measure
    top-1 and top-5 of the EMA and of the raw weights (``top1_ema``, ``top5_ema``, ``top1_raw``,
    ``top5_raw``); ``top1``/``top5`` repeat those of the weights chosen by ``use_ema``. A damaged or unsafe
    file raises :class:`checkpoint.CheckpointError`."""
    path = resolve_checkpoint(path)
    state = ckpt.load(path)
    args = state["args"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    _, test, num_classes = load_dataset(args["dataset"], data_dir or args["data_dir"], download=False,
                                        **dataset_options(args))
    model = build_model(args["model"], num_classes, test.in_channels)
    model.load_state_dict(state["model"])
    model.to(device)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ema.named_parameters():
            p.copy_(state["ema"]["shadow"][name])
    data = batches.test_data(test, batch_size, device, image_size=args.get("image_size", 224),
                             workers=args.get("workers", 0))
    found = accuracies({"ema": ema, "raw": model}, data, device, batch_size)
    scores = {f"{k}_{weights}": v for weights, result in found.items() for k, v in result.items()}
    chosen = "ema" if use_ema else "raw"
    return {"checkpoint": str(path), "step": int(state["step"]), "dataset": args["dataset"],
            "noise_rate": args["noise_rate"], "noise_kind": args["noise_kind"], "model": args["model"],
            "weights": chosen, "test_examples": len(test.labels),
            "top1": scores[f"top1_{chosen}"], "top5": scores[f"top5_{chosen}"], **scores}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mentormix-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argtypes.HelpFormatter)
    p.add_argument("path", help="a checkpoint file, or a run folder (its latest checkpoint)")
    p.add_argument("--data-dir", default=None, help="override the data folder stored in the checkpoint")
    p.add_argument("--raw", action="store_true", help="report the raw weights as top1/top5 instead of the EMA (both are always in the JSON)")
    p.add_argument("--device", type=argtypes.device, default="auto", help="where to run the model")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=500, help="images per forward pass")
    p.add_argument("--output", default=None, help="JSON file to write (default: eval-<step>.json beside it)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_checkpoint(args.path, args.data_dir, not args.raw, args.device, args.batch_size)
    except ckpt.CheckpointError as err:
        print(f"mentormix-eval: {err}", file=sys.stderr)
        return 1
    except (DataError, FileNotFoundError) as err:
        print(f"mentormix-eval: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else Path(result["checkpoint"]).with_name(f"eval-{result['step']}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    result["output"] = str(out)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
