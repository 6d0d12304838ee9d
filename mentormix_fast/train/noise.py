"""Synthetic label noise (SPEC §3), seeded, reproducible and stored next to the data.

* symmetric: each label independently, with probability ``rate``, is replaced by a class drawn
  uniformly from all K classes, so the true class may be drawn again (the expected corruption
  rate is ``rate * (K - 1) / K``); this is the release's noise;
* pair-flip (asymmetric): each label, with probability ``rate``, becomes ``(y + 1) mod K`` (expected
  corruption rate ``rate``).

:func:`load_or_make_noisy_labels` writes the noisy labels once per (dataset, kind, rate, seed) to
``<data_dir>/noisy_labels/<dataset>-<kind>-r<rate>-s<seed>.npz`` and reads them back afterwards, so
every run (and every rank of a distributed run) trains on exactly the same labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

NOISE_KINDS = ("symmetric", "pairflip")


def corrupt_labels(labels, rate: float, num_classes: int, seed: int, kind: str = "symmetric") -> np.ndarray:
    """Noisy copy of ``labels`` (int array [N]); deterministic for a given (seed, rate, kind)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: must be in [0, 1], got {rate}")
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind: expected one of {NOISE_KINDS}, got {kind!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels: must be in [0, {num_classes})")
    rng = np.random.default_rng(seed)
    hit = rng.random(labels.shape) < rate
    if kind == "symmetric":
        replacement = rng.integers(0, num_classes, size=labels.shape)
    else:
        replacement = (labels + 1) % num_classes
    return np.where(hit, replacement, labels)


def corruption_rate(clean, noisy) -> float:
    """The fraction of labels that actually differ from the clean ones."""
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    return float((clean != noisy).mean()) if clean.size else 0.0


def expected_corruption_rate(rate: float, num_classes: int, kind: str = "symmetric") -> float:
    """``rate * (K - 1) / K`` for symmetric noise, ``rate`` for pair-flip."""
    return rate * (num_classes - 1) / num_classes if kind == "symmetric" else rate


def noise_file(data_dir, dataset: str, rate: float, seed: int, kind: str = "symmetric") -> Path:
    """Where the noisy labels of one setting are stored."""
    return Path(data_dir) / "noisy_labels" / f"{dataset}-{kind}-r{rate:g}-s{seed}.npz"


def load_or_make_noisy_labels(data_dir, dataset: str, clean, rate: float, num_classes: int, seed: int,
                              kind: str = "symmetric", write: bool = True) -> tuple[np.ndarray, dict]:
    """(noisy labels [N], report) for one setting: read from :func:`noise_file` when it exists (and
    its clean labels match), otherwise generated with :func:`corrupt_labels` and written atomically
    (``write=False``: generate only, e.g. on the non-zero ranks of a distributed run).

    The report has ``kind``, ``rate`` (requested), ``seed``, ``actual_rate`` (measured),
    ``expected_rate`` and ``file``.
    """
    clean = np.asarray(clean, dtype=np.int64)
    path = noise_file(data_dir, dataset, rate, seed, kind)
    noisy = None
    if path.exists():
        with np.load(path) as stored:
            if np.array_equal(stored["clean"], clean):
                noisy = stored["noisy"].astype(np.int64)
    if noisy is None:
        noisy = corrupt_labels(clean, rate, num_classes, seed, kind)
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, clean=clean, noisy=noisy, rate=rate, seed=seed, kind=kind)
            os.replace(tmp, path)
    report = {"kind": kind, "rate": rate, "seed": seed, "actual_rate": corruption_rate(clean, noisy),
              "expected_rate": expected_corruption_rate(rate, num_classes, kind), "file": str(path)}
    return noisy, report


def main(argv=None) -> int:
    """``python -m mentormix_fast.train.noise --dataset cifar10 --rate 0.4 --data-dir DIR``: write (or read)
    the noisy labels of one setting and print the report as JSON."""
    import argparse
    import json

    from . import argtypes
    from .data import DATASETS, load_dataset

    p = argparse.ArgumentParser(prog="python -m mentormix_fast.train.noise", description=main.__doc__.split(":")[0],
                                formatter_class=argtypes.HelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="whose training labels to corrupt")
    p.add_argument("--data-dir", default="data", help="the data folder; the labels go to its noisy_labels/")
    p.add_argument("--rate", type=argtypes.unit_interval, required=True, help="noise rate r")
    p.add_argument("--kind", choices=NOISE_KINDS, default="symmetric", help="symmetric or pair-flip noise")
    p.add_argument("--seed", type=argtypes.nonnegative_int, default=0, help="seed of the noise draws")
    args = p.parse_args(argv)
    train, _, num_classes = load_dataset(args.dataset, args.data_dir)
    _, report = load_or_make_noisy_labels(args.data_dir, args.dataset, train.labels.numpy(), args.rate,
                                          num_classes, args.seed, args.kind)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
