"""The Triton backend compiled for a real GPU (skipped without CUDA).

Same comparisons as the interpreter suite at GPU sizes, a fullgraph torch.compile of a whole
MentorMix step, CUDA-graph capture and replay, and 200 training steps of a small net with the
"reference" and "triton" backends giving the same loss curve.
"""

from __future__ import annotations

import pytest
import torch

import mentormix_fast as mf

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

if torch.cuda.is_available():
    from test_triton_kernels import (
        DTYPES,
        _train,
        backends_on,
        batch,
        cfg,
        check_mix,
        check_mixed_loss,
        check_weights_and_sample,
        reference_draws,
    )

GPU_SHAPES = [(1, 2), (3, 7), (128, 10), (128, 100), (1024, 1000), (8192, 32000), (65536, 1000), (5, 262144),
              (1 << 20, 3), (4097, 33)]


@pytest.mark.parametrize("dtype", DTYPES if torch.cuda.is_available() else [], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_weights_and_sample_gpu(shape, dtype):
    check_weights_and_sample("cuda", *shape, dtype, "threshold", 50, cfg())
    check_weights_and_sample("cuda", *shape, dtype, mf.mentornet_pd().cuda(), 95, cfg(percentile=0.3))


@pytest.mark.parametrize("dtype", DTYPES if torch.cuda.is_available() else [], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
@pytest.mark.parametrize("second_reweight", [True, False])
def test_mixed_loss_gpu(shape, dtype, second_reweight):
    check_mixed_loss("cuda", *shape, dtype, "threshold", 50, cfg(second_reweight=second_reweight))


@pytest.mark.parametrize("dtype", DTYPES if torch.cuda.is_available() else [], ids=str)
@pytest.mark.parametrize("shape", [(1,), (7, 3, 32, 32), (4096, 1000), (3, 1 << 20)], ids=str)
def test_mix_gpu(shape, dtype):
    check_mix("cuda", shape, dtype)


def test_compiled_module_step_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10)).cuda()
    mm = mf.MentorMix(total_steps=100, backend="triton", burn_in_epoch=2, validate=False).cuda()
    step = torch.compile(lambda x, y: mm(net, x, y), fullgraph=True)
    x, y = torch.randn(256, 8, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    for _ in range(3):
        loss = step(x, y)
        loss.backward()
    assert torch.isfinite(loss) and int(mm.num_steps) == 3 and float(mm.loss_ma) > 0


def test_cuda_graph_capture_and_replay():
    tri, _ = backends_on("cuda")
    config, weighting = cfg(), mf.mentornet_pd().cuda()
    z1, y, u, beta = batch(512, 100, torch.bfloat16, "cuda")
    x = torch.randn(512, 64, device="cuda")
    w = torch.randn(64, 100, device="cuda", requires_grad=True)
    ma, ma2, epoch = torch.tensor(0.5, device="cuda"), torch.tensor(0.7, device="cuda"), torch.tensor(60,
                                                                                                     device="cuda")

    def step(u, beta):
        plan = tri.weights_and_sample(z1, y, ma, epoch, config, weighting, None, u, beta)
        z2 = tri.mix(x, plan.partner, plan.lam) @ w
        loss, new_ma2 = tri.mixed_loss(z2, y, plan.partner, plan.lam, ma2, epoch, config, weighting)
        (grad,) = torch.autograd.grad(loss, w)
        return loss, plan.loss_ma, new_ma2, grad

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step(u, beta)  # warm-up: Triton compiles outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(u, beta)
    eager = step(u, beta)
    graph.replay()
    for a, b in zip(out, eager, strict=True):
        torch.testing.assert_close(a, b)
    # New draws copied into the static inputs change the replayed result.
    g = torch.Generator(device="cuda").manual_seed(9)
    u.copy_(torch.rand(u.shape, generator=g, dtype=u.dtype, device="cuda"))
    beta.copy_(torch.rand(beta.shape, generator=g, device="cuda"))
    eager = step(u, beta)
    graph.replay()
    for a, b in zip(out, eager, strict=True):
        torch.testing.assert_close(a, b)


def test_cuda_graph_capture_with_generator_draws():
    tri, _ = backends_on("cuda")
    z1, y, _, _ = batch(256, 10, torch.float32, "cuda")
    ma = torch.tensor(0.0, device="cuda")
    for _ in range(2):
        tri.weights_and_sample(z1, y, ma, 50, cfg(), "threshold", None)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = tri.weights_and_sample(z1, y, ma, 50, cfg(), "threshold", None)
    graph.replay()
    first = out.lam.clone()
    graph.replay()
    assert not torch.equal(first, out.lam)  # the default generator advances on every replay


def test_cuda_graph_captures_the_module_step():
    """The public step (both passes, plan, mix, mixed loss, gradient) in one CUDA graph: the kernels
    update the module's buffers, so every replay is the next step (num_steps, the moving averages
    and the Philox counter advance) and equals an eager module with the same seed, step for step."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).cuda()

    def module():
        return mf.MentorMix(total_steps=100, backend="triton", burn_in_epoch=2, validate=False,
                            generator=torch.Generator(device="cuda").manual_seed(3)).cuda()

    graphed, eager_mm = module(), module()
    x, y = torch.randn(256, 8, device="cuda"), torch.randint(0, 10, (256,), device="cuda")

    def step(mm):
        with torch.no_grad():
            z1 = net(x)
        plan = mm.plan(z1, y)
        loss = mm.mixed_loss(net(mm.mix_inputs(x, plan)), y, plan)
        (grad,) = torch.autograd.grad(loss, net[0].weight)
        return loss, grad, plan.partner, plan.lam

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for mm in (graphed, graphed, eager_mm, eager_mm):  # warm-up (compiles); both modules 2 steps on
            step(mm)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(graphed)
    for t in range(3):
        graph.replay()
        want = step(eager_mm)
        for a, b in zip(out, want, strict=True):
            torch.testing.assert_close(a, b)
        for name, buf in eager_mm.named_buffers():
            torch.testing.assert_close(dict(graphed.named_buffers())[name], buf, msg=name)
        assert int(graphed.num_steps) == 3 + t and int(graphed.rng_state[1]) == 3 + t


@pytest.mark.parametrize("second_reweight", [True, False])
def test_200_steps_same_loss_curve(second_reweight):
    with reference_draws():  # in-kernel draws differ from the reference's stream: give it the same draws
        lt, _ = _train("triton", 200, "cuda", second_reweight=second_reweight)
    lr, _ = _train("reference", 200, "cuda", second_reweight=second_reweight)
    torch.testing.assert_close(lt, lr, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_function_dispatches_to_triton_on_cuda(weighted):
    z, y, _, _ = batch(4096, 1000, torch.bfloat16, "cuda")
    partner = torch.randperm(4096, device="cuda")
    lam = torch.rand(4096, device="cuda")
    w = torch.rand(4096, device="cuda") if weighted else None
    zt = z.clone().requires_grad_(True)
    loss = mf.MentorMixLossFunction.apply(zt, y, partner, lam, w)
    assert mf.autograd._triton_ops(zt) is not None  # the Triton path is the one taken
    (loss * 0.6).backward()
    zr = z.clone().requires_grad_(True)
    from mentormix_fast import reference as ref
    want = ref.weighted_mean(ref.mixed_ce(zr, y, partner, lam), w)
    (want * 0.6).backward()
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zt.grad.float(), zr.grad.float(), rtol=2e-2, atol=1e-4)
