"""MentorNet forward on given parameters, MentorNet-PD against its curriculum, and its fit."""

import json
import math
import os

import numpy as np
import pytest
import torch

from mentormix_fast import MentorNet, mentornet_pd
from mentormix_fast.train import fit_mentornet as tm


def numpy_mentornet(params, loss, loss_diff, epoch):
    """SPEC §1.4 written out with numpy, independently of the module."""
    sig = lambda a: 1 / (1 + np.exp(-a))
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    out = []
    for l_, d, e in zip(loss, loss_diff, epoch, strict=True):
        cells = []
        for name in ("fw", "bw"):
            k, b = p[f"lstm_{name}_kernel"], p[f"lstm_{name}_bias"]
            a = np.array([l_, d, 0.0]) @ k + b  # gates i, j, f, o
            cells.append(sig(a[0]) * np.tanh(a[1]))
        feat = np.concatenate([p["label_embedding"][0], p["epoch_embedding"][min(e, 99)], cells])
        h = np.tanh(feat @ p["fc1_weight"] + p["fc1_bias"])
        out.append(sig(h @ (p["fc2_weight"][:, 0] + p["fc2_bias"][0])))
    return np.array(out)


def test_forward_on_given_parameters_hand_case():
    net = MentorNet()
    with torch.no_grad():
        for prm in net.parameters():
            prm.zero_()
        net.lstm_fw_kernel[0, 0] = 1.0   # a_i = l
        net.lstm_fw_kernel[1, 1] = 1.0   # a_j = l - ma
        net.fc1_weight[7, 0] = 1.0       # h_0 = tanh(c_fw)
        net.fc2_weight[0, 0] = 2.0
        net.fc2_bias[0] = 0.5            # logit = h @ (W2 + b2) = 2.5 h_0 + 0.5 * sum_{k>0} tanh(0)
    loss, diff = torch.tensor([1.0, 0.0]), torch.tensor([0.5, -2.0])
    v = net(loss, diff, 3)
    c = [1 / (1 + math.exp(-1.0)) * math.tanh(0.5), 0.5 * math.tanh(-2.0)]
    want = [1 / (1 + math.exp(-2.5 * math.tanh(ci))) for ci in c]
    torch.testing.assert_close(v, torch.tensor(want))


def test_forward_matches_numpy_on_random_parameters():
    net = MentorNet(generator=torch.Generator().manual_seed(11)).double()
    g = torch.Generator().manual_seed(1)
    loss = torch.rand(20, generator=g, dtype=torch.float64) * 5
    diff = torch.randn(20, generator=g, dtype=torch.float64)
    epoch = torch.randint(0, 120, (20,), generator=g)  # > 99 is clamped, as in the release
    got = net(loss, diff, epoch).detach().numpy()
    want = numpy_mentornet(net.to_json_dict(), loss.numpy(), diff.numpy(), epoch.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_output_bias_is_added_to_the_weight_matrix():
    net = MentorNet(generator=torch.Generator().manual_seed(0))
    loss, diff = torch.tensor([0.3, 2.0]), torch.tensor([-0.1, 1.0])
    with torch.no_grad():
        base = net.logit(loss, diff, 40)
        net.fc2_bias += 1.0
        bias_shift = net.logit(loss, diff, 40) - base
        net.fc2_bias -= 1.0
        net.fc2_weight += 1.0
        weight_shift = net.logit(loss, diff, 40) - base
    # adding 1 to the bias acts like adding 1 to every output weight (shift = sum(h)), not like a bias
    torch.testing.assert_close(bias_shift, weight_shift)
    assert not torch.allclose(bias_shift, torch.ones(2))


# The bounds the shipped weights meet on the full grid, per region: (mean, maximum) absolute error.
BOUNDS = {
    "e <= 18": (0.005, 0.05),
    "19 <= e < 90, |loss_diff| > 0.15": (0.005, 0.15),
    "e >= 90": (0.01, 0.10),
}


def _payload():
    from importlib import resources

    return json.loads(resources.files("mentormix_fast").joinpath("data", "mentornet_pd.json").read_text())


def test_full_grid_covers_every_point():
    loss, diff, epoch = (t.reshape(120, 100, 100) for t in tm.full_grid())
    assert torch.equal(loss, torch.tensor(tm.LOSS_GRID)[:, None, None].expand(120, 100, 100))
    assert torch.equal(diff, torch.tensor(tm.LOSS_DIFF_GRID)[None, :, None].expand(120, 100, 100))
    assert torch.equal(epoch, torch.arange(100)[None, None, :].expand(120, 100, 100))
    assert len(set(tm.LOSS_GRID)) == 120 and len(set(tm.LOSS_DIFF_GRID)) == 100


def test_mentornet_pd_is_frozen_and_meets_the_bounds_on_the_full_grid():
    net = mentornet_pd()
    assert not any(p.requires_grad for p in net.parameters())
    table = tm.evaluate(net)
    assert set(table) == set(BOUNDS)
    for region, (mae, worst) in BOUNDS.items():
        assert table[region]["mae"] <= mae, (region, table[region])
        assert table[region]["max"] <= worst, (region, table[region])


def test_mentornet_pd_answers_the_linear_phase_on_every_epoch():
    # the release-like fit answered e = 90 and 92 like the threshold phase
    net = mentornet_pd()
    diff = torch.tensor([-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
    want = torch.tensor([1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    for e in range(90, 100):
        torch.testing.assert_close(net(torch.full((7,), 2.0), diff, e), want, atol=0.1, rtol=0)


def test_mentornet_pd_gives_the_same_weight_for_every_loss():
    net = mentornet_pd()
    assert torch.equal(net.lstm_fw_kernel[0], torch.zeros(4)) and torch.equal(net.lstm_bw_kernel[0], torch.zeros(4))
    diff = torch.linspace(-3, 3, 61)
    for e in (0, 50, 95):
        ref = net(torch.zeros(61), diff, e)
        for loss in (0.05, 7.0, 29.0, 1e3):
            assert torch.equal(net(torch.full((61,), loss), diff, e), ref)


def test_shipped_weights_record_their_fit():
    payload = _payload()
    recipe = payload["recipe"]
    for key, value in tm.DEFAULTS.items():
        assert recipe[key] == (list(value) if isinstance(value, tuple) else value), key
    table = tm.evaluate(mentornet_pd())
    assert set(payload["error_per_region"]) == set(table)
    for region, row in table.items():
        assert payload["error_per_region"][region]["mae"] == pytest.approx(row["mae"], rel=1e-3, abs=1e-6)
        assert payload["error_per_region"][region]["max"] == pytest.approx(row["max"], rel=1e-3, abs=1e-6)


def test_curriculum_target_phases():
    d = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    z = torch.zeros(4)
    assert tm.curriculum_target(z, d, torch.full((4,), 18)).tolist() == [1, 1, 1, 1]
    assert tm.curriculum_target(z, d, torch.full((4,), 19)).tolist() == [1, 1, 0, 0]
    assert tm.curriculum_target(z, d, torch.full((4,), 89)).tolist() == [1, 1, 0, 0]
    assert tm.curriculum_target(z, d, torch.full((4,), 90)).tolist() == [1, 1, 0.5, 0]


def test_epoch_logits_match_the_module():
    net = tm.init_net(7).double()
    diff = torch.linspace(-5, 5, 41, dtype=torch.float64)
    got = tm.epoch_logits(net, diff)
    assert got.shape == (41, 100)
    for e in (0, 18, 19, 57, 89, 90, 99):
        torch.testing.assert_close(got[:, e], net.logit(torch.full_like(diff, 3.0), diff, e), rtol=1e-12, atol=1e-12)


def test_fit_is_deterministic_and_keeps_fixed_what_it_should():
    a, recipe = tm.train(seed=3, steps=40)
    b, _ = tm.train(seed=3, steps=40)
    assert recipe["seed"] == 3 and recipe["steps"] == 40
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    init = MentorNet(generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.epoch_embedding, init.epoch_embedding)  # never trained, as in the release
    for kernel in (a.lstm_fw_kernel, a.lstm_bw_kernel):
        assert torch.equal(kernel[0], torch.zeros(4))  # the loss row stays 0
    assert not torch.equal(a.fc1_weight, init.fc1_weight)
    assert not torch.equal(a.lstm_bw_kernel[1], init.lstm_bw_kernel[1])
    assert not any(p.requires_grad for p in a.parameters())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MENTORMIX_SLOW_TESTS") != "1", reason="minutes on one core: MENTORMIX_SLOW_TESTS=1")
def test_refit_reproduces_the_shipped_weights_bit_for_bit(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "mentornet_pd.json"
    try:
        tm.main(["--out", str(out), "--log-every", "0"])  # single-threaded, as the shipped fit
    finally:
        torch.set_num_threads(threads)
    fresh, shipped = json.loads(out.read_text()), _payload()
    assert fresh["parameters"] == shipped["parameters"]
    assert fresh["recipe"] == shipped["recipe"] and fresh["error_per_region"] == shipped["error_per_region"]


def test_json_round_trip_and_shape_check():
    net = MentorNet(generator=torch.Generator().manual_seed(5))
    back = MentorNet.from_json_dict(json.loads(json.dumps(net.to_json_dict())))
    for p, q in zip(net.parameters(), back.parameters(), strict=True):
        assert torch.equal(p, q)
    bad = net.to_json_dict()
    bad["fc1_weight"] = bad["fc1_weight"][:3]
    with pytest.raises(ValueError, match="fc1_weight"):
        MentorNet.from_json_dict(bad)
