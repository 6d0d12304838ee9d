"""MentorNet forward on given parameters, MentorNet-PD against its curriculum, and its trainer."""

import json
import math

import numpy as np
import pytest
import torch

from mentormix_fast import MentorNet, mentornet_pd
from mentormix_fast import train_mentornet as tm


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


def test_mentornet_pd_is_frozen_and_follows_its_curriculum():
    net = mentornet_pd()
    assert not any(p.requires_grad for p in net.parameters())
    g = torch.Generator().manual_seed(2024)  # fresh grid points, not the training draw
    n = 20_000
    loss = torch.tensor(tm.LOSS_GRID)[torch.randint(0, len(tm.LOSS_GRID), (n,), generator=g)]
    diff = torch.tensor(tm.LOSS_DIFF_GRID)[torch.randint(0, len(tm.LOSS_DIFF_GRID), (n,), generator=g)]
    epoch = torch.randint(0, 100, (n,), generator=g)
    report = tm.evaluate(net, loss, diff, epoch)
    assert report["burn-in (e <= 18)"] < 0.01
    assert report["threshold (19 <= e < 90)"] < 0.01
    assert report["linear (e >= 90)"] < 0.05


def test_shipped_weights_record_their_training():
    from importlib import resources

    payload = json.loads(resources.files("mentormix_fast").joinpath("data", "mentornet_pd.json").read_text())
    assert payload["steps"] == 30_000 and payload["seed"] == 0
    assert payload["heldout_mae_per_phase"]["all"] < 0.01


def test_curriculum_target_phases():
    d = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    z = torch.zeros(4)
    assert tm.curriculum_target(z, d, torch.full((4,), 18)).tolist() == [1, 1, 1, 1]
    assert tm.curriculum_target(z, d, torch.full((4,), 19)).tolist() == [1, 1, 0, 0]
    assert tm.curriculum_target(z, d, torch.full((4,), 89)).tolist() == [1, 1, 0, 0]
    assert tm.curriculum_target(z, d, torch.full((4,), 90)).tolist() == [1, 1, 0.5, 0]


def test_training_is_deterministic_and_keeps_the_epoch_embedding_fixed():
    a, _ = tm.train(seed=3, steps=200)
    b, _ = tm.train(seed=3, steps=200)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    init = MentorNet(generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.epoch_embedding, init.epoch_embedding)
    assert not torch.equal(a.fc1_weight, init.fc1_weight)


def test_json_round_trip_and_shape_check():
    net = MentorNet(generator=torch.Generator().manual_seed(5))
    back = MentorNet.from_json_dict(json.loads(json.dumps(net.to_json_dict())))
    for p, q in zip(net.parameters(), back.parameters(), strict=True):
        assert torch.equal(p, q)
    bad = net.to_json_dict()
    bad["fc1_weight"] = bad["fc1_weight"][:3]
    with pytest.raises(ValueError, match="fc1_weight"):
        MentorNet.from_json_dict(bad)
