"""Exponential moving average of the weights, evaluated instead of the raw weights (SPEC §3).

After optimizer step ``t`` (0-based): ``shadow = d_t * shadow + (1 - d_t) * w`` with
``d_t = min(max_decay, (1 + t) / (10 + t))`` (TF's ExponentialMovingAverage with ``num_updates``).
Like the release it averages the trainable parameters only; BatchNorm running statistics are taken
from the live model when the EMA weights are evaluated.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, max_decay: float = 0.9999) -> float:
    """``min(max_decay, (1 + t) / (10 + t))``."""
    return min(max_decay, (1.0 + step) / (10.0 + step))


class WeightEMA:
    """Shadow copies (fp32) of a model's parameters, keyed by parameter name."""

    def __init__(self, model: nn.Module, max_decay: float = 0.9999):
        self.max_decay = max_decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay(step, self.max_decay)
        names, params = zip(*model.named_parameters(), strict=True)
        shadows = [self.shadow[n] for n in names]
        torch._foreach_lerp_(shadows, [p.detach().float() for p in params], 1.0 - d)

    def state_dict(self) -> dict:
        return {"max_decay": self.max_decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.max_decay = state["max_decay"]
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with the EMA parameters (and the model's own buffers), in eval mode."""
        out = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in out.named_parameters():
                p.copy_(self.shadow[n])
        return out.eval()
