"""Synthetic label noise: seeded, stored next to the data, corruption rate reported."""

import numpy as np
import pytest

from mentormix_fast.train.noise import (
    corrupt_labels,
    corruption_rate,
    expected_corruption_rate,
    load_or_make_noisy_labels,
    noise_file,
)


def _labels(n=20000, k=10):
    return np.random.default_rng(1).integers(0, k, n)


def test_symmetric_rate_includes_redraws_of_the_true_class():
    clean = _labels()
    noisy = corrupt_labels(clean, 0.4, 10, seed=3)
    assert abs(corruption_rate(clean, noisy) - 0.4 * 9 / 10) < 0.015
    assert expected_corruption_rate(0.4, 10) == pytest.approx(0.36)


def test_seeded_and_reproducible():
    clean = _labels()
    a = corrupt_labels(clean, 0.6, 10, seed=5)
    assert np.array_equal(a, corrupt_labels(clean, 0.6, 10, seed=5))
    assert not np.array_equal(a, corrupt_labels(clean, 0.6, 10, seed=6))


def test_pairflip_moves_to_the_next_class():
    clean = _labels()
    noisy = corrupt_labels(clean, 0.3, 10, seed=0, kind="pairflip")
    changed = noisy != clean
    assert np.all(noisy[changed] == (clean[changed] + 1) % 10)
    assert abs(changed.mean() - 0.3) < 0.015


@pytest.mark.parametrize("bad", [dict(rate=1.5), dict(kind="nope")])
def test_rejects_bad_arguments(bad):
    kwargs = dict(rate=0.2, num_classes=10, seed=0) | bad
    with pytest.raises(ValueError):
        corrupt_labels(_labels(100), **kwargs)


def test_saved_next_to_the_data_and_reused(tmp_path):
    clean = _labels(1000)
    noisy, report = load_or_make_noisy_labels(tmp_path, "digits", clean, 0.4, 10, seed=2)
    path = noise_file(tmp_path, "digits", 0.4, 2)
    assert path.exists() and report["file"] == str(path)
    assert report["actual_rate"] == pytest.approx(corruption_rate(clean, noisy))
    # A stored file wins over regeneration (e.g. a file shipped with the data).
    with np.load(path) as stored:
        fields = dict(stored)
    fields["noisy"] = (fields["noisy"] + 1) % 10
    np.savez(path, **fields)
    again, _ = load_or_make_noisy_labels(tmp_path, "digits", clean, 0.4, 10, seed=2)
    assert np.array_equal(again, fields["noisy"])


def test_command_line_writes_and_reports(tmp_path, capsys):
    import json

    from mentormix_fast.train.noise import main

    assert main(["--data-dir", str(tmp_path), "--rate", "0.6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rate"] == 0.6 and abs(report["actual_rate"] - 0.54) < 0.05
    assert (tmp_path / "noisy_labels" / "digits-symmetric-r0.6-s0.npz").exists()


@pytest.mark.parametrize("argv", [["--rate", "1.5"], ["--rate", "nan"], ["--rate", "0.4", "--seed", "-1"]])
def test_command_line_rejects_bad_values(capsys, argv):
    from mentormix_fast.train.noise import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "argument --" in capsys.readouterr().err


def test_existing_draws_are_unchanged():
    # symmetric and pairflip labels stored by earlier versions must come out the same
    clean = np.random.default_rng(1).integers(0, 10, 1000)
    sym, pair = corrupt_labels(clean, 0.4, 10, 7), corrupt_labels(clean, 0.4, 10, 7, kind="pairflip")
    assert sym[:12].tolist() == [4, 5, 7, 8, 0, 1, 3, 9, 2, 3, 0, 5] and int((sym * np.arange(1000)).sum()) == 2248787
    assert pair[:12].tolist() == [4, 5, 7, 0, 1, 1, 9, 9, 2, 3, 9, 5] and int((pair * np.arange(1000)).sum()) == 2235223


def test_symmetric_exclusive_never_draws_the_true_class():
    clean = _labels()
    noisy = corrupt_labels(clean, 0.4, 10, seed=3, kind="symmetric_exclusive")
    assert abs(corruption_rate(clean, noisy) - 0.4) < 0.015
    assert expected_corruption_rate(0.4, 10, "symmetric_exclusive") == 0.4
    changed = noisy != clean
    counts = np.bincount((noisy[changed] - clean[changed]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()  # uniform over the other 9


def test_asymmetric_cifar10_map():
    from mentormix_fast.train.noise import ASYMMETRIC_MAPS

    assert ASYMMETRIC_MAPS["cifar10"].tolist() == [0, 1, 0, 5, 7, 3, 6, 7, 8, 1]
    clean = _labels()
    noisy = corrupt_labels(clean, 0.6, 10, seed=0, kind="asymmetric", dataset="cifar10")
    changed = noisy != clean
    assert np.all(noisy[changed] == ASYMMETRIC_MAPS["cifar10"][clean[changed]])
    assert set(clean[changed].tolist()) == {2, 3, 4, 5, 9}
    expected = expected_corruption_rate(0.6, 10, "asymmetric", "cifar10")
    assert expected == pytest.approx(0.3) and abs(corruption_rate(clean, noisy) - expected) < 0.015


def test_asymmetric_cifar100_stays_in_the_superclass():
    from mentormix_fast.train.noise import ASYMMETRIC_MAPS, CIFAR100_SUPERCLASSES

    # the coarse label of each fine label 0..99, as CIFAR-100's training file lists them
    coarse = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
              0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18,
              17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5,
              8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
    assert [sorted(g) for g in CIFAR100_SUPERCLASSES] == [[f for f in range(100) if coarse[f] == c] for c in range(20)]
    mapping = ASYMMETRIC_MAPS["cifar100"]
    assert all(coarse[mapping[f]] == coarse[f] and mapping[f] != f for f in range(100))
    assert sorted(mapping.tolist()) == list(range(100))  # a cycle within each super-class
    clean = np.random.default_rng(0).integers(0, 100, 20000)
    noisy = corrupt_labels(clean, 0.4, 100, seed=1, kind="asymmetric", dataset="cifar100")
    assert abs(corruption_rate(clean, noisy) - 0.4) < 0.015


def test_asymmetric_needs_a_cifar_dataset():
    with pytest.raises(ValueError, match="--noise-kind asymmetric: defined for cifar10 and cifar100 only"):
        corrupt_labels(_labels(100), 0.4, 10, seed=0, kind="asymmetric", dataset="digits")


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(noisy=f["noisy"][:-1]), "999 labels, but the training split has 1000 examples"),
    (lambda f: f.update(noisy=f["noisy"].astype(np.float32)), r"expected a 1-D integer array of labels, got float32 of shape \(1000,\)"),
    (lambda f: f.update(noisy=np.where(np.arange(1000) == 5, 10, f["noisy"])), r"label 10 at index 5 is outside"),
    (lambda f: f.update(noisy=np.array([object()] * 1000)), "unreadable noisy-label file"),
    (lambda f: f.pop("noisy"), "not a noisy-label file"),
])
def test_a_bad_stored_file_is_an_error_naming_it(tmp_path, change, message):
    clean = _labels(1000)
    load_or_make_noisy_labels(tmp_path, "digits", clean, 0.4, 10, seed=2)
    path = noise_file(tmp_path, "digits", 0.4, 2)
    with np.load(path) as stored:
        fields = dict(stored)
    change(fields)
    np.savez(path, **fields)
    with pytest.raises(ValueError, match=rf"{path}: .*{message}.*delete it to regenerate it"):
        load_or_make_noisy_labels(tmp_path, "digits", clean, 0.4, 10, seed=2)
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=rf"{path}: unreadable"):
        load_or_make_noisy_labels(tmp_path, "digits", clean, 0.4, 10, seed=2)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, b"\x80\x04K\x01."])
def test_a_stored_file_that_is_no_npz_says_so(tmp_path, content):
    clean = _labels(100)
    path = noise_file(tmp_path, "digits", 0.4, 2)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path}: not an .npz file .*delete it to regenerate it"):
        load_or_make_noisy_labels(tmp_path, "digits", clean, 0.4, 10, seed=2)
