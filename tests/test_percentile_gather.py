"""MentorMix's global-batch percentile option (``percentile_gather``), in one process with the reference backend.

The same option under torchrun (2 gloo ranks) is tested with the trainer in tests/train/test_distributed.py.
"""

import pytest
import torch

from mentormix_fast import MentorMix, reference
from mentormix_fast.backends import _BACKENDS, register_backend


def _batch(seed, b=16, k=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 3, torch.randint(0, k, (b,), generator=g)


@pytest.mark.parametrize("second_reweight", [False, True])
def test_percentile_gather_takes_the_percentile_over_the_gathered_values(second_reweight):
    logits, target = _batch(0)
    other, other_target = _batch(1)
    other_loss = reference.per_sample_ce(other, other_target)
    kw = dict(total_steps=100, percentile=0.3, mixup_alpha=2.0, second_reweight=second_reweight, burn_in_epoch=0,
              weighting="threshold", backend="reference")
    mm = MentorMix(**kw, percentile_gather=lambda loss: torch.cat([loss, other_loss]),
                   generator=torch.Generator().manual_seed(0))
    plan = mm.plan(logits, target, step=50)
    expected = 0.5 * reference.percentile_nearest(torch.cat([reference.per_sample_ce(logits, target), other_loss]),
                                                  0.3)
    torch.testing.assert_close(mm.loss_ma, expected)
    assert torch.equal(plan.weights, (plan.loss < expected).float())
    mm.mixed_loss(logits, target, plan, step=50)
    if second_reweight:
        # The hook now receives the mixed losses m; here it appends the same fixed vector.
        m = reference.mixed_ce(logits, target, plan.partner, plan.lam)
        pool = torch.cat([m, other_loss])
        torch.testing.assert_close(mm.loss_ma_mixed, 0.5 * reference.percentile_nearest(pool, 0.3))


def test_off_is_the_local_percentile_exactly():
    logits, target = _batch(2)
    kw = dict(total_steps=100, percentile=0.7, backend="reference")
    a = MentorMix(**kw, generator=torch.Generator().manual_seed(3))
    b = MentorMix(**kw, generator=torch.Generator().manual_seed(3), percentile_gather=lambda v: v)
    pa, pb = a.plan(logits, target, 60), b.plan(logits, target, 60)
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.mixed_loss(logits, target, pa, 60), b.mixed_loss(logits, target, pb, 60))
    assert torch.equal(a.loss_ma_mixed, b.loss_ma_mixed)


def test_backends_without_the_option_refuse_it():
    class Plain:
        name = "plain-test"

        def supports(self, device):
            return True

    register_backend(Plain())
    try:
        mm = MentorMix(total_steps=10, backend="plain-test", percentile_gather=lambda v: v)
        logits, target = _batch(4)
        with pytest.raises(ValueError, match="percentile_gather.*reference"):
            mm.plan(logits, target, 0)
        with pytest.raises(TypeError):
            MentorMix(total_steps=10, percentile_gather=3)
    finally:
        _BACKENDS.pop("plain-test", None)
