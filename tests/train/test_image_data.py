"""Image-file datasets (filelist, imagefolder): listing, errors naming FILE:LINE, deterministic batches,
and a short training run on generated images."""

import json

import pytest
import torch
from torchvision.io import encode_jpeg, write_png

from mentormix_fast.train.batches import FileSource, make_source
from mentormix_fast.train.cli import main as train_main
from mentormix_fast.train.data import load_dataset
from mentormix_fast.train.images import load_filelist, load_imagefolder, read_image
from mentormix_fast.train.trainer import BatchStream

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]  # one solid colour per class


def _image(label: int, seed: int, size=(36, 44)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(COLOURS[label], dtype=torch.float32).view(3, 1, 1)
    noisy = base + 12 * torch.randn((3, *size), generator=g)
    return noisy.clamp(0, 255).to(torch.uint8)


def _write(path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        write_png(image, str(path))
    else:
        path.write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())


def make_images(root, per_class: int, split: str, seed: int = 0) -> list[tuple[str, int]]:
    """``per_class`` images of each of the 3 classes under ``root/split/c<label>/``, alternately PNG and
    JPEG; returns (relative path, label) pairs."""
    entries = []
    for label in range(3):
        for j in range(per_class):
            rel = f"{split}/c{label}/img{j}.{'png' if j % 2 else 'jpg'}"
            _write(root / rel, _image(label, seed * 1000 + label * 100 + j))
            entries.append((rel, label))
    return entries


def write_list(path, entries, header: str = "") -> str:
    path.write_text(header + "".join(f"{p} {y}\n" for p, y in entries))
    return str(path)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    train = make_images(root, 8, "train")
    test = make_images(root, 3, "val", seed=1)
    lists = (write_list(tmp_path / "train.txt", train, "# training images\n\n"),
             write_list(tmp_path / "test.txt", test))
    return root, lists, train, test


def test_filelist_loads_paths_and_labels(image_root):
    root, (train_list, test_list), train_entries, test_entries = image_root
    train, test, k = load_dataset("filelist", root, train_list=train_list, test_list=test_list)
    assert k == 3 and len(train) == 24 and len(test) == 9 and train.in_channels == 3
    assert train.relative_path(0) == train_entries[0][0] and train.labels.tolist() == [y for _, y in train_entries]
    assert train.where(0) == f"{train_list}:3"  # after the comment and the blank line
    img = train.read(1)
    assert img.dtype == torch.uint8 and img.shape == (3, 36, 44)
    _, _, k = load_filelist(root, train_list, test_list, num_classes=5)
    assert k == 5


@pytest.mark.parametrize("line, message", [
    ("train/c0/img0.jpg\n", "expected 'relative/path label'"),
    ("train/c0/img0.jpg x\n", "label 'x' is not an integer"),
    ("train/c0/img0.jpg -1\n", "label -1 is negative"),
])
def test_bad_list_lines_name_the_file_and_line(tmp_path, image_root, line, message):
    root, (train_list, test_list), _, _ = image_root
    bad = tmp_path / "bad.txt"
    bad.write_text("train/c0/img1.png 0\n# comment\n" + line)
    with pytest.raises(ValueError, match=rf"{bad}:3: {message}"):
        load_filelist(root, bad, test_list)


def test_labels_beyond_num_classes_and_missing_files(tmp_path, image_root):
    root, (train_list, test_list), _, _ = image_root
    with pytest.raises(ValueError, match=rf"{train_list}:19: label 2 is not below --num-classes 2"):
        load_filelist(root, train_list, test_list, num_classes=2)
    missing = tmp_path / "missing.txt"
    missing.write_text("train/c0/nothing.jpg 0\n")
    with pytest.raises(FileNotFoundError, match=rf"{missing}:1: .*nothing.jpg does not exist"):
        load_filelist(root, missing, test_list)
    # A later missing or broken file is found when it is read, with its list line.
    (root / "train/c1/broken.png").write_bytes(b"not an image")
    lazy = tmp_path / "lazy.txt"
    lazy.write_text("train/c0/img1.png 0\ntrain/c1/gone.jpg 1\ntrain/c1/broken.png 1\n")
    train, _, _ = load_filelist(root, lazy, test_list)
    with pytest.raises(FileNotFoundError, match=rf"gone.jpg \(listed at {lazy}:2\): no such file"):
        train.read(1)
    with pytest.raises(ValueError, match=rf"broken.png \(listed at {lazy}:3\): cannot be decoded"):
        train.read(2)
    with pytest.raises(ValueError, match="needs --train-list"):
        load_filelist(root, None, test_list)


def test_imagefolder_and_its_class_check(tmp_path, image_root):
    root, _, train_entries, _ = image_root
    train, test, k = load_imagefolder(root)
    assert k == 3 and len(train) == 24 and len(test) == 9
    assert sorted(zip(train.paths.astype(str).tolist(), train.labels.tolist(), strict=True)) == sorted(train_entries)
    assert train.prefix == "train/" and read_image(root / train.relative_path(0)).shape[0] == 3
    make_images(root, 1, "val", seed=2)
    (root / "val/c1").rename(root / "val/other")
    with pytest.raises(ValueError, match=r"only in train/: \['c1'\], only in val/: \['other'\]"):
        load_imagefolder(root)
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        load_imagefolder(tmp_path / "nowhere")


def test_batches_are_a_function_of_seed_and_step(image_root):
    root, (train_list, test_list), _, _ = image_root
    train, test, _ = load_filelist(root, train_list, test_list)

    def source(workers):
        return make_source(train, test, BatchStream(len(train), 5, 1, 0, seed=3), "cpu", seed=3, image_size=16,
                           workers=workers)

    a = list(source(0).train_batches(0, 4))
    b = list(source(2).train_batches(2, 4))  # a "resumed" loader with worker processes
    assert isinstance(source(0), FileSource) and len(a) == 4 and len(b) == 2
    for (ia, xa), (ib, xb) in zip(a[2:], b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    idx, x = a[1]
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(idx, BatchStream(len(train), 5, 1, 0, seed=3).indices(1))
    one_idx, one_x = source(0).batch(1)
    assert torch.equal(one_idx, idx) and torch.equal(one_x, x)
    assert not torch.equal(a[0][1], a[1][1])
    before = torch.get_rng_state()
    list(source(0).train_batches(0, 1))
    assert torch.equal(before, torch.get_rng_state())  # the caller's RNG is untouched
    batches = list(source(0).test_data(4))
    assert [len(y) for _, y in batches] == [4, 4, 1] and batches[0][0].shape == (4, 3, 16, 16)
    assert torch.cat([y for _, y in batches]).tolist() == test.labels.tolist()


def test_training_on_a_filelist_learns_the_colours(tmp_path, image_root):
    root, (train_list, test_list), _, _ = image_root
    out = tmp_path / "run"
    assert train_main(["--dataset", "filelist", "--data-dir", str(root), "--train-list", train_list,
                       "--test-list", test_list, "--model", "resnet8", "--image-size", "32", "--workers", "0",
                       "--batch-size", "12", "--max-steps", "40", "--noise-rate", "0", "--lr", "0.05",
                       "--ema-decay", "0.9", "--burn-in-epoch", "0", "--eval-every", "0", "--checkpoint-every", "0",
                       "--log-every", "20", "--out-dir", str(out), "--device", "cpu", "--no-progress",
                       "--no-tensorboard"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["top1_ema"] > 0.6, summary  # chance: 1/3
    assert summary["noise"]["labels"] == "synthetic" and summary["noise"]["actual_rate"] == 0.0
    assert (root / "noisy_labels" / "filelist-symmetric-r0-s0.npz").exists()


def test_user_labels_on_a_filelist_leave_the_clean_columns_empty(tmp_path, image_root):
    root, (train_list, test_list), train_entries, _ = image_root
    labels = tmp_path / "noisy.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{(y + (j % 4 == 0)) % 3}\n"
                                               for j, (p, y) in enumerate(train_entries)))
    out = tmp_path / "run"
    assert train_main(["--dataset", "filelist", "--data-dir", str(root), "--train-list", train_list,
                       "--test-list", test_list, "--noisy-labels", str(labels), "--model", "resnet8",
                       "--image-size", "16", "--workers", "1", "--batch-size", "8", "--max-steps", "4",
                       "--log-every", "2", "--eval-every", "0", "--checkpoint-every", "0", "--out-dir", str(out),
                       "--device", "cpu", "--no-progress", "--no-tensorboard"]) == 0
    noise = json.loads((out / "summary.json").read_text())["noise"]
    assert noise["labels"]["format"] == "csv" and noise["actual_rate"] is None and noise["rate"] == 0.0
    rows = (out / "train_log.csv").read_text().splitlines()
    assert len(rows) == 3 and all(r.split(",")[6:8] == ["", ""] for r in rows[1:])
    assert all(r.endswith(",") for r in (out / "weights.csv").read_text().splitlines()[1:])


def test_test_data_for_an_evaluator(image_root):
    from mentormix_fast.train.batches import test_data
    from mentormix_fast.train.data import Split

    root, (train_list, test_list), _, _ = image_root
    _, test, _ = load_filelist(root, train_list, test_list)
    batches = test_data(test, 5, "cpu", image_size=8)
    assert [tuple(x.shape) for x, _ in batches] == [(5, 3, 8, 8), (4, 3, 8, 8)]
    assert len(list(batches)) == 2  # once per evaluation
    split = Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    assert test_data(split, 5, "cpu") is split


def test_a_resumed_filelist_run_equals_the_uninterrupted_one(tmp_path, image_root):
    root, (train_list, test_list), _, _ = image_root
    flags = ["--dataset", "filelist", "--data-dir", str(root), "--train-list", train_list, "--test-list", test_list,
             "--model", "resnet8", "--image-size", "16", "--batch-size", "8", "--max-steps", "4",
             "--eval-every", "0", "--checkpoint-every", "0", "--device", "cpu", "--no-progress", "--no-tensorboard"]

    def digests(out):
        return json.loads((out / "summary.json").read_text())["rank_digests"]

    assert train_main([*flags, "--workers", "0", "--out-dir", str(tmp_path / "whole")]) == 0
    assert train_main([*flags, "--workers", "1", "--out-dir", str(tmp_path / "parts"), "--stop-at-step", "2"]) == 0
    assert train_main([*flags, "--workers", "0", "--out-dir", str(tmp_path / "parts"), "--resume"]) == 0
    assert digests(tmp_path / "parts") == digests(tmp_path / "whole")
