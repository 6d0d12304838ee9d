"""Offline demo: plain CE vs mixup vs MentorMix on noisy handwritten digits.

    python -m mentormix_fast.demo [--noise 0.4] [--seed 0] [--steps 1500] [--seeds N] [--threads 1]

Trains the same small network three times on scikit-learn's digits (shipped with the package, no
download) with symmetric label noise (SPEC §3), and prints the clean test accuracy of each
method (evaluated with an exponential moving average of the weights, as the release does).
MentorMix uses the release's CIFAR-10 settings for the noise level (SPEC §3). The data, noise, EMA,
accuracy and settings are the training program's (:mod:`mentormix_fast.train`).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch import nn

from .module import MentorMix
from .train import argtypes
from .train.data import load_digits
from .train.ema import WeightEMA
from .train.evaluate import top1_accuracy
from .train.noise import corrupt_labels, corruption_rate
from .train.presets import release_setting

METHODS = ("CE", "mixup", "MentorMix")
EMA_DECAY = 0.999  # the largest EMA decay: a short run needs a shorter average than the release's 0.9999


def make_model(num_classes: int = 10) -> nn.Module:
    """A small pre-activation MLP with BatchNorm (so the frozen-statistics first pass matters)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.1),
        nn.Linear(256, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.1),
        nn.Linear(256, num_classes),
    )


def train_one(method: str, train_x, train_y, steps: int, seed: int, noise: float, batch_size: int = 128,
              lr: float = 0.1) -> nn.Module:
    """Train one model with ``method``; returns its weight-EMA copy (the one evaluated)."""
    torch.manual_seed(seed)
    model = make_model()
    ema = WeightEMA(model, EMA_DECAY)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    alpha, p, second = release_setting(noise)
    mentormix = MentorMix(total_steps=steps, percentile=p, mixup_alpha=alpha, second_reweight=second,
                          burn_in_epoch=10, generator=gen)
    n = len(train_y)
    for step in range(steps):
        model.train()
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x, y = train_x[idx], train_y[idx]
        if method == "CE":
            loss = nn.functional.cross_entropy(model(x), y)
        elif method == "mixup":  # Zhang et al.: a random permutation partner, one lam per batch
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(batch_size, generator=gen)
            out = model(lam * x + (1 - lam) * x[perm])
            loss = lam * nn.functional.cross_entropy(out, y) + (1 - lam) * nn.functional.cross_entropy(out, y[perm])
        else:
            loss = mentormix(model, x, y, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model, step)
    return ema.averaged_model(model)


@contextlib.contextmanager
def intra_op_threads(threads: int):
    """torch's intra-op threads set to ``threads`` (0: left as they are) inside the block, restored after."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(noise: float, seeds, steps: int, threads: int = 1) -> dict[str, list[float]]:
    """Clean test accuracy per method, one entry per seed; the training runs on ``threads`` intra-op
    threads (the network is tiny: one is fastest; 0: torch's setting as it is)."""
    train, test, num_classes = load_digits()
    results = {m: [] for m in METHODS}
    with intra_op_threads(threads):
        for seed in seeds:
            noisy = torch.from_numpy(corrupt_labels(train.labels.numpy(), noise, num_classes, seed=seed))
            for method in METHODS:
                model = train_one(method, train.images, noisy, steps, seed, noise)
                results[method].append(top1_accuracy(model, test, "cpu"))
    return results


def report(args) -> None:
    """Train every method on every seed and print the table (``args``: the parsed flags)."""
    t0 = time.time()
    train, test, k = load_digits()
    seeds = list(range(args.seed, args.seed + args.seeds))
    rates = [corruption_rate(train.labels.numpy(), corrupt_labels(train.labels.numpy(), args.noise, k, s))
             for s in seeds]
    alpha, p, second = release_setting(args.noise)
    print(f"digits: {len(train.labels)} train / {len(test.labels)} test images, noise {args.noise} (actual corruption "
          f"{sum(rates) / len(rates):.3f}), {args.steps} steps, seeds {seeds}")
    print(f"MentorMix: alpha={alpha}, percentile={p}, second_reweight={second}, burn_in_epoch=10, MentorNet-PD")
    results = run(args.noise, seeds, args.steps, args.threads)
    print(f"\n| method    | clean test accuracy, mean of {len(seeds)} | per seed |")
    print("|-----------|-------------------------------|----------|")
    for method, accs in results.items():
        per_seed = " ".join(f"{a:.3f}" for a in accs)
        print(f"| {method:<9} | {sum(accs) / len(accs):<29.4f} | {per_seed} |")
    print(f"\n({time.time() - t0:.0f} s)")


def main(argv=None) -> None:
    """Parse the flags, train and print the table."""
    ap = argparse.ArgumentParser(description="CE vs mixup vs MentorMix on noisy digits (offline).",
                                 formatter_class=argtypes.HelpFormatter)
    ap.add_argument("--noise", type=argtypes.unit_interval, default=0.4, help="symmetric label-noise rate")
    ap.add_argument("--seed", type=argtypes.nonnegative_int, default=0, help="first seed")
    ap.add_argument("--seeds", type=argtypes.positive_int, default=3, help="number of seeds (seed, seed+1, ...)")
    ap.add_argument("--steps", type=argtypes.positive_int, default=1500, help="training steps per method")
    ap.add_argument("--threads", type=argtypes.nonnegative_int, default=1,
                    help="torch's intra-op CPU threads (the network is tiny: one is fastest); 0: torch's default")
    report(ap.parse_args(argv))


if __name__ == "__main__":
    main()
