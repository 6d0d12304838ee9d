"""What only a GPU can show, for every fast backend on CUDA (skipped without one): no host
synchronisation in a step, CUDA-graph capture and replay (one program and many), the launches
per step from the profiler, and tensors past 2^31 elements. The ops' own comparisons with the
reference on a GPU are tests/ops (their ``case`` runs on CUDA there)."""

from __future__ import annotations

import copy

import pytest
import torch

import mentormix_fast as mf

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def gpu_case(fast_case):
    if fast_case.device != "cuda":
        pytest.skip("a CUDA backend")
    return fast_case


def _net(width=32, classes=10):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, classes)).cuda()


def _module(case, seed=3, **kw):
    return mf.MentorMix(total_steps=10**6, backend=case.name, burn_in_epoch=0, validate=False,
                        generator=torch.Generator(device="cuda").manual_seed(seed), **kw).cuda()


def _step(mm, net, x, y):
    with torch.no_grad():
        z1 = net(x)
    plan = mm.plan(z1, y)
    loss = mm.mixed_loss(net(mm.mix_inputs(x, plan)), y, plan)
    (grad,) = torch.autograd.grad(loss, net[0].weight)
    return loss, grad, plan.partner, plan.lam


def _capture(graphed, eager, net, x, y, warm_steps):
    """Warm both modules up by ``warm_steps`` eager steps (every kernel variant compiles outside the
    capture), then capture one step of ``graphed``: returns the graph and the step's outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warm_steps):
            for mm in (graphed, eager):
                _step(mm, net, x, y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _step(graphed, net, x, y)
    return graph, out


def test_a_step_never_synchronises_with_the_host(gpu_case):
    net, mm = _net(), _module(gpu_case)
    x, y = torch.randn(256, 8, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    _step(mm, net, x, y)
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(mm, net, x, y)
        _step(mm, net, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("batch", [256, 8192], ids=["one-program", "many-programs"])
def test_cuda_graph_replays_are_the_next_eager_steps(gpu_case, batch):
    """The whole step captured once: every replay is the next step (the kernels advance the
    module's buffers), equal to an eager module with the same seed, replay by replay."""
    net = _net()
    graphed, eager = _module(gpu_case), _module(gpu_case)
    x, y = torch.randn(batch, 8, device="cuda"), torch.randint(0, 10, (batch,), device="cuda")
    graph, out = _capture(graphed, eager, net, x, y, warm_steps=2)
    for t in range(3):
        graph.replay()
        want = _step(eager, net, x, y)
        for a, b in zip(out, want, strict=True):
            torch.testing.assert_close(a, b)
        for name, buf in eager.named_buffers():
            torch.testing.assert_close(dict(graphed.named_buffers())[name], buf, msg=name)
        assert int(graphed.num_steps) == 3 + t


def test_a_thousand_replays_track_the_eager_module(gpu_case):
    net = _net()
    graphed, eager = _module(gpu_case), _module(gpu_case)
    x, y = torch.randn(128, 8, device="cuda"), torch.randint(0, 10, (128,), device="cuda")
    graph, out = _capture(graphed, eager, net, x, y, warm_steps=1)
    for t in range(1000):
        graph.replay()
        want = _step(eager, net, x, y)
        if t % 100 == 99:
            for a, b in zip(out, want, strict=True):
                torch.testing.assert_close(a, b)
    for name, buf in eager.named_buffers():
        torch.testing.assert_close(dict(graphed.named_buffers())[name], buf, msg=name)
    assert int(graphed.num_steps) == 1001 and int(graphed.rng_state[1]) == 1001


def test_device_launches_per_step_at_b128(gpu_case):
    """From the profiler's CUDA activity: the whole step (plan, mix, mixed loss, backward) of the
    loss alone (the logits given) at B = 128."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    mm = _module(gpu_case)
    z1 = torch.randn(128, 100, device="cuda")
    z2 = torch.randn(128, 100, device="cuda", requires_grad=True)
    y = torch.randint(0, 100, (128,), device="cuda")
    x = torch.randn(128, 256, device="cuda")

    def step():
        plan = mm.plan(z1, y)
        mm.mix_inputs(x, plan)
        mm.mixed_loss(z2, y, plan).backward()

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    launches = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    budget = {"triton": 5, "cuda": 7}[gpu_case.name]  # C++: two kernels per pass (rows, batch)
    assert launches <= budget, [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]


def test_compiled_step_captures_in_a_cuda_graph(gpu_case):
    """torch.compile(fullgraph=True, mode="reduce-overhead") of the whole step: Inductor's CUDA
    graphs replay it, and it equals the eager step."""
    torch._dynamo.reset()
    net = _net()
    net_c = copy.deepcopy(net)
    mm, mm_c = _module(gpu_case), _module(gpu_case)
    step_c = torch.compile(lambda x, y: mm_c(net_c, x, y), fullgraph=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(256, 8, generator=g).cuda(), torch.randint(0, 10, (256,), generator=g).cuda()
        loss, loss_c = mm(net, x, y), step_c(x, y)
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        loss.backward()
        loss_c.backward()
    torch.testing.assert_close(net_c[0].weight.grad, net[0].weight.grad, rtol=1e-4, atol=1e-6)


def _rows_reference(z, y, partner, lam, rows, weights, b):
    """(l, m, grad) of the given rows from the reference formulas (the full reference would need
    another 8 GiB copy of the logits in fp32)."""
    zr = z[rows].float()
    ya, yb, lr = y[rows], y[partner[rows]], lam[rows]
    lse = torch.logsumexp(zr, 1)
    pick = lambda labels: zr.gather(1, labels.unsqueeze(1)).squeeze(1)
    loss = lse - pick(ya)
    mixed = lse - lr * pick(ya) - (1 - lr) * pick(yb)
    soft = torch.zeros_like(zr)
    soft.scatter_add_(1, ya.unsqueeze(1), lr.unsqueeze(1))
    soft.scatter_add_(1, yb.unsqueeze(1), (1 - lr).unsqueeze(1))
    grad = (torch.softmax(zr, 1) - soft) * (weights[rows] / b).unsqueeze(1)
    return loss, mixed, grad


def test_more_than_2_31_elements(gpu_case):
    """B * K = 65536 * 32768 = 2^31 bf16 logits (int64 offsets): ce, plan, the mixed loss, its
    gradient and mix against the reference formulas on rows at both ends and the middle."""
    if torch.cuda.get_device_properties(0).total_memory < 60 * 2**30:
        pytest.skip("needs ~40 GiB of GPU memory")
    b, k, dtype = 65536, 32768, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(b, k, device="cuda", generator=g).to(dtype)
    y = torch.randint(0, k, (b,), device="cuda", generator=g)
    partner = torch.randint(0, b, (b,), device="cuda", generator=g)
    lam = torch.rand(b, device="cuda", generator=g)
    ops = gpu_case.ops
    rows = torch.tensor([0, 1, b // 2, b - 2, b - 1], device="cuda")
    empty = torch.empty(0, device="cuda")
    loss, _, _, _ = ops.plan(z, y, torch.tensor(0.5, device="cuda"), torch.tensor([1, 0], device="cuda"), empty,
                             torch.tensor(50), None, None, None, 100, 0.7, 0.5, 0, 8.0)
    m = ops.ce(z, y, partner, lam)
    total, lse, w = ops.mixed_loss(z, y, partner, lam, None, torch.tensor(0.5, device="cuda"), None, empty,
                                   torch.tensor(50), None, 100, 0.7, 0.5, 0, True)
    grad = ops.mixed_loss_backward(torch.tensor(1.0, device="cuda"), z, y, partner, lam, lse, w)
    want_l, want_m, want_grad = _rows_reference(z, y, partner, lam, rows, w, b)
    torch.testing.assert_close(loss[rows], want_l, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(m[rows], want_m, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(total) and grad.shape == z.shape and grad.dtype == dtype
    torch.testing.assert_close(grad[rows].float(), want_grad, rtol=2e-2, atol=1e-9)
    del grad
    xm = ops.mix(z, partner, lam)
    lam_b = lam[rows].to(dtype).unsqueeze(1)
    torch.testing.assert_close(xm[rows], lam_b * z[rows] + (1 - lam_b) * z[partner[rows]], rtol=1e-2, atol=1e-2)
