"""Evaluation: top-1 on the clean test split (BatchNorm in eval mode, no augmentation), and the
command line that measures it for a training checkpoint with the EMA weights (SPEC §3).

    python -m mentormix_fast.train.evaluate RUN_DIR_OR_CHECKPOINT [--data-dir DIR] [--raw] [--output FILE]

A folder means its latest ``ckpt-*.pt``. The model, dataset and data folder come from the
checkpoint's training arguments (``--data-dir`` overrides the folder). Writes JSON (default:
``eval-<step>.json`` beside the checkpoint) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from . import argtypes
from . import checkpoint as ckpt
from .augment import to_signed_unit
from .data import Split, load_dataset
from .models import build_model


@torch.no_grad()
def top1_accuracy(model: nn.Module, split: Split, device, batch_size: int = 500, amp_dtype=None) -> float:
    """Fraction of ``split`` whose argmax logit equals the clean label; images are mapped to [-1, 1]
    (uint8) or used as they are (float)."""
    was_training = model.training
    model.eval()
    correct = 0
    device = torch.device(device)
    for start in range(0, len(split.labels), batch_size):
        x = to_signed_unit(split.images[start:start + batch_size].to(device))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        correct += int((logits.argmax(1).cpu() == split.labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(split.labels), 1)


def resolve_checkpoint(path) -> Path:
    """``path`` itself when it is a file, else the latest checkpoint in the folder."""
    path = Path(path)
    if path.is_file():
        return path
    found = ckpt.latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no ckpt-*.pt checkpoint in {path}")
    return found


def evaluate_checkpoint(path, data_dir=None, use_ema: bool = True, device: str = "auto",
                        batch_size: int = 500) -> dict:
    """Load a checkpoint (verified, plain data only: :func:`checkpoint.load`), rebuild its model with the EMA
    (or raw) weights and measure top-1; a damaged or unsafe file raises :class:`checkpoint.CheckpointError`."""
    path = resolve_checkpoint(path)
    state = ckpt.load(path)
    args = state["args"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    _, test, num_classes = load_dataset(args["dataset"], data_dir or args["data_dir"], download=False)
    model = build_model(args["model"], num_classes, test.images.shape[1])
    model.load_state_dict(state["model"])
    if use_ema:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(state["ema"]["shadow"][name])
    model.to(device)
    acc = top1_accuracy(model, test, device, batch_size)
    return {"checkpoint": str(path), "step": int(state["step"]), "dataset": args["dataset"],
            "noise_rate": args["noise_rate"], "noise_kind": args["noise_kind"], "model": args["model"],
            "weights": "ema" if use_ema else "raw", "test_examples": len(test.labels), "top1": acc}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mentormix-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argtypes.HelpFormatter)
    p.add_argument("path", help="a checkpoint file, or a run folder (its latest checkpoint)")
    p.add_argument("--data-dir", default=None, help="override the data folder stored in the checkpoint")
    p.add_argument("--raw", action="store_true", help="evaluate the raw weights instead of the EMA")
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
    out = Path(args.output) if args.output else Path(result["checkpoint"]).with_name(f"eval-{result['step']}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    result["output"] = str(out)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
