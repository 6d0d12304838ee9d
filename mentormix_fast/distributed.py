"""The all-gather behind the global-batch percentile (``MentorMix(percentile_gather=all_gather_cat)``).

Under ``torchrun`` with an initialised process group, :func:`all_gather_cat` concatenates every
rank's per-example losses so the percentile is taken over the global batch; in a single process it
returns its input. Process-group setup for training lives in :mod:`mentormix_fast.train.world`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_gather_cat(values: torch.Tensor) -> torch.Tensor:
    """The [B] tensors of every rank concatenated in rank order: [B * world]. No gradient flows
    (the percentile only needs the values). Every rank must pass the same B."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.detach().contiguous()
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values)
    return torch.cat(parts)
