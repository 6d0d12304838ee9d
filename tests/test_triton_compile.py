"""The Triton ops as torch.library ops: opcheck (schema, fake, autograd registration) and a whole
step under ``torch.compile(fullgraph=True)`` (CPU: Triton's interpreter inside the compiled graph)."""

from __future__ import annotations

import copy
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
    torch.library.opcheck(OPS.triton_weights_and_sample.default,
                          (z, y, ma, None, params, u, beta, 0.7, 0.5, mode, True))
    torch.library.opcheck(OPS.triton_weights_and_sample.default,
                          (z, y, ma, None, params, u[:0], beta[:0], 0.7, 0.5, 0, False))


def test_opcheck_mix():
    x = torch.randn(6, 2, 3, device=DEVICE, requires_grad=True)
    partner = torch.tensor([5, 4, 3, 2, 1, 0], device=DEVICE)
    lam = torch.rand(6, device=DEVICE)
    torch.library.opcheck(OPS.triton_mix.default, (x, partner, lam))


@pytest.mark.parametrize("second_reweight", [True, False])
def test_opcheck_mixed_loss(second_reweight):
    """The mutating forward op (its autograd formula is ``_MixedLoss``, checked with the kernels)."""
    z, y, _, _, params, mode = _inputs()
    partner = torch.randperm(16, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    lam = torch.rand(16, device=DEVICE)
    ma2 = torch.tensor(0.5, device=DEVICE)
    steps = torch.tensor(7, device=DEVICE)
    torch.library.opcheck(OPS.triton_mixed_loss.default,
                          (z, y, partner, lam, ma2, None, params, 0.6, 0.5, mode, second_reweight))
    torch.library.opcheck(OPS.triton_mixed_loss.default,
                          (z, y, partner, lam, ma2, steps, params, 0.6, 0.5, mode, second_reweight, None, 1, 1, 8))


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
    torch.library.opcheck(OPS.triton_plan.default, (loss, pool, torch.tensor(0.2, device=DEVICE), None, params, u,
                                                    beta, 0.7, 0.5, mode, True))
    partner = torch.randperm(16, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    torch.library.opcheck(OPS.triton_mixed_ce.default, (z, y, partner, torch.rand(16, device=DEVICE)))


@pytest.mark.slow
@pytest.mark.parametrize("step_arg", ["buffer", "tensor"])
def test_compiled_module_matches_eager_module(step_arg):
    """The public MentorMix step (two passes, plan, mix, mixed loss, in-place state updates) in one
    graph, with a generator (only its seed is read, at construction): compiled and eager modules
    with the same seed give the same loss, gradients and state, step after step."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).to(DEVICE)
    net_c = copy.deepcopy(net)

    def module():
        return mf.MentorMix(total_steps=100, backend="triton", burn_in_epoch=2,
                            generator=torch.Generator(device=DEVICE).manual_seed(5)).to(DEVICE)

    mm, mm_c = module(), module()
    if step_arg == "buffer":
        step_c = torch.compile(lambda x, y: mm_c(net_c, x, y), fullgraph=True)
    else:
        step_c = torch.compile(lambda x, y, t: mm_c(net_c, x, y, step=t), fullgraph=True)
    g = torch.Generator().manual_seed(1)
    for t in range(3):
        x, y = torch.randn(32, 8, generator=g).to(DEVICE), torch.randint(0, 5, (32,), generator=g).to(DEVICE)
        args = (x, y) if step_arg == "buffer" else (x, y, torch.tensor(40 + t, device=DEVICE))
        loss = mm(net, x, y, step=None if step_arg == "buffer" else args[2])
        loss_c = step_c(*args)
        loss.backward()
        loss_c.backward()
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        for name, buf in mm.named_buffers():
            torch.testing.assert_close(dict(mm_c.named_buffers())[name], buf, rtol=1e-5, atol=1e-6, msg=name)
        for p, p_c in zip(net.parameters(), net_c.parameters(), strict=True):
            torch.testing.assert_close(p_c.grad, p.grad, rtol=1e-4, atol=1e-6)
    assert int(mm_c.num_steps) == (3 if step_arg == "buffer" else 43)
    assert int(mm_c.rng_state[1]) == 3 and float(mm_c.loss_ma) > 0


def test_opcheck_in_kernel_draws_and_epoch_row():
    """The optional ``rng``/``alpha``/``clock`` arguments: the Philox state advanced in place, the
    folded table with the row computed from the clock in the kernels."""
    from mentormix_fast.triton_backend import fold_table

    z, y, u, beta, _, mode = _inputs()
    table, _ = fold_table(mf.mentornet_pd(), 10, DEVICE)
    rng = torch.tensor([3, 5], dtype=torch.int64, device=DEVICE)
    epoch = torch.tensor([40], device=DEVICE)
    step = torch.tensor([400], device=DEVICE)
    ma = torch.tensor(0.3, device=DEVICE)
    empty = torch.empty(0, device=DEVICE)
    torch.library.opcheck(OPS.triton_weights_and_sample.default,
                          (z, y, ma, rng, table, empty, empty, 0.7, 0.5, mode, True, 8.0, epoch))
    torch.library.opcheck(OPS.triton_weights_and_sample.default,
                          (z, y, ma, rng, table, empty, empty, 0.7, 0.5, mode, True, 0.3, step, 100, 1000))
    plan = OPS.triton_weights_and_sample(z, y, ma, rng, table, empty, empty, 0.7, 0.5, mode, True, 8.0, epoch)
    torch.library.opcheck(OPS.triton_mixed_loss.default,
                          (z, y, plan[2], plan[3], ma, step, table, 0.6, 0.5, mode, True, step, 100, 1000))
    loss = OPS.triton_ce(z, y)
    torch.library.opcheck(OPS.triton_plan.default,
                          (loss, loss, ma, rng, table, empty, empty, 0.7, 0.5, mode, True, 8.0, epoch))


@pytest.mark.slow
def test_compiled_step_with_in_kernel_draws():
    """The functional API with generator=None under torch.compile(fullgraph=True): the step's Philox
    state comes from torch's global RNG inside the graph (fallback_random: the eager op, so the
    same state as eager)."""
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
        return loss, new_ma2, plan.partner, plan.lam, plan.loss_ma

    torch.manual_seed(0)
    eager = f(z1, z2, y, ma, ma2, epoch)
    torch.manual_seed(0)
    with torch._inductor.config.patch(fallback_random=True):
        comp = torch.compile(f, fullgraph=True)(z1, z2, y, ma, ma2, epoch)
    for a, b in zip(comp, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ((eager[3] >= 0) & (eager[3] <= 1)).all()
    assert float(ma) == pytest.approx(0.4) and float(ma2) == pytest.approx(0.6)  # functional: inputs untouched
