"""The training labels of a run: the dataset's, a user's noisy labels (``--noisy-labels FILE``), and
synthetic noise on top (:mod:`mentormix_fast.train.noise`).

``--noisy-labels FILE`` replaces the training labels of any dataset. Formats, chosen by the file name:

* ``*.pt``: a CIFAR-N label file (``CIFAR-10_human.pt``: ``clean_label``, ``aggre_label``, ``worse_label``,
  ``random_label1..3``; ``CIFAR-100_human.pt``: ``clean_label``, ``noisy_label``), a ``torch.save``d dict of
  NumPy integer arrays [50000] in the official training order; ``--noisy-labels-key`` picks the array
  (default ``worse_label`` for cifar10, ``noisy_label`` for cifar100). It is read with
  ``torch.load(weights_only=True)`` admitting only NumPy integer arrays: a file naming any other global
  is refused before anything in it runs. Its ``clean_label`` must equal the dataset's labels.
* ``*.csv``: rows ``path,label``, with or without a header row;
* anything else: a list file, lines ``path label`` (whitespace-separated, the label last), or for
  digits/CIFAR one label per line.

In the CSV and list files, ``path`` is a training image's path relative to ``--data-dir`` as the
dataset lists it (``imagefolder``: ``train/<class>/<file>``, or ``<class>/<file>``); every training image
needs exactly one row. Digits and CIFAR have no paths: ``path`` is the example's index 0..N-1 in the
training split (CIFAR: the official order), or the file has one label per line, N lines. Blank lines and
lines starting with ``#`` are skipped. Errors name ``FILE:LINE`` (for a .pt: the key and the index).

Clean labels are known for digits and CIFAR (the dataset's own) and unknown for ``filelist`` and
``imagefolder`` given ``--noisy-labels`` (their listed labels may themselves be noisy): then the report's
rates are None and the logs leave the clean/noisy columns empty.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, DataFileNotFoundError, weights_only_reason
from .images import FileSplit
from .noise import check_label_array, corruption_rate, load_or_make_noisy_labels

CIFAR_N_KEYS = {
    "cifar10": ("clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"),
    "cifar100": ("clean_label", "noisy_label"),
}
CIFAR_N_DEFAULT_KEY = {"cifar10": "worse_label", "cifar100": "noisy_label"}
ALL_CIFAR_N_KEYS = tuple(dict.fromkeys(k for keys in CIFAR_N_KEYS.values() for k in keys))


# ------------------------------------------------------------------------------------------------
# CIFAR-N
# ------------------------------------------------------------------------------------------------


def _numpy_integer_array_globals() -> list:
    """What ``torch.load(weights_only=True)`` must admit to rebuild NumPy integer arrays, under the module
    names NumPy 1 and 2 pickle them with."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1, np.int64))[0]
    int_dtypes = {type(np.dtype(code)) for code in "bBhHiIlLqQ"}
    return [np.ndarray, np.dtype, reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"), *int_dtypes]


def read_cifar_n(path) -> dict[str, np.ndarray]:
    """The arrays of a CIFAR-N ``.pt`` file, loaded without running anything in it; a file holding
    anything but a dict of NumPy integer arrays raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"--noisy-labels {path}: no such file")
    try:
        with torch.serialization.safe_globals(_numpy_integer_array_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: refused: not a CIFAR-N label file of NumPy integer arrays "
                        f"({weights_only_reason(err)}); nothing in it was run") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: unreadable as a torch.save file ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict of label arrays (CIFAR-N), got a {type(data).__name__}")
    return data


def _cifar_n_array(path, data: dict, key: str, n: int, num_classes: int) -> np.ndarray:
    if key not in data:
        raise DataError(f"{path}: no key {key!r} (--noisy-labels-key); it has {sorted(map(str, data))}")
    labels = data[key]
    if isinstance(labels, torch.Tensor):
        labels = labels.numpy()
    return check_label_array(labels, n, num_classes, f"{path}: key {key!r}")


def load_cifar_n(path, dataset: str, clean: np.ndarray, num_classes: int, key: str | None = None
                 ) -> tuple[np.ndarray, str]:
    """(labels [N] int64, key) of a CIFAR-N file for ``dataset``'s training labels ``clean``."""
    if dataset not in CIFAR_N_KEYS:
        raise DataError(f"--noisy-labels {path}: a CIFAR-N .pt file is for cifar10/cifar100, not --dataset "
                        f"{dataset}")
    key = key or CIFAR_N_DEFAULT_KEY[dataset]
    if key not in ALL_CIFAR_N_KEYS:
        raise DataError(f"--noisy-labels-key: {key!r} is not a CIFAR-N key (one of {ALL_CIFAR_N_KEYS})")
    data = read_cifar_n(path)
    if "clean_label" in data:
        given = _cifar_n_array(path, data, "clean_label", len(clean), num_classes)
        differ = np.flatnonzero(given != clean)
        if differ.size:
            i = differ[0]
            raise DataError(f"{path}: key 'clean_label' differs from the {dataset} training labels at index {i} "
                            f"(file {given[i]}, dataset {clean[i]}): not this dataset's CIFAR-N file, or the "
                            f"training split is not in the official order")
    return _cifar_n_array(path, data, key, len(clean), num_classes), key


# ------------------------------------------------------------------------------------------------
# List and CSV files
# ------------------------------------------------------------------------------------------------


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def read_rows(path) -> list[tuple[int, str | None, str]]:
    """(line, key or None, label text) per data line of a list (``key label`` or ``label``) or CSV
    (``key,label``; a first row whose label is not an integer is a header) file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"--noisy-labels {path}: no such file")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            first = True
            for number, fields in enumerate(csv.reader(f), 1):
                fields = [x.strip() for x in fields]
                if not any(fields) or fields[0].startswith("#"):
                    continue
                if len(fields) != 2:
                    raise DataError(f"{path}:{number}: expected 2 fields 'path,label', got {len(fields)}")
                if first and not _is_int(fields[1]):
                    first = False
                    continue  # the header
                first = False
                rows.append((number, fields[0], fields[1]))
        else:
            for number, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.rsplit(None, 1)
                rows.append((number, fields[0] if len(fields) == 2 else None, fields[-1]))
    if not rows:
        raise DataError(f"{path}: no labels in it")
    return rows


def _label(path, number: int, text: str, num_classes: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{path}:{number}: label {text!r} is not an integer") from None
    if not 0 <= value < num_classes:
        raise DataError(f"{path}:{number}: label {value} is outside [0, {num_classes}) "
                         f"(the dataset has {num_classes} classes)")
    return value


def labels_from_rows(path, rows, train, num_classes: int) -> np.ndarray:
    """The labels [N] int64 that ``rows`` (from :func:`read_rows`) give the training split ``train``
    (a :class:`FileSplit`, matched by path; else by index or line order)."""
    n = len(train.labels)
    keyed = [r for r in rows if r[1] is not None]
    if isinstance(train, FileSplit) or keyed:
        if len(keyed) != len(rows):
            number = next(r[0] for r in rows if r[1] is None)
            raise DataError(f"{path}:{number}: expected 'path label' (or 'index label'), got a label alone")
        position = _position_lookup(train) if isinstance(train, FileSplit) else None
        out = np.full(n, -1, dtype=np.int64)
        seen_at = np.zeros(n, dtype=np.int64)
        for number, key, text in rows:
            i = _find(path, number, key, position, n, train)
            if seen_at[i]:
                raise DataError(f"{path}:{number}: {key!r} is labelled again (first at line {seen_at[i]})")
            seen_at[i] = number
            out[i] = _label(path, number, text, num_classes)
        missing = np.flatnonzero(seen_at == 0)
        if missing.size:
            first = train.relative_path(missing[0]) if isinstance(train, FileSplit) else int(missing[0])
            raise DataError(f"{path}: no label for {missing.size} of the {n} training examples, e.g. {first!r}")
        return out
    if len(rows) > n:
        raise DataError(f"{path}:{rows[n][0]}: label number {n + 1}, but the training split has only {n} examples")
    if len(rows) < n:
        raise DataError(f"{path}: {len(rows)} labels, but the training split has {n} examples (one per line)")
    return np.array([_label(path, number, text, num_classes) for number, _, text in rows], dtype=np.int64)


def _position_lookup(train: FileSplit) -> dict[str, int]:
    return {p.decode(): i for i, p in enumerate(train.paths)}


def _find(path, number: int, key: str, position: dict | None, n: int, train) -> int:
    if position is None:
        if not _is_int(key) or not 0 <= int(key) < n:
            raise DataError(f"{path}:{number}: {key!r} is not an example index in [0, {n}) (this dataset has no "
                            f"paths: give the index in the training split)")
        return int(key)
    norm = os.path.normpath(key)
    for candidate in (norm, train.prefix + norm):
        if candidate in position:
            return position[candidate]
    raise DataError(f"{path}:{number}: {key!r} is not a training image of the dataset (paths are relative to "
                    f"--data-dir, as in the dataset's list)")


# ------------------------------------------------------------------------------------------------
# The run's labels
# ------------------------------------------------------------------------------------------------


def load_noisy_labels(path, dataset: str, train, num_classes: int, key: str | None = None
                      ) -> tuple[np.ndarray, dict]:
    """(labels [N] int64, source) from a ``--noisy-labels`` file; source: ``{"file", "format", "key"}``."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        labels, key = load_cifar_n(path, dataset, train.labels.numpy(), num_classes, key)
        return labels, {"file": str(path), "format": "cifar-n", "key": key}
    if key is not None:
        raise DataError(f"--noisy-labels-key: only for a CIFAR-N .pt file, not {path}")
    rows = read_rows(path)
    labels = labels_from_rows(path, rows, train, num_classes)
    return labels, {"file": str(path), "format": "csv" if path.suffix.lower() == ".csv" else "list", "key": None}


def training_labels(args, train, num_classes: int, write: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(noisy labels [N] int64, clean labels [N] or None when unknown, noise report) of a run.

    The report (``summary.json``'s ``noise``): ``labels`` (``"synthetic"``, or the ``--noisy-labels``
    source), ``kind``/``rate``/``seed`` of the synthetic noise, ``file_rate`` (the fraction of the user's
    labels that differ from the clean ones), ``actual_rate`` (of the labels trained on), ``expected_rate``
    (of the synthetic noise), ``file`` (the stored synthetic labels); rates are None where clean labels
    are unknown.
    """
    dataset_labels = train.labels.numpy().astype(np.int64)
    if args.noisy_labels is None:
        noisy, report = load_or_make_noisy_labels(args.data_dir, args.dataset, dataset_labels, args.noise_rate,
                                                  num_classes, args.noise_seed, args.noise_kind, write)
        return noisy, dataset_labels, {"labels": "synthetic", "file_rate": None, **report}
    user, source = load_noisy_labels(args.noisy_labels, args.dataset, train, num_classes, args.noisy_labels_key)
    clean = None if isinstance(train, FileSplit) else dataset_labels
    report = {"labels": source, "kind": args.noise_kind, "rate": args.noise_rate, "seed": args.noise_seed,
              "file_rate": None if clean is None else corruption_rate(clean, user), "actual_rate": None,
              "expected_rate": 0.0, "file": None}
    noisy = user
    if args.noise_rate > 0:
        tag = Path(args.noisy_labels).stem + (f"-{source['key']}" if source["key"] else "")
        noisy, synthetic = load_or_make_noisy_labels(args.data_dir, args.dataset, user, args.noise_rate, num_classes,
                                                     args.noise_seed, args.noise_kind, write, tag=tag)
        report.update(expected_rate=synthetic["expected_rate"], file=synthetic["file"],
                      synthetic_rate=synthetic["actual_rate"])
    if clean is not None:
        report["actual_rate"] = corruption_rate(clean, noisy)
    return noisy, clean, report


def describe(report: dict) -> str:
    """One line for the log: which labels, and the realised noise rate where known."""
    labels = report["labels"]
    actual = report["actual_rate"]
    rate = "unknown (no clean labels)" if actual is None else f"{actual:.4f}"
    if labels == "synthetic":
        return f"noise {report['kind']} {report['rate']} (actual {rate})"
    key = f" [{labels['key']}]" if labels.get("key") else ""
    extra = f" + synthetic {report['kind']} {report['rate']}" if report["rate"] else ""
    return f"labels from {labels['file']}{key}{extra} (actual noise {rate})"
