"""The trainer's command line: help text, range checks (exit code 2 naming the flag), devices, threads."""

import json
import re

import pytest
import torch

from mentormix_fast.train import argtypes
from mentormix_fast.train.cli import build_parser, main, parse_args
from mentormix_fast.train.presets import PRESETS, REPORTED_TOP1
from mentormix_fast.train.trainer import choose_threads


def test_every_flag_has_help_and_shows_its_default():
    parser = build_parser()
    formatter = parser._get_formatter()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(actions) >= 40  # every one of them below
    for action in actions:
        assert action.help, action.option_strings
        assert "default" in formatter._get_help_string(action), action.option_strings


def test_help_lists_defaults_ranges_and_the_presets_table(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 0.1; accepts > 0)" in out  # --lr
    assert "accepts in [0, 1))" in out  # --ema-decay, --momentum
    for name, values in PRESETS.items():
        row = re.search(rf"^\s+{re.escape(name)}\s+(.*)$", out, re.MULTILINE)
        assert row, name
        cells = row.group(1).split()
        assert cells[:3] == [values["dataset"], f"{values['noise_rate']:g}", values["noise_kind"]]
        assert cells[3:6] == [f"{values['mixup_alpha']:g}", f"{values['percentile']:g}",
                              "yes" if values["second_reweight"] else "no"]
        if name in REPORTED_TOP1:
            assert cells[-1] == f"{REPORTED_TOP1[name]:.3f}"
    flat = " ".join(out.split())
    for flag in ("--model wide-resnet32", "--max-steps 200000", "--burn-in-epoch 10", "--num-epochs-per-decay 30"):
        assert flag in flat


BAD = [
    (["--lr", "nan"], "--lr", "> 0"),
    (["--lr", "inf"], "--lr", "> 0"),
    (["--lr", "0"], "--lr", "> 0"),
    (["--lr", "-0.1"], "--lr", "> 0"),
    (["--lr", "fast"], "--lr", "> 0"),
    (["--ema-decay", "5"], "--ema-decay", "in [0, 1)"),
    (["--ema-decay", "1"], "--ema-decay", "in [0, 1)"),
    (["--stop-at-step", "-1"], "--stop-at-step", ">= 0"),
    (["--lr-decay-factor", "-2"], "--lr-decay-factor", "in (0, 1]"),
    (["--lr-decay-factor", "0"], "--lr-decay-factor", "in (0, 1]"),
    (["--batch-size", "0"], "--batch-size", ">= 1"),
    (["--batch-size", "-4"], "--batch-size", ">= 1"),
    (["--batch-size", "2.5"], "--batch-size", ">= 1"),
    (["--log-every", "0"], "--log-every", ">= 1"),
    (["--eval-batch-size", "0"], "--eval-batch-size", ">= 1"),
    (["--num-epochs-per-decay", "0"], "--num-epochs-per-decay", "> 0"),
    (["--max-steps", "0"], "--max-steps", ">= 1"),
    (["--percentile", "1.5"], "--percentile", "in [0, 1]"),
    (["--percentile", "-0.1"], "--percentile", "in [0, 1]"),
    (["--mixup-alpha", "-1"], "--mixup-alpha", ">= 0"),
    (["--mixup-alpha", "nan"], "--mixup-alpha", ">= 0"),
    (["--mixup-alpha", "inf"], "--mixup-alpha", ">= 0"),
    (["--noise-rate", "1.2"], "--noise-rate", "in [0, 1]"),
    (["--noise-rate", "-0.2"], "--noise-rate", "in [0, 1]"),
    (["--loss-ma-decay", "2"], "--loss-ma-decay", "in [0, 1]"),
    (["--momentum", "1"], "--momentum", "in [0, 1)"),
    (["--momentum", "-0.5"], "--momentum", "in [0, 1)"),
    (["--weight-decay=-1e-4"], "--weight-decay", ">= 0"),
    (["--weight-decay", "-0.01"], "--weight-decay", ">= 0"),
    (["--burn-in-epoch", "-1"], "--burn-in-epoch", ">= 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every", ">= 0"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints", ">= 0"),
    (["--eval-every", "-5"], "--eval-every", ">= 0"),
    (["--seed", "-1"], "--seed", ">= 0"),
    (["--noise-seed", "-3"], "--noise-seed", ">= 0"),
    (["--threads", "-1"], "--threads", ">= 0"),
    (["--device", "gpu0"], "--device", "auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device", "auto, cpu, cuda or cuda:N"),
    (["--preset", "cifar10-0.4", "--percentile", "7"], "--percentile", "in [0, 1]"),
]


@pytest.mark.parametrize("argv, flag, accepted", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_out_of_range_values_exit_2_naming_the_flag(capsys, argv, flag, accepted):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and accepted in err, err
    assert "Traceback" not in err


def test_main_rejects_before_touching_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out-dir", str(tmp_path / "run"), "--lr", "nan"])
    assert exc.value.code == 2 and "argument --lr: must be a finite number > 0, got nan" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_edges_of_the_ranges_are_accepted():
    args = parse_args(["--ema-decay", "0", "--lr-decay-factor", "1", "--percentile", "1", "--mixup-alpha", "0",
                       "--momentum", "0", "--weight-decay", "0", "--stop-at-step", "0", "--noise-rate", "0",
                       "--loss-ma-decay", "1", "--checkpoint-every", "0", "--keep-checkpoints", "0", "--threads", "3",
                       "--device", "cpu"])
    assert (args.ema_decay, args.lr_decay_factor, args.percentile, args.mixup_alpha) == (0.0, 1.0, 1.0, 0.0)
    assert (args.stop_at_step, args.threads, args.device) == (0, 3, "cpu")


def test_cuda_without_a_gpu_is_a_flag_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(SystemExit) as exc:
            parse_args(["--device", device])
        assert exc.value.code == 2
        assert f"argument --device: {device} asked for, but torch sees no CUDA device" in capsys.readouterr().err
    assert parse_args(["--device", "auto"]).device == "auto"


def test_cuda_index_beyond_the_count_is_a_flag_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_args(["--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit) as exc:
        parse_args(["--device", "cuda:2"])
    assert exc.value.code == 2
    assert "argument --device: cuda:2 asked for, but this machine has 2 CUDA device(s)" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "2")  # a third torchrun process on a 2-GPU node
    with pytest.raises(SystemExit) as exc:
        parse_args(["--device", "cuda"])
    assert exc.value.code == 2 and "argument --device: cuda gives local rank 2" in capsys.readouterr().err


def test_converters_say_what_they_accept():
    assert argtypes.positive_int("3") == 3 and argtypes.positive_int.accepts == "integer >= 1"
    assert argtypes.finite_float(0.0, 1.0, hi_inclusive=False).accepts == "in [0, 1)"
    assert argtypes.unit_interval("1") == 1.0
    with pytest.raises(ValueError):
        argtypes.finite_float()


@pytest.mark.parametrize("requested, device, parameters, expected", [
    (0, "cpu", 75_290, 1),          # resnet8
    (0, "cpu", 464_154, 1),         # resnet32 (the digits default)
    (0, "cpu", 29_442_378, None),   # the wide student: torch's default
    (0, "cuda", 75_290, None),      # a GPU run: torch's default
    (3, "cpu", 75_290, 3),
    (2, "cuda", 29_442_378, 2),
])
def test_automatic_threads(requested, device, parameters, expected):
    assert choose_threads(requested, torch.device(device), parameters) == expected


def test_a_small_cpu_run_uses_one_thread_and_gives_the_count_back(tmp_path, train_run):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        out = train_run(tmp_path / "run", tmp_path / "data", "--max-steps", "2", "--eval-every", "0",
                        "--checkpoint-every", "0", "--device", "cpu")
        assert json.loads((out / "summary.json").read_text())["threads"] == 1
        assert torch.get_num_threads() == 3
        out = train_run(tmp_path / "run2", tmp_path / "data", "--max-steps", "2", "--eval-every", "0",
                        "--checkpoint-every", "0", "--device", "cpu", "--threads", "2")
        assert json.loads((out / "summary.json").read_text())["threads"] == 2
    finally:
        torch.set_num_threads(before)
