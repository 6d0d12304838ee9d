"""A user's folder of images with noisy labels, fine-tuned from a local pre-trained torchvision file in one
command, evaluated with top-1/top-5; and a broken image met in the middle of a run."""

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mentormix_fast.train import checkpoint, evaluate
from mentormix_fast.train.cli import main as train_main
from tests.train.test_image_data import make_images, write_list

COMMON = ["--image-size", "32", "--batch-size", "12", "--eval-every", "0", "--checkpoint-every", "0",
          "--device", "cpu", "--no-progress", "--no-tensorboard"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    train = make_images(root, 10, "train")
    test = make_images(root, 4, "val", seed=1)
    return root, train, test


def pretrain_resnet18(root, entries, path, steps: int = 40) -> None:
    """Stand-in for downloaded ImageNet weights: the library's 1000-class resnet18 trained with plain cross
    entropy on the clean images (resized to 32x32, ImageNet-normalised), saved as a state_dict file."""
    from mentormix_fast.train.images import normalize, read_image

    torch.manual_seed(1)
    net = torchvision.models.resnet18()
    x = normalize(torch.stack([F.interpolate(read_image(root / p)[None], size=(32, 32), mode="nearest")[0]
                               for p, _ in entries]))
    y = torch.tensor([label for _, label in entries])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_imagefolder_with_noisy_labels_fine_tunes_a_pretrained_torchvision_model(tmp_path, folder, capsys,
                                                                                freeze_bn):
    root, train, _ = folder
    pretrained = tmp_path / "resnet18.pth"
    pretrain_resnet18(root, train, pretrained)
    # the user's noisy labels: every fifth image moved to the next class
    noisy = tmp_path / "noisy.txt"
    write_list(noisy, [(path, (label + (j % 5 == 0)) % 3) for j, (path, label) in enumerate(train)])
    out = tmp_path / "run"
    # a pre-trained network's features are large: fine-tuning wants a small learning rate
    assert train_main(["--dataset", "imagefolder", "--data-dir", str(root), "--noisy-labels", str(noisy),
                       "--model", "resnet18", "--pretrained", str(pretrained), "--backbone-lr-mult", "0.1",
                       *(["--freeze-bn"] if freeze_bn else []), "--workers", "1", "--max-steps", "30",
                       "--lr", "0.001", "--ema-decay", "0.9", "--out-dir", str(out), *COMMON]) == 0
    err = capsys.readouterr().err
    assert "fc.weight" in err  # the replaced head is reported as not loaded
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == "resnet18"
    assert summary["top1_raw"] >= 0.9 and summary["top1_ema"] >= 0.9, summary  # chance: 1/3
    assert summary["top5_raw"] == 1.0  # three classes
    noise = summary["noise"]
    assert noise["labels"]["format"] == "list" and noise["rate"] == 0.0
    # the evaluation program on the run folder gives the same numbers from the checkpoint
    result = evaluate.evaluate_checkpoint(out, device="cpu", batch_size=5)
    assert result["test_examples"] == 12
    for key in ("top1_ema", "top5_ema", "top1_raw", "top5_raw"):
        assert result[key] == pytest.approx(summary[key]), key


@pytest.mark.parametrize("workers", [0, 1])
def test_a_broken_image_in_the_middle_of_a_run_is_named_with_its_list_line(tmp_path, folder, capsys, workers):
    root, train, test = folder
    broken = train[7][0]
    (root / broken).write_bytes(b"not an image at all")
    train_list = write_list(tmp_path / "train.txt", train)
    test_list = write_list(tmp_path / "test.txt", test)
    code = train_main(["--dataset", "filelist", "--data-dir", str(root), "--train-list", train_list,
                       "--test-list", test_list, "--model", "resnet8", "--workers", str(workers), "--max-steps", "6",
                       "--out-dir", str(tmp_path / "run"), *COMMON])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mentormix-train: error: ") and broken in last and "train.txt:8" in last, last


def test_a_diverging_run_stops_before_writing_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"the loss is (nan|inf) at step \d+: training diverged"):
        train_main(["--model", "resnet8", "--lr", "1e6", "--max-steps", "20", "--log-every", "5", "--batch-size", "16",
                    "--eval-every", "0", "--checkpoint-every", "10", "--out-dir", str(out), "--device", "cpu",
                    "--no-progress", "--no-tensorboard"])
    for path in out.glob("ckpt-*.pt"):  # one written before the loss turned non-finite holds finite weights
        state = checkpoint.load(path)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()), path


def test_evaluating_a_run_whose_images_moved_is_a_one_line_error(tmp_path, folder, capsys):
    root, train, test = folder
    train_list = write_list(tmp_path / "train.txt", train)
    test_list = write_list(tmp_path / "test.txt", test)
    out = tmp_path / "run"
    assert train_main(["--dataset", "filelist", "--data-dir", str(root), "--train-list", train_list,
                       "--test-list", test_list, "--model", "resnet8", "--workers", "0", "--max-steps", "2",
                       "--out-dir", str(out), *COMMON]) == 0
    assert evaluate.main([str(out), "--data-dir", str(tmp_path / "elsewhere"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mentormix-eval: error: ") and "elsewhere" in err, err


@pytest.mark.parametrize("where", ["no-such-run", "no-such-run/ckpt-000000099.pt", "empty-folder"])
def test_evaluating_a_missing_checkpoint_is_a_one_line_error(tmp_path, capsys, where):
    (tmp_path / "empty-folder").mkdir()
    assert evaluate.main([str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mentormix-eval: error: {tmp_path / where}: ") and "Traceback" not in err, err
