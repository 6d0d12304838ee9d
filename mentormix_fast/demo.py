"""Offline demo: plain CE vs mixup vs MentorMix on noisy handwritten digits.

    python -m mentormix_fast.demo [--noise 0.4] [--seed 0] [--steps 1500] [--seeds N]

Trains the same small network three times on scikit-learn's digits (shipped with the package, no
download) with symmetric label noise (SPEC §3), and prints the clean test accuracy of each
method (evaluated with an exponential moving average of the weights, as the release does).
MentorMix uses the release's CIFAR-10 settings for the noise level (SPEC §3).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from .module import MentorMix
from .train.data import load_digits
from .train.noise import corrupt_labels, corruption_rate

# (mixup_alpha, percentile, second_reweight) per noise level: the release's CIFAR-10 table.
RELEASE_SETTINGS = {0.2: (2.0, 0.8, False), 0.4: (8.0, 0.6, False), 0.6: (8.0, 0.6, True), 0.8: (4.0, 0.2, True)}
METHODS = ("CE", "mixup", "MentorMix")


def release_setting(noise: float) -> tuple[float, float, bool]:
    """The release's (alpha, p, second_reweight) for the nearest tabulated noise level."""
    return RELEASE_SETTINGS[min(RELEASE_SETTINGS, key=lambda r: abs(r - noise))]


def make_model(num_classes: int = 10) -> nn.Module:
    """A small pre-activation MLP with BatchNorm (so the frozen-statistics first pass matters)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.1),
        nn.Linear(256, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.1),
        nn.Linear(256, num_classes),
    )


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(images).argmax(1) == labels).float().mean())


def train_one(method: str, train_x, train_y, steps: int, seed: int, noise: float, batch_size: int = 128,
              lr: float = 0.1) -> nn.Module:
    """Train one model with ``method``; returns its weight-EMA copy (the one evaluated)."""
    torch.manual_seed(seed)
    model = make_model()
    ema = copy.deepcopy(model)
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
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                if pe.dtype.is_floating_point:
                    pe.mul_(decay).add_(pm, alpha=1 - decay)
                else:
                    pe.copy_(pm)
    return ema


def run(noise: float, seeds, steps: int) -> dict[str, list[float]]:
    """Clean test accuracy per method, one entry per seed."""
    train, test, num_classes = load_digits()
    results = {m: [] for m in METHODS}
    for seed in seeds:
        noisy = torch.from_numpy(corrupt_labels(train.labels.numpy(), noise, num_classes, seed=seed))
        for method in METHODS:
            model = train_one(method, train.images, noisy, steps, seed, noise)
            results[method].append(accuracy(model, test.images, test.labels))
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="CE vs mixup vs MentorMix on noisy digits (offline).")
    ap.add_argument("--noise", type=float, default=0.4, help="symmetric label-noise rate in [0, 1]")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (seed, seed+1, ...)")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per method")
    args = ap.parse_args(argv)
    if not 0.0 <= args.noise <= 1.0:
        ap.error(f"--noise must be in [0, 1], got {args.noise}")
    t0 = time.time()
    train, test, k = load_digits()
    seeds = list(range(args.seed, args.seed + args.seeds))
    rates = [corruption_rate(train.labels.numpy(), corrupt_labels(train.labels.numpy(), args.noise, k, s))
             for s in seeds]
    alpha, p, second = release_setting(args.noise)
    print(f"digits: {len(train.labels)} train / {len(test.labels)} test images, noise {args.noise} (actual corruption "
          f"{sum(rates) / len(rates):.3f}), {args.steps} steps, seeds {seeds}")
    print(f"MentorMix: alpha={alpha}, percentile={p}, second_reweight={second}, burn_in_epoch=10, MentorNet-PD")
    results = run(args.noise, seeds, args.steps)
    print(f"\n| method    | clean test accuracy, mean of {len(seeds)} | per seed |")
    print("|-----------|-------------------------------|----------|")
    for method, accs in results.items():
        per_seed = " ".join(f"{a:.3f}" for a in accs)
        print(f"| {method:<9} | {sum(accs) / len(accs):<29.4f} | {per_seed} |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
