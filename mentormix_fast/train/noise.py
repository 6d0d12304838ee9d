"""Synthetic label noise (SPEC §3), seeded, reproducible and stored next to the data.

Each label independently, with probability ``rate``, is replaced according to ``kind``:

* ``symmetric``: by a class drawn uniformly from all K classes, so the true class may be drawn again
  (expected corruption rate ``rate * (K - 1) / K``). The release shipped its CIFAR data already
  corrupted, without the code that corrupted it; this is our reading of its paper's "uniform noise";
* ``symmetric_exclusive``: by a class drawn uniformly from the other K - 1 classes (expected rate ``rate``);
* ``pairflip``: by ``(y + 1) mod K`` (expected rate ``rate``);
* ``asymmetric`` (CIFAR only, :data:`ASYMMETRIC_MAPS`): CIFAR-10 truck -> automobile, bird -> airplane,
  deer -> horse, cat <-> dog (other classes kept: expected rate ``rate / 2`` on balanced data);
  CIFAR-100: the next class of the same super-class, cyclically in index order (expected rate ``rate``).

One uniform draw per label decides whether it is hit; the replacement's draws follow, so the labels that
``symmetric`` and ``pairflip`` give for a (seed, rate) never change when kinds are added.

:func:`load_or_make_noisy_labels` writes the noisy labels once per (dataset, kind, rate, seed) to
``<data_dir>/noisy_labels/<dataset>-<kind>-r<rate>-s<seed>.npz`` (arrays ``clean`` and ``noisy``, int64
[N]) and reads them back afterwards (``np.load(allow_pickle=False)``), so every run (and every rank of a
distributed run) trains on exactly the same labels. A stored file whose ``clean`` differs from the
dataset's labels belongs to other data and is regenerated; a file that is unreadable, or whose ``noisy``
has the wrong length, a non-integer dtype or labels outside [0, K), is an error naming the file (delete
it to regenerate it): such a file may have been shipped with the data, so it is not silently replaced.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError

NOISE_KINDS = ("symmetric", "symmetric_exclusive", "pairflip", "asymmetric")

# CIFAR-100's 20 super-classes (the "coarse" labels of its meta file), each as its 5 fine labels.
CIFAR100_SUPERCLASSES = (
    (4, 30, 55, 72, 95),    # aquatic mammals: beaver, dolphin, otter, seal, whale
    (1, 32, 67, 73, 91),    # fish: aquarium fish, flatfish, ray, shark, trout
    (54, 62, 70, 82, 92),   # flowers: orchid, poppy, rose, sunflower, tulip
    (9, 10, 16, 28, 61),    # food containers: bottle, bowl, can, cup, plate
    (0, 51, 53, 57, 83),    # fruit and vegetables: apple, mushroom, orange, pear, sweet pepper
    (22, 39, 40, 86, 87),   # household electrical devices: clock, keyboard, lamp, telephone, television
    (5, 20, 25, 84, 94),    # household furniture: bed, chair, couch, table, wardrobe
    (6, 7, 14, 18, 24),     # insects: bee, beetle, butterfly, caterpillar, cockroach
    (3, 42, 43, 88, 97),    # large carnivores: bear, leopard, lion, tiger, wolf
    (12, 17, 37, 68, 76),   # large man-made outdoor things: bridge, castle, house, road, skyscraper
    (23, 33, 49, 60, 71),   # large natural outdoor scenes: cloud, forest, mountain, plain, sea
    (15, 19, 21, 31, 38),   # large omnivores and herbivores: camel, cattle, chimpanzee, elephant, kangaroo
    (34, 63, 64, 66, 75),   # medium mammals: fox, porcupine, possum, raccoon, skunk
    (26, 45, 77, 79, 99),   # non-insect invertebrates: crab, lobster, snail, spider, worm
    (2, 11, 35, 46, 98),    # people: baby, boy, girl, man, woman
    (27, 29, 44, 78, 93),   # reptiles: crocodile, dinosaur, lizard, snake, turtle
    (36, 50, 65, 74, 80),   # small mammals: hamster, mouse, rabbit, shrew, squirrel
    (47, 52, 56, 59, 96),   # trees: maple, oak, palm, pine, willow
    (8, 13, 48, 58, 90),    # vehicles 1: bicycle, bus, motorcycle, pickup truck, train
    (41, 69, 81, 85, 89),   # vehicles 2: lawn mower, rocket, streetcar, tank, tractor
)


def _cifar100_next_in_superclass() -> np.ndarray:
    out = np.arange(100)
    for group in CIFAR100_SUPERCLASSES:
        for i, fine in enumerate(group):
            out[fine] = group[(i + 1) % len(group)]
    return out


_CIFAR10_FLIPS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck->automobile, bird->airplane, deer->horse, cat<->dog
# dataset -> class map [K] (y -> the class that asymmetric noise gives it; y itself: never changed)
ASYMMETRIC_MAPS = {
    "cifar10": np.array([_CIFAR10_FLIPS.get(y, y) for y in range(10)]),
    "cifar100": _cifar100_next_in_superclass(),
}


def corrupt_labels(labels, rate: float, num_classes: int, seed: int, kind: str = "symmetric",
                   dataset: str | None = None) -> np.ndarray:
    """Noisy copy of ``labels`` (int array [N]); deterministic for a given (seed, rate, kind).
    ``dataset`` (``cifar10``/``cifar100``) picks the class map of ``asymmetric`` noise."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: must be in [0, 1], got {rate}")
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind: expected one of {NOISE_KINDS}, got {kind!r}")
    if kind == "asymmetric":
        mapping = asymmetric_map(dataset, num_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels: must be in [0, {num_classes})")
    rng = np.random.default_rng(seed)
    hit = rng.random(labels.shape) < rate
    if kind == "symmetric":
        replacement = rng.integers(0, num_classes, size=labels.shape)
    elif kind == "symmetric_exclusive":
        other = rng.integers(0, max(num_classes - 1, 1), size=labels.shape)
        replacement = other + (other >= labels) if num_classes > 1 else labels
    elif kind == "pairflip":
        replacement = (labels + 1) % num_classes
    else:
        replacement = mapping[labels]
    return np.where(hit, replacement, labels)


def asymmetric_map(dataset: str | None, num_classes: int) -> np.ndarray:
    """The class map [K] of ``asymmetric`` noise for ``dataset``; other datasets are an error."""
    if dataset not in ASYMMETRIC_MAPS or len(ASYMMETRIC_MAPS[dataset]) != num_classes:
        raise DataError(f"--noise-kind asymmetric: defined for cifar10 and cifar100 only (their class maps), "
                        f"not for {dataset or 'this dataset'} with {num_classes} classes; use symmetric, "
                        f"symmetric_exclusive or pairflip")
    return ASYMMETRIC_MAPS[dataset]


def corruption_rate(clean, noisy) -> float:
    """The fraction of labels that actually differ from the clean ones."""
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    return float((clean != noisy).mean()) if clean.size else 0.0


def expected_corruption_rate(rate: float, num_classes: int, kind: str = "symmetric",
                             dataset: str | None = None) -> float:
    """``rate * (K - 1) / K`` for symmetric noise, ``rate`` for symmetric_exclusive and pair-flip; for
    asymmetric noise ``rate`` times the fraction of classes its map moves (balanced classes assumed)."""
    if kind == "symmetric":
        return rate * (num_classes - 1) / num_classes
    if kind == "asymmetric":
        mapping = asymmetric_map(dataset, num_classes)
        return rate * float((mapping != np.arange(num_classes)).mean())
    return rate if num_classes > 1 else 0.0


def noise_file(data_dir, dataset: str, rate: float, seed: int, kind: str = "symmetric", tag: str = "") -> Path:
    """Where the noisy labels of one setting are stored (``tag``: the name of the labels the noise was
    added to, when they are not the dataset's)."""
    name = f"{dataset}-{tag}" if tag else dataset
    return Path(data_dir) / "noisy_labels" / f"{name}-{kind}-r{rate:g}-s{seed}.npz"


def load_or_make_noisy_labels(data_dir, dataset: str, clean, rate: float, num_classes: int, seed: int,
                              kind: str = "symmetric", write: bool = True, tag: str = ""
                              ) -> tuple[np.ndarray, dict]:
    """(noisy labels [N], report) for one setting: read from :func:`noise_file` when it exists (and
    its clean labels match), otherwise generated with :func:`corrupt_labels` and written atomically
    (``write=False``: generate only, e.g. on the non-zero ranks of a distributed run).

    The report has ``kind``, ``rate`` (requested), ``seed``, ``actual_rate`` (measured),
    ``expected_rate`` and ``file``.
    """
    clean = np.asarray(clean, dtype=np.int64)
    path = noise_file(data_dir, dataset, rate, seed, kind, tag)
    noisy = read_noise_file(path, clean, num_classes) if path.exists() else None
    if noisy is None:
        noisy = corrupt_labels(clean, rate, num_classes, seed, kind, dataset)
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, clean=clean, noisy=noisy, rate=rate, seed=seed, kind=kind)
            os.replace(tmp, path)
    report = {"kind": kind, "rate": rate, "seed": seed, "actual_rate": corruption_rate(clean, noisy),
              "expected_rate": expected_corruption_rate(rate, num_classes, kind, dataset), "file": str(path)}
    return noisy, report


def check_label_array(labels, n: int, num_classes: int, where: str, hint: str = "") -> np.ndarray:
    """``labels`` as int64 [n] when it is a 1-D integer array of ``n`` labels in [0, ``num_classes``); else
    :class:`DataError` starting with ``where`` (and ending with ``hint``)."""
    tail = f"; {hint}" if hint else ""
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: expected a 1-D integer array of labels, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} of shape {getattr(labels, 'shape', '()')}"
                        f"{tail}")
    if len(labels) != n:
        raise DataError(f"{where}: {len(labels)} labels, but the training split has {n} examples{tail}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{where}: label {labels[bad[0]]} at index {bad[0]} is outside [0, {num_classes}){tail}")
    return labels.astype(np.int64)


def read_noise_file(path, clean: np.ndarray, num_classes: int) -> np.ndarray | None:
    """The ``noisy`` labels [N] int64 stored in ``path`` (an .npz, read without pickle), or None when its
    ``clean`` differs from ``clean`` (another dataset's file); a damaged or inconsistent file raises
    ``ValueError`` naming it."""
    hint = "delete it to regenerate it"
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic.startswith(b"PK"):
        # np.load would call any non-zip bytes "pickled data", which misleads
        raise DataError(f"{path}: not an .npz file (it does not start as a zip archive does); {hint}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            if "clean" not in stored.files or "noisy" not in stored.files:
                raise DataError(f"{path}: not a noisy-label file (arrays {stored.files}, expected clean and "
                                f"noisy); {hint}")
            stored_clean, noisy = stored["clean"], stored["noisy"]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        if str(err).startswith(str(path)):
            raise
        raise DataError(f"{path}: unreadable noisy-label file ({type(err).__name__}: {err}); {hint}") from None
    if not np.array_equal(stored_clean, clean):
        return None
    return check_label_array(noisy, len(clean), num_classes, f"{path}: array 'noisy'", hint)


def main(argv=None) -> int:
    """``python -m mentormix_fast.train.noise --dataset cifar10 --rate 0.4 --data-dir DIR``: write (or read)
    the noisy labels of one setting and print the report as JSON."""
    import argparse
    import json

    from . import argtypes
    from .data import DATASETS, FILE_DATASETS, load_dataset

    p = argparse.ArgumentParser(prog="python -m mentormix_fast.train.noise", description=main.__doc__.split(":")[0],
                                formatter_class=argtypes.HelpFormatter)
    p.add_argument("--dataset", choices=[d for d in DATASETS if d not in FILE_DATASETS], default="digits",
                   help="whose training labels to corrupt")
    p.add_argument("--data-dir", default="data", help="the data folder; the labels go to its noisy_labels/")
    p.add_argument("--rate", type=argtypes.unit_interval, required=True, help="noise rate r")
    p.add_argument("--kind", choices=NOISE_KINDS, default="symmetric", help="how a hit label is replaced")
    p.add_argument("--seed", type=argtypes.nonnegative_int, default=0, help="seed of the noise draws")
    args = p.parse_args(argv)
    if args.kind == "asymmetric" and args.dataset not in ASYMMETRIC_MAPS:
        p.error(f"argument --kind: asymmetric is defined for cifar10 and cifar100 only, not {args.dataset}")
    train, _, num_classes = load_dataset(args.dataset, args.data_dir)
    _, report = load_or_make_noisy_labels(args.data_dir, args.dataset, train.labels.numpy(), args.rate,
                                          num_classes, args.seed, args.kind)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
