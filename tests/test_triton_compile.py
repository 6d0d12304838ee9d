"""The Triton ops as torch.library ops: opcheck (schema, fake, autograd registration) and a whole
step under ``torch.compile(fullgraph=True)`` (CPU: Triton's interpreter inside the compiled graph)."""

from __future__ import annotations

import os

import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import reference as ref
from mentormix_fast.backends import get_backend

pytest.importorskip("triton")
if mf.backends().get("triton") != "available":
    pytest.skip(f"triton backend unavailable: {mf.backends().get('triton')}", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

from test_triton_kernels import DEVICE, batch, cfg

OPS = torch.ops.mentormix_fast


def _inputs(b=16, k=7, dtype=torch.float32, device=DEVICE):
    z, y, u, beta = batch(b, k, dtype, device)
    from mentormix_fast.triton_backend import fold_weighting

    params, mode = fold_weighting(mf.mentornet_pd(), 40, 10, device)
    return z, y, u, beta, params, mode


def test_opcheck_weights_and_sample():
    z, y, u, beta, params, mode = _inputs()
    ma = torch.tensor(0.3, device=DEVICE)
    torch.library.opcheck(OPS.triton_weights_and_sample.default, (z, y, ma, params, u, beta, 0.7, 0.5, mode, True))
    torch.library.opcheck(OPS.triton_weights_and_sample.default, (z, y, ma, params, u[:0], beta[:0], 0.7, 0.5, 0,
                                                                   False))


def test_opcheck_mix():
    x = torch.randn(6, 2, 3, device=DEVICE, requires_grad=True)
    partner = torch.tensor([5, 4, 3, 2, 1, 0], device=DEVICE)
    lam = torch.rand(6, device=DEVICE)
    torch.library.opcheck(OPS.triton_mix.default, (x, partner, lam))


@pytest.mark.parametrize("second_reweight", [True, False])
def test_opcheck_mixed_loss(second_reweight):
    z, y, _, _, params, mode = _inputs()
    z.requires_grad_(True)
    partner = torch.randperm(16, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    lam = torch.rand(16, device=DEVICE)
    ma2 = torch.tensor(0.5, device=DEVICE)
    torch.library.opcheck(OPS.triton_mixed_loss.default,
                          (z, y, partner, lam, ma2, params, 0.6, 0.5, mode, second_reweight))


def _step(backend, config, weighting, z1, y, x, u, beta, w_net, ma, ma2, epoch):
    """Plan on z1 (given draws), mix x, second pass through a linear layer, loss; returns everything."""
    plan = backend.weights_and_sample(z1, y, ma, epoch, config, weighting, None, u, beta)
    xm = backend.mix(x, plan.partner, plan.lam)
    z2 = xm @ w_net
    loss, new_ma2 = backend.mixed_loss(z2, y, plan.partner, plan.lam, ma2, epoch, config, weighting)
    return loss, plan.loss_ma, new_ma2, plan.partner, plan.lam


@pytest.mark.slow
def test_compiled_step_fullgraph_matches_eager():
    torch._dynamo.reset()
    tri = get_backend("triton", torch.device(DEVICE))
    config = cfg(second_reweight=True)
    weighting = mf.mentornet_pd().to(DEVICE)
    z1, y, u, beta = batch(32, 5, torch.float32, DEVICE)
    x = torch.randn(32, 6, device=DEVICE)
    w_eager = torch.randn(6, 5, device=DEVICE, requires_grad=True)
    w_comp = w_eager.detach().clone().requires_grad_(True)
    ma, ma2 = torch.tensor(0.4, device=DEVICE), torch.tensor(0.6, device=DEVICE)
    epoch = torch.tensor(50, device=DEVICE)

    def f(z1, y, x, u, beta, w, ma, ma2, epoch):
        return _step(tri, config, weighting, z1, y, x, u, beta, w, ma, ma2, epoch)

    eager = f(z1, y, x, u, beta, w_eager, ma, ma2, epoch)
    comp = torch.compile(f, fullgraph=True)(z1, y, x, u, beta, w_comp, ma, ma2, epoch)
    for a, b in zip(comp, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    eager[0].backward()
    comp[0].backward()
    torch.testing.assert_close(w_comp.grad, w_eager.grad, rtol=1e-5, atol=1e-6)
    ref_plan = ref.weights_and_sample(z1, y, ma, epoch, percentile=0.7, decay=0.5, weighting=weighting,
                                      burn_in_epoch=10, alpha=8.0, uniform=u, beta=beta)
    torch.testing.assert_close(comp[1], ref_plan.loss_ma)


def test_opcheck_split_ops():
    z, y, u, beta, params, mode = _inputs()
    z.requires_grad_(True)
    loss = OPS.triton_ce(z.detach(), y)
    torch.library.opcheck(OPS.triton_ce.default, (z.detach(), y))
    pool = torch.cat([loss, loss + 1])
    torch.library.opcheck(OPS.triton_plan.default, (loss, pool, torch.tensor(0.2, device=DEVICE), params, u, beta,
                                                    0.7, 0.5, mode, True))
    partner = torch.randperm(16, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    torch.library.opcheck(OPS.triton_mixed_ce.default, (z, y, partner, torch.rand(16, device=DEVICE)))


@pytest.mark.slow
def test_compiled_module_forward_fullgraph():
    """The public MentorMix step (two passes, plan, mix, mixed loss, state updates) in one graph."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).to(DEVICE)
    mm = mf.MentorMix(total_steps=100, backend="triton", burn_in_epoch=2).to(DEVICE)
    step = torch.compile(lambda x, y: mm(net, x, y), fullgraph=True)
    x, y = torch.randn(32, 8, device=DEVICE), torch.randint(0, 5, (32,), device=DEVICE)
    for _ in range(2):
        loss = step(x, y)
        loss.backward()
    assert torch.isfinite(loss) and int(mm.num_steps) == 2 and float(mm.loss_ma) > 0


def test_opcheck_in_kernel_draws_and_epoch_row():
    """The optional ``seed``/``alpha``/``epoch`` arguments: Philox seeds drawn once per step, the
    folded table with the epoch read in the kernels."""
    from mentormix_fast.triton_backend import fold_table

    z, y, u, beta, _, mode = _inputs()
    table, _ = fold_table(mf.mentornet_pd(), 10, DEVICE)
    seed = torch.tensor([3, 5], dtype=torch.int64, device=DEVICE)
    epoch = torch.tensor([40], device=DEVICE)
    ma = torch.tensor(0.3, device=DEVICE)
    empty = torch.empty(0, device=DEVICE)
    torch.library.opcheck(OPS.triton_weights_and_sample.default,
                          (z, y, ma, table, empty, empty, 0.7, 0.5, mode, True, seed, 8.0, epoch))
    torch.library.opcheck(OPS.triton_weights_and_sample.default,
                          (z, y, ma, table, empty, empty, 0.7, 0.5, mode, True, seed, 0.3, epoch))
    plan = OPS.triton_weights_and_sample(z, y, ma, table, empty, empty, 0.7, 0.5, mode, True, seed, 8.0, epoch)
    torch.library.opcheck(OPS.triton_mixed_loss.default,
                          (z.clone().requires_grad_(), y, plan[2], plan[3], ma, table, 0.6, 0.5, mode, True, epoch))
    loss = OPS.triton_ce(z, y)
    torch.library.opcheck(OPS.triton_plan.default,
                          (loss, loss, ma, table, empty, empty, 0.7, 0.5, mode, True, seed, 8.0, epoch))


@pytest.mark.slow
def test_compiled_step_with_in_kernel_draws():
    """generator=None under torch.compile(fullgraph=True): the step's Philox seeds come from torch's
    global RNG inside the graph (fallback_random: the eager op, so the same seeds as eager)."""
    torch._dynamo.reset()
    tri = get_backend("triton", torch.device(DEVICE))
    config = cfg(second_reweight=True)
    weighting = mf.mentornet_pd().to(DEVICE)
    z1, y, _, _ = batch(32, 5, torch.float32, DEVICE)
    z2 = torch.randn(32, 5, device=DEVICE)
    ma, ma2 = torch.tensor(0.4, device=DEVICE), torch.tensor(0.6, device=DEVICE)
    epoch = torch.tensor(50, device=DEVICE)

    def f(z1, z2, y, ma, ma2, epoch):
        plan = tri.weights_and_sample(z1, y, ma, epoch, config, weighting, None)
        loss, new_ma2 = tri.mixed_loss(z2, y, plan.partner, plan.lam, ma2, epoch, config, weighting)
        return loss, new_ma2, plan.partner, plan.lam

    torch.manual_seed(0)
    eager = f(z1, z2, y, ma, ma2, epoch)
    torch.manual_seed(0)
    with torch._inductor.config.patch(fallback_random=True):
        comp = torch.compile(f, fullgraph=True)(z1, z2, y, ma, ma2, epoch)
    for a, b in zip(comp, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ((eager[3] >= 0) & (eager[3] <= 1)).all()
