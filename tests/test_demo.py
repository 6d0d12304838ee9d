"""The offline main job: it runs, prints its table, and MentorMix beats CE under heavy noise."""

import pytest
import torch

from mentormix_fast import demo
from mentormix_fast.train import presets


def test_demo_prints_a_row_per_method(capsys):
    before = torch.get_num_threads()
    demo.main(["--noise", "0.4", "--steps", "40", "--seeds", "1"])
    assert torch.get_num_threads() == before  # one thread while it runs, the caller's count afterwards
    out = capsys.readouterr().out
    for method in demo.METHODS:
        assert f"| {method}" in out
    assert "actual corruption" in out


@pytest.mark.parametrize("noise", [0.4, 0.6])
def test_mentormix_ahead_of_ce(noise):
    acc = demo.run(noise, seeds=[0], steps=400)
    assert acc["MentorMix"][0] > acc["CE"][0] + 0.05


def test_release_setting_picks_nearest_row():
    assert demo.release_setting is presets.release_setting  # the training program's table, not a copy
    assert demo.release_setting(0.4) == (8.0, 0.6, False)
    assert demo.release_setting(0.55) == (8.0, 0.6, True)
    assert demo.release_setting(0.0) == (2.0, 0.8, False)


@pytest.mark.parametrize("argv", [["--noise", "1.5"], ["--steps", "0"], ["--seeds", "0"], ["--threads", "-1"]])
def test_bad_flags_are_rejected(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2 and f"argument {argv[0]}: " in capsys.readouterr().err
