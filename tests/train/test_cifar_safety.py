"""The CIFAR "python version" batches load through an unpickler that admits only what they hold:
a crafted batch file is refused without running anything."""

import builtins
import pickle

import pytest
import torch

from mentormix_fast.train.data import load_cifar, write_cifar_folder


class Payload:
    """Pickles as a call that creates ``marker``: what a crafted file would run on an unsafe load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def _official_batch(split, label_key):
    """A dict shaped like the official files: bytes keys, a uint8 data array, labels as a list, names."""
    n = len(split.labels)
    return {b"batch_label": b"training batch 1 of 1", label_key.encode(): split.labels.tolist(),
            b"data": split.images.numpy().reshape(n, -1), b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_in_the_official_shape_load(tmp_path, fake_cifar, protocol):
    train, test = fake_cifar(20, 100), fake_cifar(6, 100, seed=1)
    folder = write_cifar_folder(tmp_path, "cifar100", train, test)
    for name, split in (("train", train), ("test", test)):
        with open(folder / name, "wb") as f:
            pickle.dump(_official_batch(split, "fine_labels") | {b"coarse_labels": [0] * len(split.labels)}, f,
                        protocol=protocol)
    got_train, got_test, _ = load_cifar("cifar100", tmp_path)
    assert torch.equal(got_train.images, train.images) and torch.equal(got_test.labels, test.labels)


def test_malicious_cifar_batch_does_not_run(tmp_path, fake_cifar):
    folder = write_cifar_folder(tmp_path, "cifar10", fake_cifar(20, 10), fake_cifar(5, 10, seed=1))
    marker = tmp_path / "ran"
    evil = _official_batch(fake_cifar(4, 10), "labels") | {b"batch_label": Payload(marker)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(pickle.UnpicklingError) as exc:
        load_cifar("cifar10", tmp_path)
    assert not marker.exists()
    assert str(exc.value).startswith(str(folder / "data_batch_3")) and ".exec, which" in str(exc.value)
    with open(folder / "data_batch_3", "rb") as f:  # the control: an unrestricted load runs it
        pickle.load(f)
    assert marker.exists()
