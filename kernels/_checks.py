"""Metadata checks of the Triton ops' arguments (shapes, dtypes, devices; never values): an op
called directly with a wrong tensor raises an error that names the argument instead of reading
outside it."""

from __future__ import annotations

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FOLDED_MENTORNET_SIZE = 2072


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [B, K] tensor, got shape {tuple(logits.shape)}")
    if logits.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name}: dtype must be float16, bfloat16 or float32, got {logits.dtype}")


def check_tensor(t: torch.Tensor | None, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    """``t`` (when not None) has exactly ``shape``, ``dtype`` and ``device``."""
    if t is None:
        return
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, but the logits are on {device}")


def check_mentornet(mentornet: torch.Tensor, device: torch.device) -> None:
    if mentornet.numel() != 0:
        check_tensor(mentornet, "mentornet", (FOLDED_MENTORNET_SIZE,), torch.float32, device)


def check_step(step: torch.Tensor, device: torch.device, total_steps: int) -> None:
    if step.numel() != 1 or step.dtype.is_floating_point or step.dtype == torch.bool:
        raise ValueError(f"step: expected a 0-d integer tensor, got {step.dtype} {list(step.shape)}")
    if step.device != device and step.device.type != "cpu":
        raise ValueError(f"step: on {step.device}; expected the logits' device {device} or the CPU")
    if total_steps < 1:
        raise ValueError(f"total_steps: must be >= 1, got {total_steps}")


def check_pool(pool: torch.Tensor | None, device: torch.device) -> None:
    if pool is not None:
        if pool.dim() != 1 or pool.numel() == 0:
            raise ValueError(f"pool: expected a non-empty 1-d tensor, got shape {list(pool.shape)}")
        check_tensor(pool, "pool", tuple(pool.shape), torch.float32, device)
