"""The release's CIFAR input pipeline as batched tensor ops (SPEC §3), on any device.

Train, per image (all draws from one ``torch.Generator``, so a step's batch is reproducible):
zero-pad 32x32 -> 36x36, random 32x32 crop, random horizontal flip, scale to [0, 1], colour
distortion in one of two random orders

    order 0: brightness, saturation, hue, contrast
    order 1: brightness, contrast, saturation, hue

with brightness ``x + U(-32/255, 32/255)``, saturation ``s * U(0.5, 1.5)`` (clipped to [0, 1] in HSV),
hue ``h + U(-0.2, 0.2)`` (mod 1), contrast ``(x - mean_c) * U(0.5, 1.5) + mean_c`` (per-channel
spatial mean), then clip to [0, 1] and map to [-1, 1]. Test: ``x / 127.5 - 1`` only.
Input uint8 [B, 3, H, W]; output float32 [B, 3, H, W].
"""

from __future__ import annotations

import torch


def to_signed_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the release's test-time mapping); floats pass through."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float()


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB -> HSV, hue in [0, 1)."""
    r, g, b = rgb.unbind(1)
    v, _ = rgb.max(1)
    c = v - rgb.min(1).values
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    safe_c = c.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / safe_c, torch.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = torch.where(c > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] HSV (hue in [0, 1)) -> RGB."""
    h, s, v = hsv.unbind(1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
         + 6.0 * h.unsqueeze(1)) % 6.0
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _per_image(u: torch.Tensor) -> torch.Tensor:
    return u.view(-1, 1, 1, 1)


def _saturation(x, f):
    hsv = rgb_to_hsv(x)
    hsv = torch.stack((hsv[:, 0], (hsv[:, 1] * f.view(-1, 1, 1)).clamp(0.0, 1.0), hsv[:, 2]), 1)
    return hsv_to_rgb(hsv)


def _hue(x, delta):
    hsv = rgb_to_hsv(x)
    hsv = torch.stack(((hsv[:, 0] + delta.view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]), 1)
    return hsv_to_rgb(hsv)


def _contrast(x, f):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * _per_image(f) + mean


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, pad: int = 2) -> torch.Tensor:
    """Zero-pad by ``pad`` on each side, random crop back to H x W, random horizontal flip."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=dev)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip.unsqueeze(1), w - 1 - cols, cols) + off[:, 1:2]
    rows = torch.arange(h, device=dev) + off[:, 0:1]
    return padded[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                  rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def cifar_train_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The release's train transform of a uint8 batch [B, 3, 32, 32] -> float32 [-1, 1]."""
    n, dev = x.shape[0], x.device
    x = random_crop_flip(x, generator).float() / 255.0

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)

    brightness, saturation, hue, contrast = u(-32 / 255, 32 / 255), u(0.5, 1.5), u(-0.2, 0.2), u(0.5, 1.5)
    order = torch.randint(0, 2, (n,), generator=generator, device=dev)
    x = x + _per_image(brightness)
    order0 = _contrast(_hue(_saturation(x, saturation), hue), contrast)
    order1 = _hue(_saturation(_contrast(x, contrast), saturation), hue)
    x = torch.where(_per_image(order) == 0, order0, order1).clamp(0.0, 1.0)
    return x * 2.0 - 1.0
