"""``python -m mentormix_fast.plots``: accuracy-vs-step and clean/noisy weight histogram PNGs."""

from mentormix_fast.plots import main
from mentormix_fast.train import main as train_main

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path):
    run = tmp_path / "run"
    train_main(["--out-dir", str(run), "--data-dir", str(tmp_path / "data"), "--model", "resnet8", "--batch-size",
                "16", "--max-steps", "6", "--log-every", "2", "--eval-every", "3", "--checkpoint-every", "0",
                "--no-progress", "--no-tensorboard"])
    figs = tmp_path / "figs"
    assert main([str(run), "--out", str(figs)]) == 0
    for name in ("accuracy.png", "weights_hist.png"):
        data = (figs / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
