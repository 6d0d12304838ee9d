"""The training program's datasets, held whole in memory as tensors.

* ``digits`` (the offline default): scikit-learn's handwritten digits (1,797 8x8 images, 10 classes),
  which ships inside the scikit-learn package and needs no download. Images float32 in [-1, 1].
* ``cifar10`` / ``cifar100``: read from the standard "python version" folders under ``data_dir``
  (``cifar-10-batches-py/`` with ``data_batch_1..5`` and ``test_batch``; ``cifar-100-python/`` with
  ``train`` and ``test``). Images uint8 [N, 3, 32, 32]; scaling and augmentation happen per batch on
  the training device (:mod:`mentormix_fast.train.augment`). With ``download=True`` torchvision fetches the
  archives first; otherwise nothing touches the network.
* ``filelist`` / ``imagefolder``: image files on disk, listed (paths and labels only, decoded per batch):
  see :mod:`mentormix_fast.train.images`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

DATASETS = ("digits", "cifar10", "cifar100", "filelist", "imagefolder")
FILE_DATASETS = ("filelist", "imagefolder")
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


class Split(NamedTuple):
    """Images [N, C, H, W] (float32 in [-1, 1], or uint8 for CIFAR) and clean labels [N] int64."""

    images: torch.Tensor
    labels: torch.Tensor

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]


def load_digits(test_fraction: float = 0.25, split_seed: int = 0) -> tuple[Split, Split, int]:
    """(train, test, num_classes): a fixed, stratified-by-shuffle split of the digits data."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0 * 2.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return Split(images[train], labels[train]), Split(images[test], labels[test]), 10


def _array_globals() -> dict:
    """The callables a pickled uint8 NumPy array refers to, under each module name NumPy 1 and 2 use."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
    out = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        out[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return out


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3 pickles bytes for protocol 2, for the latin-1 codec only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR "python version" batches (dicts of lists, bytes, str and uint8 arrays) and refuses
    every other global, so a crafted file cannot run code."""

    _allowed = {**_array_globals(), ("_codecs", "encode"): _latin1_encode}

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{self.path}: refused: it refers to {module}.{name}, which a CIFAR "
                                         f"batch never holds (only NumPy arrays, lists, bytes and str)")
        return found


def _read_batches(folder: Path, names: list[str], label_key: str) -> Split:
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            entry = _CifarUnpickler(f, folder / name).load()
        if not isinstance(entry, dict):
            raise ValueError(f"{folder / name}: not a CIFAR batch (a {type(entry).__name__}, not a dict)")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def load_cifar(name: str, data_dir, download: bool = False) -> tuple[Split, Split, int]:
    """(train, test, num_classes) of CIFAR-10/100 from ``data_dir`` (uint8 images [N, 3, 32, 32]).

    The folder is read directly (no checksum), so any data in the official layout works;
    ``download=True`` lets torchvision fetch and unpack the official archive first.
    """
    if name not in _CIFAR:
        raise ValueError(f"dataset: expected one of {sorted(_CIFAR)}, got {name!r}")
    folder_name, train_names, test_names, label_key, num_classes = _CIFAR[name]
    root = Path(data_dir)
    if download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
    folder = root / folder_name
    missing = [n for n in train_names + test_names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{name}: {folder} lacks {missing}; put the official 'python version' "
                                f"archive there (unpacked) or pass --download")
    return (_read_batches(folder, train_names, label_key), _read_batches(folder, test_names, label_key),
            num_classes)


def write_cifar_folder(data_dir, name: str, train: Split, test: Split) -> Path:
    """Write uint8 images [N, 3, 32, 32] and labels in the official CIFAR "python version" layout
    (tests use this to exercise the CIFAR code path on tiny fake data). Returns the folder."""
    folder_name, train_names, test_names, label_key, _ = _CIFAR[name]
    folder = Path(data_dir) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    for names, split in ((train_names, train), (test_names, test)):
        chunks = np.array_split(np.arange(len(split.labels)), len(names))
        for file_name, idx in zip(names, chunks, strict=True):
            entry = {"data": split.images[idx].numpy().reshape(len(idx), -1).astype(np.uint8),
                     label_key: split.labels[idx].tolist()}
            with open(folder / file_name, "wb") as f:
                pickle.dump(entry, f)
    return folder


def dataset_options(args) -> dict:
    """The keyword arguments of :func:`load_dataset` beyond (name, data_dir, download), from the trainer's
    flags (an ``argparse.Namespace``, or a checkpoint's stored ``args`` dict)."""
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    return {"train_list": get("train_list"), "test_list": get("test_list"), "num_classes": get("num_classes")}


def load_dataset(name: str, data_dir=None, download: bool = False, *, train_list=None, test_list=None,
                 num_classes=None):
    """(train, test, num_classes), dispatched on ``name`` in :data:`DATASETS`: two :class:`Split` (in memory),
    or for ``filelist``/``imagefolder`` two :class:`mentormix_fast.train.images.FileSplit` (paths and labels;
    ``train_list``/``test_list``/``num_classes`` are the ``--train-list``/``--test-list``/``--num-classes`` of
    ``filelist``)."""
    if name == "digits":
        return load_digits()
    if data_dir is None:
        raise ValueError(f"{name}: needs --data-dir")
    if name == "filelist":
        from .images import load_filelist

        return load_filelist(data_dir, train_list, test_list, num_classes)
    if name == "imagefolder":
        from .images import load_imagefolder

        return load_imagefolder(data_dir)
    return load_cifar(name, data_dir, download)
