"""Helpers shared by the training program's tests: fake CIFAR data and a tiny training run."""

import pytest
import torch

from mentormix_fast.train.cli import main as train_main
from mentormix_fast.train.data import Split

# A student and batch small enough for a few steps in about a second on a CPU; tests add the rest.
TINY = ["--model", "resnet8", "--batch-size", "16", "--no-progress", "--no-tensorboard"]


def make_fake_cifar(n, num_classes, seed=0):
    """A split of ``n`` random uint8 images [n, 3, 32, 32] with random labels in [0, num_classes)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Split(images, torch.randint(0, num_classes, (n,), generator=g))


@pytest.fixture(scope="session")
def fake_cifar():
    """``fake_cifar(n, num_classes, seed=0)``: see :func:`make_fake_cifar`."""
    return make_fake_cifar


@pytest.fixture(scope="session")
def train_run():
    """``train_run(out_dir, data_dir, *flags)``: the trainer's ``main`` on the tiny student; returns out_dir."""

    def run(out_dir, data_dir, *flags):
        assert train_main(["--out-dir", str(out_dir), "--data-dir", str(data_dir), *TINY, *flags]) == 0
        return out_dir

    return run
