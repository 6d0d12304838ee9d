"""The students of the training program (SPEC §3 architecture facts)."""

import math

import pytest
import torch
from torch import nn

from mentormix_fast.train.models import (
    ARCHITECTURES,
    PreActResNet,
    SameConv2d,
    _same_pad,
    build_model,
    count_parameters,
    decay_parameters,
)


@pytest.mark.parametrize("num_classes, expected", [(10, 29_442_378), (100, 29_488_548)])
def test_wide_resnet32_has_about_29_5m_parameters(num_classes, expected):
    model = build_model("wide-resnet32", num_classes)  # construct only: no forward pass
    n = count_parameters(model)
    assert n == expected
    assert 29.3e6 < n < 29.6e6


def test_small_resnet32_has_about_0_46m_parameters():
    assert 0.45e6 < count_parameters(build_model("resnet32", 10)) < 0.47e6


def test_layout_of_the_wide_student():
    model = build_model("wide-resnet32", 10)
    assert model.stem.in_channels == 3 and model.stem.out_channels == 64 and model.stem.bias is None
    assert len(model.units) == 15
    assert [u.c_out for u in model.units[::5]] == [128, 256, 512]
    assert [u.stride for u in model.units[::5]] == [1, 2, 2]
    assert [u.activate_before_residual for u in model.units] == [True] + [False] * 14
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == 0.1 for m in bns)
    assert len(decay_parameters(model)) == 1 + 15 * 2 + 1  # conv kernels and the FC weight only


def test_conv_init_follows_the_release():
    torch.manual_seed(0)
    model = build_model("wide-resnet32", 10)
    w = model.units[14].conv2.weight
    assert abs(w.std().item() - math.sqrt(2.0 / (9 * 512))) < 2e-4
    bound = math.sqrt(3.0 / 512)
    assert model.fc.weight.abs().max() <= bound and torch.all(model.fc.bias == 0)


def test_same_padding_matches_tensorflow():
    assert _same_pad(32, 3, 1) == (1, 1)
    assert _same_pad(32, 3, 2) == (0, 1)  # TF pads the extra row at the bottom
    conv = SameConv2d(1, 1, 3, 2)
    x = torch.randn(1, 1, 8, 8)
    ref = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), ref)


@pytest.mark.parametrize("name", sorted(set(ARCHITECTURES) - {"wide-resnet32"}))  # the wide one: construct only
def test_forward_shapes(name):
    model = build_model(name, 7, in_channels=1)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 7)
    model = build_model(name, 100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_shortcut_is_pool_and_zero_pad():
    model = PreActResNet(10, 3, (4, 4, 8, 16), 1)
    unit = model.units[1]  # 4 -> 8 channels, stride 2
    with torch.no_grad():
        for p in (unit.conv1.weight, unit.conv2.weight):
            p.zero_()
    x = torch.randn(2, 4, 8, 8)
    out = unit(x)
    pooled = nn.functional.avg_pool2d(x, 2)
    torch.testing.assert_close(out[:, 2:6], pooled)
    assert torch.all(out[:, :2] == 0) and torch.all(out[:, 6:] == 0)
