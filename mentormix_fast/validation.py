"""Argument checks shared by the public API: clear errors that name the argument.

Shape, dtype and device checks read only metadata and are always on. Label *values* can only be
checked by reading the tensor; on a GPU that is a host synchronisation, so :func:`check_target`
reads them only when ``check_values`` is true (the API's ``validate`` option decides). Unchecked
out-of-range labels are not a crash: every backend turns them into a NaN loss for that row.
"""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_logits(logits, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name}: expected shape [B, K], got {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B = 0); MentorMix needs at least one example")
    if logits.shape[1] < 2:
        raise ValueError(f"{name}: need at least 2 classes, got K = {logits.shape[1]}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be one of float16, bfloat16, float32, float64, got {logits.dtype}")


def check_target(target, batch: int, num_classes: int, device: torch.device, check_values: bool,
                 name: str = "target") -> torch.Tensor:
    """Checks and returns the labels as int64 [B]."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of integer labels, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be an integer tensor, got {target.dtype}")
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"{name}: expected shape [{batch}] to match the batch, got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"{name}: on {target.device}, but the logits are on {device}")
    target = target.to(torch.int64)
    if check_values:
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: labels must be in [0, {num_classes}), got values in [{lo}, {hi}]")
    return target


def check_index_values(index: torch.Tensor, size: int, name: str) -> None:
    """Every value of ``index`` in ``[0, size)`` (reads the tensor: a host sync on a GPU)."""
    if index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name}: indices must be in [0, {size}) (the batch), got values in [{lo}, {hi}]")


def check_probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")
    return float(value)


def check_alpha(value, name: str = "mixup_alpha") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0.0 \
            or float(value) == float("inf"):
        raise ValueError(f"{name}: must be a finite number >= 0 (0 turns mixing off), got {value!r}")
    return float(value)


def check_total_steps(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"total_steps: must be an integer >= 1, got {value!r}")
    return int(value)


def check_step(step, total_steps: int):
    """An int in [0, total_steps], or an integer 0-d tensor (not read: no host synchronisation; the
    kernels clamp it to [0, total_steps] for the epoch, SPEC §1.1)."""
    if isinstance(step, torch.Tensor):
        if step.dim() != 0 or step.dtype.is_floating_point or step.dtype == torch.bool:
            raise ValueError(f"step: a tensor step must be a 0-d integer tensor, got {step.dtype} {tuple(step.shape)}")
        return step
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step: expected an int or a 0-d integer tensor, got {type(step).__name__}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step: must be in [0, total_steps = {total_steps}], got {step}")
    return int(step)


def check_per_example(t, batch: int, device: torch.device, name: str, integer: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name}: expected shape [{batch}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, but the logits are on {device}")
    if integer and (t.dtype.is_floating_point or t.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer tensor, got {t.dtype}")
    if not integer and not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
