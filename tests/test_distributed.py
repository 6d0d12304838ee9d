"""DDP under torchrun (2 gloo ranks on CPU) and the global-batch percentile option of MentorMix."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from mentormix_fast import MentorMix, reference
from mentormix_fast.backends import _BACKENDS, register_backend


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, name, *extra):
    out = tmp_path / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mentormix_fast.train", "--out-dir", str(out),
           "--data-dir", str(tmp_path / "data"), "--model", "resnet8", "--batch-size", "16", "--max-steps", "6",
           "--log-every", "3", "--eval-every", "0", "--checkpoint-every", "3", "--no-progress", "--no-tensorboard",
           "--device", "cpu", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "summary.json").read_text())


def test_two_gloo_ranks_agree(tmp_path):
    summary = _torchrun(tmp_path, "local")
    assert summary["world_size"] == 2 and summary["finished"]
    assert summary["ranks_agree"], summary["rank_digests"]
    # Local percentiles: each rank tracks the percentile of its own batch.
    assert summary["rank_loss_ma"][0] != summary["rank_loss_ma"][1]


def test_two_gloo_ranks_global_percentile(tmp_path):
    summary = _torchrun(tmp_path, "global", "--global-percentile")
    assert summary["ranks_agree"] and summary["backend"] == "reference"
    # The all-gathered percentile is the same number on every rank, so the moving averages agree.
    assert summary["rank_loss_ma"][0] == summary["rank_loss_ma"][1]


# -- the module option, in one process ------------------------------------------------------------


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
