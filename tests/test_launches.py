"""Kernel launches per MentorMix step with the Triton backend, counted on the CPU as a proxy.

The target at small B is a whole step in 5 device launches. Without a GPU the launches are counted in Triton's interpreter: every ``kernel[grid](...)`` is one launch, and every
ATen op that would be a device kernel (anything but views, metadata, allocations) is one more,
counted by a ``TorchDispatchMode`` (the custom ops are unwrapped so the torch ops inside them count;
the interpreter's own host copies inside a launch do not). Budgets are the counts achieved; a test
fails if a step grows.

The public step (``MentorMix.plan``, ``mix_inputs``, ``mixed_loss``, ``loss.backward()``; B = 128,
MentorNet, alpha > 0, second reweighting; the step from the module's buffer, a tensor or an int)
is FIVE launches, four of them ours (see kernels/README.md):

* ``_plan_one_program``: CE, epoch from the step, select, moving average (in place), weights,
  Beta draws and partner search from the module's Philox state (advanced in place), lam;
* ``_mix_kernel``;
* ``_mixed_loss_one_program``: mixed CE, select, ``ma2`` (in place), v2, the weighted sum,
  ``num_steps``;
* ``aten.ones_like``: autograd's seed gradient of ``loss.backward()``, made by the autograd engine
  for any scalar loss (the eager reference pays it too);
* ``_grad_kernel``.

Larger B * K (> ``FUSE_CE_MAX``) adds one ``ce_rows_kernel`` to each of the two passes.
"""

from __future__ import annotations

import collections

import pytest
import torch

import mentormix_fast as mf

pytest.importorskip("triton")
if mf.backends().get("triton") != "available":
    pytest.skip(f"triton backend unavailable: {mf.backends().get('triton')}", allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("counts launches in Triton's CPU interpreter", allow_module_level=True)

from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime import interpreter

# Allocation and metadata ops: no device kernel.
_FREE = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "detach", "alias", "lift_fresh",
         "_local_scalar_dense"}
OURS = {"triton._plan_one_program": 1, "triton._mix_kernel": 1, "triton._mixed_loss_one_program": 1,
        "triton._grad_kernel": 1}
AUTOGRAD_SEED = {"aten.ones_like": 1}
BUDGET = 5  # achieved: 4 kernels of ours + autograd's seed (was 15 through the module, 6 through the backend)


class _Counter(TorchDispatchMode):
    def __init__(self, counts):
        super().__init__()
        self.counts = counts
        self.in_launch = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "mentormix_triton":  # run the custom op's body under the mode
            with self:
                return OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
        name = func._overloadpacket.__name__
        if not self.in_launch and not func.is_view and name not in _FREE:
            self.counts["aten." + name] += 1
        return func(*args, **kwargs)


@pytest.fixture
def count_launches(monkeypatch):
    counts = collections.Counter()
    mode = _Counter(counts)
    run = interpreter.InterpretedFunction.run

    def counted_run(self, *args, **kwargs):
        counts["triton." + self.fn.__name__] += 1
        mode.in_launch += 1  # the interpreter's host copies are not device launches
        try:
            return run(self, *args, **kwargs)
        finally:
            mode.in_launch -= 1

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", counted_run)

    def measure(fn):
        counts.clear()
        with mode:
            fn()
        return dict(counts)

    return measure


def _inputs(b, k):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(b, k, generator=g), torch.randn(b, k, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    x = torch.randn(b, 3, 4, generator=g)
    return z1, z2.requires_grad_(), y, x  # z2 stands for the model's second-pass logits


def _module_step(weighting="mentornet_pd", step="buffer", b=128, k=10, second_reweight=True):
    """The public API's step (the model left out)."""
    # validate=False: "auto" checks label values only for CPU tensors (min/max launches), never on CUDA.
    mm = mf.MentorMix(total_steps=100, backend="triton", weighting=weighting, second_reweight=second_reweight,
                      generator=torch.Generator().manual_seed(1), validate=False)
    z1, zm, y, x = _inputs(b, k)
    when = {"buffer": None, "tensor": torch.tensor(60), "int": 60}[step]

    def run():
        zm.grad = None  # the gradient is assigned, not accumulated (no add)
        plan = mm.plan(z1, y, when)
        mm.mix_inputs(x, plan)
        mm.mixed_loss(zm, y, plan, when).backward()

    run()  # warm the folded-table cache (once per MentorNet, not per step)
    return run


@pytest.mark.parametrize("weighting", ["mentornet_pd", "threshold"])
@pytest.mark.parametrize("step", ["buffer", "tensor", "int"])
def test_launches_per_module_step_at_b128(count_launches, weighting, step):
    counts = count_launches(_module_step(weighting, step))
    assert counts == OURS | AUTOGRAD_SEED, counts
    assert sum(counts.values()) <= BUDGET


def test_launches_without_second_reweight(count_launches):
    counts = count_launches(_module_step(second_reweight=False))
    assert counts == OURS | AUTOGRAD_SEED, counts


def test_a_step_tensor_gives_the_step_of_the_same_int():
    """The epoch derived in the kernels from a step tensor (on the device or the host, any integer
    dtype, clamped to [0, T]) equals the host's for the int."""
    from tests.ops.cases import Case, Config, batch, run_plan

    case = Case("triton", "cpu")
    net = mf.mentornet_pd()
    z, y, u, beta = batch(40, 6, torch.float32, "cpu", seed=3)
    for t_int, t_tensor in ((60, torch.tensor(60)), (5, torch.tensor(5, dtype=torch.int32)), (100, torch.tensor(150)),
                            (0, torch.tensor(-3))):
        a = run_plan(case, z, y, net, t_int, Config(), u, beta)
        b = run_plan(case, z, y, net, t_tensor, Config(), u, beta)
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q), t_int


def test_launches_large_k_unfused(count_launches):
    """B * K above FUSE_CE_MAX: the CE passes are separate launches again (one each)."""
    counts = count_launches(_module_step(k=1000))
    assert counts == OURS | AUTOGRAD_SEED | {"triton.ce_rows_kernel": 2}, counts


@pytest.mark.parametrize("fuse_max", [0, 1 << 30])
def test_fused_and_separate_ce_agree_with_reference(monkeypatch, fuse_max):
    """The small-B single program with and without the fused CE pass (against the reference)."""
    from mentormix_fast.kernels import mixed_loss, plan

    from tests.ops.cases import Case, Config
    from tests.ops.test_mixed_loss import check_mixed_loss
    from tests.ops.test_plan import check_plan

    monkeypatch.setattr(plan, "FUSE_CE_MAX", fuse_max)
    monkeypatch.setattr(mixed_loss, "FUSE_CE_MAX", fuse_max)
    case = Case("triton", "cpu")
    for dtype in (torch.float32, torch.bfloat16):
        check_plan(case, 33, 17, dtype, mf.mentornet_pd(), 60, nan_rows=(2,), bad_label_rows=(5,))
        check_mixed_loss(case, 33, 17, dtype, mf.mentornet_pd(), 60)
        check_mixed_loss(case, 3, 5003, dtype, "threshold", 50, Config(second_reweight=False))
