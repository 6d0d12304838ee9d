"""Image-file datasets: a list of (path, label) per split, decoded and augmented per example.

Two layouts (``--dataset``):

* ``filelist``: ``--data-dir ROOT --train-list FILE --test-list FILE``. Each list has one example a line,
  ``relative/path label`` (whitespace-separated; the label is the last field, so a path may hold spaces),
  paths relative to ROOT, labels integers >= 0 (WebVision's ``info/train_filelist_google.txt``,
  Clothing1M's ``noisy_label_kv.txt``). Blank lines and lines starting with ``#`` are skipped. The number
  of classes is the largest label of both lists + 1, or ``--num-classes`` (then a label >= it is an error).
* ``imagefolder``: torchvision's ``ImageFolder`` layout ``ROOT/train/<class>/<image>`` and
  ``ROOT/val/<class>/<image>``; classes are the sorted folder names of ``train/``, and ``val/`` must have
  the same ones.

A :class:`FileSplit` holds the paths (one NumPy bytes array, so that DataLoader workers share it without
copying) and the labels, never the images: WebVision's 2.4M images are read from disk per batch. Whether
each file exists is checked when it is read (only the first file of each list is checked up front); a
missing or undecodable file raises an error naming it and the list line (or folder) it came from.

Images are decoded to RGB uint8 [3, H, W] (``torchvision.io.decode_image``: JPEG, PNG, GIF, WebP) and
transformed with ``torchvision.transforms.v2`` in the ImageNet style to uint8 [3, S, S] (S =
``--image-size``); :func:`normalize` then scales a batch to [0, 1] and normalises it with the ImageNet mean
and std (float32), on the training device, so that workers pass 4x fewer bytes:

* train: ``RandomResizedCrop(S)``, ``RandomHorizontalFlip()``, then :func:`normalize`;
* test: ``Resize(round(S / 0.875))`` (shorter side), ``CenterCrop(S)``, then :func:`normalize`.

The training augmentation of example i at step t draws from torch's RNG seeded with
``derived_seed(seed, 2, t, i)`` (inside :func:`torch.random.fork_rng`, so the caller's RNG is untouched): a
batch depends only on (seed, step, indices), whichever worker process decodes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, DataFileNotFoundError
from .seeds import derived_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The ratio of the test crop to the resized shorter side (ImageNet's 224 / 256).
CENTER_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class FileSplit:
    """One split of an image-file dataset.

    ``paths``: bytes array [N] (UTF-8, relative to ``root``); ``labels``: int64 tensor [N];
    ``origin``: the list file (or folder) the entries came from; ``lines``: int array [N] of each entry's
    line in ``origin`` (None for a folder). ``prefix``: the folder inside ``root`` that the paths start
    with (``"train/"`` for ``imagefolder``), which a noisy-label file may leave out.
    """

    root: Path
    paths: np.ndarray
    labels: torch.Tensor
    origin: str
    lines: np.ndarray | None = None
    prefix: str = ""
    in_channels: int = 3

    def __len__(self) -> int:
        return len(self.labels)

    def relative_path(self, i: int) -> str:
        return self.paths[i].decode()

    def where(self, i: int) -> str:
        """Where entry i was listed: ``LIST:LINE``, or the folder."""
        return f"{self.origin}:{int(self.lines[i])}" if self.lines is not None else self.origin

    def read(self, i: int) -> torch.Tensor:
        """Image i decoded to RGB uint8 [3, H, W]."""
        return read_image(self.root / self.relative_path(i), self.where(i))


def read_image(path: Path, where: str = "") -> torch.Tensor:
    """The file at ``path`` decoded to RGB uint8 [3, H, W]; a missing or undecodable file raises
    ``FileNotFoundError``/``ValueError`` naming it and ``where`` (the list line it came from)."""
    from torchvision.io import ImageReadMode, decode_image

    listed = f" (listed at {where})" if where else ""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataFileNotFoundError(f"{path}{listed}: no such file") from None
    except OSError as err:
        raise DataError(f"{path}{listed}: cannot be read ({err.strerror or err})") from None
    if not data:
        raise DataError(f"{path}{listed}: empty file, not an image")
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}{listed}: cannot be decoded as an image ({reason})") from None


# ------------------------------------------------------------------------------------------------
# Reading the lists
# ------------------------------------------------------------------------------------------------


def read_list_file(path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels int64 [N], line numbers [N]) of a ``relative/path label`` list file; a bad line
    raises ``ValueError`` starting ``FILE:LINE:``."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: no such list file")
    paths, labels, lines = [], [], []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.rsplit(None, 1)
            if len(fields) < 2:
                raise DataError(f"{path}:{number}: expected 'relative/path label', got {line!r} (no label)")
            name, label = fields
            try:
                value = int(label)
            except ValueError:
                raise DataError(f"{path}:{number}: label {label!r} is not an integer") from None
            if value < 0:
                raise DataError(f"{path}:{number}: label {value} is negative")
            paths.append(os.path.normpath(name))
            labels.append(value)
            lines.append(number)
    if not paths:
        raise DataError(f"{path}: no entries (expected lines 'relative/path label')")
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def _check_first_exists(root: Path, split: FileSplit, flag: str) -> None:
    first = root / split.relative_path(0)
    if not first.exists():
        raise DataFileNotFoundError(f"{split.where(0)}: {first} does not exist (paths in {flag} are relative to "
                                    f"--data-dir {root})")


def load_filelist(data_dir, train_list, test_list, num_classes: int | None = None
                  ) -> tuple[FileSplit, FileSplit, int]:
    """(train, test, num_classes) of ``--dataset filelist`` (see the module docstring)."""
    if train_list is None or test_list is None:
        raise DataError("--dataset filelist: needs --train-list FILE and --test-list FILE")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataFileNotFoundError(f"--data-dir {root}: no such folder")
    splits = []
    for flag, list_file in (("--train-list", train_list), ("--test-list", test_list)):
        paths, labels, lines = read_list_file(list_file)
        splits.append((flag, list_file, paths, labels, lines))
    largest = max(int(labels.max()) for _, _, _, labels, _ in splits)
    if num_classes is None:
        num_classes = largest + 1
    for _, list_file, _, labels, lines in splits:
        bad = np.flatnonzero(labels >= num_classes)
        if bad.size:
            raise DataError(f"{list_file}:{lines[bad[0]]}: label {labels[bad[0]]} is not below --num-classes "
                            f"{num_classes}")
    out = []
    for flag, list_file, paths, labels, lines in splits:
        split = FileSplit(root, np.array([p.encode() for p in paths]), torch.from_numpy(labels), str(list_file),
                          lines)
        _check_first_exists(root, split, flag)
        out.append(split)
    return out[0], out[1], num_classes


def load_imagefolder(data_dir) -> tuple[FileSplit, FileSplit, int]:
    """(train, test, num_classes) of ``--dataset imagefolder``: ``ROOT/train/<class>/...``,
    ``ROOT/val/<class>/...``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(data_dir)
    layout = "imagefolder expects ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataFileNotFoundError(f"--data-dir {root}: no {sub}/ folder ({layout})")
    classes, class_to_idx = find_classes(str(root / "train"))
    val_classes, _ = find_classes(str(root / "val"))
    if val_classes != classes:
        only_train, only_val = sorted(set(classes) - set(val_classes)), sorted(set(val_classes) - set(classes))
        raise DataError(f"--data-dir {root}: val/ has other classes than train/ (only in train/: {only_train}, "
                        f"only in val/: {only_val}); both need the same class folders")
    out = []
    for sub in ("train", "val"):
        entries = make_dataset(str(root / sub), class_to_idx, extensions=IMG_EXTENSIONS)
        paths = np.array([os.path.relpath(p, root).encode() for p, _ in entries])
        labels = torch.tensor([y for _, y in entries], dtype=torch.int64)
        out.append(FileSplit(root, paths, labels, str(root / sub), None, prefix=f"{sub}/"))
    return out[0], out[1], len(classes)


# ------------------------------------------------------------------------------------------------
# Transforms and datasets
# ------------------------------------------------------------------------------------------------


def train_transform(image_size: int):
    """uint8 [3, H, W] -> uint8 [3, S, S]: random resized crop, random horizontal flip."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])


def test_transform(image_size: int):
    """uint8 [3, H, W] -> uint8 [3, S, S]: resize the shorter side to S / 0.875, centre crop."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(round(image_size / CENTER_CROP_FRACTION), antialias=True),
                       v2.CenterCrop(image_size)])


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float32 [B, 3, S, S]: scaled to [0, 1], normalised with the ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


class TrainImages(Dataset):
    """Keys are (step, index): item -> (image uint8 [3, S, S], index), augmented with the draws of
    ``derived_seed(seed, 2, step, index)``."""

    def __init__(self, split: FileSplit, image_size: int, seed: int):
        self.split, self.seed = split, seed
        self.transform = train_transform(image_size)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        step, index = key
        image = self.split.read(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, 2, step, index))
            return self.transform(image), index


class TestImages(Dataset):
    """item i -> (image uint8 [3, S, S], label int)."""

    def __init__(self, split: FileSplit, image_size: int):
        self.split = split
        self.transform = test_transform(image_size)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        return self.transform(self.split.read(i)), int(self.split.labels[i])
