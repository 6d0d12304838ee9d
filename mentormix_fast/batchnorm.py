"""Run a forward pass in train mode without touching BatchNorm running statistics (SPEC §1.2)."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """Inside the block, BatchNorm layers still normalise with the batch's statistics (train mode)
    but neither update ``running_mean``/``running_var`` nor count ``num_batches_tracked``.

    Done by switching ``track_running_stats`` off for the block: in train mode PyTorch's BatchNorm
    then passes no running buffers to ``F.batch_norm`` and skips the counter, which is exactly the
    release's first pass. Restored on exit, also on error.
    """
    switched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    for m in switched:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m in switched:
            m.track_running_stats = True
