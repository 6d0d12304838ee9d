"""Student networks: the release's pre-activation ResNet-32 family (SPEC §3).

Architecture (``filters = (stem, s1, s2, s3)``, ``units`` residual units per stage):

    x [N, C_in, H, W] -> conv3x3(C_in -> stem)                      (no bias, no BN/activation)
      -> stage 1: units x Unit(stride 1), out s1
      -> stage 2: units x Unit(first stride 2), out s2
      -> stage 3: units x Unit(first stride 2), out s3
      -> BN -> LeakyReLU(0.1) -> global average pool -> FC(s3 -> K)  -> logits [N, K]

    Unit(x):  a = LReLU(BN(x)); shortcut = x           (every unit but the very first)
              a = BN(LReLU(x)); shortcut = a           (the very first unit: activate before splitting,
                                                        in the release's order LReLU then BN)
              out = conv3x3(LReLU(BN(conv3x3_stride(a)))) + S(shortcut)
    S: identity when the shape is kept; otherwise avg-pool(stride) and zero-padding of the channels,
       half on each side (no 1x1 projection).

Convolutions use TensorFlow's "SAME" padding (for a stride-2 3x3 conv on an even size that pads one
row/column at the bottom/right only), so the spatial alignment matches the release. Init: conv kernels
N(0, sqrt(2 / (k*k*C_out))); FC weight U(+-sqrt(3 / fan_in)) (TF's unit-scaling init), bias 0; BN
gamma 1, beta 0, eps 1e-3, momentum 0.1 (TF decay 0.9).

Architectures (:data:`ARCHITECTURES`): ``wide-resnet32`` (64, 128, 256, 512), 5 units: ~29.4M
parameters for CIFAR-10 (the release's student); ``resnet32`` (16, 16, 32, 64), 5 units: ~0.46M;
``resnet8`` (16, 16, 32, 64), 1 unit: ~78k, for tests and quick runs.

:func:`build_model` also builds torchvision and timm networks by name (:mod:`mentormix_fast.train.backbones`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import backbones

LEAK = 0.1
BN_EPS = 1e-3
BN_MOMENTUM = 0.1

# name -> (filters (stem, s1, s2, s3), units per stage)
ARCHITECTURES = {
    "wide-resnet32": ((64, 128, 256, 512), 5),
    "resnet32": ((16, 16, 32, 64), 5),
    "resnet8": ((16, 16, 32, 64), 1),
}


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free square conv with TF "SAME" padding (asymmetric when the total padding is odd)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = _same_pad(x.shape[-2], k, s)
        left, right = _same_pad(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class PreActUnit(nn.Module):
    """One residual unit (see the module docstring); [N, c_in, H, W] -> [N, c_out, H/stride, W/stride]."""

    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.activate_before_residual = activate_before_residual
        self.bn1 = _bn(c_in)
        self.conv1 = SameConv2d(c_in, c_out, 3, stride)
        self.bn2 = _bn(c_out)
        self.conv2 = SameConv2d(c_out, c_out, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate_before_residual:
            x = self.bn1(F.leaky_relu(x, LEAK))
            shortcut = x
            a = x
        else:
            shortcut = x
            a = F.leaky_relu(self.bn1(x), LEAK)
        a = self.conv1(a)
        a = self.conv2(F.leaky_relu(self.bn2(a), LEAK))
        if self.c_in != self.c_out:
            if self.stride > 1:
                shortcut = F.avg_pool2d(shortcut, self.stride, self.stride)
            half = (self.c_out - self.c_in) // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, half))
        elif self.stride > 1:
            shortcut = F.avg_pool2d(shortcut, self.stride, self.stride)
        return a + shortcut


class PreActResNet(nn.Module):
    """The release's pre-activation ResNet; ``forward`` maps images [N, C_in, H, W] to logits [N, K]."""

    def __init__(self, num_classes: int, in_channels: int = 3, filters=(64, 128, 256, 512), units: int = 5):
        super().__init__()
        stem, *stages = filters
        self.stem = SameConv2d(in_channels, stem, 3, 1)
        layers, c_in = [], stem
        for stage, (c_out, stride) in enumerate(zip(stages, (1, 2, 2), strict=True)):
            for i in range(units):
                first = i == 0
                layers.append(PreActUnit(c_in, c_out, stride if first else 1, first and stage == 0))
                c_in = c_out
        self.units = nn.Sequential(*layers)
        self.bn = _bn(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * k * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bound = math.sqrt(3.0 / self.fc.in_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.stem(x))
        x = F.leaky_relu(self.bn(x), LEAK)
        return self.fc(x.mean(dim=(2, 3)))


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """One of :data:`ARCHITECTURES`, a torchvision classification model or ``timm:<name>``
    (:mod:`mentormix_fast.train.backbones`) by name, untrained, with a ``num_classes`` head."""
    if name in ARCHITECTURES:
        filters, units = ARCHITECTURES[name]
        return PreActResNet(num_classes, in_channels, filters, units)
    try:
        backbones.check_name(name)
    except ValueError as err:
        raise ValueError(f"model: expected one of {sorted(ARCHITECTURES)} or another named network: {err}") from None
    return backbones.build(name, num_classes, in_channels)


def head_parameter_names(name: str, num_classes: int, in_channels: int = 3) -> frozenset[str]:
    """The classifier head's parameter names of :func:`build_model`'s network (e.g. ``fc.weight``, ``fc.bias``)."""
    return backbones.head_parameter_names(lambda k: build_model(name, k, in_channels), num_classes)


def load_pretrained(model: nn.Module, name: str, source: str, num_classes: int, in_channels: int = 3,
                    download: bool = False) -> tuple[nn.Module, list[str]]:
    """``--pretrained``: :func:`backbones.load_pretrained` for :func:`build_model`'s network; returns the
    network (a new one for ``timm``) and the report lines. Raises :class:`backbones.PretrainedError`."""
    head = head_parameter_names(name, num_classes, in_channels)

    def make_timm(pretrained_file, download):
        return backbones.build(name, num_classes, in_channels, timm_pretrained_file=pretrained_file,
                               timm_download=download)

    return backbones.load_pretrained(model, name, source, head, download=download, make_timm=make_timm)


def decay_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The release's weight-decayed tensors ("DW"): conv kernels and FC weights, not BN or biases."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
