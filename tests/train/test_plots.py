"""``python -m mentormix_fast.train.plots``: accuracy-vs-step and clean/noisy weight histogram PNGs."""

from mentormix_fast.train.plots import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path, train_run):
    run = train_run(tmp_path / "run", tmp_path / "data", "--max-steps", "6", "--log-every", "2", "--eval-every", "3",
                    "--checkpoint-every", "0")
    figs = tmp_path / "figs"
    assert main([str(run), "--out", str(figs)]) == 0
    for name in ("accuracy.png", "weights_hist.png"):
        data = (figs / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
