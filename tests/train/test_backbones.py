"""Named torchvision/timm students, --pretrained weights, fine-tuning flags and the top-5 metric (offline)."""

import csv
import json

import pytest
import torch
from torch import nn

from mentormix_fast.train import models, world
from mentormix_fast.train.backbones import PretrainedError, read_state_dict
from mentormix_fast.train.cli import main, parse_args
from mentormix_fast.train.data import Split
from mentormix_fast.train.evaluate import accuracies, accuracy, top1_accuracy
from mentormix_fast.train.trainer import Trainer

QUIET = ["--no-progress", "--no-tensorboard", "--device", "cpu"]


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory):
    """(path, state_dict) of a 1000-class torchvision resnet18's weights saved as a plain state_dict."""
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(state, path)
    return path, state


def test_torchvision_model_gets_a_k_class_head():
    model = models.build_model("resnet18", 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    grey = models.build_model("resnet18", 3, in_channels=1)
    assert grey(torch.randn(2, 1, 8, 8)).shape == (2, 3)  # repeated to 3 channels; adaptive pooling
    assert models.head_parameter_names("resnet18", 3) == {"fc.weight", "fc.bias"}
    assert models.head_parameter_names("resnet8", 3, 1) == {"fc.weight", "fc.bias"}


def test_inception_v3_returns_plain_logits_in_train_mode():
    model = models.build_model("inception_v3", 4).train()
    assert model.AuxLogits is None
    out = model(torch.randn(2, 3, 75, 75))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)


@pytest.mark.parametrize("num_classes", [3, 1000])  # 1000: the head has the file's shape and is still new
def test_pretrained_file_loads_everything_but_the_head(imagenet_resnet18, num_classes):
    path, state = imagenet_resnet18
    torch.manual_seed(0)
    model = models.build_model("resnet18", num_classes)
    head_before = model.fc.weight.detach().clone()
    model, lines = models.load_pretrained(model, "resnet18", str(path), num_classes)
    own = model.state_dict()
    for name, t in state.items():
        if not name.startswith("fc."):
            assert torch.equal(own[name], t), name
    assert torch.equal(model.fc.weight, head_before)
    assert "fc.weight (head)" in lines[1] and "fc.bias (head)" in lines[1]
    assert lines[2].endswith("none")


def test_wrapped_and_ddp_prefixed_state_dicts_are_accepted(imagenet_resnet18, tmp_path):
    _, state = imagenet_resnet18
    for wrapper in ("state_dict", "model"):
        path = tmp_path / f"{wrapper}.pt"
        torch.save({wrapper: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
        assert read_state_dict(path).keys() == state.keys()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unusable_files_are_clear_errors(tmp_path):
    model = models.build_model("resnet8", 3, 1)
    cases = {"list.pt": [1, 2, 3], "numbers.pt": {"a": 1}, "other-net.pt": {"encoder.w": torch.zeros(2)}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    for name, expected in (("list.pt", "not a state_dict"), ("numbers.pt", "not a state_dict"),
                           ("other-net.pt", "no tensor matches"), ("absent.pt", "no such file")):
        with pytest.raises(PretrainedError, match=expected) as err:
            models.load_pretrained(model, "resnet8", str(tmp_path / name), 3, 1)
        assert str(err.value).startswith("--pretrained ")
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(PretrainedError, match="refused"):
        models.load_pretrained(model, "resnet8", str(tmp_path / "evil.pt"), 3, 1)
    assert not marker.exists()


def test_torchvision_weights_without_cache_or_download_name_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["--out-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), "--model", "resnet18",
                 "--pretrained", "torchvision", "--max-steps", "1", *QUIET]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("mentormix-train: error: --pretrained torchvision: resnet18's default weights are "
                              "not in the cache")
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-") in message and "--download" in message


@pytest.mark.parametrize("argv, expected", [
    (["--model", "resnet1234"], "argument --model: unknown model 'resnet1234'"),
    (["--model", "timm:no_such_net_xyz"], "argument --model: "),
    (["--pretrained", "/no/such/file.pt"], "argument --pretrained: no such file"),
    (["--model", "resnet18", "--pretrained", "timm"], "argument --pretrained: timm's weights need"),
    (["--model", "resnet8", "--pretrained", "torchvision"], "argument --pretrained: torchvision's weights need"),
    (["--backbone-lr-mult", "-1"], "argument --backbone-lr-mult: must be a finite number >= 0"),
])
def test_bad_model_flags_exit_2(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err


def test_timm_model_without_timm_is_a_flag_error(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(SystemExit) as exc:
        parse_args(["--model", "timm:inception_resnet_v2"])
    assert exc.value.code == 2
    assert "argument --model: 'timm:inception_resnet_v2' needs the timm package" in capsys.readouterr().err


def test_auto_model_per_dataset():
    assert parse_args(["--dataset", "digits"]).model == "resnet32"
    assert parse_args(["--dataset", "cifar10"]).model == "wide-resnet32"


# ------------------------------------------------------------------------------------------------
# timm (optional)
# ------------------------------------------------------------------------------------------------


def _fake_hf_cache(root, repo, state):
    """A Hugging Face hub cache folder holding ``state`` as ``repo``'s model.safetensors."""
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")


def test_timm_model_by_name_and_its_cached_weights(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    hub = pytest.importorskip("huggingface_hub")
    assert parse_args(["--model", "timm:resnet18"]).model == "timm:resnet18"
    model = models.build_model("timm:resnet18", 5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert models.head_parameter_names("timm:resnet18", 5) == {"fc.weight", "fc.bias"}

    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(PretrainedError, match="not cached: expected in the Hugging Face cache .*--download"):
        models.load_pretrained(model, "timm:resnet18", "timm", 5)
    torch.manual_seed(2)
    state = timm.create_model("resnet18", num_classes=1000).state_dict()
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    _fake_hf_cache(tmp_path / "hf", repo, state)
    loaded, lines = models.load_pretrained(model, "timm:resnet18", "timm", 5)
    own = loaded.state_dict()
    assert own["fc.weight"].shape == (5, 512) and "model.safetensors" in lines[0]
    assert all(torch.equal(own[k], t) for k, t in state.items() if not k.startswith("fc."))


# ------------------------------------------------------------------------------------------------
# Fine-tuning flags in the trainer
# ------------------------------------------------------------------------------------------------


def _trainer(tmp_path, *flags):
    args = parse_args(["--out-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), "--model", "resnet8",
                       "--batch-size", "16", "--max-steps", "4", *QUIET, *flags])
    return Trainer(args, world.DistInfo(0, 1, 0, torch.device("cpu")))


def test_backbone_lr_mult_scales_all_but_the_head(tmp_path):
    trainer = _trainer(tmp_path, "--backbone-lr-mult", "0.1", "--no-second-reweight", "--lr", "0.2")
    _, _, _, lr = trainer.train_step(0)
    head = {id(trainer.model.fc.weight), id(trainer.model.fc.bias)}
    groups = trainer.optimizer.param_groups
    assert len(groups) == 4 and sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))
    for g in groups:
        in_head = all(id(p) in head for p in g["params"])
        assert g["lr"] == pytest.approx(lr * (1.0 if in_head else 0.1))
        assert g["weight_decay"] in (0.0, 2e-4)
    assert {g["weight_decay"] for g in groups} == {0.0, 2e-4}  # the decay split is kept in both parts


def test_backbone_lr_mult_zero_freezes_the_backbone(tmp_path):
    trainer = _trainer(tmp_path, "--backbone-lr-mult", "0")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(0)
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("fc."), n
        assert p.requires_grad == n.startswith("fc."), n


def test_freeze_bn_keeps_running_stats_and_trains_the_affine_parameters(tmp_path):
    trainer = _trainer(tmp_path, "--freeze-bn")
    trainer.model.train()  # a train() call does not undo --freeze-bn
    bns = [m for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in bns]
    gamma = bns[-1].weight.detach().clone()
    trainer.train_step(0)
    trainer.train_step(1)
    for m, (mean, var, count) in zip(bns, stats, strict=True):
        assert not m.training
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == count
    assert not torch.equal(bns[-1].weight, gamma)


# ------------------------------------------------------------------------------------------------
# Top-5
# ------------------------------------------------------------------------------------------------


class _Logits(nn.Module):
    """The "images" are the logits."""

    def forward(self, x):
        return x.flatten(1)


def test_top5_on_a_hand_made_example():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5],     # label 3: third -> top-5 only
                           [9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],     # label 0: first
                           [0.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])    # label 0: last of 7 -> neither
    labels = torch.tensor([3, 0, 0])
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    assert accuracy(_Logits(), batches, "cpu") == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})
    split = Split(logits, labels)
    assert accuracy(_Logits(), split, "cpu", batch_size=2) == accuracy(_Logits(), batches, "cpu")
    assert top1_accuracy(_Logits(), split, "cpu") == pytest.approx(1 / 3)
    negated = nn.Sequential(_Logits(), nn.Identity()).train()
    negated.register_forward_hook(lambda m, args, out: -out)  # rows: label 5th, last, first
    both = accuracies({"a": _Logits(), "b": negated}, iter(batches), "cpu")  # one pass of a one-shot iterable
    assert both["a"] == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})
    assert both["b"] == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})
    assert negated.training  # modes are given back
    three = Split(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]))  # K = 3 < 5: top-5 is top-3
    assert accuracy(_Logits(), three, "cpu") == {"top1": 0.0, "top5": 1.0}


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------


def test_digits_run_with_a_pretrained_torchvision_resnet18(imagenet_resnet18, tmp_path, capsys):
    path, _ = imagenet_resnet18
    out, data = tmp_path / "run", tmp_path / "data"
    flags = ["--out-dir", str(out), "--data-dir", str(data), "--dataset", "digits", "--model", "resnet18",
             "--max-steps", "30", "--batch-size", "32", "--eval-every", "0", "--freeze-bn", "--backbone-lr-mult", "0.5",
             *QUIET]
    assert main([*flags, "--pretrained", str(path)]) == 0
    err = capsys.readouterr().err
    assert "not loaded from the file: fc.weight (head), fc.bias (head)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "resnet18" and summary["finished"]
    for key in ("top1_ema", "top5_ema", "top1_raw", "top5_raw"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["top5_ema"] >= summary["top1_ema"]
    with open(out / "test_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "top1", "top5", "top1_raw", "top5_raw"] and rows[0]["step"] == "30"

    path.rename(path.with_suffix(".moved"))  # a resume does not read --pretrained again
    try:
        assert main([*flags, "--pretrained", str(path), "--resume"]) == 0
        with pytest.raises(SystemExit, match="backbone_lr_mult"):
            main([*flags, "--backbone-lr-mult", "0.25", "--resume"])
    finally:
        path.with_suffix(".moved").rename(path)


def test_webvision_mini_preset():
    pytest.importorskip("timm")
    args = parse_args(["--preset", "webvision-mini", "--train-list", "train.txt", "--test-list", "val.txt"])
    assert (args.dataset, args.num_classes, args.image_size, args.model, args.noise_rate) == (
        "filelist", 50, 299, "timm:inception_resnet_v2", 0.0)
