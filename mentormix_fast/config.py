"""The hyper-parameters of one MentorMix loss, as backends receive them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MentorMixConfig:
    """Validated MentorMix hyper-parameters (see :class:`mentormix_fast.MentorMix`).

    ``percentile`` p in [0, 1]; ``mixup_alpha`` >= 0 (0: no mixing); ``burn_in_epoch``: v = 1 while
    the epoch feature is below ``burn_in_epoch - 1``; ``loss_ma_decay`` d in [0, 1].
    """

    percentile: float
    mixup_alpha: float
    second_reweight: bool
    burn_in_epoch: int
    total_steps: int
    loss_ma_decay: float
