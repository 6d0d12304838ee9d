"""The ``ce`` op (SPEC §5): the per-row loss of the logits, plain (``l``, SPEC §1.2) or mixed
(``m``, SPEC §1.8) when a partner and lambda are given; one read of the logits, no state.

It gives the values a distributed run all-gathers before ``plan`` / ``mixed_loss`` take the
percentile over the global batch.
"""

import torch

from ._checks import check_logits, check_tensor
from ._library import device_of, library_op, wrap_triton
from ._rows import launch_ce_rows


@library_op("ce")
def ce(logits: torch.Tensor, target: torch.Tensor, partner: torch.Tensor | None,
       lam: torch.Tensor | None) -> torch.Tensor:
    """``[B] fp32``: ``lse(z_i) - z_i[y_i]``, or ``lse(z_i) - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}]``."""
    check_logits(logits)
    batch = logits.shape[0]
    check_tensor(target, "target", (batch,), torch.int64, logits.device)
    check_tensor(partner, "partner", (batch,), torch.int64, logits.device)
    check_tensor(lam, "lam", (batch,), torch.float32, logits.device)
    if (partner is None) != (lam is None):
        raise ValueError("partner and lam: give both (mixed loss) or neither (plain loss)")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    loss = torch.empty(batch, dtype=torch.float32, device=logits.device)
    with device_of(logits):
        launch_ce_rows(wrap_triton, logits, target, partner, lam, loss, None)
    return loss
