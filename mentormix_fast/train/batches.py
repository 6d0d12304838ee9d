"""Batch sources: what the trainer asks for the input batch of step t, and for the test batches.

A source has one job: turn the data order (a ``BatchStream``: indices of step t, a function of
(seed, step, rank)) into model inputs on the training device.

* :class:`TensorSource` (digits, CIFAR): the training images live on the device as one tensor; the batch
  of step t is ``images[idx]``, augmented on the device with the release's CIFAR pipeline (uint8 data,
  generator seeded by ``derived_seed(seed, 2, t, rank)``) or mapped to [-1, 1] (float data).
* :class:`FileSource` (filelist, imagefolder): a ``DataLoader`` whose batch sampler yields the keys
  ``(t, i)`` of ``stream.indices(t)`` for t = start .. stop - 1; workers decode and augment each image to
  uint8 (:mod:`mentormix_fast.train.images`), normalised on the device; a resumed run replays the same
  batches.

Interface (both): ``train_batches(start, stop)`` -> iterator of (idx int64 [B] on the device, x float32
[B, C, H, W] on the device), one per step; ``batch(step)`` -> the same pair for one step; ``test_data(
batch_size)`` -> what :func:`mentormix_fast.train.evaluate.accuracy` takes: the test :class:`Split` (in
memory) or an iterable of (x float32 [B, 3, S, S], y int64 [B]) batches, re-iterable once per evaluation.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from .augment import cifar_train_augment, to_signed_unit
from .data import Split
from .images import FileSplit, TestImages, TrainImages, normalize
from .seeds import derived_seed


def default_workers() -> int:
    """``--workers``' default: min(8, the CPU count)."""
    return min(8, os.cpu_count() or 1)


class TensorSource:
    """The in-memory datasets: ``images`` [N, C, H, W] (uint8 or float) held on ``device``."""

    def __init__(self, train: Split, test: Split, stream, device, seed: int, rank: int):
        self.images = train.images.to(device)
        self.test = test
        self.stream, self.device, self.seed, self.rank = stream, torch.device(device), seed, rank
        self.augment = cifar_train_augment if train.images.dtype == torch.uint8 else None
        self.generator = torch.Generator(self.device)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.stream.indices(step).to(self.device)
        x = self.images[idx]
        if self.augment is None:
            return idx, to_signed_unit(x)
        self.generator.manual_seed(derived_seed(self.seed, 2, step, self.rank))
        return idx, self.augment(x, self.generator)

    def train_batches(self, start: int, stop: int):
        for step in range(start, stop):
            yield self.batch(step)

    def test_data(self, batch_size: int) -> Split:
        return self.test


class _StepBatches:
    """Batch sampler: for each step t in [start, stop), the keys [(t, i) for i in stream.indices(t)]."""

    def __init__(self, stream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield [(step, i) for i in self.stream.indices(step).tolist()]


class FileSource:
    """The image-file datasets: decoded and augmented by ``workers`` DataLoader processes (0: in this
    process); pinned memory on CUDA, persistent workers when there are any."""

    def __init__(self, train: FileSplit, test: FileSplit, stream, device, seed: int, image_size: int,
                 workers: int):
        self.stream, self.device, self.seed = stream, torch.device(device), seed
        self.train_set = TrainImages(train, image_size, seed)
        self.test_set = TestImages(test, image_size)
        self.workers = workers
        self._test_batches: dict[int, _NormalizedBatches] = {}

    def _loader_options(self) -> dict:
        # Its own generator: a loader would otherwise draw its workers' base seed from torch's global RNG,
        # which a checkpoint stores, so a resumed run would not continue the same RNG stream.
        return {"num_workers": self.workers, "pin_memory": self.device.type == "cuda",
                "persistent_workers": self.workers > 0, "generator": torch.Generator().manual_seed(self.seed)}

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, idx = batch
        return idx.to(self.device, non_blocking=True), normalize(x.to(self.device, non_blocking=True))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys = next(iter(_StepBatches(self.stream, step, step + 1)))
        items = [self.train_set[k] for k in keys]
        return self._to_device((torch.stack([x for x, _ in items]), torch.tensor([i for _, i in items])))

    def train_batches(self, start: int, stop: int):
        if stop <= start:
            return
        loader = DataLoader(self.train_set, batch_sampler=_StepBatches(self.stream, start, stop),
                            **self._loader_options())
        for batch in loader:
            yield self._to_device(batch)

    def test_data(self, batch_size: int) -> _NormalizedBatches:
        if batch_size not in self._test_batches:
            self._test_batches[batch_size] = _test_batches(self.test_set, batch_size, self.device, self.workers)
        return self._test_batches[batch_size]


def test_data(test, batch_size: int, device, *, image_size: int = 224, workers: int = 0):
    """What :func:`mentormix_fast.train.evaluate.accuracy` takes for a test split as
    :func:`~mentormix_fast.train.data.load_dataset` returns it: a :class:`Split` itself, or for a
    :class:`FileSplit` its (x float32 [B, 3, S, S] on ``device``, y int64 [B]) batches (re-iterable)."""
    if not isinstance(test, FileSplit):
        return test
    return _test_batches(TestImages(test, image_size), batch_size, torch.device(device), workers)


def _test_batches(test_set: TestImages, batch_size: int, device: torch.device, workers: int) -> _NormalizedBatches:
    """The test images in order, decoded by ``workers`` processes (kept between evaluations)."""
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))  # see FileSource._loader_options
    return _NormalizedBatches(loader, device)


class _NormalizedBatches:
    """Re-iterable (x float32 [B, 3, S, S] on ``device``, y int64 [B]) batches of a loader of uint8 images."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield normalize(x.to(self.device, non_blocking=True)), y


def make_source(train, test, stream, device, *, seed: int, rank: int = 0, image_size: int = 224,
                workers: int = 0):
    """The source of ``train``/``test`` (two :class:`Split` or two :class:`FileSplit`, as
    :func:`mentormix_fast.train.data.load_dataset` returns them)."""
    if isinstance(train, FileSplit):
        return FileSource(train, test, stream, device, seed, image_size, workers)
    return TensorSource(train, test, stream, device, seed, rank)
