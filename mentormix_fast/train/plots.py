"""Plots of a training run (matplotlib, PNG), from the CSV logs that ``mentormix_fast.train`` writes.

    python -m mentormix_fast.train.plots RUN_DIR [--out DIR] [--from-step S]

* ``accuracy.png``: test top-1 of the EMA weights (test_log.csv) and the training loss
  (train_log.csv) against the step;
* ``weights_hist.png``: histogram of the MentorNet weights v of the examples whose label is clean vs
  corrupted (weights.csv), over the logged steps ``>= --from-step`` (default: the second half of the run,
  after the burn-in, where the curriculum separates the two).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import argtypes
from .logs import read_csv


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(run_dir, out_path) -> Path:
    """Test top-1 (left axis) and training loss (right axis) against the step."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    test = read_csv(run_dir / "test_log.csv") if (run_dir / "test_log.csv").exists() else []
    if test:
        ax.plot([int(r["step"]) for r in test], [float(r["top1"]) for r in test], "o-", color="C0",
                label="test top-1 (EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("test top-1", color="C0")
    train = read_csv(run_dir / "train_log.csv") if (run_dir / "train_log.csv").exists() else []
    if train:
        ax2 = ax.twinx()
        ax2.plot([int(r["step"]) for r in train], [float(r["loss"]) for r in train], color="C1", alpha=0.6,
                 label="train loss")
        ax2.set_ylabel("MentorMix loss", color="C1")
    ax.set_title(run_dir.name)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


def plot_weight_histogram(run_dir, out_path, from_step: int | None = None) -> Path:
    """Normalised histograms of v for clean and noisy examples."""
    plt = _pyplot()
    rows = read_csv(Path(run_dir) / "weights.csv")
    steps = np.array([int(r["step"]) for r in rows], dtype=np.int64)
    v = np.array([float(r["weight"]) for r in rows], dtype=np.float64)
    noisy = np.array([r["noisy"] == "1" for r in rows], dtype=bool)
    if from_step is None:
        from_step = int(steps.max()) // 2 if steps.size else 0
    keep = steps >= from_step
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(0.0, 1.0, 21)
    for mask, name, color in ((keep & ~noisy, "clean", "C2"), (keep & noisy, "noisy", "C3")):
        if mask.any():
            ax.hist(v[mask], bins=bins, density=True, alpha=0.55, color=color,
                    label=f"{name} labels (n={int(mask.sum())}, mean v={v[mask].mean():.2f})")
    ax.set_xlabel("MentorNet weight v")
    ax.set_ylabel("density")
    ax.set_title(f"example weights, steps >= {from_step}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mentormix-plots", description=__doc__.split("\n\n")[0],
                                formatter_class=argtypes.HelpFormatter)
    p.add_argument("run_dir", help="a training run's --out-dir (its train_log.csv, test_log.csv, weights.csv)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the run folder)")
    p.add_argument("--from-step", type=argtypes.nonnegative_int, default=None,
                   help="histogram of the logged steps >= this one (default: the second half of the run)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in (plot_accuracy(args.run_dir, out / "accuracy.png"),
                 plot_weight_histogram(args.run_dir, out / "weights_hist.png", args.from_step)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
