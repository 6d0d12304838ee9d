"""MentorMix's global-batch percentile option (``percentile_gather``): in one process, and with 2
gloo ranks under torchrun against one process on the concatenated batch, on every backend (the
trainer's ``--global-percentile`` is tested in tests/train/test_distributed.py)."""

import pytest
import torch

from mentormix_fast import MentorMix, reference


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


_RANK_SCRIPT = """
import json, sys, torch, torch.distributed as dist
import mentormix_fast as mf
from mentormix_fast import reference as ref
from mentormix_fast.distributed import all_gather_cat

backend, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
z1, z2 = torch.randn(world * 24, 7, generator=g) * 3, torch.randn(world * 24, 7, generator=g) * 3
y = torch.randint(0, 7, (world * 24,), generator=g)
part = slice(rank * 24, (rank + 1) * 24)
kw = dict(total_steps=100, percentile=0.3, burn_in_epoch=0, backend=backend)
mm = mf.MentorMix(**kw, percentile_gather=all_gather_cat, generator=torch.Generator().manual_seed(rank))
plan = mm.plan(z1[part], y[part], 50)
mm.mixed_loss(z2[part], y[part], plan, 50)
m = mf.dispatch.choose(backend, "cpu").ops.ce(z2[part], y[part], plan.partner, plan.lam)
weights, m_all = all_gather_cat(plan.weights), all_gather_cat(m)
if rank == 0:
    one = mf.MentorMix(**kw, generator=torch.Generator().manual_seed(0))  # one process, the whole batch
    whole = one.plan(z1, y, 50)
    ma2 = 0.5 * ref.percentile_nearest(m_all, 0.3)
    json.dump(dict(ma=[float(mm.loss_ma), float(one.loss_ma)], ma2=[float(mm.loss_ma_mixed), float(ma2)],
                   weights=(weights - whole.weights).abs().max().item()), open(out, "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, backend):
    """--global-percentile on every backend: 2 ranks under torchrun (gloo), each with half of the
    batch, gather B losses per rank and get the moving average and the weights of one process
    on the whole batch."""
    import json
    import os
    import socket
    import subprocess
    import sys

    import mentormix_fast as mf

    if mf.backends().get(backend) != "available" or (backend == "triton" and torch.cuda.is_available()):
        pytest.skip(f"{backend} on the CPU: {mf.backends().get(backend)}")
    script, out = tmp_path / "rank.py", tmp_path / "out.json"
    script.write_text(_RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), backend, str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ma"][0] == pytest.approx(result["ma"][1], rel=1e-6)
    assert result["ma2"][0] == pytest.approx(result["ma2"][1], rel=1e-6)
    assert result["weights"] <= 1e-4
