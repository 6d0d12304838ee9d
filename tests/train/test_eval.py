"""``python -m mentormix_fast.train.evaluate``: top-1 and top-5 of the EMA and raw weights on the clean test split,
JSON out."""

import json

import pytest

from mentormix_fast.train import checkpoint as ckpt
from mentormix_fast.train.evaluate import evaluate_checkpoint, main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, train_run):
    tmp = tmp_path_factory.mktemp("eval")
    return train_run(tmp / "run", tmp / "data", "--max-steps", "6", "--eval-every", "0", "--checkpoint-every", "3")


def test_latest_checkpoint_of_a_folder_matches_the_training_summary(run_dir, capsys):
    out_json = run_dir / "eval.json"
    assert main([str(run_dir), "--output", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert result["step"] == 6 and result["weights"] == "ema" and result["test_examples"] == 449
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["top1_ema"])
    assert result["top5"] == result["top5_ema"] == pytest.approx(summary["top5_ema"])
    for weights in ("ema", "raw"):
        for k in (1, 5):
            assert result[f"top{k}_{weights}"] == pytest.approx(summary[f"top{k}_{weights}"])
        assert result[f"top1_{weights}"] <= result[f"top5_{weights}"]
    printed = json.loads(capsys.readouterr().out)
    assert all(printed[k] == result[k] for k in ("top1", "top5_ema", "top1_raw", "top5_raw"))


def test_one_checkpoint_file_and_raw_weights(run_dir):
    first = ckpt.list_checkpoints(run_dir)[0][1]
    assert main([str(first), "--raw"]) == 0
    written = first.with_name("eval-3.json")
    result = json.loads(written.read_text())
    assert result["step"] == 3 and result["weights"] == "raw" and 0.0 <= result["top1"] <= 1.0
    assert (result["top1"], result["top5"]) == (result["top1_raw"], result["top5_raw"])
    assert evaluate_checkpoint(first)["weights"] == "ema"


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        evaluate_checkpoint(tmp_path)


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--device", "gpu0"]])
def test_bad_flags_exit_2(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), *argv])
    assert exc.value.code == 2 and f"argument {argv[0]}: " in capsys.readouterr().err
