"""The training program's data path: CIFAR folders, augmentation, batch order, lr schedule, presets."""

import pytest
import torch

from mentormix_fast.train.augment import (
    cifar_train_augment,
    hsv_to_rgb,
    random_crop_flip,
    rgb_to_hsv,
    to_signed_unit,
)
from mentormix_fast.train.cli import parse_args
from mentormix_fast.train.data import load_cifar, load_dataset, write_cifar_folder
from mentormix_fast.train.presets import PRESETS, RELEASE_PRESETS, RELEASE_SETTINGS, REPORTED_TOP1, release_setting
from mentormix_fast.train.trainer import BatchStream, learning_rate


@pytest.mark.parametrize("name, k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_folder_round_trip(tmp_path, fake_cifar, name, k):
    train, test = fake_cifar(50, k), fake_cifar(12, k, seed=1)
    write_cifar_folder(tmp_path, name, train, test)
    got_train, got_test, num_classes = load_cifar(name, tmp_path)
    assert num_classes == k
    assert torch.equal(got_train.images, train.images) and torch.equal(got_train.labels, train.labels)
    assert torch.equal(got_test.images, test.images) and torch.equal(got_test.labels, test.labels)


def test_missing_cifar_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_dataset("cifar10", tmp_path)


def test_digits_are_the_offline_default():
    train, test, k = load_dataset("digits")
    assert k == 10 and train.images.shape[1:] == (1, 8, 8) and len(train.labels) + len(test.labels) == 1797
    assert train.images.min() >= -1 and train.images.max() <= 1


def test_augmentation_range_shape_and_seed(fake_cifar):
    x = fake_cifar(16, 10).images
    a = cifar_train_augment(x, torch.Generator().manual_seed(4))
    b = cifar_train_augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, cifar_train_augment(x, torch.Generator().manual_seed(5)))


def test_test_mapping_is_the_release_scaling():
    x = torch.tensor([0, 127, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_signed_unit(x), (x.float() - 127.5) / 127.5)


def test_crop_and_flip_are_pad_crop_of_the_original():
    x = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6).repeat(64, 1, 1, 1)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x[0, 0], (2, 2, 2, 2))
    for img in out[:, 0]:
        found = any(torch.equal(img, cand) for dy in range(5) for dx in range(5)
                    for cand in (padded[dy:dy + 6, dx:dx + 6], padded[dy:dy + 6, dx:dx + 6].flip(1)))
        assert found


def test_hsv_round_trip():
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_batch_stream_covers_each_epoch_and_splits_ranks():
    n, b = 40, 4
    world = [BatchStream(n, b, 2, r, seed=7) for r in range(2)]
    seen = torch.cat([s.indices(t) for t in range(5) for s in world])
    assert sorted(seen.tolist()) == list(range(n))  # 5 steps x 2 ranks x 4 = one epoch, no repeats
    assert torch.equal(world[0].indices(3), BatchStream(n, b, 2, 0, seed=7).indices(3))  # stateless
    wrap = BatchStream(10, 4, 1, 0, seed=0).indices(2)  # positions 8..11 cross into epoch 1
    assert wrap.shape == (4,)


def test_learning_rate_staircase():
    args = parse_args(["--lr", "0.1", "--num-epochs-per-decay", "30", "--batch-size", "128"])
    steps_per_decay = 30 * 50000 / 128
    assert learning_rate(args, 0, 50000, 1) == pytest.approx(0.1)
    assert learning_rate(args, int(steps_per_decay), 50000, 1) == pytest.approx(0.1)  # 11718.75: floor
    assert learning_rate(args, int(steps_per_decay) + 1, 50000, 1) == pytest.approx(0.09)
    assert learning_rate(args, int(3 * steps_per_decay) + 1, 50000, 1) == pytest.approx(0.1 * 0.9 ** 3)


def test_release_defaults_and_presets():
    args = parse_args([])
    assert (args.batch_size, args.lr, args.lr_decay_factor, args.momentum, args.weight_decay) == (
        128, 0.1, 0.9, 0.9, 2e-4)
    assert (args.max_steps, args.ema_decay, args.burn_in_epoch, args.dataset) == (200_000, 0.9999, 10, "digits")
    assert len(RELEASE_PRESETS) == 8 and set(RELEASE_PRESETS) == set(REPORTED_TOP1)
    assert set(PRESETS) == {*RELEASE_PRESETS, "webvision-mini"}
    args = parse_args(["--preset", "cifar100-0.6"])
    assert (args.dataset, args.noise_rate, args.mixup_alpha, args.percentile, args.second_reweight) == (
        "cifar100", 0.6, 4.0, 0.3, True)
    assert args.model == "wide-resnet32" and args.num_epochs_per_decay == 30
    args = parse_args(["--preset", "cifar10-0.2", "--percentile", "0.5"])  # explicit flags win
    assert (args.percentile, args.mixup_alpha, args.second_reweight) == (0.5, 2.0, False)


def test_presets_come_from_the_one_settings_table():
    for dataset, table in RELEASE_SETTINGS.items():
        for rate, (alpha, p, second) in table.items():
            preset = PRESETS[f"{dataset}-{rate:g}"]
            assert (preset["mixup_alpha"], preset["percentile"], preset["second_reweight"]) == (alpha, p, second)
    assert release_setting(0.55) == RELEASE_SETTINGS["cifar10"][0.6]
    assert release_setting(0.8, "cifar100") == (8.0, 0.1, True)
