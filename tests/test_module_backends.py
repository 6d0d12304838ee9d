"""The public ``MentorMix`` step on every backend: whole steps against the reference on identical
draws, the state the kernels update in place, in-kernel draws (seeded, resumable, re-keyed), the
global-batch percentile, torch.compile, bad plans and bad state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import reference as ref
from mentormix_fast.module import MentorMix


@pytest.fixture
def reference_draws(monkeypatch):
    """Every backend given the reference's draws (explicit ``uniform``/``beta`` from the module's
    generator in the reference's order instead of in-kernel Philox draws): whole steps on
    identical draws, through the same in-place state updates."""

    def draws(self, backend, batch, device):
        if self.config.mixup_alpha <= 0:
            return None, None
        return (ref.draw_uniform(batch, self.generator, device),
                ref.draw_beta(self.config.mixup_alpha, batch, self.generator, device))

    monkeypatch.setattr(MentorMix, "_draws", draws)


def _module(case, seed=1, **kw):
    base = dict(total_steps=37, backend=case.name, burn_in_epoch=3, mixup_alpha=2.0,
                generator=torch.Generator(device=case.device).manual_seed(seed))
    return mf.MentorMix(**(base | kw)).to(case.device)


def _batches(case, n, b=40, k=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(b, k, generator=g).mul(2).to(case.device, dtype),
             torch.randn(b, k, generator=g).to(case.device, dtype),
             torch.randint(0, k, (b,), generator=g).to(case.device)) for _ in range(n)]


def _run(mm, batches, steps):
    """Plan + mixed loss + backward per batch: per step (loss, grad, partner, lam, weights, buffers)."""
    out = []
    for (z1, z2, y), t in zip(batches, steps, strict=True):
        z2 = z2.clone().requires_grad_()
        plan = mm.plan(z1, y, t)
        loss = mm.mixed_loss(z2, y, plan, t)
        loss.backward()
        out.append((loss.detach(), z2.grad, plan.partner, plan.lam, plan.weights,
                    {k: v.clone() for k, v in mm.named_buffers() if k != "mentornet_folded"}))
    return out


def _assert_same(a, b):
    for sa, sb in zip(a, b, strict=True):
        for x, y in zip(sa[:5], sb[:5], strict=True):
            assert torch.equal(x, y)
        for name in sa[5]:
            assert torch.equal(sa[5][name], sb[5][name]), name


# Steps crossing epoch-feature boundaries of T = 37 (100 t / T: 0, 2, 35, 97, 99 at t = 0, 1, 13, 36, 37).
STEPS = [0, 1, 13, 36, 37]


def _train(case, steps, second_reweight=True, dtype=torch.float32, seed=1):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).to(case.device)
    mm = _module(case, seed=seed, total_steps=steps, burn_in_epoch=2, second_reweight=second_reweight)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(steps, 32, 8, generator=g).to(case.device)
    y = torch.randint(0, 5, (steps, 32), generator=g).to(case.device)
    losses = []
    for t in range(steps):
        with torch.autocast(device_type=case.device, dtype=dtype, enabled=dtype != torch.float32):
            loss = mm(net, x[t], y[t])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses), mm


@pytest.mark.parametrize("second_reweight", [True, False])
def test_steps_track_the_reference_on_identical_draws(case, reference_draws, second_reweight):
    from tests.ops.cases import Case

    got_losses, got = _train(case, 12, second_reweight)
    want_losses, want = _train(Case("reference", case.device), 12, second_reweight)
    torch.testing.assert_close(got_losses, want_losses, rtol=1e-4, atol=1e-5)
    for name in ("loss_ma", "loss_ma_mixed", "num_steps"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-5)


def test_same_seed_same_steps_other_seed_other_steps(case):
    la, _ = _train(case, 4)
    lb, _ = _train(case, 4)
    lc, _ = _train(case, 4, seed=9)
    assert torch.equal(la, lb) and not torch.equal(la, lc) and torch.isfinite(la).all()


def test_step_as_int_tensor_or_buffer_gives_the_same_step(case):
    """The epoch from a step tensor (device or int32) equals the host's for an int; ``step=None``
    reads and advances the ``num_steps`` buffer."""
    batches = _batches(case, len(STEPS))
    ints = _run(_module(case), batches, STEPS)
    assert [int(s[5]["num_steps"]) for s in ints] == [t + 1 for t in STEPS]
    tensors = _run(_module(case), batches, [torch.tensor(t, device=case.device, dtype=torch.int32) for t in STEPS])
    _assert_same(ints, tensors)
    mm, buffer_run = _module(case), []
    for t, batch in zip(STEPS, batches, strict=True):
        mm.num_steps.fill_(t)  # jump the buffer to the int run's step
        buffer_run += _run(mm, [batch], [None])
    _assert_same(ints, buffer_run)


def test_state_dict_resumes_the_draws_exactly(fast_case):
    """In-kernel draws: a module restored from a state_dict (Philox key and counter included)
    continues exactly as the uninterrupted one, whatever its own seed."""
    mm = _module(fast_case, seed=7)
    batches = _batches(fast_case, 4)
    _run(mm, batches[:2], [None, None])
    saved = copy.deepcopy(mm.state_dict())
    rest = _run(mm, batches[2:], [None, None])
    resumed = _module(fast_case, seed=99)
    resumed.load_state_dict(saved)
    _assert_same(rest, _run(resumed, batches[2:], [None, None]))


def test_philox_counter_moves_once_per_plan(fast_case):
    mm = _module(fast_case, seed=7)
    assert mm.rng_state.tolist() == [7, 0]
    _run(mm, _batches(fast_case, 3), [None] * 3)
    assert mm.rng_state.tolist() == [7, 3]


def test_reseeding_the_generator_rekeys_the_draws(fast_case):
    """A generator reseeded between steps (the training program reseeds per step and rank) re-keys
    the Philox stream at the next step; the counter keeps counting steps."""
    case = fast_case
    batches = _batches(case, 2)
    a = _module(case, seed=3)
    _run(a, batches[:1], [None])
    a.generator.manual_seed(8)
    second = _run(a, batches[1:], [None])
    assert a.rng_state.tolist() == [8, 2]
    b = _module(case, seed=8)
    _run(b, batches[:1], [None])
    again = _run(b, batches[1:], [None])
    assert torch.equal(second[0][2], again[0][2]) and torch.equal(second[0][3], again[0][3])


def test_global_seed_set_after_construction_keys_the_draws(fast_case):
    batches = _batches(fast_case, 1)
    runs = []
    for _ in range(2):
        mm = _module(fast_case, generator=None)
        torch.manual_seed(1234)
        runs.append(_run(mm, batches, [None]))
        assert mm.rng_state.tolist() == [1234, 1]
    _assert_same(*runs)


def test_float64_logits_take_the_reference_with_state_updates(case):
    out = _run(_module(case), _batches(case, 2, dtype=torch.float64), [None, None])
    assert int(out[-1][5]["num_steps"]) == 2 and float(out[-1][5]["loss_ma"]) > 0
    assert out[-1][0].dtype == torch.float64


def _gather3(values):
    """Stands in for an all-gather over 3 ranks: the local values and two shifted copies."""
    return torch.cat([values, values * 0.5 + 1.0, values.flip(0) * 2.0])


@pytest.mark.parametrize("second_reweight", [True, False])
def test_percentile_gather_on_every_backend(case, reference_draws, second_reweight):
    """The percentile of the gathered losses (ce, then the user's gather, then plan / mixed_loss on
    the pool) gives what the reference gives on the same pool."""
    z1, z2, y = _batches(case, 1)[0]
    results = []
    for backend in (case.name, "reference"):
        mm = mf.MentorMix(total_steps=10, backend=backend, percentile_gather=_gather3, burn_in_epoch=0,
                          second_reweight=second_reweight, generator=torch.Generator(case.device).manual_seed(0))
        plan = mm.plan(z1, y, 5)
        loss = mm.mixed_loss(z2, y, plan, 5)
        results.append((loss, mm.loss_ma.clone(), mm.loss_ma_mixed.clone(), plan))
    (la, ma_a, ma2_a, pa), (lr, ma_r, ma2_r, pr) = results
    q = ref.percentile_nearest(_gather3(ref.per_sample_ce(z1, y)), 0.7)
    torch.testing.assert_close(ma_a, 0.5 * q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ma_a, ma_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ma2_a, ma2_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(la, lr, rtol=1e-4, atol=1e-5)


def test_compiled_module_step_matches_eager(case):
    """The public step (two passes, plan, mix, mixed loss, in-place state) in one
    torch.compile(fullgraph=True) graph equals the eager module with the same seed, step by step.
    The reference draws from torch's global RNG there (Dynamo cannot trace a Generator)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).to(case.device)
    net_c = copy.deepcopy(net)
    generator = None if case.name == "reference" else torch.Generator(device=case.device).manual_seed(5)
    mm = mf.MentorMix(total_steps=100, backend=case.name, burn_in_epoch=2, generator=generator).to(case.device)
    mm_c = copy.deepcopy(mm)
    step_c = torch.compile(lambda x, y, t: mm_c(net_c, x, y, step=t), fullgraph=True)
    g = torch.Generator().manual_seed(1)
    for t in range(2):
        x, y = torch.randn(32, 8, generator=g).to(case.device), torch.randint(0, 5, (32,), generator=g).to(case.device)
        step = torch.tensor(40 + t, device=case.device)
        torch.manual_seed(t)
        loss = mm(net, x, y, step=step)
        torch.manual_seed(t)
        with torch._inductor.config.patch(fallback_random=True):
            loss_c = step_c(x, y, step)
        loss.backward()
        loss_c.backward()
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        for name, buf in mm.named_buffers():
            torch.testing.assert_close(dict(mm_c.named_buffers())[name], buf, rtol=1e-5, atol=1e-6, msg=name)
        for p, p_c in zip(net.parameters(), net_c.parameters(), strict=True):
            torch.testing.assert_close(p_c.grad, p.grad, rtol=1e-4, atol=1e-6)
    assert int(mm_c.num_steps) == 42


# ------------------------------------------------------------------------------------------------
# Bad plans, bad state, retries
# ------------------------------------------------------------------------------------------------


def test_a_hand_edited_plan_is_checked_or_gives_nan_rows(case):
    """A plan whose partner is out of the batch: a ValueError naming it where checking costs no
    sync (CPU, validate "auto" or True); unchecked, NaN rows, never a crash or a wrapped index."""
    z1, z2, y = _batches(case, 1)[0]
    x = torch.randn(40, 3, device=case.device)
    for bad_value in (-1, 40, 10**6):
        mm = _module(case)
        plan = mm.plan(z1, y, 5)
        bad = plan._replace(partner=plan.partner.clone().index_fill_(0, torch.tensor([3], device=case.device),
                                                                     bad_value))
        if case.device == "cpu":
            with pytest.raises(ValueError, match="plan.partner"):
                mm.mix_inputs(x, bad)
            with pytest.raises(ValueError, match="plan.partner"):
                mm.mixed_loss(z2, y, bad, 5)
        mm.validate = False
        assert torch.isnan(mm.mix_inputs(x, bad)[3]).all()
        ma2 = mm.loss_ma_mixed.clone()
        loss = mm.mixed_loss(z2, y, bad, 5)
        assert torch.isnan(loss) and torch.isfinite(mm.loss_ma_mixed) and not torch.equal(mm.loss_ma_mixed, ma2 * 0)


def test_a_failed_mixed_loss_moves_no_state_and_can_be_repeated(case):
    z1, z2, y = _batches(case, 1)[0]
    mm = _module(case)
    plan = mm.plan(z1, y, 5)
    before = {k: v.clone() for k, v in mm.named_buffers()}
    with pytest.raises(ValueError, match="target"):
        mm.mixed_loss(z2, y[:10], plan, 5)
    for name, value in mm.named_buffers():
        assert torch.equal(value, before[name]), name
    mm.mixed_loss(z2, y, plan, 5)
    assert int(mm.num_steps) == 6


@pytest.mark.parametrize("name, value, match", [
    ("loss_ma", torch.tensor(math.nan), "loss_ma"), ("loss_ma_mixed", torch.tensor(math.inf), "loss_ma_mixed"),
    ("num_steps", torch.tensor(-3), "num_steps"), ("rng_state", torch.tensor([1.0, 2.0]), "rng_state"),
])
def test_bad_state_dict_is_refused(name, value, match):
    mm = mf.MentorMix(total_steps=10, backend="reference")
    state = mm.state_dict()
    state[name] = value
    with pytest.raises(RuntimeError, match=match):
        mm.load_state_dict(state)
    assert torch.isfinite(mm.loss_ma) and int(mm.num_steps) == 0


def test_loading_a_state_dict_refolds_the_mentornet():
    net = mf.MentorNet(generator=torch.Generator().manual_seed(8))
    a = mf.MentorMix(total_steps=10, weighting=net)
    b = mf.MentorMix(total_steps=10, weighting=mf.MentorNet(generator=torch.Generator().manual_seed(9)))
    assert not torch.equal(a.mentornet_folded, b.mentornet_folded)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mentornet_folded, b.mentornet_folded)
    with torch.no_grad():
        net.fc2_bias.add_(0.25)
    a.refold_mentornet()
    assert not torch.equal(a.mentornet_folded, b.mentornet_folded)


@pytest.mark.parametrize("step, count", [(-5, 1), (2**62, 38), (2**63 - 1, 38)])
def test_a_tensor_step_outside_the_run_leaves_a_loadable_count(case, step, count):
    """A tensor step is not read on the host; it is clamped to [0, T] (T = 37 here) for the epoch and for
    ``num_steps``, so the module's own state_dict always loads back."""
    mm = _module(case)
    (out,) = _run(mm, _batches(case, 1), [torch.tensor(step, device=case.device)])
    (ref,) = _run(_module(case), _batches(case, 1), [0 if step < 0 else 37])
    assert torch.equal(out[0], ref[0]) and torch.equal(out[4], ref[4])  # the step's computation is the clamped one
    assert int(mm.num_steps) == count
    _module(case).load_state_dict(mm.state_dict())


def test_a_refused_device_leaves_the_state_where_it_was(case):
    """A call on a device the backend or the generator cannot serve raises before the state moves."""
    mm = _module(case)
    (z1, _, y), = _batches(case, 1)
    mm.plan(z1, y, 3)
    before = {k: v.clone() for k, v in mm.state_dict().items()}
    with pytest.raises(ValueError, match="generator|backend"):
        mm.plan(z1.to("meta"), y.to("meta"), 4)
    assert all(torch.equal(v, before[k]) and v.device == before[k].device for k, v in mm.state_dict().items())
    mm.plan(z1, y, 4)  # and the module goes on
