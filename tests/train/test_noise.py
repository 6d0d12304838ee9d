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
