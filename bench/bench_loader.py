"""Images/s of the training program's image-file loader (``--dataset filelist``/``imagefolder``).

    python bench/bench_loader.py --workers 0 2 --images 500 --image-size 224

Generates ``--images`` 256x256 JPEGs (10 classes) once under ``--data``, then reads them through the
trainer's batch source (decode, RandomResizedCrop + flip in the workers, normalisation on the device)
for 10 batches of 50 after 2 of warm-up, and through the test pipeline (resize + centre crop). The
network is not run: this is the loader's ceiling on this machine. Writes a Markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from torchvision.io import encode_jpeg

from mentormix_fast.train.batches import make_source
from mentormix_fast.train.images import load_filelist
from mentormix_fast.train.trainer import BatchStream

BATCH = 50


def make_images(root: Path, count: int) -> Path:
    """``count`` smooth random 256x256 JPEGs with a list file; returns the list file."""
    listing = root / "train.txt"
    if listing.exists() and len(listing.read_text().splitlines()) == count:
        return listing
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(count):
        small = torch.rand(3, 16, 16, generator=g)
        image = torch.nn.functional.interpolate(small[None], size=(256, 256), mode="bilinear")[0] * 255
        image = (image + 20 * torch.randn(3, 256, 256, generator=g)).clamp(0, 255).to(torch.uint8)
        rel = f"img/{i % 10}/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
        lines.append(f"{rel} {i % 10}\n")
    listing.write_text("".join(lines))
    return listing


def measure(root: Path, listing: Path, workers: int, image_size: int) -> tuple[float, float]:
    """(training images/s, test images/s)."""
    train, test, _ = load_filelist(root, listing, listing)
    stream = BatchStream(len(train), BATCH, 1, 0, seed=0)
    source = make_source(train, test, stream, "cpu", seed=0, image_size=image_size, workers=workers)
    batches = source.train_batches(0, 12)
    next(batches)
    next(batches)  # worker start-up
    start, n = time.perf_counter(), 0
    for idx, _ in batches:
        n += len(idx)
    train_rate = n / (time.perf_counter() - start)
    start, n = time.perf_counter(), 0
    for _, y in source.test_data(BATCH):
        n += len(y)
    return train_rate, n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--data", default="/tmp/mentormix-bench-loader")
    p.add_argument("--out", default=None, help="Markdown table (default: bench/results/loader_<time>.md)")
    args = p.parse_args()
    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    listing = make_images(root, args.images)
    rows = []
    for workers in args.workers:
        train_rate, test_rate = measure(root, listing, workers, args.image_size)
        rows.append(f"| {workers} | {train_rate:.0f} | {test_rate:.0f} |")
        print(rows[-1], flush=True)
    stamp = datetime.datetime.now(datetime.UTC)
    out = Path(args.out or Path(__file__).parent / "results" / f"loader_{stamp:%Y%m%dT%H%M%SZ}.md")
    out.write_text("\n".join([
        "# Image-file loader: images/s (decode + augment, no network)", "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
        f"- date: {stamp.isoformat(timespec='seconds')}",
        f"- command: `python bench/bench_loader.py --workers {' '.join(map(str, args.workers))} --images "
        f"{args.images} --image-size {args.image_size}`",
        f"- {args.images} generated 256x256 JPEGs, batch {BATCH}; test: resize + centre crop, incl. worker start", "",
        "| workers | train images/s | test images/s |", "|---|---|---|", *rows, ""]))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
