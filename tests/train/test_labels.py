"""--noisy-labels: list, CSV and CIFAR-N files, matched to the dataset, with errors naming FILE:LINE;
the run's label report; the flags' defaults."""

import argparse
import csv
import json

import numpy as np
import pytest
import torch

from mentormix_fast.train.cli import parse_args
from mentormix_fast.train.data import Split
from mentormix_fast.train.images import FileSplit
from mentormix_fast.train.labels import describe, load_noisy_labels, read_cifar_n, training_labels

K = 4


def _file_split(n=6, prefix=""):
    paths = np.array([f"{prefix}c{i % K}/img{i}.jpg".encode() for i in range(n)])
    return FileSplit(root=None, paths=paths, labels=torch.arange(n) % K, origin="train.txt", prefix=prefix)


def _split(n=6):
    return Split(torch.zeros(n, 1, 2, 2), torch.arange(n) % K)


def _args(tmp_path, noisy_labels=None, key=None, rate=0.0, dataset="digits", kind="symmetric"):
    return argparse.Namespace(data_dir=str(tmp_path), dataset=dataset, noise_rate=rate, noise_seed=0, noise_kind=kind,
                              noisy_labels=None if noisy_labels is None else str(noisy_labels),
                              noisy_labels_key=key)


def test_list_file_matched_by_path(tmp_path):
    split = _file_split()
    f = tmp_path / "noisy.txt"
    f.write_text("# path label\n" + "".join(f"c{i % K}/img{i}.jpg {(i + 1) % K}\n" for i in reversed(range(6))))
    labels, source = load_noisy_labels(f, "filelist", split, K)
    assert labels.tolist() == [(i + 1) % K for i in range(6)]
    assert source == {"file": str(f), "format": "list", "key": None}
    # imagefolder's paths start with train/; a file may give them with or without it
    labels, _ = load_noisy_labels(f, "imagefolder", _file_split(prefix="train/"), K)
    assert labels.tolist() == [(i + 1) % K for i in range(6)]


@pytest.mark.parametrize("header", ["path,label\n", ""])
def test_csv_with_or_without_header(tmp_path, header):
    f = tmp_path / "noisy.csv"
    f.write_text(header + "".join(f"c{i % K}/img{i}.jpg,{i % 2}\n" for i in range(6)))
    labels, source = load_noisy_labels(f, "filelist", _file_split(), K)
    assert labels.tolist() == [i % 2 for i in range(6)] and source["format"] == "csv"


def test_datasets_without_paths_take_indices_or_one_label_per_line(tmp_path):
    f = tmp_path / "by_index.csv"
    f.write_text("index,label\n" + "".join(f"{i},{3 - i % K}\n" for i in reversed(range(6))))
    assert load_noisy_labels(f, "digits", _split(), K)[0].tolist() == [3 - i % K for i in range(6)]
    f = tmp_path / "plain.txt"
    f.write_text("\n".join(str(i % 3) for i in range(6)) + "\n")
    assert load_noisy_labels(f, "digits", _split(), K)[0].tolist() == [i % 3 for i in range(6)]


@pytest.mark.parametrize("body, line, message", [
    ("c0/img0.jpg 1\nc1/img9.jpg 1\n", 2, "'c1/img9.jpg' is not a training image"),
    ("c0/img0.jpg 1\nc0/img0.jpg 2\n", 2, r"'c0/img0.jpg' is labelled again \(first at line 1\)"),
    ("c0/img0.jpg 1\nc1/img1.jpg one\n", 2, "label 'one' is not an integer"),
    ("# x\nc0/img0.jpg 7\n", 2, r"label 7 is outside \[0, 4\)"),
    ("c0/img0.jpg 1\n3\n", 2, "expected 'path label'"),
])
def test_bad_list_lines(tmp_path, body, line, message):
    f = tmp_path / "bad.txt"
    f.write_text(body)
    with pytest.raises(ValueError, match=rf"{f}:{line}: {message}"):
        load_noisy_labels(f, "filelist", _file_split(), K)


def test_incomplete_or_overlong_files(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("c0/img0.jpg 1\n")
    with pytest.raises(ValueError, match=rf"{f}: no label for 5 of the 6 training examples, e.g. 'c1/img1.jpg'"):
        load_noisy_labels(f, "filelist", _file_split(), K)
    f.write_text("1\n" * 7)
    with pytest.raises(ValueError, match=rf"{f}:7: label number 7, but the training split has only 6"):
        load_noisy_labels(f, "digits", _split(), K)
    f.write_text("1\n" * 5)
    with pytest.raises(ValueError, match=rf"{f}: 5 labels, but the training split has 6"):
        load_noisy_labels(f, "digits", _split(), K)
    f.write_text("0 1\n9 1\n")
    with pytest.raises(ValueError, match=rf"{f}:2: '9' is not an example index in \[0, 6\)"):
        load_noisy_labels(f, "digits", _split(), K)
    c = tmp_path / "bad.csv"
    c.write_text("path,label\nc0/img0.jpg,1,2\n")
    with pytest.raises(ValueError, match=rf"{c}:2: expected 2 fields"):
        load_noisy_labels(c, "filelist", _file_split(), K)


def _cifar_n(path, clean, **arrays):
    torch.save({"clean_label": np.asarray(clean), **{k: np.asarray(v) for k, v in arrays.items()}}, path)
    return path


def test_cifar_n_keys_and_clean_check(tmp_path):
    split = _split(8)
    clean = split.labels.numpy()
    worse, aggre = (clean + 1) % K, clean.copy()
    aggre[0] = 3
    f = _cifar_n(tmp_path / "CIFAR-10_human.pt", clean, worse_label=worse, aggre_label=aggre)
    assert sorted(read_cifar_n(f)) == ["aggre_label", "clean_label", "worse_label"]
    labels, source = load_noisy_labels(f, "cifar10", split, K)
    assert labels.tolist() == worse.tolist() and source == {"file": str(f), "format": "cifar-n", "key": "worse_label"}
    labels, _ = load_noisy_labels(f, "cifar10", split, K, key="aggre_label")
    assert labels.tolist() == aggre.tolist()
    with pytest.raises(ValueError, match=r"no key 'random_label1' \(--noisy-labels-key\)"):
        load_noisy_labels(f, "cifar10", split, K, key="random_label1")
    with pytest.raises(ValueError, match="not a CIFAR-N key"):
        load_noisy_labels(f, "cifar10", split, K, key="labels")
    with pytest.raises(ValueError, match="for cifar10/cifar100, not --dataset digits"):
        load_noisy_labels(f, "digits", split, K)
    other = clean.copy()
    other[5] = (other[5] + 1) % K
    g = _cifar_n(tmp_path / "other.pt", other, noisy_label=other)
    with pytest.raises(ValueError, match=r"key 'clean_label' differs from the cifar100 training labels at index 5"):
        load_noisy_labels(g, "cifar100", split, K)


def test_cifar_n_bad_arrays(tmp_path):
    split = _split(8)
    clean = split.labels.numpy()
    f = _cifar_n(tmp_path / "short.pt", clean, noisy_label=clean[:5])
    with pytest.raises(ValueError, match="key 'noisy_label': 5 labels, but the training split has 8"):
        load_noisy_labels(f, "cifar100", split, K)
    bad = clean.copy()
    bad[3] = 9
    f = _cifar_n(tmp_path / "range.pt", clean, noisy_label=bad)
    with pytest.raises(ValueError, match=r"key 'noisy_label': label 9 at index 3 is outside \[0, 4\)"):
        load_noisy_labels(f, "cifar100", split, K)
    f = _cifar_n(tmp_path / "float.pt", clean, noisy_label=clean.astype(np.float32))
    with pytest.raises(ValueError, match="refused|expected a 1-D integer array"):
        load_noisy_labels(f, "cifar100", split, K)


class _RunsCode:
    """Unpickling this would create a file (a stand-in for any code a crafted file could run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_cifar_n_file_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "ran"
    f = tmp_path / "evil.pt"
    torch.save({"clean_label": np.zeros(8, np.int64), "noisy_label": _RunsCode(marker)}, f)
    with pytest.raises(ValueError, match=rf"{f}: refused: .*nothing in it was run"):
        load_noisy_labels(f, "cifar100", _split(8), K)
    assert not marker.exists()
    g = tmp_path / "garbage.pt"
    g.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=str(g)):
        read_cifar_n(g)


def test_training_labels_reports(tmp_path):
    split = _split(8)
    clean = split.labels.numpy()
    noisy = clean.copy()
    noisy[:2] = (noisy[:2] + 1) % K
    f = tmp_path / "CIFAR-100_human.pt"
    _cifar_n(f, clean, noisy_label=noisy)
    labels, known, report = training_labels(_args(tmp_path, f, dataset="cifar100"), split, K)
    assert labels.tolist() == noisy.tolist() and known.tolist() == clean.tolist()
    assert report["labels"]["key"] == "noisy_label" and report["file_rate"] == report["actual_rate"] == 0.25
    assert "CIFAR-100_human.pt [noisy_label]" in describe(report)
    # synthetic noise on top of the file's labels, stored under a name of its own
    labels, _, report = training_labels(_args(tmp_path, f, rate=1.0, dataset="cifar100", kind="pairflip"), split, K)
    assert labels.tolist() == ((noisy + 1) % K).tolist() and report["synthetic_rate"] == 1.0
    assert report["file"].endswith("cifar100-CIFAR-100_human-noisy_label-pairflip-r1-s0.npz")
    # an image-file dataset's clean labels are unknown
    lst = tmp_path / "noisy.txt"
    lst.write_text("".join(f"c{i % K}/img{i}.jpg 0\n" for i in range(6)))
    _, known, report = training_labels(_args(tmp_path, lst, dataset="filelist"), _file_split(), K)
    assert known is None and report["actual_rate"] is None and report["file_rate"] is None
    assert "unknown" in describe(report)
    _, known, report = training_labels(_args(tmp_path, rate=0.5), split, K)
    assert report["labels"] == "synthetic" and known.tolist() == clean.tolist()


def test_flags():
    assert parse_args([]).noise_rate == 0.4
    assert parse_args(["--noisy-labels", "x.csv"]).noise_rate == 0.0
    assert parse_args(["--noisy-labels", "x.csv", "--noise-rate", "0.2"]).noise_rate == 0.2
    assert parse_args(["--preset", "cifar10-0.6", "--noisy-labels", "x.pt"]).noise_rate == 0.0
    assert parse_args(["--preset", "cifar10-0.6"]).noise_rate == 0.6


@pytest.mark.parametrize("argv, message", [
    (["--noisy-labels-key", "worse_label"], "argument --noisy-labels-key: needs --noisy-labels"),
    (["--noise-kind", "asymmetric"], "argument --noise-kind: asymmetric is defined for cifar10 and cifar100"),
    (["--dataset", "filelist", "--train-list", "a.txt"], "filelist needs --train-list FILE and --test-list FILE"),
    (["--train-list", "a.txt"], "argument --train-list: only for --dataset filelist"),
])
def test_flag_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_digits_run_on_user_labels(tmp_path, train_run):
    from mentormix_fast.train.data import load_digits

    train, _, _ = load_digits()
    labels = train.labels.numpy().copy()
    labels[::10] = (labels[::10] + 1) % 10
    f = tmp_path / "digits_noisy.csv"
    with open(f, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["index", "label"])
        w.writerows(enumerate(labels.tolist()))
    out = train_run(tmp_path / "run", tmp_path / "data", "--noisy-labels", str(f), "--max-steps", "2",
                    "--log-every", "1", "--eval-every", "0", "--checkpoint-every", "0", "--device", "cpu")
    noise = json.loads((out / "summary.json").read_text())["noise"]
    assert noise["labels"] == {"file": str(f), "format": "csv", "key": None} and noise["rate"] == 0.0
    assert noise["actual_rate"] == pytest.approx((labels != train.labels.numpy()).mean())
    assert not (tmp_path / "data" / "noisy_labels").exists()  # no synthetic noise, nothing stored
