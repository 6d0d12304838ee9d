"""The Triton backend's in-place step state (``MentorMix`` buffers written by the kernels).

The module passes its buffers to the kernels: ``loss_ma``/``loss_ma_mixed`` are written in place,
the epoch row is computed from the step on the device, ``num_steps`` is set by the mixed-loss
kernel and the Philox state ``rng_state`` = (key, counter) is advanced by the plan kernel. These
tests pin that this gives exactly what the functional API plus copies gives, for every way of
passing the step, on the one-program and the many-program paths, and that the draws are
reproducible and resumable.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mentormix_fast as mf

pytest.importorskip("triton")
if mf.backends().get("triton") != "available":
    pytest.skip(f"triton backend unavailable: {mf.backends().get('triton')}", allow_module_level=True)

from test_triton_kernels import DEVICE, reference_draws


@pytest.fixture
def many_programs(monkeypatch):
    from mentormix_fast.kernels import _shared

    monkeypatch.setattr(_shared, "SMALL_B_MAX", 16)
    monkeypatch.setattr(_shared, "LARGE_BLOCK", 256)


def _module(seed=1, **kw):
    base = dict(total_steps=37, backend="triton", burn_in_epoch=3, mixup_alpha=2.0,
                generator=torch.Generator(device=DEVICE).manual_seed(seed))
    return mf.MentorMix(**(base | kw)).to(DEVICE)


def _batches(n, b=40, k=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(b, k, generator=g).mul(2).to(DEVICE, dtype), torch.randn(b, k, generator=g).to(DEVICE, dtype),
             torch.randint(0, k, (b,), generator=g).to(DEVICE)) for _ in range(n)]


def _run(mm, batches, steps, functional=False, monkeypatch=None):
    """Plan + mixed loss + backward per batch; returns per-step (loss, grad, partner, lam, buffers)."""
    if functional:
        from mentormix_fast.triton_backend import TritonBackend

        monkeypatch.setattr(TritonBackend, "updates_state_in_place", False)
    out = []
    for (z1, z2, y), t in zip(batches, steps, strict=True):
        z2 = z2.clone().requires_grad_()
        plan = mm.plan(z1, y, t)
        loss = mm.mixed_loss(z2, y, plan, t)
        loss.backward()
        out.append((loss.detach(), z2.grad, plan.partner, plan.lam, plan.weights,
                    {k: v.clone() for k, v in mm.named_buffers()}))
    if functional:
        monkeypatch.undo()
    return out


def _assert_same(a, b, exact=True):
    for sa, sb in zip(a, b, strict=True):
        for x, y in zip(sa[:5], sb[:5], strict=True):
            if exact:
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        for name in sa[5]:
            if name == "rng_state":  # the functional path draws explicitly: no Philox state to advance
                continue
            assert torch.equal(sa[5][name], sb[5][name]), name


# Steps crossing epoch-feature boundaries of T = 37 (100 t / T: 0, 2, 35, 97, 99 at t = 0, 1, 13, 36, 37).
STEPS = [0, 1, 13, 36, 37]


@pytest.mark.parametrize("second_reweight", [True, False])
@pytest.mark.parametrize("weighting", ["mentornet_pd", "threshold"])
@pytest.mark.parametrize("path", ["one-program", "many-programs"])
def test_in_place_state_equals_functional_plus_copies(request, monkeypatch, second_reweight, weighting, path):
    if path == "many-programs":
        request.getfixturevalue("many_programs")
    batches = _batches(len(STEPS), b=40 if path == "one-program" else 300)
    with reference_draws():
        a = _run(_module(second_reweight=second_reweight, weighting=weighting), batches, STEPS)
        b = _run(_module(second_reweight=second_reweight, weighting=weighting), batches, STEPS, functional=True,
                 monkeypatch=monkeypatch)
    _assert_same(a, b)
    assert [int(s[5]["num_steps"]) for s in a] == [t + 1 for t in STEPS]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_in_place_state_equals_functional_plus_copies_half(monkeypatch, dtype):
    batches = _batches(len(STEPS), dtype=dtype)
    with reference_draws():
        a = _run(_module(), batches, STEPS)
        b = _run(_module(), batches, STEPS, functional=True, monkeypatch=monkeypatch)
    _assert_same(a, b)
    assert a[0][1].dtype == dtype  # the gradient comes back in the logits' dtype


@pytest.mark.parametrize("path", ["one-program", "many-programs"])
def test_step_as_int_tensor_or_buffer_gives_the_same_step(request, path):
    """The epoch row computed in the kernel from a step tensor (e = min(100 t // T, 99)) equals the
    host's for an int; ``step=None`` reads and advances the ``num_steps`` buffer in the kernels."""
    if path == "many-programs":
        request.getfixturevalue("many_programs")
    batches = _batches(len(STEPS), b=40 if path == "one-program" else 300)
    ints = _run(_module(), batches, STEPS)
    tensors = _run(_module(), batches, [torch.tensor(t, device=DEVICE, dtype=torch.int32) for t in STEPS])
    _assert_same(ints, tensors)
    mm, buffer_run = _module(), []
    for t, batch in zip(STEPS, batches, strict=True):
        mm.num_steps.fill_(t)  # jump the buffer to the int run's step
        buffer_run += _run(mm, [batch], [None])
    _assert_same(ints, buffer_run)


def test_philox_state_advances_once_per_plan_and_resumes(many_programs):
    """``rng_state`` = (generator seed, steps drawn): the counter moves by one per plan on both
    paths, and a module restored from a state_dict draws what the uninterrupted one draws."""
    mm = _module(seed=7)
    assert mm.rng_state.tolist() == [7, 0]
    small, large = _batches(4, b=40), _batches(4, b=300)
    _run(mm, small[:2], [None, None])
    _run(mm, large[:1], [None])
    assert mm.rng_state.tolist() == [7, 3]
    saved = copy.deepcopy(mm.state_dict())
    rest = _run(mm, small[2:], [None, None])
    resumed = _module(seed=99)  # another seed: the state_dict's key wins
    resumed.load_state_dict(saved)
    _assert_same(rest, _run(resumed, small[2:], [None, None]))


def test_same_seed_same_draws_other_seed_other_draws():
    batches = _batches(3)
    a, b, c = _run(_module(seed=3), batches, [None] * 3), _run(_module(seed=3), batches, [None] * 3), \
        _run(_module(seed=4), batches, [None] * 3)
    _assert_same(a, b)
    assert not torch.equal(a[0][3], c[0][3])  # lam
    assert not torch.equal(a[0][3], a[1][3])  # the counter moves: new draws each step


def test_one_and_many_programs_draw_the_same(monkeypatch):
    """The Philox counter numbers each example's draws by its index: the layout does not matter."""
    from mentormix_fast.kernels import _shared

    batches = _batches(2, b=300)
    one = _run(_module(), batches, [None, None])
    monkeypatch.setattr(_shared, "SMALL_B_MAX", 16)
    monkeypatch.setattr(_shared, "LARGE_BLOCK", 256)
    many = _run(_module(), batches, [None, None])
    for sa, sb in zip(one, many, strict=True):
        torch.testing.assert_close(sa[3], sb[3], rtol=0, atol=0)  # lam
        assert (sa[2] == sb[2]).float().mean() > 0.98  # partners (cdf sums in another order at ties)
        assert torch.equal(sa[5]["rng_state"], sb[5]["rng_state"])


def test_float64_logits_fall_back_with_state_updates():
    """float64 logits take the reference path of the in-place API (functional + copies)."""
    batches = _batches(2, dtype=torch.float64)
    out = _run(_module(), batches, [None, None])
    assert int(out[-1][5]["num_steps"]) == 2 and float(out[-1][5]["loss_ma"]) > 0
    assert out[-1][0].dtype == torch.float64


def test_reseeding_the_generator_rekeys_the_draws():
    """A generator reseeded between steps (the training program reseeds per step and rank) re-keys
    the Philox stream at the next step; the counter keeps counting steps."""
    batches = _batches(2)
    a = _module(seed=3)
    _run(a, batches[:1], [None])
    a.generator.manual_seed(8)
    second = _run(a, batches[1:], [None])
    assert a.rng_state.tolist() == [8, 2]
    b = _module(seed=8)
    _run(b, batches[:1], [None])
    again = _run(b, batches[1:], [None])  # other mixed losses at step 1 (other ma2), the same draws at step 2
    assert torch.equal(second[0][2], again[0][2]) and torch.equal(second[0][3], again[0][3])
    assert torch.equal(second[0][5]["rng_state"], again[0][5]["rng_state"])


def test_global_seed_set_after_construction_fixes_the_draws():
    """generator=None: keyed by torch's initial seed, also when torch.manual_seed comes after the
    module was built."""
    batches = _batches(1)
    runs = []
    for _ in range(2):
        mm = _module(generator=None)
        torch.manual_seed(1234)
        runs.append(_run(mm, batches, [None]))
        assert mm.rng_state.tolist() == [1234, 1]
    _assert_same(*runs)
