"""Top-1 accuracy of a model on a clean split (BatchNorm in eval mode, no augmentation)."""

from __future__ import annotations

import torch
from torch import nn

from .augment import to_signed_unit
from .datasets import Split


@torch.no_grad()
def top1_accuracy(model: nn.Module, split: Split, device, batch_size: int = 500, amp_dtype=None) -> float:
    """Fraction of ``split`` whose argmax logit equals the clean label; images are mapped to [-1, 1]
    (uint8) or used as they are (float)."""
    was_training = model.training
    model.eval()
    correct = 0
    device = torch.device(device)
    for start in range(0, len(split.labels), batch_size):
        x = to_signed_unit(split.images[start:start + batch_size].to(device))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        correct += int((logits.argmax(1).cpu() == split.labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(split.labels), 1)
